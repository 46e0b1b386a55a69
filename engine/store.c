/* store.c — where appends happen and where stream and global reads are issued:
 * tide_store_* turns requests into prepared statements on one pipelined connection
 * and the replies into tide_message arrays. The SQL side lives in sql/0002_tide_store.sql. */
#include "store.h"

#include "append.h"
#include "json.h"
#include "query.h"

#include <cJSON.h>
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads fetch their rows in binary: positions as integers, data and metadata as jsonb's
 * text behind a version byte, and `created` as microseconds, formatted here as to_char(created
 * AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') would (format_created), which cost the
 * server 3-5 ms per 10,000 rows. A stream read leaves out what it knows (the stream) and what
 * it has no use for (the transaction id). */
#define STREAM_READ_COLUMNS                                                                        \
	"stream_position, global_position, message_type, message_data, message_metadata, "         \
	"message_id, created, message_schema_version"

static const struct tide_pg_stmt stmt_read_forward = {
        "tide_read_forward",
        "SELECT " STREAM_READ_COLUMNS " FROM emt_messages"
        " WHERE stream_id = $1 AND partition = $5 AND NOT is_archived"
        " AND stream_position BETWEEN $2 AND $3 ORDER BY stream_position LIMIT $4",
        5,
};

static const struct tide_pg_stmt stmt_read_backward = {
        "tide_read_backward",
        "SELECT " STREAM_READ_COLUMNS " FROM emt_messages"
        " WHERE stream_id = $1 AND partition = $5 AND NOT is_archived"
        " AND stream_position BETWEEN $2 AND $3 ORDER BY stream_position DESC LIMIT $4",
        5,
};

/* The gap-safe global read: see DESIGN.md "Reading" and tide_read_all() in sql/. Rows of
 * transactions at or above the snapshot's xmin may still be joined by rows with lower
 * global positions. With a filter (types $5, shard $6 of $7) the function ends with a
 * marker row (stream_id NULL) at the last row it walked, so the cursor moves past the rows
 * left out. $4 NULL reads every partition. */
static const struct tide_pg_stmt stmt_read_all = {
        "tide_read_all",
        "SELECT stream_id, stream_position, global_position, transaction_id, message_type,"
        " message_data, message_metadata, message_id, created, partition, message_schema_version"
        " FROM tide_read_all($1::xid8, $2::bigint, $3::bigint, $4, $5::text[], $6::int, $7::int)",
        7,
};

/* The global read stops below the oldest running transaction that wrote something (its
 * xid is the snapshot's xmin): name it once it has been open long enough to matter. */
const struct tide_pg_stmt tide_stmt_held_back = {
        "tide_held_back",
        "SELECT pid, coalesce(usename, '?'), coalesce(nullif(application_name, ''), '?'),"
        "  coalesce(state, '?'), extract(epoch FROM now() - xact_start)::int"
        " FROM pg_stat_activity"
        " WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
        "  AND xact_start < now() - interval '5 seconds'"
        " ORDER BY age(backend_xid) DESC LIMIT 1",
        0,
};

static char tide_application_name[64] = "tide";

struct call {
	struct tide_store *store;
	union {
		tide_append_cb append;
		tide_read_cb read;
	} cb;
	void *arg;
	unsigned partition_gen; /* an append's: the store's partition when it was sent */
	struct tide_cursor after;
	bool global; /* a read of the global log */
};

const char *tide_strerror(int code)
{
	switch (code) {
	case TIDE_OK: return "ok";
	case TIDE_EINVAL: return "invalid";
	case TIDE_ECONFLICT: return "conflict";
	case TIDE_ECONN: return "connection";
	case TIDE_EDB: return "database";
	case TIDE_ENOMEM: return "memory";
	case TIDE_ECLOSED: return "closed";
	case TIDE_EUNKNOWN: return "unknown";
	case TIDE_ESCRIPT: return "script";
	case TIDE_EARCHIVED: return "archived";
	default: return "error";
	}
}

int tide_store_fail(struct tide_store *store, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(store->error, sizeof(store->error), fmt, ap);
	va_end(ap);
	return code;
}

#define fail tide_store_fail

static void on_open(struct tide_pg *pg, int status, const char *err, void *arg)
{
	(void)pg;
	struct tide_store *store = arg;
	if (status)
		snprintf(store->error, sizeof(store->error), "%s", err);
	if (store->open_cb)
		store->open_cb(store, status, err, store->open_arg);
}

int tide_store_open_named(uv_loop_t *loop, const char *url, const char *application_name,
                          tide_open_cb cb, void *arg, struct tide_store **out)
{
	*out = NULL;
	struct tide_store *store = calloc(1, sizeof(*store));
	if (!store)
		return TIDE_ENOMEM;
	store->loop = loop;
	store->open_cb = cb;
	store->open_arg = arg;
	snprintf(store->partition, sizeof(store->partition), "%s", TIDE_DEFAULT_PARTITION);
	store->partition_ready = true; /* the default partition's tables come with migrate */
	snprintf(store->application_name, sizeof(store->application_name), "%s",
	         application_name ? application_name : tide_application_name);
	store->url = strdup(url ? url : "");
	if (!store->url) {
		free(store);
		return TIDE_ENOMEM;
	}
	int rc = tide_pg_open(loop, store->url, store->application_name, TIDE_PG_PIPELINE, on_open,
	                      store, &store->pg);
	if (rc) {
		free(store->url);
		free(store);
		return rc;
	}
	*out = store;
	return 0;
}

int tide_store_open(uv_loop_t *loop, const char *url, tide_open_cb cb, void *arg,
                    struct tide_store **out)
{
	return tide_store_open_named(loop, url, NULL, cb, arg, out);
}

void tide_set_application_name(const char *name)
{
	snprintf(tide_application_name, sizeof(tide_application_name), "%s",
	         name && name[0] ? name : "tide");
}

static void close_bulk(struct tide_store *store);

void tide_store_close(struct tide_store *store)
{
	if (!store)
		return;
	close_bulk(store);
	if (store->inline_ops)
		store->inline_ops->close(store); /* fails the appends it holds, in order */
	tide_pg_close(store->pg);
	free(store->url);
	free(store);
}

int tide_store_set_partition(struct tide_store *store, const char *partition)
{
	size_t len = partition ? strlen(partition) : 0;
	if (len > TIDE_MAX_PARTITION_BYTES)
		return fail(store, TIDE_EINVAL,
		            "the partition name is %zu bytes long; at most %d are allowed "
		            "(PostgreSQL's 63-byte table names must hold "
		            "emt_messages_<partition>_archived)",
		            len, TIDE_MAX_PARTITION_BYTES);
	if (tide_check_partition(partition, len, store->error, sizeof(store->error)))
		return TIDE_EINVAL;
	memcpy(store->partition, partition, len + 1);
	store->partition_gen++;
	store->partition_ready = strcmp(partition, TIDE_DEFAULT_PARTITION) == 0;
	return 0;
}

const char *tide_store_partition(const struct tide_store *store)
{
	return store->partition;
}

bool tide_store_connected(const struct tide_store *store)
{
	return tide_pg_ready(store->pg);
}

static void on_reopen(struct tide_pg *pg, int status, const char *err, void *arg)
{
	(void)pg;
	struct tide_store *store = arg;
	store->reconnecting = false;
	if (status)
		snprintf(store->error, sizeof(store->error), "%s", err);
	else
		store->error[0] = '\0';
	tide_open_cb cb = store->reopen_cb;
	store->reopen_cb = NULL;
	if (cb)
		cb(store, status, err, store->reopen_arg);
}

int tide_store_reconnect(struct tide_store *store, tide_open_cb cb, void *arg)
{
	if (store->reconnecting || tide_pg_ready(store->pg))
		return fail(store, TIDE_EINVAL, "the store is connected or connecting");
	if (tide_store_inline_busy(store))
		return fail(store, TIDE_EINVAL,
		            "an append with inline projections is still ending: wait for its "
		            "callback");
	if (!tide_pg_idle(store->pg))
		return fail(store, TIDE_EINVAL,
		            "requests of the lost connection are still failing");
	struct tide_pg *fresh = NULL;
	int rc = tide_pg_open(store->loop, store->url, store->application_name, TIDE_PG_PIPELINE,
	                      on_reopen, store, &fresh);
	if (rc)
		return fail(store, rc, "out of memory");
	tide_pg_close(store->pg);
	store->pg = fresh;
	store->reconnecting = true;
	store->reopen_cb = cb;
	store->reopen_arg = arg;
	return 0;
}

const char *tide_store_error(const struct tide_store *store)
{
	return store->error;
}

void tide_store_wake(struct tide_store *store)
{
	tide_wake(store->pg, &store->wake);
}

bool tide_store_usable(struct tide_store *store)
{
	if (tide_pg_ready(store->pg))
		return true;
	if (store->error[0])
		return false;
	const char *why = tide_pg_error(store->pg);
	if (why && *why) /* lost while nothing was in flight to hear of it */
		fail(store, TIDE_ECONN, "the connection to the database was lost: %s", why);
	else
		fail(store, TIDE_ECONN, "not connected to the database");
	return false;
}

static void on_append(int status, const char *err, const struct tide_append_result *r, void *arg)
{
	struct call *c = arg;
	if (status == 0 && c->partition_gen == c->store->partition_gen)
		c->store->partition_ready = true;
	c->cb.append(status, err, r, c->arg);
	free(c);
}

/* --- appends by COPY, on the store's second connection (append_copy.c) ------------- */

/* Fails the appends still waiting for that connection (a later loop turn than theirs). */
static void fail_waiting(struct tide_store *store, int status, const char *err)
{
	struct tide_copy_append *ca = store->bulk_waiting;
	store->bulk_waiting = NULL;
	while (ca) {
		struct tide_copy_append *next = *tide_copy_append_next(ca);
		tide_copy_append_fail(ca, status, err);
		ca = next;
	}
}

#define CANNOT_QUEUE "cannot send the append on the connection for large appends"

static void on_bulk_open(struct tide_pg *pg, int status, const char *err, void *arg)
{
	(void)pg;
	struct tide_store *store = arg;
	if (status) {
		char buf[640];
		snprintf(buf, sizeof(buf), "cannot open the connection for large appends: %s", err);
		fail_waiting(store, TIDE_ECONN, buf);
		return;
	}
	while (store->bulk_waiting) {
		struct tide_copy_append *ca = store->bulk_waiting;
		store->bulk_waiting = *tide_copy_append_next(ca);
		if (!tide_copy_append_queue(store->bulk, ca)) {
			tide_pg_close(store->bulk);
			store->bulk = NULL;
			tide_copy_append_fail(ca, TIDE_ECONN, CANNOT_QUEUE);
			fail_waiting(store, TIDE_ECONN, CANNOT_QUEUE);
			return;
		}
	}
}

static void close_bulk(struct tide_store *store)
{
	fail_waiting(store, TIDE_ECLOSED, "the connection was closed");
	tide_pg_close(store->bulk);
	store->bulk = NULL;
}

static int append_copy(struct tide_store *store, const char *stream,
                       const struct tide_event *events, size_t n, int64_t expected,
                       tide_append_cb cb, void *arg)
{
	if (!tide_store_usable(store))
		return TIDE_ECONN;
	struct call *c = calloc(1, sizeof(*c));
	if (!c)
		return fail(store, TIDE_ENOMEM, "out of memory");
	c->store = store;
	c->cb.append = cb;
	c->arg = arg;
	c->partition_gen = store->partition_gen;
	struct tide_copy_append *ca = NULL;
	int rc = tide_copy_append_build(stream, store->partition, events, n, expected,
	                                !store->partition_ready, on_append, c, store->error,
	                                sizeof(store->error), &ca);
	if (rc) {
		free(c);
		return rc;
	}
	if (store->bulk && !tide_pg_ready(store->bulk) && !store->bulk_waiting) {
		/* Lost since its last use: open it again. */
		tide_pg_close(store->bulk);
		store->bulk = NULL;
	}
	if (!store->bulk) {
		rc = tide_pg_open(store->loop, store->url, store->application_name, TIDE_PG_SIMPLE,
		                  on_bulk_open, store, &store->bulk);
		if (rc) {
			tide_copy_append_discard(ca);
			free(c);
			return fail(store, rc, "out of memory");
		}
	}
	if (!tide_pg_ready(store->bulk)) {
		/* Opening: queued once it is open. */
		struct tide_copy_append **tail = &store->bulk_waiting;
		while (*tail)
			tail = tide_copy_append_next(*tail);
		*tail = ca;
		return 0;
	}
	if (!tide_copy_append_queue(store->bulk, ca)) {
		tide_pg_close(store->bulk);
		store->bulk = NULL;
		tide_copy_append_discard(ca);
		free(c);
		return fail(store, TIDE_ECONN, CANNOT_QUEUE);
	}
	return 0;
}

static int send_append(struct tide_store *store, struct tide_append *a, tide_append_cb cb,
                       void *arg);

int tide_store_append(struct tide_store *store, const char *stream, const struct tide_event *events,
                      size_t n, int64_t expected, tide_append_cb cb, void *arg)
{
	int rc;
	if (store->inline_ops &&
	    store->inline_ops->append(store, stream, events, n, expected, cb, arg, &rc))
		return rc;
	if (n >= TIDE_COPY_MIN_EVENTS && !store->in_transaction)
		return append_copy(store, stream, events, n, expected, cb, arg);
	struct tide_append *a = NULL;
	rc = tide_append_build(stream, store->partition, events, n, expected,
	                       !store->partition_ready, store->error, sizeof(store->error), &a);
	if (rc)
		return rc;
	return send_append(store, a, cb, arg);
}

/* Sends a built append on the store's connection; takes it. */
static int send_append(struct tide_store *store, struct tide_append *a, tide_append_cb cb,
                       void *arg)
{
	if (!tide_store_usable(store)) {
		tide_append_free(a);
		return TIDE_ECONN;
	}
	struct call *c = calloc(1, sizeof(*c));
	if (!c) {
		tide_append_free(a);
		return fail(store, TIDE_ENOMEM, "out of memory");
	}
	c->store = store;
	c->cb.append = cb;
	c->arg = arg;
	c->partition_gen = store->partition_gen;
	/* Outside a transaction of the caller's, the wake-up goes right behind the append's
	 * commit; inside, tide_store_commit sends it. */
	if (tide_append_send(store->pg, a, store->in_transaction ? NULL : &store->wake, on_append,
	                     c) != 0) {
		free(c);
		return fail(store, TIDE_ECONN, "cannot send the append: %s",
		            tide_pg_error(store->pg));
	}
	if (store->in_transaction)
		store->appended_in_transaction = true;
	return 0;
}

int tide_store_append_if(struct tide_store *store, const struct tide_query *query,
                         int64_t after_position, const char *stream,
                         const struct tide_event *events, size_t n, int64_t expected,
                         tide_append_cb cb, void *arg)
{
	/* Inline projections need a transaction around the append (inline.c): not for these. */
	if (tide_store_inline_busy(store))
		return fail(store, TIDE_EINVAL,
		            "an append with inline projections is in flight: wait for its callback "
		            "before an append_if");
	if (store->inline_ops && store->inline_ops->wants(store, events, n))
		return fail(store, TIDE_EINVAL,
		            "append_if does not run inline projections, and an inline projection "
		            "of this store takes these events");
	struct tide_append *a = NULL;
	int rc = tide_append_build(stream, store->partition, events, n, expected,
	                           !store->partition_ready, store->error, sizeof(store->error), &a);
	if (!rc)
		rc = tide_append_condition(a, query, after_position, store->error,
		                           sizeof(store->error));
	if (rc) {
		tide_append_free(a);
		return rc;
	}
	return send_append(store, a, cb, arg);
}

/* Where a read's columns are in its rows (-1: not fetched). */
struct read_columns {
	int stream_id, stream_position, global_position, transaction_id, type, data, metadata,
	        message_id, created, partition, schema_version;
};
static const struct read_columns stream_read_columns = {-1, 0, 1, -1, 2, 3, 4, 5, 6, -1, 7};
static const struct read_columns global_read_columns = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10};

