/* append.c — where appends happen. An append is one prepared statement: a data-modifying
 * CTE moves the stream's emt_streams row (the expectation is its WHERE, so appends to one
 * stream serialize on that row and concurrent `any` appends get contiguous positions);
 * the insert of the events from parameter arrays at the positions it returned follows
 * and gives a row back per event. No row back means the expectation did not hold and
 * nothing was written; a second statement then reads the version found, for the conflict
 * error. */
#include "append.h"

#include "input.h"
#include "json.h"
#include "query.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* $1 stream, $2 partition, $3 types, $4 data, $5 metadata (NULL: {}), $6 message ids (the
 * writer's, or new ones made here: the server's gen_random_uuid() was 10–15 % of its time
 * on an append), $7 schema versions (NULL: '1'), $8 the expected version (existing
 * streams only). One event is sent as scalars, more as arrays: an array's text needs every
 * quote of the JSON escaped; an array no event has a value for is sent as NULL. */
#define EVENTS_ONE "(VALUES ($3::text, $4::jsonb, $5::jsonb, $6::text, $7::text, 1))"
#define EVENTS_MANY                                                                                \
	"unnest($3::text[], $4::jsonb[], $5::jsonb[], $6::text[], $7::text[]) WITH ORDINALITY"
#define COUNT_ONE  "1"
#define COUNT_MANY "cardinality($3::text[])"

#define STREAM_ROW(COUNT)                                                                          \
	"INSERT INTO emt_streams AS t (stream_id, stream_position, partition, stream_type,"        \
	" stream_metadata, is_archived)"                                                           \
	" VALUES ($1, " COUNT ", $2, split_part($1, '-', 1), '{}', false)"

/* Whatever the stream's state: create it or move it. */
#define STREAM_ANY(COUNT)                                                                          \
	STREAM_ROW(COUNT)                                                                          \
	" ON CONFLICT (stream_id, partition, is_archived) DO UPDATE"                               \
	" SET stream_position = t.stream_position + excluded.stream_position"                      \
	" RETURNING stream_position"
/* no_stream (or version 0): create it, or nothing. */
#define STREAM_NEW(COUNT)                                                                          \
	STREAM_ROW(COUNT)                                                                          \
	" ON CONFLICT (stream_id, partition, is_archived) DO NOTHING"                              \
	" RETURNING stream_position"
/* stream_exists (VERSION NULL) or VERSION: move it if it is there (at that version). */
#define STREAM_EXISTING_AT(COUNT, VERSION)                                                         \
	"UPDATE emt_streams SET stream_position = stream_position + " COUNT                        \
	" WHERE stream_id = $1 AND partition = $2 AND NOT is_archived"                             \
	" AND (" VERSION "::bigint IS NULL OR stream_position = " VERSION "::bigint)"              \
	" RETURNING stream_position"
#define STREAM_EXISTING(COUNT) STREAM_EXISTING_AT(COUNT, "$8")

/* The events' rows, at the positions below the stream's new one (s, the stream's row). */
#define INSERT_EVENTS(COUNT, EVENTS)                                                               \
	" INSERT INTO emt_messages (stream_id, stream_position, partition, message_data,"          \
	"  message_metadata, message_schema_version, message_type, message_kind, message_id,"      \
	"  transaction_id, is_archived)"                                                           \
	" SELECT $1, s.stream_position - " COUNT " + e.ord, $2, e.data,"                           \
	"  coalesce(e.metadata, '{}'), coalesce(e.version, '1'), e.type, 'E',"                     \
	"  e.id, pg_current_xact_id(), false"                                                      \
	" FROM s, " EVENTS " AS e(type, data, metadata, id, version, ord)"

/* A row back per event, none when the expectation did not hold. The insert's own RETURNING:
 * collecting the rows into one (a CTE and an array) cost the server ~9 % of a 100-event
 * append. RETURNING: what each row gives, its global and stream positions first. */
#define APPEND_SQL(STREAM, COUNT, EVENTS, RETURNING)                                               \
	"WITH s AS (" STREAM(COUNT) ")" INSERT_EVENTS(COUNT, EVENTS) " RETURNING " RETURNING
#define POSITIONS_RETURNING "global_position, stream_position"
/* For inline projections (tide_append_return_rows) the message ids and time stamp too,
 * `created` as reads give it (store.c): separate statements, so that an append without
 * inline projections sends exactly what it did. */
#define ROWS_RETURNING                                                                             \
	POSITIONS_RETURNING                                                                        \
	", message_id,"                                                                            \
	" to_char(created AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
