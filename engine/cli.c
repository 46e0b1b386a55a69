/* cli.c — the `tide` command line: parses arguments, runs one store operation on a
 * private libuv loop and prints its outcome (JSON lines on stdout, one error line on
 * stderr). Exit codes: 0 ok, 2 usage or bad input, 3 version conflict, 4 command rejected
 * by a decider (tide.reject), 5 outcome unknown (the connection was lost after an append was sent),
 * 6 the stream is archived, 1 otherwise. */
#include "cli.h"

#include "cli_common.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli_dlq.h"
#include "cli_docs.h"
#include "cli_import.h"
#include "cli_init.h"
#include "cli_rebuild.h"
#include "cli_test.h"
#include "daemon.h"
#include "input.h"
#include "json.h"
#include "json_out.h"
#include "lua_json.h"
#include "lua_store.h"
#include "lua_vm.h"
#include "store.h"
#include "upcast.h"

static const char usage_main[] =
        "tide — an event store and event processor on PostgreSQL\n"
        "\n"
        "usage: tide COMMAND [OPTIONS]\n"
        "\n"
        "commands:\n"
        "  init        write a runnable skeleton: scripts, their specs, settings\n"
        "  migrate     create or update the schema (Emmett-compatible tables + tide's own)\n"
        "  append      append an event to a stream\n"
        "  read        read the events of one stream\n"
        "  read-all    read the global log, gap-safe, from a cursor\n"
        "  archive     archive a stream: its events leave the active partition and reads\n"
        "  import      append the events of a newline-delimited JSON file, in one transaction\n"
        "  handle      run a command through a Lua decider and append its events\n"
        "  aggregate   fold a stream with a Lua decider and print the state\n"
        "  replay      fold a stream through a decider or projection, event by event\n"
        "  check       load processor scripts in the sandbox and report problems\n"
        "  test        run the busted specs (*_spec.lua) of a directory with tide's runtime\n"
        "  run         run the projections and reactors of directories (the daemon)\n"
        "  status      show the daemon's processors: state, checkpoint, lag, errors\n"
        "  rebuild     build a projection again beside itself, then switch readers to it\n"
        "  forget      remove a processor that is gone: its status, checkpoints, dead letters\n"
        "  dlq         list, show, retry or discard dead letters (events processors gave up on)\n"
        "  doc         print one document of a document projection's collection\n"
        "  docs        list the documents of a collection, filtered by their content\n"
        "\n"
        "The database comes from --database URL, else TIDE_DATABASE_URL, else DATABASE_URL.\n"
        "Run `tide COMMAND --help` for a command's options.\n"
        "\n"
        "Exit codes: 0 ok, 1 failed, 2 bad usage or input (nothing written), 3 version\n"
        "conflict, 4 command rejected by the decider, 5 outcome unknown: the connection was\n"
        "lost after an append was sent, so it may or may not be in the log (read to check),\n"
        "6 the stream is archived.\n";

static const char usage_migrate[] =
        "usage: tide migrate [--print] [--notify-trigger|--no-notify-trigger] [--database URL]\n"
        "\n"
        "Applies pending migrations in one transaction under an advisory lock; safe to run\n"
        "again or from two processes at once, and on a database Emmett created.\n"
        "  --print               print the whole schema as an idempotent SQL script; touch\n"
        "                        nothing\n"
        "  --notify-trigger      then put a NOTIFY trigger on emt_messages, so that appends\n"
        "                        by other clients (Emmett, psql) wake `tide run` at once\n"
        "                        instead of at its next probe; it makes every appending\n"
        "                        commit wait for the one before it (see the README)\n"
        "  --no-notify-trigger   then remove that trigger\n";

static const char usage_append[] =
        "usage: tide append STREAM TYPE DATA_JSON [--expected V] [--metadata JSON] [--id UUID]\n"
        "                   [--partition P] [--projections DIR] [--schema-version N]\n"
        "                   [--database URL]\n"
        "\n"
        "Appends one event and prints {\"next_expected_version\":N,\"global_positions\":[..]}.\n"
        "DATA_JSON is a JSON object, or - to read it from stdin (one argument holds at most\n"
        "128 KiB; stdin takes an event up to the limit below).\n"
        "  --expected V    any (default), no_stream, stream_exists, or the stream's version N\n"
        "  --metadata JSON a JSON object stored with the event\n"
        "  --id UUID       the message id (default: a new random UUID)\n"
        "  --schema-version N  the shape DATA_JSON has (message_schema_version; default 1):\n"
        "                  upcasters (tide.upcaster) bring older versions up to date\n"
        "  --partition P   the Emmett partition (tenant) to work in (default emt:default)\n"
        "  --projections DIR  run the inline projections of DIR (inline = true) inside the\n"
        "                  append's transaction; one that fails rolls the append back\n"
        "Exits 2 on bad input and 3 on a version conflict, writing nothing; 5 when the\n"
        "connection was lost after the event was sent (it may or may not be in the log); 1\n"
        "when an inline projection failed (its error and stack on stderr; nothing written).\n";