/* Most events of a read share their day: its text is made once. */
struct date_cache {
	int64_t day;
	size_t len;
	char text[16];
};

/* A read in flight; the rows of a stream read all have its stream and partition, kept
 * here. */
struct read_call {
	struct call c;
	char partition[TIDE_MAX_PARTITION_BYTES + 1]; /* the store's, when it was sent */
	/* tide_store_read_stream_each: where the messages go, how many went, whether one
	 * could not be read, and the day of the last one */
	tide_read_each_cb each;
	size_t handed_on;
	bool bad_jsonb;
	struct date_cache dates;
	char stream[];
};

/* A stream read that found nothing: is the stream archived? */
static void on_archived(const struct tide_pg_reply *reply, void *arg)
{
	struct read_call *rc = arg;
	struct call *c = &rc->c;
	char buf[640];
	if (reply->status) {
		c->cb.read(reply->status, tide_pg_explain(reply, buf, sizeof(buf)), NULL, c->arg);
	} else if (tide_stream_archived(reply->res)) {
		tide_archived_text(rc->stream,
		                   ": it was archived and has not been begun again (its events are "
		                   "kept with is_archived = true)",
		                   buf, sizeof(buf));
		c->cb.read(TIDE_EARCHIVED, buf, NULL, c->arg);
	} else {
		struct tide_read_result r = {.next = c->after};
		c->cb.read(0, NULL, &r, c->arg);
	}
	free(rc);
}