/* clang-format off */
#define APPEND_ONE(STREAM)       APPEND_SQL(STREAM, COUNT_ONE, EVENTS_ONE, POSITIONS_RETURNING)
#define APPEND_MANY(STREAM)      APPEND_SQL(STREAM, COUNT_MANY, EVENTS_MANY, POSITIONS_RETURNING)
#define APPEND_ROWS_ONE(STREAM)  APPEND_SQL(STREAM, COUNT_ONE, EVENTS_ONE, ROWS_RETURNING)
#define APPEND_ROWS_MANY(STREAM) APPEND_SQL(STREAM, COUNT_MANY, EVENTS_MANY, ROWS_RETURNING)
/* clang-format on */

enum shape { ANY, NEW, EXISTING };

static const struct tide_pg_stmt stmts[3][2] = {
        [ANY] = {{"tide_append_any", APPEND_ONE(STREAM_ANY), 7},
                 {"tide_append_any_n", APPEND_MANY(STREAM_ANY), 7}},
        [NEW] = {{"tide_append_new", APPEND_ONE(STREAM_NEW), 7},
                 {"tide_append_new_n", APPEND_MANY(STREAM_NEW), 7}},
        [EXISTING] = {{"tide_append_existing", APPEND_ONE(STREAM_EXISTING), 8},
                      {"tide_append_existing_n", APPEND_MANY(STREAM_EXISTING), 8}},
};

static const struct tide_pg_stmt rows_stmts[3][2] = {
        [ANY] = {{"tide_append_rows_any", APPEND_ROWS_ONE(STREAM_ANY), 7},
                 {"tide_append_rows_any_n", APPEND_ROWS_MANY(STREAM_ANY), 7}},
        [NEW] = {{"tide_append_rows_new", APPEND_ROWS_ONE(STREAM_NEW), 7},
                 {"tide_append_rows_new_n", APPEND_ROWS_MANY(STREAM_NEW), 7}},
        [EXISTING] = {{"tide_append_rows_existing", APPEND_ROWS_ONE(STREAM_EXISTING), 8},
                      {"tide_append_rows_existing_n", APPEND_ROWS_MANY(STREAM_EXISTING), 8}},
};

/* A conditional append (tide_store_append_if): the same statement behind a check. c runs
 * tide_append_if_check (sql/0014): it locks the query's keys, then looks, with a snapshot of
 * its own taken once they are held, for an event matching the query after the position;
 * the stream's row moves only when it found none, and the events follow the row as above.
 * One row always comes back, with what the check found: NULL when it found nothing (then
 * the events were appended, unless the expectation did not hold). Q: the check's parameters,
 * numbered after the shape's own. */
#define STREAM_ROW_IF(COUNT)                                                                       \
	"INSERT INTO emt_streams AS t (stream_id, stream_position, partition, stream_type,"        \
	" stream_metadata, is_archived)"                                                           \
	" SELECT $1, " COUNT ", $2, split_part($1, '-', 1), '{}', false FROM c"                    \
	" WHERE c.found IS NULL"
#define STREAM_ANY_IF(COUNT)                                                                       \
	STREAM_ROW_IF(COUNT)                                                                       \
	" ON CONFLICT (stream_id, partition, is_archived) DO UPDATE"                               \
	" SET stream_position = t.stream_position + excluded.stream_position"                      \
	" RETURNING stream_position"
#define STREAM_NEW_IF(COUNT)                                                                       \
	STREAM_ROW_IF(COUNT)                                                                       \
	" ON CONFLICT (stream_id, partition, is_archived) DO NOTHING"                              \
	" RETURNING stream_position"
#define STREAM_EXISTING_IF(COUNT)                                                                  \
	"UPDATE emt_streams SET stream_position = stream_position + " COUNT " FROM c"              \
	" WHERE c.found IS NULL AND stream_id = $1 AND partition = $2 AND NOT is_archived"         \
	" AND ($8::bigint IS NULL OR stream_position = $8::bigint)"                                \
	" RETURNING stream_position"
#define Q_AFTER_7 "$8::text[], $9::jsonb, $10::bigint"
#define Q_AFTER_8 "$9::text[], $10::jsonb, $11::bigint"
/* clang-format off */
#define APPEND_IF_SQL(STREAM, Q, COUNT, EVENTS, RESULT)                                            \
	"WITH c AS (SELECT tide_append_if_check($2, " Q ") AS found),"                             \
	" s AS (" STREAM(COUNT) "), m AS (" INSERT_EVENTS(COUNT, EVENTS) " RETURNING global_position)" \
	" SELECT s.stream_position, " RESULT ", c.found FROM c LEFT JOIN s ON true"