/* Printed after usage_append, from the limits of tide.h. */
static const char limits_append[] =
        "Limits: STREAM and TYPE 1 to %d bytes of UTF-8, P 1 to %d; data and metadata\n"
        "together at most %u MiB of JSON, nested at most %d deep.\n";

static const char usage_read[] =
        "usage: tide read STREAM [--from N] [--to N] [--max N] [--backward] [--partition P]\n"
        "                 [--upcasters DIR] [--database URL]\n"
        "\n"
        "Prints one compact JSON object per event, keys in this order: stream_id,\n"
        "stream_position, global_position, type, data, metadata, message_id, created,\n"
        "partition (only outside emt:default), schema_version.\n"
        "  --from N     first stream position (default 1)\n"
        "  --to N       last stream position (default: the end)\n"
        "  --max N      at most N events\n"
        "  --backward   newest first (with --max: the newest N)\n"
        "  --partition P  the Emmett partition (tenant) to read (default emt:default)\n"
        "  --upcasters DIR  hand on each event upcast to its newest shape by the upcasters\n"
        "               among DIR's scripts (tide.upcaster), with its schema_version\n"
        "Exits 6 when the stream is archived (tide archive) and was not begun again.\n";

static const char usage_archive[] =
        "usage: tide archive STREAM [--partition P] [--database URL]\n"
        "\n"
        "Archives a stream as Emmett's tables keep archived streams: in one transaction its\n"
        "emt_streams row and events move to is_archived = true. Reads of it then exit 6\n"
        "(\"stream is archived\"), read-all and processors no longer see its events, and an\n"
        "append expecting the stream is a conflict; appending with --expected any or\n"
        "no_stream begins it again at position 1. Prints\n"
        "{\"stream_id\":S,\"archived\":true,\"version\":N,\"events\":N}.\n"
        "  --partition P  the Emmett partition (tenant) of the stream (default emt:default)\n"
        "Exits 2 when there is no such stream (or on bad input), 6 when it is archived\n"
        "already or was archived once and begun again (Emmett's tables keep one archived\n"
        "stream per id); nothing changes then. 5 when the connection was lost after the\n"
        "archive was sent (read the stream to find out).\n";

static const char usage_read_all[] =
        "usage: tide read-all [--after XID:POS] [--max N] [--partition P] [--upcasters DIR]\n"
        "                     [--database URL]\n"
        "\n"
        "Prints the global log in commit-safe order, one JSON object per event (as `tide read`)\n"
        "with a \"cursor\": pass the last one as --after to continue. Events of transactions\n"
        "still running elsewhere are held back until they can no longer be overtaken.\n"
        "  --after XID:POS  continue after this cursor (default: the start)\n"
        "  --max N          at most N events (default 1000)\n"
        "  --partition P    the Emmett partition (tenant) to read (default emt:default);\n"
        "                   '*' reads every partition, each event then naming its own\n"
        "  --upcasters DIR  upcast each event as `tide read --upcasters` does\n";

static const char usage_handle[] =
        "usage: tide handle SCRIPT STREAM COMMAND_JSON [--retries N] [--cpu-ms N] [--partition P]\n"
        "                   [--stats] [--projections DIR] [--database URL]\n"
        "\n"
        "Loads the decider SCRIPT (return tide.decider { initial, evolve, decide }) in a sandbox,\n"
        "reads STREAM, folds it with evolve, calls decide(command, state) and appends the events\n"
        "it returns, expecting the version it read; on a version conflict it reads the new\n"
        "events and retries (backoff with jitter), then decides once more holding the stream's\n"
        "lock, which cannot conflict. COMMAND_JSON is {\"type\":\"...\",\"data\":{...}}.\n"
        "Prints {\"events\":[...],\"next_expected_version\":N,\"global_positions\":[...],\n"
        "\"attempts\":N,\"locked\":B}. decide returns a list of events (nil or {} for none).\n"
        "  --retries N   optimistic retries after a version conflict before taking the\n"
        "                stream's lock (default 2)\n"
        "  --cpu-ms N    CPU time limit per call into the script (default 1000)\n"
        "  --partition P the Emmett partition (tenant) of STREAM (default emt:default)\n"
        "  --stats       add \"stats\":{\"events_read\":N,...} (and the snapshot used, saved)\n"
        "A decider with snapshot = { every = N } folds from its latest snapshot (kept under\n"
        "the decider's name, default the file name without .lua) and saves a new one after\n"
        "the append; a snapshot that cannot be read or saved is a warning on stderr.\n"
        "  --projections DIR  run the inline projections of DIR (inline = true) inside the\n"
        "                append's transaction; one that fails rolls the append back (exit 1)\n"
        "A decider with consistency = function(command) return query end folds the events of\n"
        "the partition that match the query ({types = {...}, data = {field = value}}) instead\n"
        "of STREAM, and appends to STREAM only if none matching came since it read (a\n"
        "conditional append); after a conflict it reads what came and decides again, with no\n"
        "lock to fall back on. Its output has \"position\" too. Its events must not be\n"
        "ones an inline projection of --projections takes (they would not run).\n"
        "Exits 4 when decide rejects the command with tide.reject(message [, details]): the\n"
        "message on stderr, and on stdout\n"
        "{\"error\":{\"kind\":\"rejected\",\"message\":...,\"details\":...}}. Any other error\n"
        "of the script is a bug: exit 1, the command, file:line and the script's stack on\n"
        "stderr.\n";