/* An int8 or xid8 in binary (8 bytes, big-endian); 0 when NULL, as text would give. */
static uint64_t binary_u64(const PGresult *res, int row, int col)
{
	if (PQgetlength(res, row, col) != 8)
		return 0;
	uint64_t x;
	memcpy(&x, PQgetvalue(res, row, col), 8);
	return be64toh(x);
}

/* jsonb in binary is a version byte (1) and the text; NULL: "" as text would give. */
static const char *binary_jsonb(const PGresult *res, int row, int col, bool *ok)
{
	const char *v = PQgetvalue(res, row, col);
	if (PQgetlength(res, row, col) == 0)
		return v;
	*ok = *ok && v[0] == 1;
	return v + 1;
}

/* Days since 1970-01-01 as a proleptic Gregorian date, as PostgreSQL counts them. */
static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
	z += 719468; /* from 0000-03-01, so that a leap day ends each 4-year cycle */
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t doe = z - era * 146097;                                      /* [0, 146096] */
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* [0, 399] */
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);               /* [0, 365] */
	int64_t mp = (5 * doy + 2) / 153;                                    /* March = 0 */
	*d = (int)(doy - (153 * mp + 2) / 5 + 1);
	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = yoe + era * 400 + (*m <= 2);
}

static const char two_digits[] = "00010203040506070809101112131415161718192021222324252627282930"
                                 "31323334353637383940414243444546474849505152535455565758596061"
                                 "62636465666768697071727374757677787980818283848586878889909192"
                                 "93949596979899";

