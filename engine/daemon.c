/* daemon.c — `tide run`: reads the configuration, starts one processor per *.lua file of
 * the directories, LISTENs for new messages (re-listening after a lost connection),
 * watches the directories for changes (debounced), and drains on SIGTERM/SIGINT. */
#include "daemon.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_common.h"
#include "file.h"
#include "http.h"
#include "inline.h"
#include "log.h"
#include "lua_vm.h"
#include "metrics.h"
#include "processor.h"
#include "sharing.h"
#include "store.h"
#include "upcast.h"
#include "wal_wake.h"

#define MAX_DIRS    16
#define MAX_TOKENS  32
#define DEBOUNCE_MS 50

/* What the processors share; popts is handed to each. */
struct tide_daemon {
	uv_loop_t *loop;
	const char *url;
	char owner[128]; /* this daemon's lease owner id: host:pid:random */
	struct tide_processor_opts popts;
	struct tide_processor *procs;
	struct tide_sharing *sharing; /* this daemon's heartbeat and share (sharing.h) */
	bool stopping;
	int running; /* processors not yet stopped */
};

/* How many shards a file's script asked for, once it did (sql/0012): its processors are
 * then BASE#KofN. Files not listed run as one processor. */
struct sharded {
	struct sharded *next;
	int shards;
	char base[];
};

struct run {
	struct tide_daemon d;
	struct sharded *sharded;
	uv_loop_t loop;
	const char *dirs[MAX_DIRS];
	const char *apps[MAX_DIRS]; /* the app of each directory's processors */
	int ndirs;
	const char *takeover[MAX_DIRS]; /* --take-over: processor ids */
	int ntakeover;
	uv_fs_event_t watch[MAX_DIRS];
	int nwatch;
	uv_timer_t debounce, listen_retry, drain_deadline, log_probe;
	uv_signal_t sigterm, sigint, sighup;
	struct tide_store *listen;
	int listen_failures;          /* LISTEN failures in a row */
	char held_by[16];             /* pid of the backend last reported holding the log back */
	uint64_t held_told_at;        /* when that was said (uv_now) */
	struct tide_store *bootstrap; /* asks who scripts' SQL runs as */
	/* The log probe (appends by clients that send no NOTIFY): what it saw last. */
	bool probe_out, probed, seq_moved;
	uint64_t probe_seq, probe_xmin, pending_xmax;
	/* The WAL stream (wal_wake.c): each piece of WAL probes the log (probe_soon: at most
	 * one probe in flight, one owed, one every WAL_PROBE_SPACING_MS); while transactions
	 * that may hold new positions still run, the probe repeats after 1, 2, 4 … ms (up to
	 * the probe interval). */
	struct tide_wal_wake *wal;
	bool wal_live, wal_told, probe_owed;
	uv_timer_t reprobe;
	uint64_t probe_at; /* uv_now of the last probe sent */
	unsigned reprobe_ms, probe_ms;
	const char *wake_mode; /* "wal" (default) or "notify" (--wake) */
	bool force_reload;
	bool inline_told; /* the last word on inline projections named some */
	/* The inline projections among the scripts: not processors here, but run by reactors'
	 * ctx.append (inline.c). */
	struct tide_inline_dirs *inline_dirs;
	/* The upcasters among the scripts, which every processor loads with its script;
	 * bad_signature: a broken set already reported (the last good one stays). */
	struct tide_upcasters upcasters;
	bool upcasters_scanned;
	uint64_t upcasters_bad_signature;
	int exit_code;
	bool closing; /* maybe_exit closed the handles: the loop is winding down */
	char *config_strings[2 * MAX_DIRS + 8];
	int nconfig_strings;
	char **specs; /* the spec files found (and said to be skipped), malloc'd */
	size_t nspecs;
	/* The HTTP service (--http, http = {...}): its options, and the server once started. */
	struct tide_http_opts http_opts;
	struct tide_http_token tokens[MAX_TOKENS];
	struct tide_http *http;
};

static const char usage_run[] =
        "usage: tide run [--config FILE] [--database URL] [--app NAME] [--take-over ID]...\n"
        "                [--batch-size N] [--probe-ms N] [--poll-ms N] [--lease-ms N]\n"
        "                [--wake wal|notify]\n"
        "                [--cpu-ms N]\n"
        "                [--memory-mb N] [--sql-role ROLE] [--log-format text|json]\n"
        "                [--log-level L] [--http HOST:PORT [--http-insecure]] DIR...\n"
        "\n"
        "Runs every *.lua file of the directories that returns a tide.projection, a\n"
        "tide.reactor or a tide.publisher (a webhook: its events POSTed to a url) as a\n"
        "processor, until SIGTERM or SIGINT. Specs (*_spec.lua) are not\n"
        "loaded; files that return anything else (a decider, a module of helpers) are\n"
        "loaded and skipped; each is logged once (script.skipped). A file that fails to\n"
        "load is a failed processor.\n"
        "A processor's id is APP/NAME: NAME is the file name without .lua, APP the\n"
        "app's name (--app, else the directory's name). A processor whose id was\n"
        "claimed by another script (or kind) is refused, naming both scripts, unless\n"
        "--take-over ID lets this script take it over with its checkpoint.\n"
        "Every commit wakes it within a millisecond, whoever the writer, through a\n"
        "stream of the server's WAL (its role needs REPLICATION; README \"Wake-ups\").\n"
        "Without it, tide's writers (CLI, Lua, C, reactors) send a NOTIFY after their\n"
        "commits, and appends by other clients (Emmett, psql) are found by a cheap\n"
        "probe of the log while idle (--probe-ms); it also polls.\n"
        "A saved file is reloaded between batches if it loads cleanly (else the running\n"
        "generation keeps serving and the error is logged and shown by `tide status`);\n"
        "a deleted file stops its processor, a new one starts one, and so does a file\n"
        "that stops or starts returning a projection or reactor; SIGHUP reloads all.\n"
        "Files that return tide.upcaster { ... } are upcasters: every processor, inline\n"
        "projection, HTTP read and command reads events through them in their newest\n"
        "shape; when they change, every processor loads again (a broken set is logged,\n"
        "and the processors keep the one they have).\n"
        "  --config FILE      a Lua file returning { database, app, batch_size,\n"
        "                     probe_interval_ms, poll_interval_ms, wake, lease_ms, cpu_ms,\n"
        "                     memory_mb, sql_role,\n"
        "                     log_format, log_level, http = {...}, directories = {...} }\n"
        "  --app NAME         the app the processors belong to (default: the name of\n"
        "                     each directory); 1 to 64 bytes, no '/'\n"
        "  --take-over ID     let this daemon's script take processor ID (APP/NAME) over\n"
        "                     from the script that claimed it before (repeatable)\n"
        "  --batch-size N     events per batch (default 500)\n"
        "  --probe-ms N       how often the log is probed for appends by other clients\n"
        "                     (default 50)\n"
        "  --wake MODE        wal (default): stream the WAL, and fall back to the rest\n"
        "                     when the server refuses; notify: do not try\n"
        "  --poll-ms N        how often an idle processor, and an idle HTTP subscription,\n"
        "                     reads anyway, in case a wake-up was lost (default 1000)\n"
        "  --lease-ms N       processor lease, and the heartbeat of this daemon among\n"
        "                     those sharing the processors: another daemon takes its\n"
        "                     processors over once it lapses (default 10000)\n"
        "  --cpu-ms N         CPU limit per batch in the script (default 1000)\n"
        "  --memory-mb N      memory limit of each script's Lua state (default 64)\n"
        "  --sql-role ROLE    run scripts' SQL as this role (SET LOCAL ROLE per batch);\n"
        "                     without it, scripts' SQL runs as the connecting user\n"
        "  --log-format F     text (key=value, default) or json\n"
        "  --log-level L      debug, info (default), warn or error\n"
        "  --http HOST:PORT   serve the HTTP API (README \"HTTP API\") and the dashboard\n"
        "                     (http://HOST:PORT/) there, e.g. 127.0.0.1:8080; tokens\n"
        "                     come from the configuration file:\n"
        "                     http = { listen = \"HOST:PORT\", connections = N,\n"
        "                     tokens = { { name = \"ci\", token = \"SECRET\" (or sha256 =\n"
        "                     \"HEX\"), scopes = { \"read\", \"append\", \"command\",\n"
        "                     \"admin\" } } }, heartbeat_ms = N, stall_ms = N }; without\n"
        "                     tokens every request may do all. Live subscriptions send\n"
        "                     a heartbeat after heartbeat_ms idle (default 15000) and\n"
        "                     drop a client that reads nothing for stall_ms while\n"
        "                     events wait (default 30000)\n"
        "  --http-insecure    serve a non-loopback address without tokens\n"
        "A failing event is retried, isolated from its batch, and then handled by the\n"
        "script's on_error policy (dead_letter by default: see `tide dlq --help`).\n"
        "Several daemons on one database share the processors fairly: each takes\n"
        "ceil(processors / live daemons), hands its surplus over at a batch boundary\n"
        "when another joins, and takes a dead one's over (README \"Several daemons\").\n"
        "Flags override the configuration file, which overrides TIDE_DATABASE_URL and\n"
        "DATABASE_URL for the database.\n";