static const char usage_aggregate[] =
        "usage: tide aggregate SCRIPT STREAM [--cpu-ms N] [--partition P] [--stats]\n"
        "                      [--database URL]\n"
        "\n"
        "Folds STREAM with the decider SCRIPT's initial/evolve and prints\n"
        "{\"state\":...,\"version\":N}. With snapshot = { every = N } in the decider it folds\n"
        "from the stream's latest snapshot and saves a new one every N events (see tide handle).\n"
        "  --partition P the Emmett partition (tenant) of STREAM (default emt:default)\n"
        "  --stats       add \"stats\":{\"events_read\":N,\"snapshot_position\":P,...}\n";

static const char usage_replay[] =
        "usage: tide replay SCRIPT STREAM [--to N] [--json] [--cpu-ms N] [--partition P]\n"
        "                   [--database URL]\n"
        "\n"
        "Folds STREAM through SCRIPT event by event and prints each event with the state after\n"
        "it: the debugging loop for a script. SCRIPT is a decider (initial/evolve: the stream's\n"
        "state), a document projection (collection: the document of each event's id(event),\n"
        "default the stream, from initial(); events outside its `events` list, or whose id is\n"
        "false, are left out) or a snapshot projection (its snapshot decider's evolve). A keyed\n"
        "projection's documents hold only this stream's events. Nothing is written.\n"
        "On a terminal: a readable view, the changes since the state before marked + (added),\n"
        "~ (changed) and - (removed), in colour unless NO_COLOR is set. Otherwise, or with\n"
        "--json, one JSON object per event: {\"stream_position\",\"global_position\",\"type\",\n"
        "\"data\",\"metadata\" (when not empty),\"id\" (a projection's document),\"state\"}.\n"
        "  --to N        stop after stream position N\n"
        "  --json        JSON lines on a terminal too\n"
        "  --cpu-ms N    CPU time limit per call into the script (default 1000)\n"
        "  --partition P the Emmett partition (tenant) of STREAM (default emt:default)\n"
        "A script error stops the replay after the events before it (already printed), with\n"
        "the event's position and type, file:line and the script's stack on stderr: exit 1.\n"
        "An SQL projection or a reactor has no state to fold: exit 2.\n";

static const char usage_check[] =
        "usage: tide check (SCRIPT|DIR)... [--cpu-ms N]\n"
        "\n"
        "Loads each processor script in the sandbox, as `tide run` and `tide handle` would,\n"
        "and prints \"ok SCRIPT (kind)\" or the error with its file and line. A DIR stands\n"
        "for its *.lua files. Specs (*_spec.lua, see `tide test`) and modules (files that\n"
        "return no processor, which `tide run` skips too) are skipped with a line on stderr.\n"
        "Needs no database. Exits 1 when any script fails.\n";

static const char usage_status[] =
        "usage: tide status [--json] [--database URL]\n"
        "\n"
        "One row per processor known to the database: id, kind, state, checkpoint (XID:POS),\n"
        "lag in events and seconds, script generation, dead letters, owner and last error.\n"
        "States: running; failed (retrying a failing event, or its script does not load);\n"
        "halted (on_error = \"stop\" gave up: waits for a new script); waiting (another\n"
        "daemon holds it); stopped; expired (the daemon looking after it stopped doing so\n"
        "without saying: it died or lost the database). A processor of another partition\n"
        "than emt:default shows as ID@PARTITION. --json prints one JSON object per\n"
        "processor. When a transaction open for more than 5 s holds every consumer back, a\n"
        "warning on stderr names its backend.\n";

static const char usage_forget[] =
        "usage: tide forget PROCESSOR [--database URL]\n"
        "\n"
        "Removes what the database keeps about a processor (its id as `tide status` shows\n"
        "it, APP/NAME): its status row, its checkpoints (every version and partition) and\n"
        "its dead letters, so that a deleted script stops showing with a growing lag, or a\n"
        "script starts afresh. What the processor built (its tables, its documents) stays.\n"
        "Refused while a daemon runs the processor: stop it or remove its script first.\n";

static const char usage_doc[] =
        "usage: tide doc COLLECTION ID [--database URL]\n"
        "\n"
        "Prints the document ID of COLLECTION (a document projection's `collection`) as one\n"
        "compact JSON object, keys in this order: id, doc, last_stream_id,\n"
        "last_stream_position, last_global_position (the event the document reflects last)\n"
        "and updated_at. After a blue-green rebuild it is the live generation's. Exits 1\n"
        "with a message on stderr when there is no such document.\n";