static char *put2(char *o, uint32_t v)
{
	memcpy(o, two_digits + 2 * v, 2);
	return o + 2;
}

/* The day (from 2000-01-01, PostgreSQL's epoch) and the microseconds into it, as floors. */
static int64_t split_day(int64_t us, int64_t *t)
{
	int64_t day = us / 86400000000;
	*t = us % 86400000000;
	if (*t < 0) {
		*t += 86400000000;
		day--;
	}
	return day;
}

/* The day as to_char's 'YYYY-MM-DD"T"' (YYYY: at least 4 digits, 294276 at most; BC years
 * count from 1 BC = 1); its length. */
static size_t format_date(int64_t day, char *buf)
{
	int64_t y;
	int mo, d;
	civil_from_days(day + 10957, &y, &mo, &d);
	uint32_t year = (uint32_t)(y <= 0 ? 1 - y : y);
	char digits[8];
	int n = 0;
	do {
		digits[n++] = (char)('0' + year % 10);
		year /= 10;
	} while (year && n < 7);
	while (n < 4)
		digits[n++] = '0';
	char *o = buf;
	while (n)
		*o++ = digits[--n];
	*o++ = '-';
	o = put2(o, (uint32_t)mo);
	*o++ = '-';
	o = put2(o, (uint32_t)d);
	*o++ = 'T';
	return (size_t)(o - buf);
}

