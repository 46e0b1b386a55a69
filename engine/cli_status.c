/* cli_status.c — `tide status`: the daemon's processors as a table or JSON lines, with
 * checkpoint, lag and last error, read from tide_processors and emt_processors, and a
 * warning naming the backend whose open transaction holds every consumer back. */
#include <stdio.h>
#include <string.h>

#include "cli_common.h"
#include "store.h"

/* A processor no daemon has looked after since its heartbeat (seen_until) passed shows as
 * "expired": its daemon died or lost the database, and its last word is stale. */
static const struct tide_pg_stmt stmt_status = {
        "tide_status",
        "WITH p AS ("
        " SELECT t.processor_id, t.kind, t.generation, t.owner, t.last_error, t.script,"
        "  t.partition,"
        "  CASE WHEN t.status <> 'stopped' AND coalesce(t.seen_until, t.lease_until) < now()"
        "   THEN 'expired' ELSE t.status END AS status,"
        "  coalesce(e.last_processed_transaction_id, '0') AS xid,"
        "  coalesce(e.last_processed_checkpoint, '0')::bigint AS pos"
        " FROM tide_processors t LEFT JOIN emt_processors e ON e.processor_id = t.processor_id"
        "  AND e.partition = t.partition AND e.version = t.version)"
        " SELECT p.processor_id, p.kind, p.status, p.xid::text || ':' || p.pos, lag.n,"
        "  coalesce(extract(epoch FROM now() - lag.oldest), 0)::numeric(12,3),"
        "  p.generation, coalesce(p.owner, ''), coalesce(p.last_error, ''), coalesce(p.script, ''),"
        "  p.partition,"
        "  (SELECT count(*) FROM tide_dead_letters d WHERE d.processor_id = p.processor_id"
        "    AND d.partition = p.partition)"
        " FROM p CROSS JOIN LATERAL (SELECT count(*) AS n, min(m.created) AS oldest"
        "  FROM emt_messages m WHERE m.partition = p.partition AND NOT m.is_archived"
        "  AND (m.transaction_id, m.global_position) > (p.xid, p.pos)) lag"
        " ORDER BY p.processor_id",
        0,
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

static void on_status(const struct tide_pg_reply *reply, void *arg)
{
	struct cli *cli = arg;
	char buf[800];
	if (reply->status) {
		tide_cli_fail(cli, reply->status, tide_store_explain(reply, buf, sizeof(buf)));
		tide_cli_done(cli);
		return;
	}
	PGresult *res = reply->res;
	static const char *keys[] = {"id",         "kind",        "state",      "checkpoint",
	                             "lag_events", "lag_seconds", "generation", "owner",
	                             "last_error", "script",      "partition",  "dead_letters"};
	int rows = PQntuples(res);
	if (cli->json) {
		for (int r = 0; r < rows; r++) {
			cJSON *o = cJSON_CreateObject();
			for (int c = 0; c < 12; c++) {
				const char *v = PQgetvalue(res, r, c);
				if (c == 4 || c == 5 || c == 6 || c == 11)
					cJSON_AddRawToObject(o, keys[c], v);
				else if (c == 8 && !v[0])
					cJSON_AddNullToObject(o, keys[c]);
				else
					cJSON_AddStringToObject(o, keys[c], v);
			}
			tide_cli_print_line(o);
		}
	} else if (rows == 0) {
		printf("no processors yet: start some with `tide run DIR`\n");
	} else {
		printf("%-24s %-10s %-8s %-22s %10s %10s %4s %5s  %s\n", "PROCESSOR", "KIND",
		       "STATE", "CHECKPOINT", "LAG", "LAG(s)", "GEN", "DLQ", "LAST ERROR");
		for (int r = 0; r < rows; r++) {
			char err[200];
			snprintf(err, sizeof(err), "%s", PQgetvalue(res, r, 8));
			for (char *c = err; *c; c++)
				if (*c == '\n')
					*c = ' ';
			char id[160];
			const char *part = PQgetvalue(res, r, 10);
			if (strcmp(part, TIDE_DEFAULT_PARTITION) == 0)
				snprintf(id, sizeof(id), "%s", PQgetvalue(res, r, 0));
			else
				snprintf(id, sizeof(id), "%s@%s", PQgetvalue(res, r, 0), part);
			printf("%-24s %-10s %-8s %-22s %10s %10s %4s %5s  %s\n", id,
			       PQgetvalue(res, r, 1), PQgetvalue(res, r, 2), PQgetvalue(res, r, 3),
			       PQgetvalue(res, r, 4), PQgetvalue(res, r, 5), PQgetvalue(res, r, 6),
			       PQgetvalue(res, r, 11), err[0] ? err : "-");
		}
	}
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