static const char usage_docs[] =
        "usage: tide docs COLLECTION [--where KEY=VALUE]... [--limit N] [--after ID]\n"
        "                 [--database URL]\n"
        "\n"
        "Prints the documents of COLLECTION in id order, one JSON object per line as\n"
        "`tide doc` prints one.\n"
        "  --where KEY=VALUE  only documents whose KEY is VALUE (JSONB containment, doc @>\n"
        "                     {\"KEY\": VALUE}); repeat for more keys, all must hold. VALUE is\n"
        "                     JSON when it is JSON (42, true, null, \"42\", {\"sku\":\"tea\"}:\n"
        "                     an object or array matches what it contains), else a string\n"
        "                     (status=open is \"open\"; status=\"42\" the string \"42\")\n"
        "  --limit N          at most N documents, 1 to 1000 (default 100)\n"
        "  --after ID         only documents after ID: pass the last id printed for the\n"
        "                     next page (a page shorter than the limit is the last)\n";

static int parse_count(struct cli *cli, const char *flag, const char *text, int64_t *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(text, &end, 10);
	if (errno || end == text || *end || v < 0)
		return tide_cli_usage_error(cli, "%s wants a non-negative number, got '%s'", flag,
		                            text);
	*out = v;
	return 0;
}

/* --- migrate ----------------------------------------------------------------------- */

static void on_trigger(const struct tide_pg_reply *reply, void *arg)
{
	struct cli *cli = arg;
	if (reply->status)
		tide_cli_fail(cli, reply->status, reply->err);
	else
		printf("the NOTIFY trigger on emt_messages is %s\n",
		       cli->notify_trigger > 0 ? "on" : "off");
	tide_cli_done(cli);
}

static void on_migrated(int status, const char *err, size_t applied, void *arg)
{
	struct cli *cli = arg;
	if (status)
		tide_cli_fail(cli, status, err);
	else if (applied)
		printf("applied %zu migration%s; the schema is current\n", applied,
		       applied == 1 ? "" : "s");
	else
		printf("the schema is current; nothing to apply\n");
	static const struct tide_pg_stmt set_trigger = {
	        "tide_notify_trigger", "SELECT tide_notify_trigger($1::boolean)", 1};
	const char *on[1] = {cli->notify_trigger > 0 ? "true" : "false"};
	if (status == 0 && cli->notify_trigger &&
	    tide_pg_exec(cli->store->pg, &set_trigger, on, on_trigger, cli) == 0)
		return;
	if (status == 0 && cli->notify_trigger)
		tide_cli_fail(cli, TIDE_ECONN, tide_pg_error(cli->store->pg));
	tide_cli_done(cli);
}

static void run_migrate(struct cli *cli)
{
	int rc = tide_store_migrate(cli->store, on_migrated, cli);
	if (rc) {
		tide_cli_fail(cli, rc, "cannot start the migration");
		tide_cli_done(cli);
	}
}

/* --- append ------------------------------------------------------------------------ */

static void on_appended(int status, const char *err, const struct tide_append_result *r, void *arg)
{
	struct cli *cli = arg;
	if (status) {
		tide_cli_fail(cli, status, err);
		if (r && r->traceback) /* an inline projection's */
			tide_cli_print_traceback(r->traceback);
	} else {
		cJSON *o = tide_json_append_result(r);
		tide_cli_print_line(o);
	}
	tide_cli_done(cli);
}

static void run_append(struct cli *cli)
{
	int rc = cli->projections ? tide_store_set_projections(cli->store, cli->projections) : 0;
	if (rc == 0)
		rc = tide_store_append(cli->store, cli->stream, &cli->event, 1, cli->expected,
		                       on_appended, cli);
	if (rc) {
		tide_cli_fail(cli, rc, tide_store_error(cli->store));
		tide_cli_done(cli);
	}
}

/* --- read, read-all ---------------------------------------------------------------- */

/* --upcasters DIR: a VM with the upcasters among DIR's scripts (before anything is read);
 * false, reported, when there are none to be had. */
static bool open_upcasters(struct cli *cli)
{
	if (!cli->upcasters)
		return true;
	char err[2048];
	struct stat st;
	if (stat(cli->upcasters, &st) != 0 || !S_ISDIR(st.st_mode)) {
		cli->exit_code = tide_cli_usage_error(
		        cli, "--upcasters wants a directory, got '%s'", cli->upcasters);
		tide_cli_done(cli);
		return false;
	}
	struct tide_vm_opts opts = {0};
	const char *dirs[1] = {cli->upcasters};
	struct tide_upcasters u;
	int rc = tide_upcasters_find(dirs, 1, &opts, &u);
	if (rc == 0 && u.error) {
		snprintf(err, sizeof(err), "%s", u.error);
		rc = TIDE_ESCRIPT;
	}
	if (rc == 0)
		rc = tide_vm_open(&opts, &cli->upcast_vm, err, sizeof(err));
	if (rc == 0)
		rc = tide_upcasters_load(cli->upcast_vm, u.paths, err, sizeof(err));
	tide_upcasters_free(&u);
	if (rc) {
		tide_cli_fail(cli, rc, rc == TIDE_ENOMEM ? "out of memory" : err);
		tide_cli_done(cli);
	}
	return rc == 0;
}