/* t microseconds into a day as 'HH24:MI:SS.US"Z"', with the NUL. */
static void format_time(int64_t t, char *o)
{
	uint32_t secs = (uint32_t)(t / 1000000), us = (uint32_t)(t % 1000000);
	o = put2(o, secs / 3600);
	*o++ = ':';
	o = put2(o, secs / 60 % 60);
	*o++ = ':';
	o = put2(o, secs % 60);
	*o++ = '.';
	o = put2(o, us / 10000);
	o = put2(o, us / 100 % 100);
	o = put2(o, us % 100);
	*o++ = 'Z';
	*o = '\0';
}

static bool infinite(int64_t us)
{
	return us == INT64_MIN || us == INT64_MAX; /* to_char gives NULL for them */
}

/* The text of `created`: "2026-01-31T12:34:56.123456Z" (at most 30 bytes with the NUL). */
#define CREATED_BYTES 32

static void format_created(struct date_cache *dc, int64_t us, char *buf)
{
	if (infinite(us)) {
		buf[0] = '\0';
		return;
	}
	int64_t t, day = split_day(us, &t);
	if (!dc->len || dc->day != day) {
		dc->day = day;
		dc->len = format_date(day, dc->text);
	}
	memcpy(buf, dc->text, dc->len);
	format_time(t, buf + dc->len);
}

/* Row i of a read as a message (its created text written to created_text, CREATED_BYTES);
 * false for the marker row of a filtered global read, which only moves *at. *ok turns
 * false when a jsonb value is in a format this code cannot read. */
