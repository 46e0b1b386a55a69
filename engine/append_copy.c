/* append_copy.c — appends of many events (TIDE_COPY_MIN_EVENTS or more) by binary COPY.
 * COPY cannot run on a pipelined connection, so such an append runs on a second
 * connection of the store (simple mode, opened on first use) in a transaction of its own,
 * all of it queued at once: BEGIN → [the partition's tables] → the stream's row under the
 * expectation (append.c's statement; the new position and the transaction's id come back)
 * → COPY of the rows, numbered from that position → their global positions → COMMIT → the
 * wake-up. When the expectation does not hold, the COPY is aborted, the transaction rolls
 * back and the version found is read afterwards, for the conflict error. Nothing about the
 * outcome differs from append.c's; only its order relative to the store's other requests
 * does (it is on another connection). The store owns that connection (store.c). */
#include "append.h"
#include "copy.h"
#include "input.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PIECE_BYTES (256u << 10) /* handed to the COPY at a time */

static const char sql_positions[] =
        "SELECT global_position FROM emt_messages"
        " WHERE stream_id = $1 AND partition = $2 AND NOT is_archived AND stream_position >"
        "  (SELECT stream_position - $3::bigint FROM emt_streams"
        "    WHERE stream_id = $1 AND partition = $2 AND NOT is_archived)"
        " ORDER BY stream_position";

struct tide_copy_append {
	struct tide_pg *pg;            /* once queued */
	struct tide_copy_append *next; /* the store's: waiting for the connection */
	char *stream, *partition;
	int64_t expected;
	size_t n;
	bool ensure;
	char *rows; /* header, rows, trailer */
	size_t rows_len, sent;
	size_t *at;       /* where tide_copy_set fills in each row */
	int64_t position; /* the stream's after the append; -1 until known */
	uint64_t xid;
	bool conflict;
	int64_t *positions;
	size_t npositions;
	int status; /* the first failure */
	char err[640];
	tide_append_cb cb;
	void *arg;
};

static void copy_free(struct tide_copy_append *ca)
{
	free(ca->stream);
	free(ca->partition);
	free(ca->rows);
	free(ca->at);
	free(ca->positions);
	free(ca);
}

static void finish(struct tide_copy_append *ca, int status, const char *err,
                   const struct tide_append_result *r)
{
	ca->cb(status, err, r, ca->arg);
	copy_free(ca);
}

static void note_failure(struct tide_copy_append *ca, const struct tide_pg_reply *reply)
{
	if (ca->status)
		return;
	ca->status = tide_append_lost(reply) ? TIDE_ECONN : reply->status;
	char buf[640];
	snprintf(ca->err, sizeof(ca->err), "%s", tide_pg_explain(reply, buf, sizeof(buf)));
}

static void on_step(const struct tide_pg_reply *reply, void *arg)
{
	if (reply->status)
		note_failure(arg, reply);
}

static void on_version(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_copy_append *ca = arg;
	if (reply->status) {
		char buf[640];
		snprintf(buf, sizeof(buf),
		         "the append found a different version and wrote nothing, but reading "
		         "that version failed: %s",
		         reply->err);
		finish(ca, tide_append_lost(reply) ? TIDE_ECONN : reply->status, buf, NULL);
		return;
	}
	struct tide_append_result r = {.expected = ca->expected, .actual = -1};
	char buf[640];
	int status = tide_append_conflict(reply->res, ca->stream, &r, buf, sizeof(buf));
	finish(ca, status, buf, &r);
}