/* One JSON line per message, upcast first with --upcasters. */
static void print_read(int status, const char *err, const struct tide_read_result *r, void *arg,
                       bool cursor)
{
	struct cli *cli = arg;
	struct tide_upcast_result up = {0};
	char why[2048];
	const struct tide_message *messages = r ? r->messages : NULL;
	if (status == 0 && cli->upcast_vm) {
		status = tide_upcast_messages(cli->upcast_vm, r->messages, r->count, &up, why,
		                              sizeof(why));
		err = why;
		messages = up.messages;
	}
	if (status)
		tide_cli_fail(cli, status, err);
	for (size_t i = 0; status == 0 && i < r->count; i++)
		tide_cli_print_line(tide_json_message(&messages[i], cursor));
	tide_upcast_result_free(&up);
	tide_vm_close(cli->upcast_vm);
	cli->upcast_vm = NULL;
	tide_cli_done(cli);
}

static void on_read(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	print_read(status, err, r, arg, false);
}

static void on_read_all(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	print_read(status, err, r, arg, true);
}

static void run_read(struct cli *cli)
{
	if (!open_upcasters(cli))
		return;
	int rc = tide_store_read_stream(cli->store, cli->stream, &cli->read, on_read, cli);
	if (rc) {
		tide_cli_fail(cli, rc, tide_store_error(cli->store));
		tide_cli_done(cli);
	}
}

static void run_read_all(struct cli *cli)
{
	if (!open_upcasters(cli))
		return;
	struct tide_log_filter f = {.all_partitions = tide_all_partitions(cli->partition)};
	int rc = tide_store_read_log(cli->store, &cli->after, cli->read.max, &f, on_read_all, cli);
	if (rc) {
		tide_cli_fail(cli, rc, tide_store_error(cli->store));
		tide_cli_done(cli);
	}
}

/* --- archive ---------------------------------------------------------------------- */

static void on_archived(int status, const char *err, const struct tide_archive_result *r, void *arg)
{
	struct cli *cli = arg;
	if (status) {
		tide_cli_fail(cli, status, err);
	} else {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "stream_id", cli->stream);
		cJSON_AddBoolToObject(o, "archived", 1);
		cJSON_AddNumberToObject(o, "version", (double)r->version);
		cJSON_AddNumberToObject(o, "events", (double)r->events);
		tide_cli_print_line(o);
	}
	tide_cli_done(cli);
}

static void run_archive(struct cli *cli)
{
	int rc = tide_store_archive(cli->store, cli->stream, on_archived, cli);
	if (rc) {
		tide_cli_fail(cli, rc, tide_store_error(cli->store));
		tide_cli_done(cli);
	}
}

/* --- argument parsing -------------------------------------------------------------- */

enum {
	OPT_DATABASE = 256,
	OPT_PRINT,
	OPT_EXPECTED,
	OPT_METADATA,
	OPT_ID,
	OPT_FROM,
	OPT_TO,
	OPT_MAX,
	OPT_BACKWARD,
	OPT_AFTER,
	OPT_RETRIES,
	OPT_CPU_MS,
	OPT_JSON,
	OPT_STATS,
	OPT_PARTITION,
	OPT_HELP,
	OPT_NOTIFY_TRIGGER,
	OPT_NO_NOTIFY_TRIGGER,
	OPT_WHERE,
	OPT_LIMIT,
	OPT_PROJECTIONS,
	OPT_UPCASTERS,
	OPT_SCHEMA_VERSION,
};

static const struct option options[] = {
        {"database", required_argument, NULL, OPT_DATABASE},
        {"print", no_argument, NULL, OPT_PRINT},
        {"expected", required_argument, NULL, OPT_EXPECTED},
        {"metadata", required_argument, NULL, OPT_METADATA},
        {"id", required_argument, NULL, OPT_ID},
        {"from", required_argument, NULL, OPT_FROM},
        {"to", required_argument, NULL, OPT_TO},
        {"max", required_argument, NULL, OPT_MAX},
        {"backward", no_argument, NULL, OPT_BACKWARD},
        {"after", required_argument, NULL, OPT_AFTER},
        {"retries", required_argument, NULL, OPT_RETRIES},
        {"cpu-ms", required_argument, NULL, OPT_CPU_MS},
        {"json", no_argument, NULL, OPT_JSON},
        {"stats", no_argument, NULL, OPT_STATS},
        {"partition", required_argument, NULL, OPT_PARTITION},
        {"help", no_argument, NULL, OPT_HELP},
        {"notify-trigger", no_argument, NULL, OPT_NOTIFY_TRIGGER},
        {"no-notify-trigger", no_argument, NULL, OPT_NO_NOTIFY_TRIGGER},
        {"where", required_argument, NULL, OPT_WHERE},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"projections", required_argument, NULL, OPT_PROJECTIONS},
        {"upcasters", required_argument, NULL, OPT_UPCASTERS},
        {"schema-version", required_argument, NULL, OPT_SCHEMA_VERSION},
        {NULL, 0, NULL, 0},
};