static bool message_at(const PGresult *res, int i, const struct read_columns *col,
                       const struct read_call *rc, struct date_cache *dates, char *created_text,
                       struct tide_message *e, struct tide_cursor *at, bool *ok)
{
	at->transaction_id = col->transaction_id >= 0 ? binary_u64(res, i, col->transaction_id) : 0;
	at->global_position = (int64_t)binary_u64(res, i, col->global_position);
	if (col->stream_id >= 0 && PQgetisnull(res, i, col->stream_id))
		return false;
	e->stream_id = col->stream_id >= 0 ? PQgetvalue(res, i, col->stream_id) : rc->stream;
	e->stream_position = (int64_t)binary_u64(res, i, col->stream_position);
	e->global_position = at->global_position;
	e->transaction_id = at->transaction_id;
	e->type = PQgetvalue(res, i, col->type);
	e->data = binary_jsonb(res, i, col->data, ok);
	e->metadata = binary_jsonb(res, i, col->metadata, ok);
	e->message_id = PQgetvalue(res, i, col->message_id);
	e->partition = col->partition >= 0 ? PQgetvalue(res, i, col->partition) : rc->partition;
	e->schema_version = PQgetvalue(res, i, col->schema_version);
	e->created = created_text;
	if (PQgetisnull(res, i, col->created))
		created_text[0] = '\0';
	else
		format_created(dates, (int64_t)binary_u64(res, i, col->created), created_text);
	return true;
}

static const char BAD_JSONB[] = "the server sent jsonb in a format this tide cannot read";

/* A stream read that found nothing asks whether the stream is archived: the answer ends
 * the read (on_archived), or the read ends at once when the question cannot go out. */
static void ask_archived(struct read_call *rc)
{
	const char *v[2] = {rc->stream, rc->partition};
	if (tide_pg_exec(rc->c.store->pg, &tide_stmt_stream_version, v, on_archived, rc) == 0)
		return;
	rc->c.cb.read(TIDE_ECONN, tide_pg_error(rc->c.store->pg), NULL, rc->c.arg);
	free(rc);
}

static void on_read(const struct tide_pg_reply *reply, void *arg)
{
	struct read_call *rc = arg;
	struct call *c = &rc->c;
	char buf[640];
	if (reply->status) {
		c->cb.read(reply->status, tide_pg_explain(reply, buf, sizeof(buf)), NULL, c->arg);
		free(rc);
		return;
	}
	const struct read_columns *col = c->global ? &global_read_columns : &stream_read_columns;
	PGresult *res = reply->res;
	struct tide_read_result r = {.next = c->after};
	int rows = PQntuples(res);
	if (rows == 0 && !c->global) {
		ask_archived(rc);
		return;
	}
	/* The messages, then the text of their time stamps. */
	struct tide_message *m = rows ? calloc((size_t)rows, sizeof(*m) + CREATED_BYTES) : NULL;
	char *created = m ? (char *)(m + rows) : NULL;
	if (rows && !m) {
		c->cb.read(TIDE_ENOMEM, "out of memory", NULL, c->arg);
		free(rc);
		return;
	}
	int count = 0;
	bool ok = true;
	struct date_cache dates = {0};
	for (int i = 0; i < rows; i++) {
		struct tide_cursor at;
		if (message_at(res, i, col, rc, &dates, created + (size_t)count * CREATED_BYTES,
		               &m[count], &at, &ok))
			count++;
		r.next = at;
	}
	if (!c->global)
		r.next = c->after; /* only the global read has a cursor */
	r.messages = m;
	r.count = (size_t)count;
	if (ok)
		c->cb.read(0, NULL, &r, c->arg);
	else
		c->cb.read(TIDE_EDB, BAD_JSONB, NULL, c->arg);
	free(m);
	free(rc);
}

/* The rows of a read_stream_each as they arrive. */
static void on_each_rows(const PGresult *res, void *arg)
{
	struct read_call *rc = arg;
	for (int i = 0, n = PQntuples(res); i < n && !rc->bad_jsonb; i++) {
		char created[CREATED_BYTES];
		struct tide_message m;
		struct tide_cursor at;
		bool ok = true;
		(void)message_at(res, i, &stream_read_columns, rc, &rc->dates, created, &m, &at,
		                 &ok);
		rc->bad_jsonb = !ok;
		if (ok) {
			rc->each(&m, rc->c.arg);
			rc->handed_on++;
		}
	}
}

static void on_each_end(const struct tide_pg_reply *reply, void *arg)
{
	struct read_call *rc = arg;
	struct call *c = &rc->c;
	char buf[640];
	struct tide_read_result r = {.next = c->after};
	if (reply->status)
		c->cb.read(reply->status, tide_pg_explain(reply, buf, sizeof(buf)), NULL, c->arg);
	else if (rc->bad_jsonb)
		c->cb.read(TIDE_EDB, BAD_JSONB, NULL, c->arg);
	else if (rc->handed_on == 0) {
		ask_archived(rc);
		return;
	} else
		c->cb.read(0, NULL, &r, c->arg);
	free(rc);
}

