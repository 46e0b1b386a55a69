/* status.c — what `tide status` and GET /processors show of the daemons' processors (see
 * status.h). */
#include "status.h"

#include <stdlib.h>
#include <string.h>

#include "json.h"

/* A processor no daemon has looked after since its heartbeat (seen_until) passed shows as
 * "expired": its daemon died or lost the database, and its last word is stale. */
const struct tide_pg_stmt tide_stmt_status = {
        "tide_status",
        "WITH p AS ("
        " SELECT t.processor_id, t.kind, t.generation, t.owner, t.last_error, t.script,"
        "  t.partition, t.version, t.app, t.attempt_traceback, t.rebuild_of, t.rebuild_done,"
        "  t.rebuild_total, t.rebuild_rate,"
        "  CASE WHEN t.status <> 'stopped' AND coalesce(t.seen_until, t.lease_until) < now()"
        "   THEN 'expired' ELSE t.status END AS status,"
        "  coalesce(e.last_processed_transaction_id, '0') AS xid,"
        "  coalesce(e.last_processed_checkpoint, '0')::bigint AS pos,"
        /* A shard (APP/NAME#KofN, sql/0012) lags by its own streams only. */
        "  substring(t.processor_id FROM '#([0-9]+)of[0-9]+$')::int AS shard,"
        "  coalesce(substring(t.processor_id FROM '#[0-9]+of([0-9]+)$')::int, 1) AS shards"
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
        "  FROM emt_messages m WHERE (m.partition = p.partition OR p.partition = '*')"
        "  AND NOT m.is_archived"
        "  AND (m.transaction_id, m.global_position) > (p.xid, p.pos)"
        "  AND (p.shards <= 1 OR tide_shard_of(m.stream_id, p.shards) = p.shard)) lag"
        " ORDER BY p.processor_id",
        0,
};

bool tide_status_progress(PGresult *res, int r, struct tide_progress *p)
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
	if (!tide_status_progress(res, r, &p))
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

cJSON *tide_status_json(PGresult *res, int r)
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
	return o;
}

const struct tide_pg_stmt tide_stmt_daemons = {
        "tide_status_daemons",
        "SELECT d.owner, d.host, d.pid,"
        "  to_char(d.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
        "  extract(epoch FROM now() - d.heartbeat_at)::numeric(12,3), d.units, d.budget,"
        "  (SELECT count(*) FROM tide_processors p"
        "    WHERE p.owner = d.owner AND p.lease_until >= now()),"
        "  CASE WHEN d.wakes_by_notify THEN 'notify' ELSE 'wal' END"
        " FROM tide_daemons d WHERE d.alive_until >= now() ORDER BY d.started_at, d.owner",
        0,
};

cJSON *tide_status_daemon_json(PGresult *res, int r)
{
	static const char *const keys[] = {
	        "owner", "host",  "pid",  "started_at", "heartbeat_age_seconds",
	        "units", "share", "held", "wake"};
	cJSON *o = cJSON_CreateObject();
	for (int k = 0; k < 9; k++) {
		const char *v = PQgetvalue(res, r, k);
		if (k == 2 || (k >= 4 && k < 8))
			cJSON_AddRawToObject(o, keys[k], v);
		else
			cJSON_AddStringToObject(o, keys[k], v);
	}
	return o;
}