struct command {
	const char *name;
	const char *usage;
	void (*run)(struct cli *cli);
	int positionals;
	const char *allowed; /* the options this command takes, as " name name " */
};

static const struct command commands[] = {
        {"migrate", usage_migrate, run_migrate, 0, " print notify-trigger no-notify-trigger "},
        {"append", usage_append, run_append, 3,
         " expected metadata id partition projections schema-version "},
        {"read", usage_read, run_read, 1, " from to max backward partition upcasters "},
        {"read-all", usage_read_all, run_read_all, 0, " after max partition upcasters "},
        {"archive", usage_archive, run_archive, 1, " partition "},
        {"handle", usage_handle, NULL, 3, " retries cpu-ms partition stats projections "},
        {"aggregate", usage_aggregate, NULL, 2, " cpu-ms partition stats "},
        {"replay", usage_replay, NULL, 2, " to json cpu-ms partition "},
        {"check", usage_check, NULL, -1, " cpu-ms "},
        {"status", usage_status, tide_cli_run_status, 0, " json "},
        {"forget", usage_forget, tide_cli_run_forget, 1, " "},
        {"doc", usage_doc, tide_cli_run_doc, 2, " "},
        {"docs", usage_docs, tide_cli_run_docs, 1, " where limit after "},
};

static int parse_expected(struct cli *cli, const char *v)
{
	if (strcmp(v, "any") == 0)
		cli->expected = TIDE_EXPECT_ANY;
	else if (strcmp(v, "no_stream") == 0)
		cli->expected = TIDE_EXPECT_NO_STREAM;
	else if (strcmp(v, "stream_exists") == 0)
		cli->expected = TIDE_EXPECT_STREAM_EXISTS;
	else {
		char *end;
		errno = 0;
		long long n = strtoll(v, &end, 10);
		if (errno || end == v || *end || n < 0)
			return tide_cli_usage_error(
			        cli,
			        "--expected wants any, no_stream, stream_exists or a version "
			        "number, got '%s'",
			        v);
		cli->expected = n;
	}
	return 0;
}

static int check_partition(struct cli *cli, const char *p)
{
	char err[200];
	size_t len = strlen(p);
	if (len > TIDE_MAX_PARTITION_BYTES)
		return tide_cli_usage_error(
		        cli,
		        "--partition wants at most %d bytes (PostgreSQL's 63-byte "
		        "table names must hold emt_messages_<P>_archived), got %zu",
		        TIDE_MAX_PARTITION_BYTES, len);
	if (tide_check_name("partition name", p, len, TIDE_MAX_PARTITION_BYTES, err, sizeof(err)))
		return tide_cli_usage_error(cli, "--partition wants a name: %s", err);
	cli->partition = p;
	return 0;
}

static int check_name(struct cli *cli, const char *what, const char *name)
{
	char err[200];
	if (tide_check_name(what, name, strlen(name), TIDE_MAX_NAME_BYTES, err, sizeof(err)))
		return tide_cli_usage_error(cli, "%s", err);
	return 0;
}

/* The data of `append DATA_JSON` when it is "-": all of stdin, refused as soon as it passes
 * what is left of the event's size limit (never read whole into memory). */
static char *stdin_data;

static int read_stdin_data(struct cli *cli, size_t left, size_t *len)
{
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap + 1);
	while (buf) {
		if (n == cap) {
			if (cap > left)
				break;
			cap = cap * 2 > left + 1 ? left + 1 : cap * 2;
			char *nb = realloc(buf, cap + 1);
			if (!nb) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = nb;
		}
		size_t got = fread(buf + n, 1, cap - n, stdin);
		n += got;
		if (got == 0)
			break;
	}
	if (!buf) {
		fprintf(stderr, "tide %s: out of memory reading DATA_JSON from stdin\n", cli->cmd);
		return 1;
	}
	if (ferror(stdin)) {
		free(buf);
		return tide_cli_usage_error(cli, "cannot read DATA_JSON from stdin: %s",
		                            strerror(errno));
	}
	if (n > left) {
		free(buf);
		return tide_cli_usage_error(cli,
		                            "the event is too large: DATA_JSON from stdin and "
		                            "--metadata are more than %u bytes of JSON; at most %u "
		                            "(%u MiB) are allowed",
		                            TIDE_MAX_EVENT_BYTES, TIDE_MAX_EVENT_BYTES,
		                            TIDE_MAX_EVENT_BYTES >> 20);
	}
	buf[n] = '\0';
	stdin_data = buf;
	*len = n;
	return 0;
}