static void on_stream(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_copy_append *ca = arg;
	if (reply->status) {
		note_failure(ca, reply);
		return;
	}
	if (PQntuples(reply->res) != 1) {
		/* The expectation does not hold: the COPY is aborted, COMMIT rolls back, and then
		 * the version found is read. */
		ca->conflict = true;
		const char *v[2] = {ca->stream, ca->partition};
		if (tide_pg_query(ca->pg, tide_stream_version_sql, 2, v, on_version, ca) != 0) {
			ca->conflict = false;
			ca->status = TIDE_ECONN;
			snprintf(ca->err, sizeof(ca->err), "%s", tide_pg_error(ca->pg));
		}
		return;
	}
	ca->position = strtoll(PQgetvalue(reply->res, 0, 0), NULL, 10);
	ca->xid = strtoull(PQgetvalue(reply->res, 0, 1), NULL, 10);
}

static int source(void *arg, const char **data, size_t *len)
{
	struct tide_copy_append *ca = arg;
	if (ca->status || ca->conflict || ca->position < 0) {
		*data = "the append does not go ahead";
		return -1;
	}
	if (ca->sent == 0) {
		int64_t first = ca->position - (int64_t)ca->n + 1;
		for (size_t i = 0; i < ca->n; i++)
			tide_copy_set(ca->rows + ca->at[i], first + (int64_t)i, ca->xid);
	}
	if (ca->sent == ca->rows_len)
		return 0;
	size_t piece = ca->rows_len - ca->sent;
	*data = ca->rows + ca->sent;
	*len = piece < PIECE_BYTES ? piece : PIECE_BYTES;
	ca->sent += *len;
	return 1;
}

static void on_positions(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_copy_append *ca = arg;
	if (reply->status) {
		note_failure(ca, reply);
		return;
	}
	int rows = PQntuples(reply->res);
	ca->positions = malloc((rows ? (size_t)rows : 1) * sizeof(int64_t));
	if (!ca->positions) {
		ca->status = TIDE_ENOMEM;
		snprintf(ca->err, sizeof(ca->err), "out of memory");
		return;
	}
	for (int i = 0; i < rows; i++)
		ca->positions[i] = strtoll(PQgetvalue(reply->res, i, 0), NULL, 10);
	ca->npositions = (size_t)rows;
}

static void on_wake(const struct tide_pg_reply *reply, void *arg)
{
	(void)reply; /* a failed wake-up is not the append's: the daemon's probe finds it */
	(void)arg;
}

static void on_commit(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_copy_append *ca = arg;
	if (ca->conflict)
		return; /* rolled back; on_version ends it */
	if (!ca->status && reply->status && tide_append_lost(reply) && reply->sent) {
		char buf[640];
		snprintf(buf, sizeof(buf),
		         "the connection was lost after the append was sent, so it may or may not "
		         "have been committed (read the stream to find out): %s",
		         reply->err);
		finish(ca, TIDE_EUNKNOWN, buf, NULL);
		return;
	}
	if (!ca->status && reply->status)
		note_failure(ca, reply);
	if (ca->status) {
		finish(ca, ca->status, ca->err, NULL);
		return;
	}
	if (tide_pg_query(ca->pg, TIDE_WAKE_SQL, 0, NULL, on_wake, NULL) != 0) {
		/* Not sent: the daemon's probe finds these events all the same. */
	}
	struct tide_append_result r = {
	        .expected = ca->expected,
	        .actual = -1,
	        .next_expected_version = ca->position,
	        .global_positions = ca->positions,
	        .count = ca->npositions,
	};
	finish(ca, 0, NULL, &r);
}

bool tide_copy_append_queue(struct tide_pg *pg, struct tide_copy_append *ca)
{
	ca->pg = pg;
	char count[24], version[24];
	snprintf(count, sizeof(count), "%zu", ca->n);
	snprintf(version, sizeof(version), "%" PRId64, ca->expected);
	int nparams;
	const char *stream_sql = tide_append_stream_sql(ca->expected, &nparams);
	const char *v[4] = {ca->stream, ca->partition, count, ca->expected > 0 ? version : NULL};
	const char *part[1] = {ca->partition};
	return tide_pg_script(pg, "BEGIN", on_step, ca) == 0 &&
	       (!ca->ensure ||
	        tide_pg_query(pg, "SELECT tide_ensure_partition($1)", 1, part, on_step, ca) == 0) &&
	       tide_pg_query(pg, stream_sql, nparams, v, on_stream, ca) == 0 &&
	       tide_pg_copy(pg, TIDE_COPY_MESSAGES_SQL, source, ca, on_step, ca) == 0 &&
	       tide_pg_query(pg, sql_positions, 3, v, on_positions, ca) == 0 &&
	       tide_pg_script(pg, "COMMIT", on_commit, ca) == 0;
}