/* RESULT: the global positions (one event: the position itself, no array to build). */
#define POSITIONS_ONE  "(SELECT global_position FROM m)"
#define POSITIONS_MANY "ARRAY(SELECT global_position FROM m ORDER BY 1)"
#define APPEND_IF_ONE(STREAM, Q)  APPEND_IF_SQL(STREAM, Q, COUNT_ONE, EVENTS_ONE, POSITIONS_ONE)
#define APPEND_IF_MANY(STREAM, Q) APPEND_IF_SQL(STREAM, Q, COUNT_MANY, EVENTS_MANY, POSITIONS_MANY)
/* clang-format on */

static const struct tide_pg_stmt if_stmts[3][2] = {
        [ANY] = {{"tide_append_if_any", APPEND_IF_ONE(STREAM_ANY_IF, Q_AFTER_7), 10},
                 {"tide_append_if_any_n", APPEND_IF_MANY(STREAM_ANY_IF, Q_AFTER_7), 10}},
        [NEW] = {{"tide_append_if_new", APPEND_IF_ONE(STREAM_NEW_IF, Q_AFTER_7), 10},
                 {"tide_append_if_new_n", APPEND_IF_MANY(STREAM_NEW_IF, Q_AFTER_7), 10}},
        [EXISTING] = {{"tide_append_if_existing", APPEND_IF_ONE(STREAM_EXISTING_IF, Q_AFTER_8), 11},
                      {"tide_append_if_existing_n", APPEND_IF_MANY(STREAM_EXISTING_IF, Q_AFTER_8),
                       11}},
};

/* The stream's row alone, for an append whose events go by COPY (append_copy.c): $3 the
 * number of events, $4 the expected version (existing streams); the new position and the
 * transaction's id come back. */
#define STREAM_ONLY_SQL(STREAM)                                                                    \
	"WITH s AS (" STREAM ") SELECT stream_position, pg_current_xact_id() FROM s"
static const char *const stream_only_sql[3] = {
        [ANY] = STREAM_ONLY_SQL(STREAM_ANY("$3::bigint")),
        [NEW] = STREAM_ONLY_SQL(STREAM_NEW("$3::bigint")),
        [EXISTING] = STREAM_ONLY_SQL(STREAM_EXISTING_AT("$3::bigint", "$4")),
};

const char tide_stream_version_sql[] =
        "SELECT (SELECT stream_position FROM emt_streams"
        "         WHERE stream_id = $1 AND partition = $2 AND NOT is_archived),"
        "       EXISTS (SELECT 1 FROM emt_streams"
        "                WHERE stream_id = $1 AND partition = $2 AND is_archived)";

const struct tide_pg_stmt tide_stmt_stream_version = {"tide_stream_version",
                                                      tide_stream_version_sql, 2};

static enum shape shape_of(int64_t expected)
{
	return expected == TIDE_EXPECT_ANY                          ? ANY
	       : expected == TIDE_EXPECT_NO_STREAM || expected == 0 ? NEW
	                                                            : EXISTING;
}

const char *tide_append_stream_sql(int64_t expected, int *nparams)
{
	enum shape shape = shape_of(expected);
	*nparams = shape == EXISTING ? 4 : 3;
	return stream_only_sql[shape];
}

static const struct tide_pg_stmt stmt_ensure_partition = {
        "tide_ensure_partition",
        "SELECT tide_ensure_partition($1)",
        1,
};

/* A conflict whose version found satisfies the expectation was a race with the stream's
 * creation (or archiving): the append is sent again, this many times at most. */
#define MAX_SENDS 4

struct tide_append {
	const struct tide_pg_stmt *stmt;
	/* stream, partition, types, data, metadata, ids, schema versions, expected version;
	 * then a conditional append's query types, query data and position (from values[7]
	 * when there is no expected version) */
	char *values[11];
	bool conditional;
	int64_t after; /* a conditional append's position */
	int64_t expected;
	size_t n;
	bool ensure;
	struct tide_append_rows *rows; /* filled on success (tide_append_return_rows) */
	int sends;
	struct tide_pg *pg;
	struct tide_wake *wake;
	tide_append_cb cb;
	void *arg;
	char *ensure_err;
};