/* --- processors ----------------------------------------------------------------------- */

static struct tide_processor *find(struct run *r, const char *id)
{
	for (struct tide_processor *p = r->d.procs; p; p = tide_processor_next(p))
		if (strcmp(tide_processor_id(p), id) == 0)
			return p;
	return NULL;
}

/* Once stopping and every processor has stopped, closes what keeps the loop running (once:
 * a migration or check still in flight may end after that and ask again). */
static void maybe_exit(struct run *r)
{
	if (r->d.stopping && r->d.running == 0 && !r->closing) {
		r->closing = true;
		uv_close((uv_handle_t *)&r->debounce, NULL);
		uv_close((uv_handle_t *)&r->listen_retry, NULL);
		uv_close((uv_handle_t *)&r->drain_deadline, NULL);
		uv_close((uv_handle_t *)&r->sigterm, NULL);
		uv_close((uv_handle_t *)&r->sigint, NULL);
		uv_close((uv_handle_t *)&r->sighup, NULL);
		for (int i = 0; i < r->nwatch; i++)
			uv_close((uv_handle_t *)&r->watch[i], NULL);
		tide_store_close(r->listen);
		r->listen = NULL;
		tide_wal_wake_stop(r->wal);
		r->wal = NULL;
		tide_store_close(r->bootstrap);
		r->bootstrap = NULL;
		if (r->d.sharing)
			tide_sharing_stop(r->d.sharing, NULL, NULL); /* its row goes */
	}
}

static void on_debounce(uv_timer_t *t);

static void processor_stopped(struct tide_processor *p, void *arg)
{
	struct run *r = arg;
	struct tide_daemon *d = &r->d;
	/* Stopped with its file still there (it became a module, or came back while it
	 * stopped): look again, to skip it or start it afresh. */
	struct stat st;
	if (!d->stopping && stat(tide_processor_path(p), &st) == 0)
		uv_timer_start(&r->debounce, on_debounce, DEBOUNCE_MS, 0);
	if (d->procs == p) {
		d->procs = tide_processor_next(p);
	} else {
		for (struct tide_processor *q = d->procs; q; q = tide_processor_next(q))
			if (tide_processor_next(q) == p) {
				tide_processor_set_next(q, tide_processor_next(p));
				break;
			}
	}
	tide_processor_free(p);
	d->running--;
	maybe_exit(r);
}

/* The name of a processor's file: its name without ".lua"; false for other files, hidden
 * ones and specs (NAME_spec.lua: busted's tests, kept beside the scripts they test). */
static bool name_of(const char *file, char *name, size_t n)
{
	size_t len = strlen(file);
	if (len <= 4 || strcmp(file + len - 4, ".lua") != 0 || file[0] == '.')
		return false;
	if (tide_file_is_spec(file))
		return false;
	snprintf(name, n, "%.*s", (int)(len - 4), file);
	return true;
}

/* A spec is never loaded (its `require`s are busted's); the first time it is seen, say so. */
static void skip_spec(struct run *r, const char *path)
{
	for (size_t i = 0; i < r->nspecs; i++)
		if (strcmp(r->specs[i], path) == 0)
			return;
	tide_log("info", "script.skipped", "script", path, "reason",
	         "a spec (busted's tests: run them with `tide test`)", (char *)NULL);
	char **more = realloc(r->specs, (r->nspecs + 1) * sizeof(*more));
	char *copy = more ? strdup(path) : NULL;
	if (more)
		r->specs = more;
	if (copy)
		r->specs[r->nspecs++] = copy;
}

static bool taken_over(struct run *r, const char *id)
{
	for (int i = 0; i < r->ntakeover; i++)
		if (strcmp(r->takeover[i], id) == 0)
			return true;
	return false;
}

/* Says which scripts are inline projections (at start, and when that changes). */
static void tell_inline(struct run *r)
{
	struct tide_inline_set *set = tide_inline_dirs_set(r->inline_dirs);
	size_t n = tide_inline_set_count(set);
	char ids[2048] = "";
	for (size_t i = 0, o = 0; i < n && o < sizeof(ids); i++)
		o += (size_t)snprintf(ids + o, sizeof(ids) - o, "%s%s", i ? "," : "",
		                      tide_inline_set_id(set, i));
	if (n > 0 || r->inline_told)
		tide_log("info", "daemon.inline_projections", "processors", n ? ids : "none",
		         "effect",
		         "not run as processors here: they run inside appends (reactors' "
		         "ctx.append here, and every appender given their directory)",
		         (char *)NULL);
	r->inline_told = n > 0;
}

/* The HTTP API's reads upcast in a VM of their own, on the loop (under its CPU guard, as a
 * processor's batch); its commands load the files beside their deciders. */
static void give_http_upcasters(struct run *r)
{
	if (!r->http)
		return;
	const struct tide_upcasters *u = &r->upcasters;
	struct tide_vm *vm = NULL;
	char err[2048] = "";
	if (!u->error && u->count > 0) {
		struct tide_vm_opts vo = {.cpu_ms = r->d.popts.cpu_ms,
		                          .memory_limit = r->d.popts.memory};
		int rc = tide_vm_open(&vo, &vm, err, sizeof(err));
		if (rc == 0)
			rc = tide_upcasters_load(vm, u->paths, err, sizeof(err));
		if (rc != 0) {
			tide_vm_close(vm);
			vm = NULL;
		}
	}
	tide_http_use_upcasters(r->http, vm, u->paths,
	                        u->error ? u->error
	                        : err[0] ? err
	                                 : NULL,
	                        u->signature);
}

/* Looks for the upcasters among the scripts again (blocking, as the inline projections'
 * scan: it runs the scripts). True when they changed after the start: every processor then
 * loads again, with the new chain. A broken set is reported once; at the start it makes
 * every processor fail to load (with its error) until it is fixed, later the processors keep
 * the chain they have. */
static bool scan_upcasters(struct run *r)
{
	struct tide_upcasters u;
	struct tide_vm_opts vo = {.cpu_ms = r->d.popts.cpu_ms, .memory_limit = r->d.popts.memory};
	if (tide_upcasters_find((const char *const *)r->dirs, r->ndirs, &vo, &u) != 0) {
		tide_log("error", "upcasters.scan_failed", "error", "out of memory", (char *)NULL);
		return false;
	}
	bool first = !r->upcasters_scanned;
	if ((!first && u.signature == r->upcasters.signature) ||
	    (u.error && u.signature == r->upcasters_bad_signature)) {
		tide_upcasters_free(&u);
		return false;
	}
	r->upcasters_scanned = true;
	if (u.error) {
		tide_log("error", "upcasters.invalid", "error", u.error, "effect",
		         first ? "no processor runs until the upcasters are fixed"
		               : "the processors keep the upcasters they have",
		         (char *)NULL);
		r->upcasters_bad_signature = u.signature;
		if (!first) {
			tide_upcasters_free(&u);
			return false;
		}
	} else if (u.count > 0 || !first) {
		char files[2048];
		snprintf(files, sizeof(files), "%s", u.count ? u.paths : "none");
		for (char *c = files; *c; c++)
			if (*c == '\n')
				*c = ',';
		tide_log("info", "upcasters.loaded", "files", files, "effect",
		         first ? "every processor reads through them"
		               : "every processor loads again with them",
		         (char *)NULL);
	}
	tide_upcasters_free(&r->upcasters);
	r->upcasters = u;
	give_http_upcasters(r);
	return !first;
}

