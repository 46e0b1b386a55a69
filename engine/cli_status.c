/* cli_status.c — `tide status`: the daemon's processors as a table or JSON lines, with
 * checkpoint, lag and last error, read from tide_processors and emt_processors, and a
 * warning naming the backend whose open transaction holds every consumer back; `tide
 * forget`: a processor's rows removed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_common.h"
#include "json.h"
#include "rebuild.h"
#include "store.h"

/* A processor no daemon has looked after since its heartbeat (seen_until) passed shows as
 * "expired": its daemon died or lost the database, and its last word is stale. */
static const struct tide_pg_stmt stmt_status = {
        "tide_status",
        "WITH p AS ("
        " SELECT t.processor_id, t.kind, t.generation, t.owner, t.last_error, t.script,"
        "  t.partition, t.version, t.app, t.attempt_traceback, t.rebuild_of, t.rebuild_done,"
        "  t.rebuild_total, t.rebuild_rate,"
        "  CASE WHEN t.status <> 'stopped' AND coalesce(t.seen_until, t.lease_until) < now()"
        "   THEN 'expired' ELSE t.status END AS status,"
        "  coalesce(e.last_processed_transaction_id, '0') AS xid,"
        "  coalesce(e.last_processed_checkpoint, '0')::bigint AS pos"
        " FROM tide_processors t LEFT JOIN emt_processors e ON e.processor_id = t.processor_id"
        "  AND e.partition = t.partition AND e.version = t.version)"
        /* An inline projection has no checkpoint: it is as far as the appends it ran in. */
        " SELECT p.processor_id, p.kind, p.status,"
        "  CASE WHEN p.status = 'inline' THEN '' ELSE p.xid::text || ':' || p.pos END,"
        "  CASE WHEN p.status <> 'inline' THEN lag.n END,"
        "  CASE WHEN p.status <> 'inline' THEN"
        "   coalesce(extract(epoch FROM now() - lag.oldest), 0)::numeric(12,3) END,"
        "  p.generation, coalesce(p.owner, ''), coalesce(p.last_error, ''), coalesce(p.script, ''),"
        "  p.partition,"
        "  (SELECT count(*) FROM tide_dead_letters d WHERE d.processor_id = p.processor_id"
        "    AND d.partition = p.partition),"
        "  p.version, coalesce(p.app, ''), coalesce(p.attempt_traceback, ''),"
        "  coalesce(p.rebuild_of, ''), coalesce(p.rebuild_done, 0), coalesce(p.rebuild_total, 0),"
        "  coalesce(p.rebuild_rate, 0)"
        " FROM p CROSS JOIN LATERAL (SELECT count(*) AS n, min(m.created) AS oldest"
        "  FROM emt_messages m WHERE m.partition = p.partition AND NOT m.is_archived"
        "  AND (m.transaction_id, m.global_position) > (p.xid, p.pos)) lag"
        " ORDER BY p.processor_id",
        0,
};

/* The columns of stmt_status. */
enum {
	COL_ID,
	COL_KIND,
	COL_STATE,
	COL_CHECKPOINT,
	COL_LAG_EVENTS,
	COL_LAG_SECONDS,
	COL_GENERATION,
	COL_OWNER,
	COL_LAST_ERROR,
	COL_SCRIPT,
	COL_PARTITION,
	COL_DEAD_LETTERS,
	COL_VERSION,
	COL_APP,
	COL_TRACEBACK,
	COL_REBUILD_OF, /* a builder (rebuild.h): whose, and how far it got */
	COL_REBUILD_DONE,
	COL_REBUILD_TOTAL,
	COL_REBUILD_RATE,
	NCOLS
};

static void on_blocker(const struct tide_pg_reply *reply, void *arg)
{
	struct cli *cli = arg;
	if (!reply->status && PQntuples(reply->res) == 1) {
		PGresult *res = reply->res;
		fprintf(stderr,
		        "warning: consumers are held back by backend pid %s (user %s, application "
		        "%s, %s), whose transaction has been open for %s s: no event written after "
		        "it began is delivered until it ends (commit or roll it back, or "
		        "SELECT pg_terminate_backend(%s))\n",
		        PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
		        PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 4), PQgetvalue(res, 0, 0));
	}
	tide_cli_done(cli);
}

/* A builder's progress; false for other rows. */
static bool rebuild_progress(PGresult *res, int r, struct tide_progress *p)
{
	if (!PQgetvalue(res, r, COL_REBUILD_OF)[0])
		return false;
	memset(p, 0, sizeof(*p));
	p->done = strtoll(PQgetvalue(res, r, COL_REBUILD_DONE), NULL, 10);
	p->total = strtoll(PQgetvalue(res, r, COL_REBUILD_TOTAL), NULL, 10);
	p->rate = strtod(PQgetvalue(res, r, COL_REBUILD_RATE), NULL);
	if (p->total < p->done)
		p->total = p->done;
	p->eta_s = p->rate > 0 ? (double)(p->total - p->done) / p->rate : -1;
	return true;
}