void tide_append_free(struct tide_append *a)
{
	if (!a)
		return;
	for (int i = 0; i < 11; i++)
		free(a->values[i]);
	free(a->ensure_err);
	free(a);
}

/* One event's checks. Its labels name the event only when named is set: formatting them
 * for every event was a quarter of a 100-event append's time in the client, so they are
 * formatted only to say what failed (the checks are run again, named). */
static int check_event(const struct tide_event *e, size_t i, bool named, char *err, size_t errn)
{
	char type[40] = "type", data[40] = "data", meta[40] = "metadata";
	if (named) {
		snprintf(type, sizeof(type), "type of event %zu", i + 1);
		snprintf(data, sizeof(data), "data of event %zu", i + 1);
		snprintf(meta, sizeof(meta), "metadata of event %zu", i + 1);
	}
	if (tide_check_name(type, e->type, e->type ? strlen(e->type) : 0, TIDE_MAX_NAME_BYTES, err,
	                    errn))
		return TIDE_EINVAL;
	size_t data_len = e->data ? strlen(e->data) : 0;
	size_t meta_len = e->metadata ? strlen(e->metadata) : 0;
	if (data_len + meta_len > TIDE_MAX_EVENT_BYTES) {
		snprintf(err, errn,
		         "event %zu is too large: its data and metadata are %zu bytes of "
		         "JSON; at most %u (%u MiB) are allowed",
		         i + 1, data_len + meta_len, TIDE_MAX_EVENT_BYTES,
		         TIDE_MAX_EVENT_BYTES >> 20);
		return TIDE_EINVAL;
	}
	if (tide_json_check_object_n(e->data, data_len, data, err, errn))
		return TIDE_EINVAL;
	if (e->metadata && tide_json_check_object_n(e->metadata, meta_len, meta, err, errn))
		return TIDE_EINVAL;
	if (e->message_id && !tide_uuid_valid(e->message_id)) {
		char shown[80];
		tide_snippet(shown, sizeof(shown), e->message_id, strlen(e->message_id), 40);
		snprintf(err, errn, "the message id of event %zu is not a UUID: %s", i + 1, shown);
		return TIDE_EINVAL;
	}
	if (e->schema_version && !tide_schema_version_valid(e->schema_version)) {
		char shown[80];
		tide_snippet(shown, sizeof(shown), e->schema_version, strlen(e->schema_version),
		             40);
		snprintf(err, errn,
		         "the schema version of event %zu must be a whole number from 1 to "
		         "999999999, got %s",
		         i + 1, shown);
		return TIDE_EINVAL;
	}
	return 0;
}

/* Checks every event before anything is built or sent: TIDE_EINVAL with the reason. */
static int check_events(const struct tide_event *events, size_t n, char *err, size_t errn)
{
	for (size_t i = 0; i < n; i++)
		if (check_event(&events[i], i, false, err, errn))
			return check_event(&events[i], i, true, err, errn);
	return 0;
}

/* One field of every event as the text of a PostgreSQL array ({"…",NULL}), each element
 * quoted with " and \ escaped; NULL when out of memory. */
static char *array_text(const struct tide_event *events, size_t n, size_t field)
{
	size_t len = 3;
	for (size_t i = 0; i < n; i++) {
		const char *s = *(const char *const *)((const char *)&events[i] + field);
		len += s ? 2 * strlen(s) + 3 : 5;
	}
	char *out = malloc(len), *o = out;
	if (!out)
		return NULL;
	*o++ = '{';
	for (size_t i = 0; i < n; i++) {
		const char *s = *(const char *const *)((const char *)&events[i] + field);
		if (i)
			*o++ = ',';
		if (!s) {
			memcpy(o, "NULL", 4);
			o += 4;
			continue;
		}
		*o++ = '"';
		for (; *s; s++) {
			if (*s == '"' || *s == '\\')
				*o++ = '\\';
			*o++ = *s;
		}
		*o++ = '"';
	}
	*o++ = '}';
	*o = '\0';
	return out;
}

/* Every event's message id, its own or a new one, as the text of an array ({…,…}: UUIDs
 * need no quotes); NULL when out of memory. */
static char *ids_text(const struct tide_event *events, size_t n)
{
	char *out = malloc(n * 37 + 2), *o = out;
	if (!out)
		return NULL;
	*o++ = '{';
	for (size_t i = 0; i < n; i++) {
		char id[37];
		if (i)
			*o++ = ',';
		if (!events[i].message_id)
			tide_uuid_v4(id);
		memcpy(o, events[i].message_id ? events[i].message_id : id, 36);
		o += 36;
	}
	*o++ = '}';
	*o = '\0';
	return out;
}