static int shards_of(const struct run *r, const char *base)
{
	for (const struct sharded *x = r->sharded; x; x = x->next)
		if (strcmp(x->base, base) == 0)
			return x->shards;
	return 1;
}

/* A script asks for another number of shards: its processors stop, and the rescan that
 * follows each stop starts the new ones (their layout waits until the old have stopped). */
static void on_reshard(struct tide_processor *p, int shards, void *arg)
{
	struct run *r = arg;
	const char *base = tide_processor_base(p);
	struct sharded *x = r->sharded;
	while (x && strcmp(x->base, base) != 0)
		x = x->next;
	if (!x) {
		x = calloc(1, sizeof(*x) + strlen(base) + 1);
		if (!x) {
			tide_log("error", "processor.reshard_failed", "processor", base, "error",
			         "out of memory", (char *)NULL);
			return;
		}
		strcpy(x->base, base);
		x->next = r->sharded;
		r->sharded = x;
	}
	x->shards = shards;
	for (struct tide_processor *q = r->d.procs; q; q = tide_processor_next(q))
		if (strcmp(tide_processor_base(q), base) == 0)
			tide_processor_stop(q);
}

/* Starts the processor (or the shards) of one script file, or reloads them. */
static void start_file(struct run *r, int dir, const char *name, const char *path, bool force)
{
	char base[512];
	snprintf(base, sizeof(base), "%s/%s", r->apps[dir], name);
	int shards = shards_of(r, base);
	for (int k = 0; k < shards; k++) {
		char id[560], shard_name[300];
		if (shards > 1) {
			snprintf(id, sizeof(id), "%s#%dof%d", base, k, shards);
			snprintf(shard_name, sizeof(shard_name), "%s#%dof%d", name, k, shards);
		} else {
			snprintf(id, sizeof(id), "%s", base);
			snprintf(shard_name, sizeof(shard_name), "%s", name);
		}
		struct tide_processor *p = find(r, id);
		if (p && strcmp(tide_processor_path(p), path) != 0) {
			tide_log("warn", "processor.duplicate", "processor", id, "ignored", path,
			         "running", tide_processor_path(p), (char *)NULL);
			continue;
		}
		if (p) {
			if (!tide_processor_stopping(p))
				tide_processor_reload(p, force);
			continue;
		}
		struct tide_processor_identity who = {
		        .id = id,
		        .app = r->apps[dir],
		        .name = shard_name,
		        .path = path,
		        .takeover = taken_over(r, id),
		        .base = base,
		        .shard = k,
		        .shards = shards,
		};
		p = tide_processor_new(&r->d.popts, &who);
		if (!p)
			continue;
		tide_processor_set_next(p, r->d.procs);
		r->d.procs = p;
		r->d.running++;
	}
}

/* Starts processors for new files, reloads changed ones, stops those whose file went. */
static void rescan(struct run *r, bool force)
{
	if (scan_upcasters(r))
		force = true;
	tide_inline_dirs_use_upcasters(r->inline_dirs, r->upcasters.paths, r->upcasters.error,
	                               r->upcasters.signature);
	if (r->inline_dirs && tide_inline_dirs_scan(r->inline_dirs))
		tell_inline(r);
	struct tide_inline_set *inl = tide_inline_dirs_set(r->inline_dirs);
	tide_http_use_inline(r->http, inl);
	for (struct tide_processor *p = r->d.procs; p; p = tide_processor_next(p)) {
		struct stat st;
		if (tide_processor_stopping(p))
			continue;
		if (stat(tide_processor_path(p), &st) != 0) {
			tide_log("info", "processor.removed", "processor", tide_processor_id(p),
			         "script", tide_processor_path(p), (char *)NULL);
			tide_processor_stop(p);
		} else if (tide_inline_set_has(inl, tide_processor_id(p))) {
			tide_log("info", "processor.inline", "processor", tide_processor_id(p),
			         "script", tide_processor_path(p), (char *)NULL);
			tide_processor_stop(p);
		}
	}
	for (int i = 0; i < r->ndirs; i++) {
		DIR *dir = opendir(r->dirs[i]);
		if (!dir) {
			tide_log("error", "directory.unreadable", "directory", r->dirs[i], "error",
			         strerror(errno), (char *)NULL);
			continue;
		}
		struct dirent *e;
		while ((e = readdir(dir))) {
			char name[256], id[512], path[4096];
			snprintf(path, sizeof(path), "%s/%s", r->dirs[i], e->d_name);
			if (e->d_name[0] != '.' && tide_file_is_spec(e->d_name))
				skip_spec(r, path);
			if (!name_of(e->d_name, name, sizeof(name)))
				continue;
			snprintf(id, sizeof(id), "%s/%s", r->apps[i], name);
			if (tide_inline_set_has(inl, id))
				continue;
			start_file(r, i, name, path, force);
		}
		closedir(dir);
	}
}

static void on_debounce(uv_timer_t *t)
{
	struct run *r = t->data;
	if (r->d.stopping)
		return;
	rescan(r, r->force_reload);
	r->force_reload = false;
}

static void on_fs_event(uv_fs_event_t *h, const char *name, int events, int status)
{
	(void)name;
	(void)events;
	(void)status;
	struct run *r = h->data;
	/* Editors write a temporary file and rename it: wait for the dust to settle. */
	uv_timer_start(&r->debounce, on_debounce, DEBOUNCE_MS, 0);
}

/* --- wake-ups ------------------------------------------------------------------------- */

static void wake_all(struct run *r)
{
	for (struct tide_processor *p = r->d.procs; p; p = tide_processor_next(p))
		tide_processor_wake(p);
	tide_http_wake(r->http); /* live subscriptions */
}

static void on_listen_retry(uv_timer_t *t);

static void on_notify(const char *channel, const char *payload, void *arg)
{
	struct run *r = arg;
	if (!channel) {
		/* Lost: listen again from a timer (not from inside the connection's callback);
		 * the new LISTEN is followed by a catch-up read. */
		tide_log("warn", "listen.lost", "error", tide_pg_error(r->listen->pg),
		         (char *)NULL);
		tide_metrics_reconnect(TIDE_METRICS_LISTEN);
		uv_timer_start(&r->listen_retry, on_listen_retry, 0, 0);
		return;
	}
	if (strcmp(channel, "tide_share") == 0) {
		tide_sharing_kick(r->d.sharing); /* a daemon handed a processor back */
		return;
	}
	if (strcmp(channel, "tide_dlq") == 0) {
		struct tide_processor *p = find(r, payload ? payload : "");
		if (p)
			tide_processor_check_retries(p);
		return;
	}
	wake_all(r);
}

static void listen_start(struct run *r);

static void on_listen_retry(uv_timer_t *t)
{
	struct run *r = t->data;
	if (r->listen) {
		tide_store_close(r->listen);
		r->listen = NULL;
	}
	listen_start(r);
}

/* LISTEN failed (or its connection did): processors poll meanwhile; try again with a
 * delay doubling from 1 s to 30 s, saying so the first times and then every 30 s. */
