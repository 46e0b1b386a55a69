/* status.h — the processors as `tide status` and GET /processors show them: one statement
 * over tide_processors and emt_processors (checkpoint, lag, last error, a builder's
 * progress), and each row as JSON. status.c. */
#ifndef TIDE_STATUS_H
#define TIDE_STATUS_H

#include <cJSON.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "pg.h"
#include "rebuild.h"

extern const struct tide_pg_stmt tide_stmt_status;

/* The columns of tide_stmt_status. */
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

/* The live daemons (sql/0012_tide_sharing.sql), oldest first: owner, host, pid, started
 * (ISO 8601), seconds since the last heartbeat, units, share, leases held. */
extern const struct tide_pg_stmt tide_stmt_daemons;

/* Row r of tide_stmt_daemons as JSON: {owner, host, pid, started_at, heartbeat_age_seconds,
 * units, share, held}. */
cJSON *tide_status_daemon_json(PGresult *res, int r);

/* A builder's progress (row r of tide_stmt_status's result); false for other rows. */
bool tide_status_progress(PGresult *res, int r, struct tide_progress *p);

/* Row r as JSON, keys in this order: id, app, kind, state, version, partition, checkpoint,
 * lag_events, lag_seconds, generation, owner, dead_letters, last_error, traceback, script
 * (numbers as numbers, no error as null), and "rebuild" {of, done, total,
 * events_per_second, eta_seconds} for a builder. */
cJSON *tide_status_json(PGresult *res, int r);

#endif