/* "rebuild": {"of", "done", "total", "events_per_second", "eta_seconds"} of a builder. */
static void add_rebuild(cJSON *o, PGresult *res, int r)
{
	struct tide_progress p;
	if (!rebuild_progress(res, r, &p))
		return;
	cJSON *b = cJSON_AddObjectToObject(o, "rebuild");
	cJSON_AddStringToObject(b, "of", PQgetvalue(res, r, COL_REBUILD_OF));
	tide_json_add_i64(b, "done", p.done);
	tide_json_add_i64(b, "total", p.total);
	cJSON_AddNumberToObject(b, "events_per_second", (double)(int64_t)p.rate);
	if (p.eta_s >= 0)
		cJSON_AddNumberToObject(b, "eta_seconds", (double)(int64_t)(p.eta_s + 0.5));
	else
		cJSON_AddNullToObject(b, "eta_seconds");
}

/* JSON lines, keys in this order; numbers as numbers, no error as null. */
static void print_json(PGresult *res, int rows)
{
	static const struct {
		const char *key;
		int col;
		char as; /* s: string, n: number, e: string or null when empty, N: number or null */
	} keys[] = {
	        {"id", COL_ID, 's'},
	        {"app", COL_APP, 'e'},
	        {"kind", COL_KIND, 's'},
	        {"state", COL_STATE, 's'},
	        {"version", COL_VERSION, 'n'},
	        {"partition", COL_PARTITION, 's'},
	        {"checkpoint", COL_CHECKPOINT, 'e'},
	        {"lag_events", COL_LAG_EVENTS, 'N'},
	        {"lag_seconds", COL_LAG_SECONDS, 'N'},
	        {"generation", COL_GENERATION, 'n'},
	        {"owner", COL_OWNER, 's'},
	        {"dead_letters", COL_DEAD_LETTERS, 'n'},
	        {"last_error", COL_LAST_ERROR, 'e'},
	        {"traceback", COL_TRACEBACK, 'e'},
	        {"script", COL_SCRIPT, 's'},
	};
	for (int r = 0; r < rows; r++) {
		cJSON *o = cJSON_CreateObject();
		add_rebuild(o, res, r);
		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
			const char *v = PQgetvalue(res, r, keys[k].col);
			if (keys[k].as == 'n' || (keys[k].as == 'N' && v[0]))
				cJSON_AddRawToObject(o, keys[k].key, v);
			else if ((keys[k].as == 'e' || keys[k].as == 'N') && !v[0])
				cJSON_AddNullToObject(o, keys[k].key);
			else
				cJSON_AddStringToObject(o, keys[k].key, v);
		}
		tide_cli_print_line(o);
	}
}

/* The first line of s (at most n - 1 bytes of it). */
static void first_line(const char *s, char *out, size_t n)
{
	size_t len = strcspn(s, "\n");
	snprintf(out, n, "%.*s", (int)len, s);
}

/* The owner as people know it: host:pid (owners are tide:HOST:PID:RANDOM). */
static void owner_shown(const char *owner, char *out, size_t n)
{
	if (!owner[0]) {
		snprintf(out, n, "-");
		return;
	}
	const char *from = strncmp(owner, "tide:", 5) == 0 ? owner + 5 : owner;
	const char *last = strrchr(from, ':');
	size_t len = last && last != from ? (size_t)(last - from) : strlen(from);
	snprintf(out, n, "%.*s", (int)len, from);
}

static const char *or_dash(const char *v)
{
	return v[0] ? v : "-";
}