static void listen_failed(struct run *r, const char *err)
{
	unsigned delay = 1000u << (r->listen_failures < 5 ? r->listen_failures : 5);
	if (delay > 30000)
		delay = 30000;
	if (r->listen_failures < 3 || delay >= 30000)
		tide_log("warn", "listen.failed", "error", err, "fallback", "polling",
		         (char *)NULL);
	r->listen_failures++;
	tide_store_close(r->listen);
	r->listen = NULL;
	if (!r->d.stopping)
		uv_timer_start(&r->listen_retry, on_listen_retry, delay, 0);
}

static void on_listening(const struct tide_pg_reply *reply, void *arg)
{
	struct run *r = arg;
	if (reply->status == TIDE_ECLOSED)
		return;
	if (reply->status) {
		listen_failed(r, reply->err);
		return;
	}
	r->listen_failures = 0;
	tide_log("info", "listen.ready", "channel", "tide_messages", (char *)NULL);
	/* Anything appended while we were not listening: catch up now. */
	wake_all(r);
}

static void on_listen_open(struct tide_store *s, int status, const char *err, void *arg)
{
	struct run *r = arg;
	if (status) {
		listen_failed(r, err);
		return;
	}
	static const struct tide_pg_stmt listen_messages = {"tide_listen", "LISTEN tide_messages",
	                                                    0};
	static const struct tide_pg_stmt listen_dlq = {"tide_listen_dlq", "LISTEN tide_dlq", 0};
	static const struct tide_pg_stmt listen_share = {"tide_listen_share", "LISTEN tide_share",
	                                                 0};
	tide_pg_on_notify(s->pg, on_notify, r);
	if (tide_pg_exec(s->pg, &listen_dlq, NULL, NULL, NULL) != 0 ||
	    tide_pg_exec(s->pg, &listen_share, NULL, NULL, NULL) != 0 ||
	    tide_pg_exec(s->pg, &listen_messages, NULL, on_listening, r) != 0)
		listen_failed(r, tide_pg_error(s->pg));
}

static void listen_start(struct run *r)
{
	if (r->d.stopping)
		return;
	if (tide_store_open(r->d.loop, r->d.url, on_listen_open, r, &r->listen) != 0)
		uv_timer_start(&r->listen_retry, on_listen_retry, 1000, 0);
}

/* Says which backend holds every processor back (DESIGN.md "Reading"): when it first
 * shows, once a minute while it lasts, and when it is gone. */
#define HELD_BACK_REPEAT_MS 60000
static void report_held_back(struct run *r, PGresult *res)
{
	if (PQntuples(res) != 1) {
		if (r->held_by[0])
			tide_log("info", "log.released", "backend_pid", r->held_by, (char *)NULL);
		r->held_by[0] = '\0';
		return;
	}
	const char *pid = PQgetvalue(res, 0, 0);
	uint64_t now = uv_now(r->d.loop);
	if (strcmp(pid, r->held_by) == 0 && now - r->held_told_at < HELD_BACK_REPEAT_MS)
		return;
	snprintf(r->held_by, sizeof(r->held_by), "%s", pid);
	r->held_told_at = now;
	tide_log("warn", "log.held_back", "backend_pid", pid, "user", PQgetvalue(res, 0, 1),
	         "application", PQgetvalue(res, 0, 2), "state", PQgetvalue(res, 0, 3),
	         "open_seconds", PQgetvalue(res, 0, 4), "effect",
	         "no event written after its transaction began reaches any processor until it ends",
	         (char *)NULL);
}

/* The listening connection may die quietly: probe it with the poll interval. The probe
 * also asks who holds the log back. */
static void on_listen_probe_reply(const struct tide_pg_reply *reply, void *arg)
{
	struct run *r = arg;
	if (!reply->status) {
		report_held_back(r, reply->res);
		return;
	}
	if (reply->status != TIDE_ECLOSED && r->listen) {
		tide_log("warn", "listen.lost", "error", reply->err, (char *)NULL);
		tide_metrics_reconnect(TIDE_METRICS_LISTEN);
		tide_store_close(r->listen);
		r->listen = NULL;
		listen_start(r);
	}
}

static void on_listen_probe(uv_timer_t *t)
{
	struct run *r = t->data;
	if (r->d.stopping)
		return;
	if (!r->listen)
		return;
	if (!tide_pg_ready(r->listen->pg) || tide_pg_exec(r->listen->pg, &tide_stmt_held_back, NULL,
	                                                  on_listen_probe_reply, r) != 0) {
		tide_metrics_reconnect(TIDE_METRICS_LISTEN);
		tide_store_close(r->listen);
		r->listen = NULL;
		listen_start(r);
	}
}

/* Appends by clients that send no NOTIFY (Emmett, psql) are found by probing the log's
 * sequence and the snapshot's bounds. An event can be delivered once its transaction is
 * older than every running one (DESIGN.md "Reading"), so new events become deliverable
 * only when the snapshot's xmin moves. A moved sequence wakes the processors at once (the
 * writer has usually committed by then); after that, every move of xmin wakes them again
 * until xmin passes the xmax seen when the sequence last moved: by then every transaction
 * that could have taken those positions has ended. The probe after a move extends that
 * bound, for a writer that took its position before it had a transaction id. */
static const struct tide_pg_stmt stmt_log_probe = {
        "tide_log_probe",
        "SELECT last_value, pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text"
        " FROM emt_global_message_position, pg_current_snapshot() s",
        0,
};

static void probe_log(struct run *r);
static void probe_soon(struct run *r);
static void probe_log_timer(uv_timer_t *t);

static void on_log_probe_reply(const struct tide_pg_reply *reply, void *arg)
{
	struct run *r = arg;
	r->probe_out = false;
	if (reply->status || PQntuples(reply->res) != 1)
		return; /* the listen probe deals with a lost connection */
	uint64_t seq = strtoull(PQgetvalue(reply->res, 0, 0), NULL, 10);
	uint64_t xmin = strtoull(PQgetvalue(reply->res, 0, 1), NULL, 10);
	uint64_t xmax = strtoull(PQgetvalue(reply->res, 0, 2), NULL, 10);
	bool moved = r->probed && seq != r->probe_seq;
	if (moved || r->seq_moved)
		r->pending_xmax = xmax;
	/* The first probe has nothing to compare with: it wakes them once to be sure. */
	if (!r->probed || moved || (xmin != r->probe_xmin && r->probe_xmin < r->pending_xmax))
		wake_all(r);
	r->probed = true;
	r->seq_moved = moved;
	r->probe_seq = seq;
	r->probe_xmin = xmin;
	if (!r->wal_live)
		return;
	/* The WAL can come before the commit shows in snapshots: look again soon while
	 * transactions that may hold the new positions run; soon too if more WAL came. */
	if (r->probe_owed) {
		r->probe_owed = false;
		probe_soon(r);
	} else if (xmin < r->pending_xmax) {
		r->reprobe_ms = r->reprobe_ms ? r->reprobe_ms * 2 : 1;
		if (r->reprobe_ms > r->probe_ms)
			r->reprobe_ms = r->probe_ms;
		uv_timer_start(&r->reprobe, probe_log_timer, r->reprobe_ms, 0);
	} else {
		r->reprobe_ms = 0;
	}
}

static void probe_log(struct run *r)
{
	if (r->d.stopping || !r->listen || !tide_pg_ready(r->listen->pg))
		return;
	if (r->probe_out) {
		r->probe_owed = true;
		return;
	}
	r->probe_at = uv_now(r->d.loop);
	r->probe_out =
	        tide_pg_exec(r->listen->pg, &stmt_log_probe, NULL, on_log_probe_reply, r) == 0;
}

/* WAL came: probe at once, unless the last probe was under WAL_PROBE_SPACING_MS ago (then
 * when that has passed). Under a steady stream of commits that is one small query every
 * 2 ms: sent back to back, they and the stream cost 8 writers 15-22 % of their rate. */