/* Whether any event has the field: one that none has is sent as NULL, not as an array of
 * NULLs for the server to parse (unnest pads it with NULLs: the defaults). */
static bool any_set(const struct tide_event *events, size_t n, size_t field)
{
	for (size_t i = 0; i < n; i++)
		if (*(const char *const *)((const char *)&events[i] + field))
			return true;
	return false;
}

bool tide_schema_version_valid(const char *v)
{
	size_t len = strspn(v, "0123456789");
	return len > 0 && len <= 9 && v[len] == '\0' && v[0] != '0';
}

static char *dup_or_null(const char *s, bool *ok)
{
	if (!s)
		return NULL;
	char *c = strdup(s);
	*ok = *ok && c;
	return c;
}

int tide_append_check(const char *stream, const struct tide_event *events, size_t n,
                      int64_t expected, char *err, size_t errn)
{
	if (tide_check_name("stream name", stream, stream ? strlen(stream) : 0, TIDE_MAX_NAME_BYTES,
	                    err, errn))
		return TIDE_EINVAL;
	if (n == 0 || !events) {
		snprintf(err, errn, "no events to append");
		return TIDE_EINVAL;
	}
	if (expected < TIDE_EXPECT_STREAM_EXISTS) {
		snprintf(err, errn, "invalid expected version %" PRId64, expected);
		return TIDE_EINVAL;
	}
	return check_events(events, n, err, errn);
}

int tide_append_build(const char *stream, const char *partition, const struct tide_event *events,
                      size_t n, int64_t expected, bool ensure_partition, char *err, size_t errn,
                      struct tide_append **out)
{
	*out = NULL;
	int rc = tide_append_check(stream, events, n, expected, err, errn);
	if (rc)
		return rc;
	struct tide_append *a = calloc(1, sizeof(*a));
	if (!a) {
		snprintf(err, errn, "out of memory");
		return TIDE_ENOMEM;
	}
	enum shape shape = shape_of(expected);
	a->stmt = &stmts[shape][n > 1];
	a->expected = expected;
	a->n = n;
	a->ensure = ensure_partition;
	bool ok = true;
	a->values[0] = dup_or_null(stream, &ok);
	a->values[1] = dup_or_null(partition, &ok);
	if (n == 1) {
		a->values[2] = dup_or_null(events->type, &ok);
		a->values[3] = dup_or_null(events->data, &ok);
		a->values[4] = dup_or_null(events->metadata, &ok);
		char id[37];
		if (!events->message_id)
			tide_uuid_v4(id);
		a->values[5] = dup_or_null(events->message_id ? events->message_id : id, &ok);
		a->values[6] = dup_or_null(events->schema_version, &ok);
	} else {
		/* $3, $4, $5 and $7 (the ids, $6, are ids_text's) */
		static const size_t fields[5] = {offsetof(struct tide_event, type),
		                                 offsetof(struct tide_event, data),
		                                 offsetof(struct tide_event, metadata), 0,
		                                 offsetof(struct tide_event, schema_version)};
		for (int k = 0; k < 5; k++)
			if (k != 3 && any_set(events, n, fields[k]))
				ok = ok && (a->values[2 + k] = array_text(events, n, fields[k]));
		ok = ok && (a->values[5] = ids_text(events, n));
	}
	if (ok && shape == EXISTING && expected > 0) {
		char v[24];
		snprintf(v, sizeof(v), "%" PRId64, expected);
		a->values[7] = dup_or_null(v, &ok);
	}
	if (!ok) {
		tide_append_free(a);
		snprintf(err, errn, "out of memory");
		return TIDE_ENOMEM;
	}
	*out = a;
	return 0;
}

void tide_append_return_rows(struct tide_append *a, struct tide_append_rows *out)
{
	/* The same shape of statement, from the other table. */
	a->stmt = &rows_stmts[0][0] + (a->stmt - &stmts[0][0]);
	a->rows = out;
}