/* STREAM TYPE DATA_JSON and --metadata, checked before anything connects. */
static int check_event(struct cli *cli)
{
	char err[640];
	int rc = check_name(cli, "event type", cli->event.type);
	if (rc)
		return rc;
	size_t meta_len = cli->event.metadata ? strlen(cli->event.metadata) : 0;
	size_t data_len = 0;
	if (strcmp(cli->event.data, "-") == 0) {
		size_t left = meta_len < TIDE_MAX_EVENT_BYTES ? TIDE_MAX_EVENT_BYTES - meta_len : 0;
		if ((rc = read_stdin_data(cli, left, &data_len)))
			return rc;
		cli->event.data = stdin_data;
	} else {
		data_len = strlen(cli->event.data);
	}
	if (data_len + meta_len > TIDE_MAX_EVENT_BYTES)
		return tide_cli_usage_error(cli,
		                            "the event is too large: DATA_JSON and --metadata are "
		                            "%zu bytes of JSON; at most %u (%u MiB) are allowed",
		                            data_len + meta_len, TIDE_MAX_EVENT_BYTES,
		                            TIDE_MAX_EVENT_BYTES >> 20);
	if (tide_json_check_object_n(cli->event.data, data_len, "DATA_JSON", err, sizeof(err)) ||
	    (cli->event.metadata && tide_json_check_object_n(cli->event.metadata, meta_len,
	                                                     "--metadata", err, sizeof(err))))
		return tide_cli_usage_error(cli, "%s", err);
	if (cli->event.message_id && !tide_uuid_valid(cli->event.message_id))
		return tide_cli_usage_error(cli, "--id wants a UUID, got '%s'",
		                            cli->event.message_id);
	return 0;
}

static int parse_args(struct cli *cli, const struct command *cmd, int argc, char **argv,
                      bool *print)
{
	opterr = 0;
	optind = 1;
	int opt, rc = 0;
	while (!rc && (opt = getopt_long(argc, argv, ":", options, NULL)) != -1) {
		if (opt == '?')
			return tide_cli_usage_error(cli, "unknown option '%s'", argv[optind - 1]);
		if (opt == ':')
			return tide_cli_usage_error(cli, "option '%s' needs a value",
			                            argv[optind - 1]);
		if (opt == OPT_HELP) {
			fputs(cmd->usage, stdout);
			if (cmd->usage == usage_append)
				printf(limits_append, TIDE_MAX_NAME_BYTES, TIDE_MAX_PARTITION_BYTES,
				       TIDE_MAX_EVENT_BYTES >> 20, TIDE_MAX_JSON_DEPTH);
			return -1;
		}
		if (opt == OPT_DATABASE) {
			cli->url = optarg;
			continue;
		}
		char key[32];
		snprintf(key, sizeof(key), " %s ", options[opt - OPT_DATABASE].name);
		if (!strstr(cmd->allowed, key))
			return tide_cli_usage_error(cli, "unknown option '--%s'",
			                            options[opt - OPT_DATABASE].name);
		switch (opt) {
		case OPT_PRINT: *print = true; break;
		case OPT_EXPECTED: rc = parse_expected(cli, optarg); break;
		case OPT_METADATA: cli->event.metadata = optarg; break;
		case OPT_ID: cli->event.message_id = optarg; break;
		case OPT_FROM: rc = parse_count(cli, "--from", optarg, &cli->read.from); break;
		case OPT_TO: rc = parse_count(cli, "--to", optarg, &cli->read.to); break;
		case OPT_MAX: rc = parse_count(cli, "--max", optarg, &cli->read.max); break;
		case OPT_BACKWARD: cli->read.backward = 1; break;
		case OPT_NOTIFY_TRIGGER: cli->notify_trigger = 1; break;
		case OPT_NO_NOTIFY_TRIGGER: cli->notify_trigger = -1; break;
		case OPT_JSON: cli->json = true; break;
		case OPT_STATS: cli->stats = true; break;
		case OPT_PARTITION: rc = check_partition(cli, optarg); break;
		case OPT_PROJECTIONS: cli->projections = optarg; break;
		case OPT_UPCASTERS: cli->upcasters = optarg; break;
		case OPT_SCHEMA_VERSION: cli->event.schema_version = optarg; break;
		case OPT_RETRIES: rc = parse_count(cli, "--retries", optarg, &cli->retries); break;
		case OPT_CPU_MS: {
			int64_t ms = 0;
			rc = parse_count(cli, "--cpu-ms", optarg, &ms);
			cli->cpu_ms = (unsigned)ms;
			break;
		}
		case OPT_WHERE:
		case OPT_LIMIT:
			rc = tide_cli_docs_option(cli, options[opt - OPT_DATABASE].name, optarg);
			break;
		case OPT_AFTER:
			if (cmd->run == tide_cli_run_docs)
				rc = tide_cli_docs_option(cli, "after", optarg);
			else if (tide_cursor_parse(optarg, &cli->after))
				rc = tide_cli_usage_error(
				        cli,
				        "--after wants a cursor XID:POS as printed by read-all, "
				        "got '%s'",
				        optarg);
			break;
		}
	}
	if (rc)
		return rc;
	int npos = argc - optind;
	if (cmd->positionals < 0) { /* check: SCRIPT... */
		if (npos == 0)
			return tide_cli_usage_error(cli, "missing arguments: SCRIPT... or DIR...");
		cli->scripts = argv + optind;
		cli->nscripts = npos;
		return 0;
	}
	if (npos != cmd->positionals) {
		if (npos < cmd->positionals) {
			const char *synopsis = cmd->usage + strlen("usage: ");
			return tide_cli_usage_error(cli, "missing arguments: usage is %.*s",
			                            (int)strcspn(synopsis, "\n"), synopsis);
		}
		return tide_cli_usage_error(cli, "unexpected argument '%s'",
		                            argv[optind + cmd->positionals]);
	}
	char **pos = argv + optind;
	if (!cmd->run) { /* handle, aggregate: SCRIPT STREAM [COMMAND_JSON] */
		cli->script = pos[0];
		cli->stream = pos[1];
		cli->command_json = cmd->positionals == 3 ? pos[2] : NULL;
		char err[640];
		int rc = check_name(cli, "stream name", cli->stream);
		if (rc)
			return rc;
		if (cli->command_json &&
		    tide_json_check_object(cli->command_json, "COMMAND_JSON", err, sizeof(err)))
			return tide_cli_usage_error(cli, "%s", err);
		return 0;
	}
	if (cmd->run == tide_cli_run_doc || cmd->run == tide_cli_run_docs)
		return tide_cli_docs_args(cli, pos);
	if (cmd->positionals >= 1) {
		cli->stream = pos[0];
		bool processor = cmd->run == tide_cli_run_forget;
		int rc = check_name(cli, processor ? "processor id" : "stream name", cli->stream);
		if (rc)
			return rc;
	}
	if (cmd->positionals == 3) {
		cli->event.type = pos[1];
		cli->event.data = pos[2];
		return check_event(cli);
	}
	return 0;
}