#define WAL_PROBE_SPACING_MS 2
static void probe_soon(struct run *r)
{
	if (r->probe_out) {
		r->probe_owed = true;
		return;
	}
	uint64_t since = uv_now(r->d.loop) - r->probe_at;
	uint64_t wait = since >= WAL_PROBE_SPACING_MS ? 0 : WAL_PROBE_SPACING_MS - since;
	if (wait == 0) {
		uv_timer_stop(&r->reprobe);
		probe_log(r);
	} else if (!uv_is_active((uv_handle_t *)&r->reprobe) ||
	           uv_timer_get_due_in(&r->reprobe) > wait) {
		uv_timer_start(&r->reprobe, probe_log_timer, wait, 0);
	}
}

static void probe_log_timer(uv_timer_t *t)
{
	struct run *r = t->data;
	if (!r->probe_out)
		probe_log(r);
}

/* --- the WAL stream ----------------------------------------------------------------------- */

static void on_wal_flushed(void *arg)
{
	probe_soon(arg);
}

static void on_wal_state(void *arg, bool streaming, const char *why)
{
	struct run *r = arg;
	bool was = r->wal_live;
	r->wal_live = streaming;
	tide_metrics_wal_stream(streaming);
	tide_sharing_set_wakes_by_notify(r->d.sharing, !streaming);
	if (streaming) {
		tide_log("info", "wake.wal", "effect",
		         "every commit wakes the processors; writers need send no NOTIFY for it",
		         (char *)NULL);
		r->wal_told = false;
		probe_log(r); /* whatever came before the stream */
	} else if (was) {
		tide_metrics_reconnect(TIDE_METRICS_WAL);
		tide_log("warn", "wake.wal_lost", "error", why, "effect",
		         "tide's writers send a NOTIFY until it is back; trying again",
		         (char *)NULL);
		r->wal_told = true;
	} else if (!r->wal_told) {
		tide_log("warn", "wake.no_wal", "error", why, "fallback",
		         "tide's writers send a NOTIFY after their commits, others' appends are "
		         "found by the probe",
		         "fix",
		         "grant the role REPLICATION (and let pg_hba.conf admit its replication "
		         "connections), or set wake = \"notify\" to silence this",
		         (char *)NULL);
		r->wal_told = true;
	}
}

static void wal_start(struct run *r, const char *mode)
{
	if (mode && strcmp(mode, "notify") == 0) {
		tide_log("info", "wake.notify", "effect",
		         "tide's writers send a NOTIFY after their commits (wake = notify)",
		         (char *)NULL);
		return;
	}
	struct tide_wal_wake_opts o = {.loop = r->d.loop,
	                               .url = r->d.url,
	                               .flushed = on_wal_flushed,
	                               .state = on_wal_state,
	                               .arg = r};
	r->wal = tide_wal_wake_start(&o);
}

/* --- signals -------------------------------------------------------------------------- */

static void on_drain_deadline(uv_timer_t *t)
{
	(void)t;
	tide_log("error", "daemon.drain_timeout", "reason", "processors did not stop in time",
	         (char *)NULL);
	exit(1);
}

static void stop_all(struct run *r, const char *why)
{
	if (r->d.stopping)
		return;
	r->d.stopping = true;
	tide_log("info", "daemon.stopping", "signal", why, (char *)NULL);
	tide_http_stop(r->http);
	r->http = NULL;
	uv_timer_stop(&r->debounce);
	uv_timer_stop(&r->listen_retry);
	uv_timer_start(&r->drain_deadline, on_drain_deadline, 15000, 0);
	uv_unref((uv_handle_t *)&r->drain_deadline);
	for (struct tide_processor *p = r->d.procs; p; p = tide_processor_next(p))
		tide_processor_stop(p);
	maybe_exit(r);
}

static void count_handle(uv_handle_t *h, void *arg)
{
	(void)h;
	(*(int *)arg)++;
}