int tide_append_condition(struct tide_append *a, const struct tide_query *q, int64_t after,
                          char *err, size_t errn)
{
	if (after < 0) {
		snprintf(err, errn, "the position to check after must be >= 0, got %" PRId64,
		         after);
		return TIDE_EINVAL;
	}
	struct tide_query_params p;
	int rc = tide_query_params(q, &p, err, errn);
	if (rc)
		return rc;
	size_t shape = (size_t)(a->stmt - &stmts[0][0]) / 2, many = a->n > 1;
	int first = shape == EXISTING ? 8 : 7;
	char pos[24];
	snprintf(pos, sizeof(pos), "%" PRId64, after);
	bool ok = true;
	a->values[first] = p.types;
	a->values[first + 1] = p.data;
	a->values[first + 2] = dup_or_null(pos, &ok);
	if (!ok) {
		snprintf(err, errn, "out of memory");
		return TIDE_ENOMEM;
	}
	a->stmt = &if_stmts[shape][many];
	a->conditional = true;
	a->after = after;
	return 0;
}

/* A plain append's reply: a row per event, with its global and stream positions (then, for
 * tide_append_return_rows, its message id and time stamp into a->rows); the stream
 * positions say which event each row is, the highest is the stream's new version. Fills r;
 * its positions are malloc'd into *positions. 0, or TIDE_ENOMEM, or TIDE_EDB when the reply
 * is not what the statement gives (a trigger of someone else's on the tables?). */
static int take_reply(struct tide_append *a, PGresult *res, struct tide_append_result *r,
                      int64_t **positions)
{
	size_t n = a->n;
	if ((size_t)PQntuples(res) != n || PQnfields(res) < (a->rows ? 4 : 2))
		return TIDE_EDB;
	int64_t last = 0;
	for (size_t i = 0; i < n; i++) {
		int64_t v = strtoll(PQgetvalue(res, (int)i, 1), NULL, 10);
		last = v > last ? v : last;
	}
	struct tide_append_rows *out = a->rows;
	if (!(*positions = malloc(n * sizeof(**positions))) ||
	    (out && !(out->message_ids = calloc(n, sizeof(*out->message_ids)))))
		return TIDE_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		int64_t k = strtoll(PQgetvalue(res, (int)i, 1), NULL, 10) - (last - (int64_t)n) - 1;
		if (k < 0 || k >= (int64_t)n)
			return TIDE_EDB;
		(*positions)[k] = strtoll(PQgetvalue(res, (int)i, 0), NULL, 10);
		if (out)
			snprintf(out->message_ids[k], sizeof(out->message_ids[k]), "%s",
			         PQgetvalue(res, (int)i, 2));
	}
	if (out) {
		out->count = n;
		snprintf(out->created, sizeof(out->created), "%s", PQgetvalue(res, 0, 3));
	}
	r->next_expected_version = last;
	r->global_positions = *positions;
	r->count = n;
	return 0;
}

static void done(struct tide_append *a, int status, const char *err,
                 const struct tide_append_result *r)
{
	a->cb(status, err, r, a->arg);
	tide_append_free(a);
}

size_t tide_append_parse_positions(const char *text, int64_t **out)
{
	/* text is a PostgreSQL array literal of bigints: {1,2,3} */
	size_t n = 1;
	for (const char *p = text; *p; p++)
		n += *p == ',';
	int64_t *v = malloc(n * sizeof(*v));
	size_t count = 0;
	for (const char *p = text; v && *p && count < n;) {
		if (*p == '-' || (*p >= '0' && *p <= '9')) {
			char *end;
			v[count++] = strtoll(p, &end, 10);
			p = end;
		} else {
			p++;
		}
	}
	*out = v;
	return v ? count : 0;
}

bool tide_append_lost(const struct tide_pg_reply *reply)
{
	/* The server going away answers with an error of its own (57P01 on a fast shutdown or
	 * pg_terminate_backend). */
	return reply->status == TIDE_ECONN ||
	       (reply->status == TIDE_EDB && (strncmp(reply->sqlstate, "57P0", 4) == 0 ||
	                                      strncmp(reply->sqlstate, "08", 2) == 0));
}

static int send_append(struct tide_append *a);

bool tide_append_holds(int64_t expected, int64_t actual)
{
	if (expected == TIDE_EXPECT_ANY)
		return true;
	if (expected == TIDE_EXPECT_NO_STREAM)
		return actual < 0;
	if (expected == TIDE_EXPECT_STREAM_EXISTS)
		return actual >= 0;
	return (actual < 0 ? 0 : actual) == expected;
}

void tide_append_conflict_text(int64_t expected, int64_t actual, char *buf, size_t n)
{
	char exp[32], act[32];
	tide_expected_format(expected, exp, sizeof(exp));
	if (actual < 0)
		snprintf(act, sizeof(act), "no stream");
	else
		snprintf(act, sizeof(act), "version %" PRId64, actual);
	snprintf(buf, n, "version conflict: expected %s, found %s", exp, act);
}