static void set_event(struct tide_copy_row *row, const struct tide_event *e)
{
	row->type = e->type;
	row->type_len = strlen(e->type);
	row->data = e->data;
	row->data_len = strlen(e->data);
	row->metadata = e->metadata;
	row->metadata_len = e->metadata ? strlen(e->metadata) : 0;
	row->schema_version = e->schema_version;
}

/* The rows of the COPY, with room for each row's position and transaction id. */
static int build_rows(struct tide_copy_append *ca, const struct tide_event *events)
{
	struct tide_copy_row row = {
	        .stream_id = ca->stream,
	        .stream_id_len = strlen(ca->stream),
	        .partition = ca->partition,
	        .partition_len = strlen(ca->partition),
	};
	char id[37] = "";
	size_t len = TIDE_COPY_HEADER_BYTES + TIDE_COPY_TRAILER_BYTES;
	for (size_t i = 0; i < ca->n; i++) {
		set_event(&row, &events[i]);
		row.message_id = id; /* its length is what counts */
		len += tide_copy_row_size(&row);
	}
	ca->rows = malloc(len);
	ca->at = malloc(ca->n * sizeof(*ca->at));
	if (!ca->rows || !ca->at)
		return TIDE_ENOMEM;
	char *p = ca->rows;
	memcpy(p, tide_copy_header, TIDE_COPY_HEADER_BYTES);
	p += TIDE_COPY_HEADER_BYTES;
	for (size_t i = 0; i < ca->n; i++) {
		set_event(&row, &events[i]);
		if (events[i].message_id) {
			row.message_id = events[i].message_id;
		} else {
			tide_uuid_v4(id);
			row.message_id = id;
		}
		ca->at[i] = (size_t)(p - ca->rows) + tide_copy_row_write(p, &row);
		p += tide_copy_row_size(&row);
	}
	memcpy(p, tide_copy_trailer, TIDE_COPY_TRAILER_BYTES);
	ca->rows_len = len;
	return 0;
}

int tide_copy_append_build(const char *stream, const char *partition,
                           const struct tide_event *events, size_t n, int64_t expected,
                           bool ensure_partition, tide_append_cb cb, void *arg, char *err,
                           size_t errn, struct tide_copy_append **out)
{
	*out = NULL;
	int rc = tide_append_check(stream, events, n, expected, err, errn);
	if (rc)
		return rc;
	struct tide_copy_append *ca = calloc(1, sizeof(*ca));
	bool ok = ca && (ca->stream = strdup(stream)) && (ca->partition = strdup(partition));
	if (ok) {
		ca->n = n;
		ok = build_rows(ca, events) == 0;
	}
	if (!ok) {
		if (ca)
			copy_free(ca);
		snprintf(err, errn, "out of memory");
		return TIDE_ENOMEM;
	}
	ca->expected = expected;
	ca->position = -1;
	ca->ensure = ensure_partition;
	ca->cb = cb;
	ca->arg = arg;
	*out = ca;
	return 0;
}

void tide_copy_append_fail(struct tide_copy_append *ca, int status, const char *err)
{
	finish(ca, status, err, NULL);
}

void tide_copy_append_discard(struct tide_copy_append *ca)
{
	copy_free(ca);
}

struct tide_copy_append **tide_copy_append_next(struct tide_copy_append *ca)
{
	return &ca->next;
}
