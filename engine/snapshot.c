/* snapshot.c — aggregate snapshots: the statements that read and write tide_snapshots
 * (sql/0008_tide_snapshots.sql), pipelined on the store's connection like its reads. */
#include "snapshot.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

/* The snapshot and, in the same statement, whether the stream's active event at its
 * position is still the one it was taken at (one probe of emt_messages' primary key). */
static const struct tide_pg_stmt stmt_load = {
        "tide_snapshot_load",
        "SELECT s.version, s.stream_position, s.global_position, s.state,"
        " EXISTS (SELECT 1 FROM emt_messages m"
        "          WHERE m.stream_id = s.stream_id AND m.partition = s.partition"
        "            AND NOT m.is_archived AND m.stream_position = s.stream_position"
        "            AND m.global_position = s.global_position)"
        " FROM tide_snapshots s"
        " WHERE s.partition = $1 AND s.stream_id = $2 AND s.decider = $3",
        3,
};

/* A later snapshot (by the global position of its last event: one of a stream begun again
 * is later, though its stream position may be lower) or one of another version replaces
 * the row; an earlier one of the same version, written by a slower racer, does not. */
static const struct tide_pg_stmt stmt_save = {
        "tide_snapshot_save",
        "INSERT INTO tide_snapshots AS s (partition, stream_id, decider, version,"
        " stream_position, global_position, state, taken_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, now())"
        " ON CONFLICT (partition, stream_id, decider) DO UPDATE"
        " SET version = EXCLUDED.version, stream_position = EXCLUDED.stream_position,"
        " global_position = EXCLUDED.global_position, state = EXCLUDED.state,"
        " taken_at = EXCLUDED.taken_at"
        " WHERE s.global_position < EXCLUDED.global_position OR s.version <> EXCLUDED.version",
        7,
};

struct snapshot_call {
	union {
		tide_snapshot_cb load;
		tide_end_cb save;
	} cb;
	void *arg;
};

static int refuse(struct tide_store *store, int code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static int refuse(struct tide_store *store, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(store->error, sizeof(store->error), fmt, ap);
	va_end(ap);
	return code;
}

/* What every request checks first: the names, no transaction of the caller's open, a
 * connection. */
static int check(struct tide_store *store, const char *stream, const char *decider)
{
	if (tide_check_name("stream name", stream, stream ? strlen(stream) : 0, TIDE_MAX_NAME_BYTES,
	                    store->error, sizeof(store->error)) ||
	    tide_check_name("decider name", decider, decider ? strlen(decider) : 0,
	                    TIDE_MAX_NAME_BYTES, store->error, sizeof(store->error)))
		return TIDE_EINVAL;
	if (store->in_transaction)
		return refuse(store, TIDE_EINVAL,
		              "snapshots are read and written outside a transaction of the "
		              "caller's, and one is open on this store");
	if (!tide_pg_ready(store->pg))
		return refuse(store, TIDE_ECONN, "not connected to the database");
	return 0;
}

static void on_load(const struct tide_pg_reply *reply, void *arg)
{
	struct snapshot_call *c = arg;
	char buf[640];
	if (reply->status) {
		c->cb.load(reply->status, tide_pg_explain(reply, buf, sizeof(buf)), NULL, c->arg);
	} else if (PQntuples(reply->res) == 0) {
		c->cb.load(0, NULL, NULL, c->arg);
	} else {
		const PGresult *res = reply->res;
		struct tide_snapshot s = {
		        .version = (int)strtol(PQgetvalue(res, 0, 0), NULL, 10),
		        .stream_position = strtoll(PQgetvalue(res, 0, 1), NULL, 10),
		        .global_position = strtoll(PQgetvalue(res, 0, 2), NULL, 10),
		        .state = PQgetvalue(res, 0, 3),
		        .current = PQgetvalue(res, 0, 4)[0] == 't',
		};
		c->cb.load(0, NULL, &s, c->arg);
	}
	free(c);
}

int tide_snapshot_load(struct tide_store *store, const char *stream, const char *decider,
                       tide_snapshot_cb cb, void *arg)
{
	int rc = check(store, stream, decider);
	if (rc)
		return rc;
	struct snapshot_call *c = calloc(1, sizeof(*c));
	if (!c)
		return refuse(store, TIDE_ENOMEM, "out of memory");
	c->cb.load = cb;
	c->arg = arg;
	const char *values[3] = {store->partition, stream, decider};
	rc = tide_pg_exec(store->pg, &stmt_load, values, on_load, c);
	if (rc) {
		free(c);
		return refuse(store, rc, "cannot send the snapshot's read: %s",
		              tide_pg_error(store->pg));
	}
	return 0;
}

static void on_save(const struct tide_pg_reply *reply, void *arg)
{
	struct snapshot_call *c = arg;
	char buf[640];
	c->cb.save(reply->status, reply->status ? tide_pg_explain(reply, buf, sizeof(buf)) : NULL,
	           c->arg);
	free(c);
}

int tide_snapshot_save(struct tide_store *store, const char *stream, const char *decider,
                       const struct tide_snapshot *s, tide_end_cb cb, void *arg)
{
	int rc = check(store, stream, decider);
	if (rc)
		return rc;
	if (s->stream_position < 1 || !s->state)
		return refuse(store, TIDE_EINVAL, "a snapshot is of a stream position >= 1");
	if (strlen(s->state) > TIDE_MAX_SNAPSHOT_BYTES) {
		return refuse(store, TIDE_EINVAL,
		              "the state is more than %u MiB of JSON: too large for a snapshot",
		              TIDE_MAX_SNAPSHOT_BYTES >> 20);
	}
	struct snapshot_call *c = calloc(1, sizeof(*c));
	if (!c)
		return refuse(store, TIDE_ENOMEM, "out of memory");
	c->cb.save = cb;
	c->arg = arg;
	char version[16], position[24], global[24];
	snprintf(version, sizeof(version), "%d", s->version);
	snprintf(position, sizeof(position), "%" PRId64, s->stream_position);
	snprintf(global, sizeof(global), "%" PRId64, s->global_position);
	const char *values[7] = {store->partition, stream, decider, version,
	                         position,         global, s->state};
	rc = tide_pg_exec(store->pg, &stmt_save, values, on_save, c);
	if (rc) {
		free(c);
		return refuse(store, rc, "cannot send the snapshot: %s", tide_pg_error(store->pg));
	}
	return 0;
}