/* A read_call for stream (NULL: a global read). */
static struct read_call *new_read(struct tide_store *store, const char *stream, tide_read_cb cb,
                                  void *arg)
{
	size_t n = stream ? strlen(stream) + 1 : 1;
	struct read_call *rc = calloc(1, sizeof(*rc) + n);
	if (!rc)
		return NULL;
	rc->c.store = store;
	rc->c.cb.read = cb;
	rc->c.arg = arg;
	rc->c.global = !stream;
	if (stream)
		memcpy(rc->stream, stream, n);
	memcpy(rc->partition, store->partition, sizeof(rc->partition));
	return rc;
}

static int send_read(struct tide_store *store, const struct tide_pg_stmt *stmt,
                     const char *const *values, struct read_call *rc)
{
	int err =
	        rc->each ? tide_pg_exec_rows(store->pg, stmt, values, on_each_rows, on_each_end, rc)
	                 : tide_pg_exec_binary(store->pg, stmt, values, on_read, rc);
	if (err) {
		free(rc);
		return fail(store, err, "cannot send the read: %s", tide_pg_error(store->pg));
	}
	return 0;
}

static int read_stream(struct tide_store *store, const char *stream,
                       const struct tide_read_opts *opts, tide_read_each_cb each, tide_read_cb cb,
                       void *arg)
{
	static const struct tide_read_opts all = {0};
	if (!opts)
		opts = &all;
	if (tide_check_name("stream name", stream, stream ? strlen(stream) : 0, TIDE_MAX_NAME_BYTES,
	                    store->error, sizeof(store->error)))
		return TIDE_EINVAL;
	if (opts->from < 0 || opts->to < 0 || opts->max < 0)
		return fail(store, TIDE_EINVAL, "from, to and max must not be negative");
	if (!tide_store_usable(store))
		return TIDE_ECONN;
	struct read_call *rc = new_read(store, stream, cb, arg);
	if (!rc)
		return fail(store, TIDE_ENOMEM, "out of memory");
	rc->each = each;
	char from[24], to[24], max[24];
	snprintf(from, sizeof(from), "%" PRId64, opts->from > 0 ? opts->from : 1);
	snprintf(to, sizeof(to), "%" PRId64, opts->to > 0 ? opts->to : INT64_MAX);
	snprintf(max, sizeof(max), "%" PRId64, opts->max);
	const char *values[5] = {stream, from, to, opts->max > 0 ? max : NULL, store->partition};
	return send_read(store, opts->backward ? &stmt_read_backward : &stmt_read_forward, values,
	                 rc);
}

int tide_store_read_stream(struct tide_store *store, const char *stream,
                           const struct tide_read_opts *opts, tide_read_cb cb, void *arg)
{
	return read_stream(store, stream, opts, NULL, cb, arg);
}

int tide_store_read_stream_each(struct tide_store *store, const char *stream,
                                const struct tide_read_opts *opts, tide_read_each_cb each,
                                tide_read_cb cb, void *arg)
{
	if (!each)
		return fail(store, TIDE_EINVAL, "each must be a function");
	return read_stream(store, stream, opts, each, cb, arg);
}

int tide_store_read_all(struct tide_store *store, const struct tide_cursor *after, int64_t max,
                        tide_read_cb cb, void *arg)
{
	return tide_store_read_all_types(store, after, max, NULL, 0, cb, arg);
}

int tide_store_count_after(struct tide_store *store, const struct tide_cursor *after,
                           const struct tide_log_filter *f, tide_pg_reply_cb cb, void *arg)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_count_after",
	        "SELECT count(*) FROM emt_messages WHERE ($1::text IS NULL OR partition = $1)"
	        " AND NOT is_archived AND global_position > $2::bigint"
	        " AND ($3::text[] IS NULL OR message_type = ANY($3::text[]))"
	        " AND ($5::int <= 1 OR tide_shard_of(stream_id, $5::int) = $4::int)",
	        5,
	};
	static const struct tide_log_filter none = {0};
	if (!f)
		f = &none;
	if (!tide_store_usable(store))
		return TIDE_ECONN;
	char *types = NULL;
	if (f->ntypes > 0 && !(types = tide_pg_text_array(f->types, f->ntypes)))
		return fail(store, TIDE_ENOMEM, "out of memory");
	char pos[24], shard[16], shards[16];
	snprintf(pos, sizeof(pos), "%" PRId64, after ? after->global_position : 0);
	snprintf(shard, sizeof(shard), "%d", f->shard);
	snprintf(shards, sizeof(shards), "%d", f->shards);
	const char *values[5] = {f->all_partitions ? NULL : store->partition, pos, types, shard,
	                         shards};
	int err = tide_pg_exec(store->pg, &stmt, values, cb, arg);
	free(types);
	return err;
}