static void on_open(struct tide_store *store, int status, const char *err, void *arg)
{
	(void)store;
	struct cli *cli = arg;
	if (status) {
		char msg[800];
		snprintf(msg, sizeof(msg), "cannot connect to the database: %s", err);
		tide_cli_fail(cli, status, msg);
		tide_cli_done(cli);
		return;
	}
	cli->run(cli);
}

static int run_command(struct cli *cli, const struct command *cmd, bool print)
{
	if (print) {
		char *script = tide_migrate_script();
		if (!script) {
			fprintf(stderr, "tide migrate: out of memory\n");
			return 1;
		}
		fputs(script, stdout);
		free(script);
		return 0;
	}

	if (cmd->positionals < 0)
		return tide_cli_run_check(cli);

	cli->url = tide_cli_database_url(cli->url);
	if (!cli->url) {
		return tide_cli_usage_error(cli, "no database given: pass --database URL or set "
		                                 "TIDE_DATABASE_URL");
	}

	if (!cmd->run)
		return strcmp(cli->cmd, "replay") == 0 ? tide_cli_run_replay(cli)
		                                       : tide_cli_run_script(cli);

	uv_loop_init(&cli->loop);
	if (tide_store_open(&cli->loop, cli->url, on_open, cli, &cli->store)) {
		fprintf(stderr, "tide %s: out of memory\n", cli->cmd);
		return 1;
	}
	/* read-all --partition '*' reads every partition; the store keeps the default. */
	bool every = cmd->run == run_read_all && tide_all_partitions(cli->partition);
	if (cli->partition && !every && tide_store_set_partition(cli->store, cli->partition)) {
		tide_cli_fail(cli, TIDE_EINVAL, tide_store_error(cli->store));
		tide_cli_done(cli);
	}
	uv_run(&cli->loop, UV_RUN_DEFAULT);
	uv_loop_close(&cli->loop);
	if (fflush(stdout) != 0 && cli->exit_code == 0) {
		fprintf(stderr, "tide %s: cannot write the output: %s\n", cli->cmd,
		        strerror(errno));
		return 1;
	}
	return cli->exit_code;
}

int tide_cli_main(int argc, char **argv)
{
	tide_lua_store_allow_projections(tide_store_set_projections); /* handle --projections */
	if (argc >= 2 && strcmp(argv[1], "run") == 0)
		return tide_daemon_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "dlq") == 0)
		return tide_cli_dlq_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "test") == 0)
		return tide_cli_test_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "init") == 0)
		return tide_cli_init_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "import") == 0)
		return tide_cli_import_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "rebuild") == 0)
		return tide_cli_rebuild_main(argc - 1, argv + 1);
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		fputs(usage_main, argc < 2 ? stderr : stdout);
		return argc < 2 ? EXIT_USAGE : 0;
	}
	const struct command *cmd = NULL;
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(argv[1], commands[i].name) == 0)
			cmd = &commands[i];
	if (!cmd) {
		char name[200];
		tide_pg_redact(NULL, argv[1], name, sizeof(name));
		fprintf(stderr, "tide: unknown command '%s' (see `tide --help`)\n", name);
		return EXIT_USAGE;
	}

	struct cli cli = {
	        .cmd = cmd->name, .expected = TIDE_EXPECT_ANY, .retries = 2, .run = cmd->run};
	bool print = false;
	int rc = parse_args(&cli, cmd, argc - 1, argv + 1, &print);
	if (rc == 0)
		rc = run_command(&cli, cmd, print);
	else if (rc < 0)
		rc = 0;   /* --help */
	free(stdin_data); /* and forget it: a process may run more than one command (fuzz_args) */
	stdin_data = NULL;
	return rc;
}