static void on_signal(uv_signal_t *h, int signum)
{
	struct run *r = h->data;
	if (signum == SIGHUP) {
		/* The loop's handle count: scripts/soak watches it for leaks. */
		int handles = 0;
		uv_walk(r->d.loop, count_handle, &handles);
		char n[16];
		snprintf(n, sizeof(n), "%d", handles);
		tide_log("info", "daemon.reload", "signal", "SIGHUP", "handles", n, (char *)NULL);
		r->force_reload = true;
		uv_timer_start(&r->debounce, on_debounce, 0, 0);
		return;
	}
	stop_all(r, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* --- configuration -------------------------------------------------------------------- */

static char *keep(struct run *r, const char *s)
{
	char *c = strdup(s);
	if (c && r->nconfig_strings < (int)(sizeof(r->config_strings) / sizeof(char *)))
		r->config_strings[r->nconfig_strings++] = c;
	return c;
}

/* What flags and the configuration file set; 0 / NULL: not set. */
struct settings {
	const char *url, *log_format, *log_level, *sql_role, *app, *http, *wake;
	long batch, probe, poll, lease, cpu, memory_mb, http_connections;
	bool http_insecure;
};

struct config_read {
	struct run *r;
	const char *path;
	int ref;
	struct settings *s;
	char err[512];
};

static long config_number(lua_State *L, struct config_read *c, const char *key)
{
	lua_getfield(L, -1, key);
	long v = 0;
	if (!lua_isnil(L, -1)) {
		if (!lua_isnumber(L, -1) || lua_tonumber(L, -1) <= 0 || lua_tonumber(L, -1) > 1e9) {
			if (!c->err[0])
				snprintf(c->err, sizeof(c->err), "%s: %s must be a positive number",
				         c->path, key);
		} else {
			v = (long)lua_tonumber(L, -1);
		}
	}
	lua_pop(L, 1);
	return v;
}

static const char *config_string(lua_State *L, struct config_read *c, const char *key)
{
	lua_getfield(L, -1, key);
	const char *v = NULL;
	if (lua_type(L, -1) == LUA_TSTRING)
		v = keep(c->r, lua_tostring(L, -1));
	else if (!lua_isnil(L, -1) && !c->err[0])
		snprintf(c->err, sizeof(c->err), "%s: %s must be a string", c->path, key);
	lua_pop(L, 1);
	return v;
}

/* A token: { name = ..., token = SECRET or sha256 = HEX, scopes = { "read", ... } }. */
static void read_token(lua_State *L, struct config_read *c, int i)
{
	struct run *r = c->r;
	struct tide_http_token *t = &r->tokens[r->http_opts.ntokens];
	memset(t, 0, sizeof(*t));
	lua_getfield(L, -1, "name");
	snprintf(t->name, sizeof(t->name), "%s",
	         lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "");
	if (!t->name[0])
		snprintf(t->name, sizeof(t->name), "token %d", i);
	lua_pop(L, 1);
	lua_getfield(L, -1, "token");
	lua_getfield(L, -2, "sha256");
	size_t len = 0;
	const char *secret = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &len) : NULL;
	const char *hash = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
	bool ok = (secret != NULL) != (hash != NULL);
	if (secret && len < 16 && !c->err[0])
		snprintf(c->err, sizeof(c->err),
		         "%s: http.tokens[%d] (%s): a token must be at least 16 bytes long (e.g. "
		         "`openssl rand -hex 32`)",
		         c->path, i, t->name);
	if (secret)
		tide_http_sha256(secret, len, t->sha256);
	if (hash && ok)
		ok = strlen(hash) == 2 * TIDE_HTTP_SHA256_BYTES &&
		     strspn(hash, "0123456789abcdefABCDEF") == 2 * TIDE_HTTP_SHA256_BYTES;
	for (int b = 0; hash && ok && b < TIDE_HTTP_SHA256_BYTES; b++)
		sscanf(hash + 2 * b, "%2hhx", &t->sha256[b]);
	if (!ok && !c->err[0])
		snprintf(c->err, sizeof(c->err),
		         "%s: http.tokens[%d] (%s) wants either token = SECRET or sha256 = the 64 "
		         "hex digits of the secret's SHA-256 (`printf %%s SECRET | sha256sum`)",
		         c->path, i, t->name);
	lua_pop(L, 2);
	lua_getfield(L, -1, "scopes");
	int nscopes = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
	for (int j = 1; j <= nscopes; j++) {
		lua_rawgeti(L, -1, j);
		if (!lua_isstring(L, -1) ||
		    tide_http_scopes(lua_tostring(L, -1), &t->scopes) != 0) {
			if (!c->err[0])
				snprintf(
				        c->err, sizeof(c->err),
				        "%s: http.tokens[%d] (%s): unknown scope; scopes are read, "
				        "append, command and admin",
				        c->path, i, t->name);
		}
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
	if (!t->scopes && !c->err[0])
		snprintf(c->err, sizeof(c->err),
		         "%s: http.tokens[%d] (%s) wants scopes = { ... } (read, append, command, "
		         "admin)",
		         c->path, i, t->name);
	r->http_opts.ntokens++;
}

/* http = { listen = "HOST:PORT", insecure = false, connections = N, tokens = { ... },
 *          heartbeat_ms = N, stall_ms = N } */
static void read_http_config(lua_State *L, struct config_read *c)
{
	struct settings *s = c->s;
	s->http = config_string(L, c, "listen");
	s->http_connections = config_number(L, c, "connections");
	c->r->http_opts.heartbeat_ms = (unsigned)config_number(L, c, "heartbeat_ms");
	c->r->http_opts.stall_ms = (unsigned)config_number(L, c, "stall_ms");
	lua_getfield(L, -1, "insecure");
	s->http_insecure = lua_toboolean(L, -1);
	lua_pop(L, 1);
	lua_getfield(L, -1, "tokens");
	int ntokens = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
	for (int i = 1; i <= ntokens; i++) {
		lua_rawgeti(L, -1, i);
		if (!lua_istable(L, -1) || c->r->http_opts.ntokens == MAX_TOKENS) {
			if (!c->err[0])
				snprintf(c->err, sizeof(c->err),
				         "%s: http.tokens[%d] must be a table (at most %d tokens)",
				         c->path, i, MAX_TOKENS);
		} else {
			read_token(L, c, i);
		}
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
}

/* Under tide_vm_protected. */
static int read_config(lua_State *L)
{
	struct config_read *c = lua_touserdata(L, 1);
	struct settings *s = c->s;
	struct run *r = c->r;
	lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
	s->batch = config_number(L, c, "batch_size");
	s->probe = config_number(L, c, "probe_interval_ms");
	s->poll = config_number(L, c, "poll_interval_ms");
	s->lease = config_number(L, c, "lease_ms");
	s->cpu = config_number(L, c, "cpu_ms");
	s->memory_mb = config_number(L, c, "memory_mb");
	s->url = config_string(L, c, "database");
	s->log_format = config_string(L, c, "log_format");
	s->log_level = config_string(L, c, "log_level");
	s->sql_role = config_string(L, c, "sql_role");
	s->app = config_string(L, c, "app");
	s->wake = config_string(L, c, "wake");
	lua_getfield(L, -1, "http");
	if (lua_istable(L, -1))
		read_http_config(L, c);
	else if (!lua_isnil(L, -1) && !c->err[0])
		snprintf(c->err, sizeof(c->err),
		         "%s: http must be a table { listen = ..., tokens = ... }", c->path);
	lua_pop(L, 1);
	lua_getfield(L, -1, "directories");
	if (lua_istable(L, -1)) {
		for (int i = 1; r->ndirs < MAX_DIRS; i++) {
			lua_rawgeti(L, -1, i);
			if (!lua_isstring(L, -1)) {
				lua_pop(L, 1);
				break;
			}
			r->dirs[r->ndirs++] = keep(r, lua_tostring(L, -1));
			lua_pop(L, 1);
		}
	}
	return 0;
}

static int load_config(struct run *r, const char *path, struct settings *s)
{
	size_t len;
	char err[1024];
	char *src = tide_file_read(path, &len, err, sizeof(err));
	if (!src) {
		fprintf(stderr, "tide run: %s (the configuration file)\n", err);
		return -1;
	}
	struct tide_vm *vm = NULL;
	struct config_read c = {.r = r, .path = path, .s = s};
	int rc = tide_vm_open(NULL, &vm, err, sizeof(err));
	if (rc == 0)
		rc = tide_vm_load_table(vm, path, src, len, &c.ref, err, sizeof(err));
	free(src);
	struct tide_vm_error e;
	if (rc == 0 && tide_vm_protected(vm, read_config, &c, &e) != 0) {
		snprintf(err, sizeof(err), "%.400s: %.600s", path, e.message);
		rc = -1;
	}
	if (rc == 0 && c.err[0]) {
		snprintf(err, sizeof(err), "%s", c.err);
		rc = -1;
	}
	tide_vm_close(vm);
	if (rc)
		fprintf(stderr, "tide run: %s\n", err);
	return rc;
}

/* --- apps ------------------------------------------------------------------------------ */

#define MAX_APP_BYTES 64

static bool valid_app(const char *app)
{
	size_t n = strlen(app);
	if (n == 0 || n > MAX_APP_BYTES)
		return false;
	for (const unsigned char *c = (const unsigned char *)app; *c; c++)
		if (*c < 0x20 || *c == 0x7f || *c == '/')
			return false;
	return true;
}

/* A directory's app: the name of the directory itself (of its real path: "." too). */
static const char *app_of(struct run *r, const char *dir)
{
	char real[PATH_MAX];
	if (!realpath(dir, real))
		return NULL;
	const char *slash = strrchr(real, '/');
	return keep(r, slash ? slash + 1 : real);
}

/* --- main ----------------------------------------------------------------------------- */

static void on_migrated(int status, const char *err, size_t applied, void *arg)
{
	struct run *r = arg;
	(void)applied;
	if (status) {
		tide_log("error", "daemon.migrate_failed", "error", err, (char *)NULL);
		r->exit_code = 1;
		r->d.stopping = true;
		maybe_exit(r);
		return;
	}
	if (r->d.stopping) {
		maybe_exit(r);
		return;
	}
	tide_log("info", "daemon.started", "owner", r->d.owner, (char *)NULL);
	struct tide_sharing_opts so = {.loop = r->d.loop,
	                               .url = r->d.url,
	                               .owner = r->d.owner,
	                               .lease_ms = r->d.popts.lease_ms};
	r->d.sharing = tide_sharing_new(&so);
	r->d.popts.sharing = r->d.sharing;
	if (r->http_opts.listen) {
		char err[512];
		if (tide_http_start(&r->http_opts, &r->http, err, sizeof(err)) != 0) {
			tide_log("error", "http.failed", "error", err, (char *)NULL);
			r->exit_code = 2;
			stop_all(r, "http");
			return;
		}
		char tokens[16], address[80];
		snprintf(tokens, sizeof(tokens), "%zu", r->http_opts.ntokens);
		tide_http_address(r->http, address, sizeof(address));
		tide_log("info", "http.listening", "address", address, "tokens", tokens,
		         (char *)NULL);
	}
	listen_start(r);
	wal_start(r, r->wake_mode);
	r->inline_dirs = tide_inline_dirs_new(r->dirs, r->apps, r->ndirs, r->d.popts.cpu_ms,
	                                      r->d.popts.memory);
	if (r->inline_dirs) {
		struct tide_batch_appender appender = tide_inline_dirs_appender(r->inline_dirs);
		tide_batch_set_appender(&appender);
	}
	rescan(r, false);
	for (int i = 0; i < r->ntakeover; i++)
		if (!find(r, r->takeover[i]))
			tide_log("warn", "daemon.take_over_unknown", "processor", r->takeover[i],
			         "reason", "no script here has that id (APP/NAME: see tide status)",
			         (char *)NULL);
	for (int i = 0; i < r->ndirs; i++) {
		uv_fs_event_init(r->d.loop, &r->watch[r->nwatch]);
		r->watch[r->nwatch].data = r;
		if (uv_fs_event_start(&r->watch[r->nwatch], on_fs_event, r->dirs[i], 0) == 0)
			r->nwatch++;
		else
			uv_close((uv_handle_t *)&r->watch[r->nwatch], NULL);
	}
}

/* Who scripts' SQL runs as: a superuser login lets a processor's SQL read files and run
 * programs on the database server (COPY ... TO PROGRAM), so say so, loudly. */
static void check_privileges(struct run *r, const struct tide_pg_reply *reply);

static void on_privileges(const struct tide_pg_reply *reply, void *arg)
{
	struct run *r = arg;
	check_privileges(r, reply);
	tide_store_close(r->bootstrap); /* its one question is answered */
	r->bootstrap = NULL;
}

static void check_privileges(struct run *r, const struct tide_pg_reply *reply)
{
	if (reply->status) {
		if (reply->status != TIDE_ECLOSED)
			tide_log("warn", "daemon.privileges_unknown", "error", reply->err,
			         (char *)NULL);
		return;
	}
	PGresult *res = reply->res;
	bool superuser = PQgetvalue(res, 0, 0)[0] == 't';
	const char *role = r->d.popts.sql_role;
	if (role && PQgetisnull(res, 0, 1)) {
		tide_log("error", "daemon.sql_role_unusable", "sql_role", role, "reason",
		         "no such role, or the connecting user may not SET ROLE to it "
		         "(GRANT it to the user)",
		         (char *)NULL);
		r->exit_code = 2;
		stop_all(r, "configuration");
		return;
	}
	if (role && PQgetvalue(res, 0, 1)[0] == 't')
		tide_log("warn", "daemon.sql_role_superuser", "sql_role", role, "effect",
		         "the role scripts' SQL runs as is a superuser: it contains nothing",
		         (char *)NULL);
	else if (superuser && !role)
		tide_log("warn", "daemon.superuser", "effect",
		         "connected as a superuser with no sql_role: processor scripts' SQL may "
		         "read "
		         "and write any table, read server files and run programs on the database "
		         "server (COPY ... TO PROGRAM)",
		         "fix", "set sql_role (or --sql-role) to a role without superuser",
		         (char *)NULL);
	else if (superuser)
		tide_log("warn", "daemon.superuser", "sql_role", role, "effect",
		         "scripts' SQL runs as sql_role; a script that switches its role back is "
		         "refused at commit, but what it ran before is not undone: connect as a "
		         "non-superuser to contain scripts fully",
		         (char *)NULL);
}

static void on_bootstrap_open(struct tide_store *s, int status, const char *err, void *arg)
{
	struct run *r = arg;
	if (status) {
		fprintf(stderr, "tide run: cannot connect to the database: %s\n", err);
		r->exit_code = 1;
		r->d.stopping = true;
		tide_store_close(s);
		maybe_exit(r);
		return;
	}
	static const struct tide_pg_stmt privileges = {
	        "tide_privileges",
	        "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user),"
	        " (SELECT rolsuper FROM pg_roles WHERE rolname = $1"
	        "   AND pg_has_role(session_user, oid, 'MEMBER'))",
	        1,
	};
	const char *v[1] = {r->d.popts.sql_role};
	if (tide_pg_exec(s->pg, &privileges, v, on_privileges, r) != 0)
		tide_log("warn", "daemon.privileges_unknown", (char *)NULL);
	if (tide_store_migrate(s, on_migrated, r) != 0)
		r->exit_code = 1;
	r->bootstrap = s; /* closed once it has answered */
}

static int parse_positive(const char *flag, const char *v, long *out)
{
	char *end;
	errno = 0;
	long x = strtol(v, &end, 10);
	if (errno || end == v || *end || x <= 0 || x > 1000000000) {
		fprintf(stderr,
		        "tide run: %s wants a positive number, got '%s' (see `tide run --help`)\n",
		        flag, v);
		return -1;
	}
	*out = x;
	return 0;
}

/* Flags win over the configuration file, which wins over the defaults. */
static void overlay(struct settings *dst, const struct settings *src)
{
	if (src->url)
		dst->url = src->url;
	if (src->log_format)
		dst->log_format = src->log_format;
	if (src->log_level)
		dst->log_level = src->log_level;
	if (src->sql_role)
		dst->sql_role = src->sql_role;
	if (src->app)
		dst->app = src->app;
	if (src->wake)
		dst->wake = src->wake;
	if (src->batch)
		dst->batch = src->batch;
	if (src->probe)
		dst->probe = src->probe;
	if (src->poll)
		dst->poll = src->poll;
	if (src->lease)
		dst->lease = src->lease;
	if (src->cpu)
		dst->cpu = src->cpu;
	if (src->memory_mb)
		dst->memory_mb = src->memory_mb;
	if (src->http)
		dst->http = src->http;
	if (src->http_connections)
		dst->http_connections = src->http_connections;
	dst->http_insecure |= src->http_insecure;
}

static int run_daemon(struct run *r, int argc, char **argv)
{
	struct settings set = {.batch = 500,
	                       .probe = 50,
	                       .poll = 1000,
	                       .lease = 10000,
	                       .cpu = 1000,
	                       .memory_mb = TIDE_VM_DEFAULT_MEMORY >> 20};
	struct settings flags = {0};
	const char *config = NULL;
	static const struct option opts[] = {
	        {"config", required_argument, NULL, 'c'},
	        {"database", required_argument, NULL, 'd'},
	        {"batch-size", required_argument, NULL, 'b'},
	        {"poll-ms", required_argument, NULL, 'p'},
	        {"probe-ms", required_argument, NULL, 'P'},
	        {"wake", required_argument, NULL, 'w'},
	        {"lease-ms", required_argument, NULL, 'l'},
	        {"cpu-ms", required_argument, NULL, 'u'},
	        {"memory-mb", required_argument, NULL, 'm'},
	        {"sql-role", required_argument, NULL, 'r'},
	        {"app", required_argument, NULL, 'a'},
	        {"take-over", required_argument, NULL, 't'},
	        {"log-format", required_argument, NULL, 'f'},
	        {"log-level", required_argument, NULL, 'v'},
	        {"http", required_argument, NULL, 'H'},
	        {"http-insecure", no_argument, NULL, 'I'},
	        {"help", no_argument, NULL, 'h'},
	        {NULL, 0, NULL, 0},
	};
	opterr = 0;
	optind = 1;
	int o;
	while ((o = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		int bad = 0;
		switch (o) {
		case 'c': config = optarg; break;
		case 'd': flags.url = optarg; break;
		case 'b': bad = parse_positive("--batch-size", optarg, &flags.batch); break;
		case 'p': bad = parse_positive("--poll-ms", optarg, &flags.poll); break;
		case 'P': bad = parse_positive("--probe-ms", optarg, &flags.probe); break;
		case 'w': flags.wake = optarg; break;
		case 'l': bad = parse_positive("--lease-ms", optarg, &flags.lease); break;
		case 'u': bad = parse_positive("--cpu-ms", optarg, &flags.cpu); break;
		case 'm': bad = parse_positive("--memory-mb", optarg, &flags.memory_mb); break;
		case 'r': flags.sql_role = optarg; break;
		case 'a': flags.app = optarg; break;
		case 't':
			if (r->ntakeover == MAX_DIRS) {
				fprintf(stderr, "tide run: at most %d --take-over flags\n",
				        MAX_DIRS);
				return 2;
			}
			r->takeover[r->ntakeover++] = optarg;
			break;
		case 'f': flags.log_format = optarg; break;
		case 'v': flags.log_level = optarg; break;
		case 'H': flags.http = optarg; break;
		case 'I': flags.http_insecure = true; break;
		case 'h': fputs(usage_run, stdout); return 0;
		case ':':
			fprintf(stderr,
			        "tide run: option '%s' needs a value (see `tide run --help`)\n",
			        argv[optind - 1]);
			return 2;
		default:
			fprintf(stderr, "tide run: unknown option '%s' (see `tide run --help`)\n",
			        argv[optind - 1]);
			return 2;
		}
		if (bad)
			return 2;
	}
	set.url = tide_cli_database_url(NULL); /* the environment's, under file and flags */
	struct settings file = {0};
	if (config && load_config(r, config, &file) != 0)
		return 2;
	overlay(&set, &file);
	overlay(&set, &flags);
	for (int i = optind; i < argc && r->ndirs < MAX_DIRS; i++)
		r->dirs[r->ndirs++] = argv[i];
	if (set.log_format && strcmp(set.log_format, "json") == 0)
		tide_log_set_format(TIDE_LOG_JSON);
	else if (set.log_format && strcmp(set.log_format, "text") != 0) {
		fprintf(stderr, "tide run: --log-format wants text or json, got '%s'\n",
		        set.log_format);
		return 2;
	}
	if (set.wake && strcmp(set.wake, "wal") != 0 && strcmp(set.wake, "notify") != 0) {
		fprintf(stderr,
		        "tide run: --wake (or wake in the configuration file) wants wal or notify, "
		        "got '%s'\n",
		        set.wake);
		return 2;
	}
	if (set.log_level && tide_log_set_level(set.log_level) != 0) {
		fprintf(stderr,
		        "tide run: --log-level wants debug, info, warn or error, got '%s'\n",
		        set.log_level);
		return 2;
	}
	if (set.memory_mb > 4096) {
		fprintf(stderr, "tide run: --memory-mb wants at most 4096, got %ld\n",
		        set.memory_mb);
		return 2;
	}
	if (set.sql_role && (!set.sql_role[0] || strlen(set.sql_role) > 63)) {
		fprintf(stderr, "tide run: --sql-role wants a role name of 1 to 63 bytes\n");
		return 2;
	}
	if (r->ndirs == 0) {
		fprintf(stderr, "tide run: no directories given (see `tide run --help`)\n");
		return 2;
	}
	if (set.app && !valid_app(set.app)) {
		fprintf(stderr,
		        "tide run: --app wants a name of 1 to %d bytes without '/' or "
		        "control characters, got '%s'\n",
		        MAX_APP_BYTES, set.app);
		return 2;
	}
	for (int i = 0; i < r->ndirs; i++) {
		struct stat st;
		if (stat(r->dirs[i], &st) != 0 || !S_ISDIR(st.st_mode)) {
			fprintf(stderr, "tide run: %s is not a directory\n", r->dirs[i]);
			return 2;
		}
		r->apps[i] = set.app ? set.app : app_of(r, r->dirs[i]);
		if (!r->apps[i] || !valid_app(r->apps[i])) {
			fprintf(stderr,
			        "tide run: the directory %s gives no usable app name (1 to %d "
			        "bytes, no control characters): pass --app NAME\n",
			        r->dirs[i], MAX_APP_BYTES);
			return 2;
		}
	}
	if (!set.url) {
		fprintf(stderr, "tide run: no database given: pass --database URL or set "
		                "TIDE_DATABASE_URL (see `tide run --help`)\n");
		return 2;
	}
	r->http_opts.listen = set.http;
	r->http_opts.insecure = set.http_insecure;
	r->http_opts.connections = (int)set.http_connections;
	r->http_opts.tokens = r->tokens;
	r->http_opts.url = set.url;
	r->http_opts.dirs = r->dirs;
	r->http_opts.apps = r->apps;
	r->http_opts.ndirs = r->ndirs;
	r->http_opts.cpu_ms = (unsigned)set.cpu;
	r->http_opts.poll_ms = (unsigned)set.poll;
	r->http_opts.memory = (size_t)set.memory_mb << 20;
	char err[512];
	if (set.http && tide_http_check(&r->http_opts, err, sizeof(err)) != 0) {
		fprintf(stderr, "tide run: %s\n", err);
		return 2;
	}

	char host[64] = "host";
	gethostname(host, sizeof(host) - 1);
	uv_loop_init(&r->loop);
	r->d.loop = &r->loop;
	r->http_opts.loop = &r->loop;
	r->d.url = set.url;
	snprintf(r->d.owner, sizeof(r->d.owner), "tide:%s:%d:%08x", host, (int)getpid(),
	         (unsigned)(uv_hrtime() & 0xffffffffu));
	srand((unsigned)uv_hrtime());
	tide_set_application_name("tide run");
	tide_metrics_enable();
	r->d.popts = (struct tide_processor_opts){
	        .loop = &r->loop,
	        .url = set.url,
	        .owner = r->d.owner,
	        .sql_role = set.sql_role,
	        .batch_size = (int)set.batch,
	        .poll_ms = (unsigned)set.poll,
	        .lease_ms = (unsigned)set.lease,
	        .cpu_ms = (unsigned)set.cpu,
	        .memory = (size_t)set.memory_mb << 20,
	        .upcasters = &r->upcasters,
	        .on_stopped = processor_stopped,
	        .on_reshard = on_reshard,
	        .arg = r,
	};
	uv_timer_init(&r->loop, &r->debounce);
	r->debounce.data = r;
	uv_timer_init(&r->loop, &r->listen_retry);
	r->listen_retry.data = r;
	uv_timer_init(&r->loop, &r->drain_deadline);
	r->drain_deadline.data = r;
	uv_signal_init(&r->loop, &r->sigterm);
	uv_signal_init(&r->loop, &r->sigint);
	uv_signal_init(&r->loop, &r->sighup);
	r->sigterm.data = r->sigint.data = r->sighup.data = r;
	uv_signal_start(&r->sigterm, on_signal, SIGTERM);
	uv_signal_start(&r->sigint, on_signal, SIGINT);
	uv_signal_start(&r->sighup, on_signal, SIGHUP);
	/* The LISTEN connection is probed at the poll interval, so a dead one is noticed. */
	static uv_timer_t probe;
	uv_timer_init(&r->loop, &probe);
	probe.data = r;
	uv_timer_start(&probe, on_listen_probe, set.poll, set.poll);
	uv_unref((uv_handle_t *)&probe);
	uv_timer_init(&r->loop, &r->log_probe);
	r->log_probe.data = r;
	uv_timer_start(&r->log_probe, probe_log_timer, set.probe, set.probe);
	uv_unref((uv_handle_t *)&r->log_probe);
	r->probe_ms = (unsigned)set.probe;
	r->wake_mode = set.wake;
	uv_timer_init(&r->loop, &r->reprobe);
	r->reprobe.data = r;
	uv_unref((uv_handle_t *)&r->reprobe);

	struct tide_store *boot = NULL;
	if (tide_store_open(&r->loop, r->d.url, on_bootstrap_open, r, &boot) != 0)
		return 1;
	uv_run(&r->loop, UV_RUN_DEFAULT);
	uv_close((uv_handle_t *)&probe, NULL);
	uv_close((uv_handle_t *)&r->log_probe, NULL);
	uv_close((uv_handle_t *)&r->reprobe, NULL);
	uv_run(&r->loop, UV_RUN_DEFAULT);
	uv_loop_close(&r->loop);
	tide_sharing_free(r->d.sharing);
	while (r->sharded) {
		struct sharded *x = r->sharded;
		r->sharded = x->next;
		free(x);
	}
	tide_batch_set_appender(NULL);
	tide_inline_dirs_free(r->inline_dirs);
	tide_upcasters_free(&r->upcasters);
	tide_metrics_disable();
	tide_log("info", "daemon.stopped", (char *)NULL);
	return r->exit_code;
}

int tide_daemon_main(int argc, char **argv)
{
	static struct run r; /* the loop's handles point into it until the end */
	memset(&r, 0, sizeof(r));
	int code = run_daemon(&r, argc, argv);
	/* Every way out, the usage errors included, gives back what the settings kept. */
	for (int i = 0; i < r.nconfig_strings; i++)
		free(r.config_strings[i]);
	for (size_t i = 0; i < r.nspecs; i++)
		free(r.specs[i]);
	free(r.specs);
	return code;
}