int tide_store_read_all_types(struct tide_store *store, const struct tide_cursor *after,
                              int64_t max, const char *const *types, size_t ntypes, tide_read_cb cb,
                              void *arg)
{
	struct tide_log_filter f = {.types = types, .ntypes = ntypes};
	return tide_store_read_log(store, after, max, &f, cb, arg);
}

int tide_store_read_log(struct tide_store *store, const struct tide_cursor *after, int64_t max,
                        const struct tide_log_filter *f, tide_read_cb cb, void *arg)
{
	static const struct tide_log_filter none = {0};
	if (!f)
		f = &none;
	if (max < 0)
		return fail(store, TIDE_EINVAL, "max must not be negative");
	for (size_t i = 0; i < f->ntypes; i++)
		if (!f->types[i] || !f->types[i][0])
			return fail(store, TIDE_EINVAL, "event type %zu of the filter is empty",
			            i + 1);
	if (f->shards > 1 && (f->shard < 0 || f->shard >= f->shards))
		return fail(store, TIDE_EINVAL, "shard %d is not one of 0..%d", f->shard,
		            f->shards - 1);
	if (!tide_store_usable(store))
		return TIDE_ECONN;
	char *types = NULL;
	if (f->ntypes > 0 && !(types = tide_pg_text_array(f->types, f->ntypes)))
		return fail(store, TIDE_ENOMEM, "out of memory");
	struct read_call *rc = new_read(store, NULL, cb, arg);
	if (!rc) {
		free(types);
		return fail(store, TIDE_ENOMEM, "out of memory");
	}
	if (after)
		rc->c.after = *after;
	char xid[24], pos[24], lim[24], shard[16], shards[16];
	snprintf(xid, sizeof(xid), "%" PRIu64, rc->c.after.transaction_id);
	snprintf(pos, sizeof(pos), "%" PRId64, rc->c.after.global_position);
	snprintf(lim, sizeof(lim), "%" PRId64, max > 0 ? max : 1000);
	snprintf(shard, sizeof(shard), "%d", f->shards > 1 ? f->shard : 0);
	snprintf(shards, sizeof(shards), "%d", f->shards > 1 ? f->shards : 1);
	const char *values[7] = {xid,   pos,   lim,   f->all_partitions ? NULL : store->partition,
	                         types, shard, shards};
	int err = send_read(store, &stmt_read_all, values, rc);
	free(types);
	return err;
}

int tide_store_read_query(struct tide_store *store, const struct tide_query *query, int64_t after,
                          int64_t max, tide_read_cb cb, void *arg)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_read_query",
	        "SELECT stream_id, stream_position, global_position, transaction_id, message_type,"
	        " message_data, message_metadata, message_id, created, partition,"
	        " message_schema_version"
	        " FROM tide_read_query($1, $2::text[], $3::jsonb, $4::bigint, $5::bigint)",
	        5,
	};
	if (after < 0 || max < 0)
		return fail(store, TIDE_EINVAL, "after and max must not be negative");
	struct tide_query_params p;
	int rc = tide_query_params(query, &p, store->error, sizeof(store->error));
	if (rc)
		return rc;
	if (!tide_store_usable(store)) {
		tide_query_params_free(&p);
		return TIDE_ECONN;
	}
	struct read_call *rcall = new_read(store, NULL, cb, arg);
	if (!rcall) {
		tide_query_params_free(&p);
		return fail(store, TIDE_ENOMEM, "out of memory");
	}
	char pos[24], lim[24];
	snprintf(pos, sizeof(pos), "%" PRId64, after);
	snprintf(lim, sizeof(lim), "%" PRId64, max);
	const char *values[5] = {store->partition, p.types, p.data, pos, max > 0 ? lim : NULL};
	rc = send_read(store, &stmt, values, rcall);
	tide_query_params_free(&p);
	return rc;
}

void tide_cursor_format(const struct tide_cursor *c, char buf[48])
{
	snprintf(buf, 48, "%" PRIu64 ":%" PRId64, c->transaction_id, c->global_position);
}

int tide_cursor_parse(const char *text, struct tide_cursor *out)
{
	if (!text || !(*text >= '0' && *text <= '9'))
		return TIDE_EINVAL;
	char *end;
	errno = 0;
	unsigned long long xid = strtoull(text, &end, 10);
	if (errno || *end != ':' || !(end[1] >= '0' && end[1] <= '9'))
		return TIDE_EINVAL;
	long long pos = strtoll(end + 1, &end, 10);
	if (errno || *end != '\0')
		return TIDE_EINVAL;
	out->transaction_id = xid;
	out->global_position = pos;
	return 0;
}