int64_t tide_stream_version_found(const PGresult *res)
{
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
		return -1;
	return strtoll(PQgetvalue(res, 0, 0), NULL, 10);
}

bool tide_stream_archived(const PGresult *res)
{
	return tide_stream_version_found(res) < 0 && PQnfields(res) >= 2 &&
	       PQgetvalue(res, 0, 1)[0] == 't';
}

void tide_archived_text(const char *stream, const char *what, char *buf, size_t n)
{
	char shown[160];
	tide_snippet(shown, sizeof(shown), stream, strlen(stream), 100);
	snprintf(buf, n, "stream %s is archived%s", shown, what);
}

int tide_append_conflict(const PGresult *res, const char *stream, struct tide_append_result *r,
                         char *buf, size_t n)
{
	r->actual = tide_stream_version_found(res);
	r->archived = tide_stream_archived(res);
	char conflict[200];
	tide_append_conflict_text(r->expected, r->actual, conflict, sizeof(conflict));
	if (!r->archived) {
		snprintf(buf, n, "%s", conflict);
		return TIDE_ECONFLICT;
	}
	char what[320];
	snprintf(what, sizeof(what),
	         " (%s): nothing was written; to begin it again, append with expected "
	         "no_stream or any",
	         conflict);
	tide_archived_text(stream, what, buf, n);
	return TIDE_ECONFLICT;
}

static void on_version(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_append *a = arg;
	char buf[640];
	if (reply->status) {
		snprintf(buf, sizeof(buf),
		         "the append found a different version and wrote nothing, but reading "
		         "that version failed: %s",
		         reply->err);
		done(a, tide_append_lost(reply) ? TIDE_ECONN : reply->status, buf, NULL);
		return;
	}
	struct tide_append_result r = {.expected = a->expected, .actual = -1};
	int status = tide_append_conflict(reply->res, a->values[0], &r, buf, sizeof(buf));
	if (tide_append_holds(a->expected, r.actual) && a->sends < MAX_SENDS) {
		/* The stream changed between the two statements: try again. */
		if (send_append(a) != 0)
			done(a, TIDE_ECONN, tide_pg_error(a->pg), NULL);
		return;
	}
	done(a, status, buf, &r);
}

static void on_append(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_append *a = arg;
	char buf[640];
	if (a->ensure_err) {
		done(a, TIDE_EDB, a->ensure_err, NULL);
		return;
	}
	if (tide_append_lost(reply) && reply->sent) {
		/* The append reached the server and its answer did not come back. */
		snprintf(buf, sizeof(buf),
		         "the connection was lost after the append was sent, so it may or may not "
		         "have been committed (read the stream to find out): %s",
		         reply->err);
		done(a, TIDE_EUNKNOWN, buf, NULL);
		return;
	}
	if (reply->status) {
		done(a, reply->status, tide_pg_explain(reply, buf, sizeof(buf)), NULL);
		return;
	}
	if (a->conditional && PQntuples(reply->res) == 1 && !PQgetisnull(reply->res, 0, 2)) {
		struct tide_append_result r = {.expected = a->expected, .actual = -1};
		r.found_position = strtoll(PQgetvalue(reply->res, 0, 2), NULL, 10);
		snprintf(buf, sizeof(buf),
		         "conflict: an event matching the query was appended after global "
		         "position %" PRId64 " (the first at global position %" PRId64
		         "); nothing was written",
		         a->after, r.found_position);
		done(a, TIDE_ECONFLICT, buf, &r);
		return;
	}
	/* No row (a conditional append: no version) means the expectation did not hold. */
	if (PQntuples(reply->res) == 0 || (a->conditional && PQgetisnull(reply->res, 0, 0))) {
		const char *v[2] = {a->values[0], a->values[1]};
		if (tide_pg_exec(a->pg, &tide_stmt_stream_version, v, on_version, a) != 0)
			done(a, TIDE_ECONN, tide_pg_error(a->pg), NULL);
		return;
	}
	int64_t *positions = NULL;
	struct tide_append_result r = {.expected = a->expected, .actual = -1};
	int status;
	if (a->conditional) {
		/* One row: the new version and the positions (an array for more than one). */
		r.next_expected_version = strtoll(PQgetvalue(reply->res, 0, 0), NULL, 10);
		r.count = tide_append_parse_positions(PQgetvalue(reply->res, 0, 1), &positions);
		r.global_positions = positions;
		status = positions ? 0 : TIDE_ENOMEM;
	} else {
		status = take_reply(a, reply->res, &r, &positions);
	}
	if (status == 0)
		done(a, 0, NULL, &r);
	else
		done(a, status,
		     status == TIDE_ENOMEM
		             ? "out of memory"
		             : "the append's reply does not have a row per event at its stream "
		               "position (does a trigger on emt_messages change its rows?): read "
		               "the stream to see what was written",
		     NULL);
	free(positions);
}