/* A table; under a failing processor, the first lines of its traceback. */
#define TRACEBACK_LINES 4
static void print_table(PGresult *res, int rows)
{
	int width = (int)strlen("PROCESSOR");
	for (int r = 0; r < rows; r++) {
		int w = PQgetlength(res, r, COL_ID);
		if (strcmp(PQgetvalue(res, r, COL_PARTITION), TIDE_DEFAULT_PARTITION) != 0)
			w += 1 + PQgetlength(res, r, COL_PARTITION);
		if (w > width)
			width = w < 64 ? w : 64;
	}
	printf("%-*s %-10s %-8s %3s %-22s %8s %8s %4s %-20s %4s  %s\n", width, "PROCESSOR", "KIND",
	       "STATE", "VER", "CHECKPOINT", "LAG", "LAG(s)", "GEN", "OWNER", "DLQ", "LAST ERROR");
	for (int r = 0; r < rows; r++) {
		char id[200], err[400], owner[128];
		const char *part = PQgetvalue(res, r, COL_PARTITION);
		if (strcmp(part, TIDE_DEFAULT_PARTITION) == 0)
			snprintf(id, sizeof(id), "%s", PQgetvalue(res, r, COL_ID));
		else
			snprintf(id, sizeof(id), "%s@%s", PQgetvalue(res, r, COL_ID), part);
		first_line(PQgetvalue(res, r, COL_LAST_ERROR), err, sizeof(err));
		owner_shown(PQgetvalue(res, r, COL_OWNER), owner, sizeof(owner));
		printf("%-*s %-10s %-8s %3s %-22s %8s %8s %4s %-20s %4s  %s\n", width, id,
		       PQgetvalue(res, r, COL_KIND), PQgetvalue(res, r, COL_STATE),
		       PQgetvalue(res, r, COL_VERSION), or_dash(PQgetvalue(res, r, COL_CHECKPOINT)),
		       or_dash(PQgetvalue(res, r, COL_LAG_EVENTS)),
		       or_dash(PQgetvalue(res, r, COL_LAG_SECONDS)),
		       PQgetvalue(res, r, COL_GENERATION), owner,
		       PQgetvalue(res, r, COL_DEAD_LETTERS), err[0] ? err : "-");
		struct tide_progress p;
		if (rebuild_progress(res, r, &p)) {
			char line[160];
			tide_progress_format(&p, line, sizeof(line));
			printf("%*s  rebuilding %s: %s\n", width, "",
			       PQgetvalue(res, r, COL_REBUILD_OF), line);
		}
		/* The traceback of the failure under way: its first frames (the log has it all). */
		const char *tb = PQgetvalue(res, r, COL_TRACEBACK);
		const char *frames = strstr(tb, "stack traceback:\n");
		if (frames)
			tb = frames + strlen("stack traceback:\n");
		for (int i = 0; tb[0] && err[0] && i < TRACEBACK_LINES; i++) {
			char line[300];
			first_line(tb, line, sizeof(line));
			if (line[0])
				printf("%*s  %s\n", width, "", line);
			tb += strcspn(tb, "\n");
			if (*tb == '\n')
				tb++;
		}
	}
}

static void on_status(const struct tide_pg_reply *reply, void *arg)
{
	struct cli *cli = arg;
	char buf[800];
	if (reply->status) {
		tide_cli_fail(cli, reply->status, tide_pg_explain(reply, buf, sizeof(buf)));
		tide_cli_done(cli);
		return;
	}
	PGresult *res = reply->res;
	int rows = PQntuples(res);
	if (cli->json)
		print_json(res, rows);
	else if (rows == 0)
		printf("no processors yet: start some with `tide run DIR`\n");
	else
		print_table(res, rows);
	if (tide_pg_exec(cli->store->pg, &tide_stmt_held_back, NULL, on_blocker, cli) != 0)
		tide_cli_done(cli);
}

void tide_cli_run_status(struct cli *cli)
{
	if (tide_pg_exec(cli->store->pg, &stmt_status, NULL, on_status, cli) != 0) {
		tide_cli_fail(cli, TIDE_ECONN, tide_store_error(cli->store));
		tide_cli_done(cli);
	}
}

static void on_forgot(const struct tide_pg_reply *reply, void *arg)
{
	struct cli *cli = arg;
	char buf[800];
	if (reply->status) {
		tide_cli_fail(cli, reply->status, tide_pg_explain(reply, buf, sizeof(buf)));
	} else if (strcmp(PQgetvalue(reply->res, 0, 0), "0") == 0 &&
	           strcmp(PQgetvalue(reply->res, 0, 1), "0") == 0) {
		snprintf(buf, sizeof(buf), "no processor '%s' (ids are APP/NAME: see tide status)",
		         cli->stream);
		tide_cli_fail(cli, TIDE_EINVAL, buf);
	} else {
		printf("forgot processor %s: %s status row, %s checkpoint(s), %s dead letter(s)\n",
		       cli->stream, PQgetvalue(reply->res, 0, 0), PQgetvalue(reply->res, 0, 1),
		       PQgetvalue(reply->res, 0, 2));
	}
	tide_cli_done(cli);
}

void tide_cli_run_forget(struct cli *cli)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_forget",
	        "SELECT processors, checkpoints, dead_letters FROM tide_processor_forget($1)", 1};
	const char *v[1] = {cli->stream};
	if (tide_pg_exec(cli->store->pg, &stmt, v, on_forgot, cli) != 0) {
		tide_cli_fail(cli, TIDE_ECONN, tide_store_error(cli->store));
		tide_cli_done(cli);
	}
}