static void on_ensure(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_append *a = arg;
	char buf[640];
	if (reply->status == 0)
		return;
	a->ensure_err = strdup(tide_pg_explain(reply, buf, sizeof(buf)));
	if (!a->ensure_err)
		a->ensure_err = strdup("out of memory");
}

static int send_append(struct tide_append *a)
{
	a->sends++;
	int rc = tide_pg_exec(a->pg, a->stmt, (const char *const *)a->values, on_append, a);
	if (rc == 0 && a->wake)
		tide_wake(a->pg, a->wake);
	return rc;
}

int tide_append_send(struct tide_pg *pg, struct tide_append *a, struct tide_wake *wake,
                     tide_append_cb cb, void *arg)
{
	a->pg = pg;
	a->wake = wake;
	a->cb = cb;
	a->arg = arg;
	/* The check's error, if any, is the append's: the append itself then fails too (no
	 * table takes its rows), and its reply comes after this one. */
	const char *v[1] = {a->values[1]};
	if ((a->ensure && tide_pg_exec(pg, &stmt_ensure_partition, v, on_ensure, a) != 0) ||
	    send_append(a) != 0) {
		tide_append_free(a);
		return TIDE_ECONN;
	}
	return 0;
}

/* --- wake-ups -------------------------------------------------------------------------- */

static const struct tide_pg_stmt stmt_wake = {"tide_wake", TIDE_WAKE_SQL, 0};

static void send_wake(struct tide_wake *w);

static void on_wake(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_wake *w = arg;
	w->in_flight = false;
	/* A failed wake-up is not the append's failure: consumers still find the events by
	 * their probe. */
	if (reply->status || w->unwanted)
		w->owed = false;
	else if (w->owed && !w->asking)
		send_wake(w);
	/* else an answer is on its way: it decides (on_wanted) */
}

static void send_wake(struct tide_wake *w)
{
	w->owed = false;
	w->in_flight = tide_pg_exec(w->pg, &stmt_wake, NULL, on_wake, w) == 0;
}

/* Whether a daemon needs the NOTIFY (sql/0018). A database without the function (an older
 * schema) or a role that may not read tide_daemons gets them all, and is asked again only a
 * minute later, not to fill the server's log with the same error. */
static const struct tide_pg_stmt stmt_wanted = {"tide_wake_wanted", "SELECT tide_wake_wanted()", 0};

static void on_wanted(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_wake *w = arg;
	w->asking = false;
	if (reply->status == TIDE_ECLOSED)
		return;
	bool answered = reply->status == 0 && PQntuples(reply->res) == 1;
	w->unwanted = answered && PQgetvalue(reply->res, 0, 0)[0] == 'f';
	if (!answered)
		w->ask_at += 60000 - TIDE_WAKE_ASK_MS;
	if (w->owed && !w->in_flight) {
		if (w->unwanted)
			w->owed = false;
		else if (tide_pg_ready(w->pg))
			send_wake(w);
	}
}

static void ask(struct tide_pg *pg, struct tide_wake *w)
{
	uint64_t now = uv_now(tide_pg_loop(pg));
	if (!w->asking && now >= w->ask_at && tide_pg_ready(pg)) {
		w->ask_at = now + TIDE_WAKE_ASK_MS;
		w->asking = tide_pg_exec(pg, &stmt_wanted, NULL, on_wanted, w) == 0;
	}
}

void tide_wake(struct tide_pg *pg, struct tide_wake *w)
{
	if (w->pg != pg) { /* another connection (perhaps to another database): ask afresh */
		w->pg = pg;
		w->in_flight = w->owed = w->asking = w->unwanted = false;
		w->ask_at = 0;
	}
	/* Until the first answer, as after a failed one, it is sent: a process that appends
	 * once and exits (the CLI) cannot wait for the answer. The question goes behind the
	 * NOTIFY, which must reach the server right behind the commit, before the connection
	 * closes. */
	if (!w->unwanted) {
		if (w->in_flight)
			w->owed = true;
		else if (tide_pg_ready(pg))
			send_wake(w);
	}
	ask(pg, w);
}
