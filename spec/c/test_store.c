/* test_store.c — the store through the C API against a real PostgreSQL: expected
 * versions, concurrent writers, and the gap-safe global read. */
#include <inttypes.h>

#include "append.h"
#include "harness.h"

struct appended {
	bool done;
	int status;
	int64_t next, expected, actual;
	int64_t positions[8];
	size_t count;
	bool archived;
	char err[256];
};

static void on_append(int status, const char *err, const struct tide_append_result *r, void *arg)
{
	struct appended *a = arg;
	a->done = true;
	a->status = status;
	if (err)
		snprintf(a->err, sizeof(a->err), "%s", err);
	if (r) {
		a->next = r->next_expected_version;
		a->expected = r->expected;
		a->actual = r->actual;
		a->archived = r->archived;
		a->count = r->count < 8 ? r->count : 8;
		if (a->count) /* no positions on a conflict (NULL) */
			memcpy(a->positions, r->global_positions, a->count * sizeof(int64_t));
	}
}

static void append_async(struct tide_store *s, const char *stream, int64_t expected,
                         struct appended *a)
{
	struct tide_event e = {.type = "Happened", .data = "{\"n\":1}"};
	memset(a, 0, sizeof(*a));
	CHECK(tide_store_append(s, stream, &e, 1, expected, on_append, a) == 0);
}

static struct appended append_sync(struct tide_store *s, const char *stream, int64_t expected)
{
	struct appended a;
	append_async(s, stream, expected, &a);
	test_wait(&a.done);
	return a;
}

static long long count_rows(const char *stream)
{
	PGconn *c = test_pg();
	char sql[256];
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM emt_messages WHERE stream_id = '%s'",
	         stream);
	long long n = test_scalar(c, sql);
	PQfinish(c);
	return n;
}

/* Every expectation against a missing stream and against a stream at version 2. */
static void expected_matrix(void)
{
	struct tide_store *s = test_store();
	struct {
		int64_t expected;
		bool on_missing_ok, on_v2_ok;
	} cases[] = {
	        {TIDE_EXPECT_ANY, true, true},
	        {TIDE_EXPECT_NO_STREAM, true, false},
	        {TIDE_EXPECT_STREAM_EXISTS, false, true},
	        {0, true, false},
	        {1, false, false},
	        {2, false, true},
	        {3, false, false},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char missing[32], existing[32];
		snprintf(missing, sizeof(missing), "missing-%zu", i);
		snprintf(existing, sizeof(existing), "existing-%zu", i);
		CHECK_EQ_I64(append_sync(s, existing, TIDE_EXPECT_ANY).status, 0);
		CHECK_EQ_I64(append_sync(s, existing, 1).next, 2);

		struct appended a = append_sync(s, missing, cases[i].expected);
		if (cases[i].on_missing_ok) {
			CHECK_EQ_I64(a.status, 0);
			CHECK_EQ_I64(a.next, 1);
			CHECK_EQ_I64(count_rows(missing), 1);
		} else {
			CHECK_EQ_I64(a.status, TIDE_ECONFLICT);
			CHECK_EQ_I64(a.expected, cases[i].expected);
			CHECK_EQ_I64(a.actual, -1);
			CHECK(strstr(a.err, "found no stream"));
			CHECK_EQ_I64(count_rows(missing), 0);
		}

		a = append_sync(s, existing, cases[i].expected);
		if (cases[i].on_v2_ok) {
			CHECK_EQ_I64(a.status, 0);
			CHECK_EQ_I64(a.next, 3);
			CHECK_EQ_I64(count_rows(existing), 3);
		} else {
			CHECK_EQ_I64(a.status, TIDE_ECONFLICT);
			CHECK_EQ_I64(a.actual, 2);
			CHECK(strstr(a.err, "version conflict") &&
			      strstr(a.err, "found version 2"));
			CHECK_EQ_I64(count_rows(existing), 2);
		}
	}
	test_close(s);
}

#define WRITERS 8

/* Eight connections append with the same expected version at once: one wins. */
static void concurrent_same_expected(void)
{
	struct tide_store *s[WRITERS];
	struct appended a[WRITERS];
	for (int i = 0; i < WRITERS; i++)
		s[i] = test_store();
	CHECK_EQ_I64(append_sync(s[0], "race-1", TIDE_EXPECT_ANY).status, 0);
	CHECK_EQ_I64(append_sync(s[0], "race-1", 1).status, 0);
	for (int round = 0; round < 5; round++) {
		for (int i = 0; i < WRITERS; i++)
			append_async(s[i], "race-1", 2 + round, &a[i]);
		int wins = 0, conflicts = 0;
		for (int i = 0; i < WRITERS; i++) {
			test_wait(&a[i].done);
			wins += a[i].status == 0;
			conflicts += a[i].status == TIDE_ECONFLICT && a[i].actual == 3 + round;
		}
		CHECK_EQ_I64(wins, 1);
		CHECK_EQ_I64(conflicts, WRITERS - 1);
		CHECK_EQ_I64(count_rows("race-1"), 3 + round);
	}
	for (int i = 0; i < WRITERS; i++)
		test_close(s[i]);
}

/* Eight connections append `any` to one new stream, 25 each, all in flight at once. */
static void concurrent_any(void)
{
	enum { EACH = 25 };
	static struct appended a[WRITERS][EACH];
	struct tide_store *s[WRITERS];
	for (int i = 0; i < WRITERS; i++)
		s[i] = test_store();
	for (int k = 0; k < EACH; k++)
		for (int i = 0; i < WRITERS; i++)
			append_async(s[i], "shared-1", TIDE_EXPECT_ANY, &a[i][k]);
	bool seen[WRITERS * EACH + 1] = {0};
	for (int i = 0; i < WRITERS; i++)
		for (int k = 0; k < EACH; k++) {
			test_wait(&a[i][k].done);
			CHECK_EQ_I64(a[i][k].status, 0);
			int64_t v = a[i][k].next;
			CHECK(v >= 1 && v <= WRITERS * EACH && !seen[v]);
			seen[v] = true;
		}
	PGconn *c = test_pg();
	CHECK_EQ_I64(test_scalar(c, "SELECT count(DISTINCT stream_position) FROM emt_messages"
	                            " WHERE stream_id = 'shared-1'"),
	             WRITERS * EACH);
	CHECK_EQ_I64(test_scalar(c, "SELECT max(stream_position) - min(stream_position) + 1"
	                            " FROM emt_messages WHERE stream_id = 'shared-1'"),
	             WRITERS * EACH);
	CHECK_EQ_I64(test_scalar(c, "SELECT stream_position FROM emt_streams"
	                            " WHERE stream_id = 'shared-1'"),
	             WRITERS * EACH);
	PQfinish(c);
	for (int i = 0; i < WRITERS; i++)
		test_close(s[i]);
}

struct got {
	bool done;
	int status;
	size_t count;
	int64_t positions[64];
	struct tide_cursor next;
};

static void on_read(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	struct got *g = arg;
	g->done = true;
	g->status = status;
	if (status)
		fprintf(stderr, "read: %s\n", err);
	if (r) {
		g->count = r->count;
		for (size_t i = 0; i < r->count && i < 64; i++)
			g->positions[i] = r->messages[i].global_position;
		g->next = r->next;
	}
}

static struct got read_all_sync(struct tide_store *s, struct tide_cursor after)
{
	struct got g = {0};
	CHECK(tide_store_read_all(s, &after, 100, on_read, &g) == 0);
	test_wait(&g.done);
	CHECK_EQ_I64(g.status, 0);
	return g;
}

static void exec_ok(PGconn *c, const char *sql)
{
	PGresult *r = PQexec(c, sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
		fprintf(stderr, "%s: %s\n", sql, PQerrorMessage(c));
		exit(1);
	}
	PQclear(r);
}

/* A transaction takes a lower global position and commits after one with a higher
 * position: the reader must neither skip it nor see anything twice. */
static void gap_out_of_order_commit(void)
{
	struct tide_store *s = test_store();
	struct tide_cursor start = {0, 0};
	CHECK_EQ_I64(append_sync(s, "before-1", TIDE_EXPECT_ANY).status, 0);
	struct got first = read_all_sync(s, start);
	CHECK_EQ_I64(first.count, 1);

	PGconn *slow = test_pg();
	exec_ok(slow, "BEGIN");
	long long low = test_scalar(slow, "SELECT global_positions[1] FROM tide_append('slow-1', "
	                                  "'any', '[{\"type\":\"Slow\",\"data\":{}}]')");
	struct appended fast = append_sync(s, "fast-1", TIDE_EXPECT_ANY);
	CHECK_EQ_I64(fast.status, 0);
	CHECK(fast.positions[0] > low); /* the premise: the higher position commits first */

	struct got held = read_all_sync(s, first.next);
	CHECK_EQ_I64(held.count, 0); /* fast-1 waits for slow-1's transaction */
	CHECK(held.next.transaction_id == first.next.transaction_id &&
	      held.next.global_position == first.next.global_position);

	exec_ok(slow, "COMMIT");
	struct got rest = read_all_sync(s, held.next);
	CHECK_EQ_I64(rest.count, 2);
	CHECK_EQ_I64(rest.positions[0], low);
	CHECK_EQ_I64(rest.positions[1], fast.positions[0]);
	CHECK_EQ_I64(read_all_sync(s, rest.next).count, 0);
	CHECK_EQ_I64(read_all_sync(s, start).count, 3);
	PQfinish(slow);
	test_close(s);
}

/* Eight writers append 20,000 events while a reader follows read_all: every event is
 * seen exactly once, in strictly increasing cursor order. */
enum { FOLLOW_EACH = 2500, FOLLOW_TOTAL = WRITERS * FOLLOW_EACH };

struct writer {
	struct tide_store *store;
	int id, sent, done;
	char stream[32];
	char message_id[40];
	int *finished;
};

struct reader {
	struct tide_store *store;
	uv_timer_t timer;
	struct tide_cursor cursor;
	unsigned char seen[FOLLOW_TOTAL];
	long total, unique, out_of_order;
	int *finished;
	uint64_t idle_since;
	bool stop;
};

static void writer_next(struct writer *w);

static void on_writer_append(int status, const char *err, const struct tide_append_result *r,
                             void *arg)
{
	(void)r;
	struct writer *w = arg;
	if (status) {
		fprintf(stderr, "writer %d: %s\n", w->id, err);
		exit(1);
	}
	w->done++;
	writer_next(w);
}

static void writer_next(struct writer *w)
{
	if (w->sent == FOLLOW_EACH) {
		if (w->done == FOLLOW_EACH)
			(*w->finished)++;
		return;
	}
	int index = w->id * FOLLOW_EACH + w->sent++;
	/* Stream per writer and event, a few streams each, so writers also share none. */
	snprintf(w->stream, sizeof(w->stream), "follow-%d-%d", w->id, index % 7);
	snprintf(w->message_id, sizeof(w->message_id), "00000000-0000-4000-8000-%012x", index);
	struct tide_event e = {.type = "Followed", .data = "{}", .message_id = w->message_id};
	CHECK(tide_store_append(w->store, w->stream, &e, 1, TIDE_EXPECT_ANY, on_writer_append, w) ==
	      0);
}

static void reader_poll(uv_timer_t *t);

static void on_follow(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	struct reader *rd = arg;
	if (status) {
		fprintf(stderr, "reader: %s\n", err);
		exit(1);
	}
	for (size_t i = 0; i < r->count; i++) {
		const struct tide_message *m = &r->messages[i];
		bool after = m->transaction_id > rd->cursor.transaction_id ||
		             (m->transaction_id == rd->cursor.transaction_id &&
		              m->global_position > rd->cursor.global_position);
		rd->out_of_order += !after;
		rd->cursor.transaction_id = m->transaction_id;
		rd->cursor.global_position = m->global_position;
		long index = strtol(m->message_id + 24, NULL, 16);
		CHECK(index >= 0 && index < FOLLOW_TOTAL);
		rd->total++;
		if (!rd->seen[index]++)
			rd->unique++;
	}
	uint64_t now = uv_now(test_loop);
	if (r->count)
		rd->idle_since = now;
	bool writers_done = *rd->finished == WRITERS;
	if (writers_done && (rd->unique == FOLLOW_TOTAL || now - rd->idle_since > 3000)) {
		rd->stop = true;
		return;
	}
	/* Caught up: look again in a millisecond rather than spin. */
	uv_timer_start(&rd->timer, reader_poll, r->count ? 0 : 1, 0);
}

static void reader_poll(uv_timer_t *t)
{
	struct reader *rd = t->data;
	CHECK(tide_store_read_all(rd->store, &rd->cursor, 500, on_follow, rd) == 0);
}

static void follow_concurrent_writers(void)
{
	int finished = 0;
	struct writer w[WRITERS];
	static struct reader rd;
	for (int i = 0; i < WRITERS; i++) {
		w[i] = (struct writer){.store = test_store(), .id = i, .finished = &finished};
	}
	rd.store = test_store();
	rd.finished = &finished;
	rd.idle_since = uv_now(test_loop);
	uv_timer_init(test_loop, &rd.timer);
	rd.timer.data = &rd;
	uv_timer_start(&rd.timer, reader_poll, 0, 0);
	for (int i = 0; i < WRITERS; i++)
		writer_next(&w[i]);
	test_wait(&rd.stop);

	long lost = FOLLOW_TOTAL - rd.unique, duplicated = rd.total - rd.unique;
	printf("follow: %d events by %d writers; reader saw %ld (lost %ld, duplicated %ld)\n",
	       FOLLOW_TOTAL, WRITERS, rd.total, lost, duplicated);
	CHECK_EQ_I64(lost, 0);
	CHECK_EQ_I64(duplicated, 0);
	CHECK_EQ_I64(rd.out_of_order, 0);
	uv_close((uv_handle_t *)&rd.timer, NULL);
	test_close(rd.store);
	for (int i = 0; i < WRITERS; i++)
		test_close(w[i].store);
}

/* Bad input through the API: an error code and message, nothing written, no callback. */
/* "{}" and spaces: a JSON object of exactly n bytes. */
static char *padded_object(size_t n)
{
	char *s = malloc(n + 1);
	CHECK(s);
	memset(s, ' ', n);
	memcpy(s, "{}", 2);
	s[n] = '\0';
	return s;
}

static void invalid_input(void)
{
	struct tide_store *s = test_store();
	struct appended a = {0};
	const char *bad[] = {"[1]", "\"x\"", "{\"a\":", "", "null"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct tide_event e = {.type = "T", .data = bad[i]};
		CHECK_EQ_I64(tide_store_append(s, "bad-1", &e, 1, TIDE_EXPECT_ANY, on_append, &a),
		             TIDE_EINVAL);
		CHECK(strstr(tide_store_error(s), "data of event 1"));
	}
	struct tide_event ok = {.type = "T", .data = "{}"};
	struct tide_event two[2] = {ok, {.type = "T", .data = "{}", .metadata = "[]"}};
	CHECK_EQ_I64(tide_store_append(s, "bad-1", two, 2, TIDE_EXPECT_ANY, on_append, &a),
	             TIDE_EINVAL);
	CHECK(strstr(tide_store_error(s), "metadata of event 2"));
	struct tide_event noid = {.type = "T", .data = "{}", .message_id = "not-a-uuid"};
	CHECK_EQ_I64(tide_store_append(s, "bad-1", &noid, 1, TIDE_EXPECT_ANY, on_append, &a),
	             TIDE_EINVAL);
	struct tide_event notype = {.type = "", .data = "{}"};
	CHECK_EQ_I64(tide_store_append(s, "bad-1", &notype, 1, TIDE_EXPECT_ANY, on_append, &a),
	             TIDE_EINVAL);
	CHECK_EQ_I64(tide_store_append(s, "", &ok, 1, TIDE_EXPECT_ANY, on_append, &a), TIDE_EINVAL);
	CHECK_EQ_I64(tide_store_append(s, "bad-1", &ok, 0, TIDE_EXPECT_ANY, on_append, &a),
	             TIDE_EINVAL);

	/* What jsonb, the CLI or a script could not carry is refused here, whoever calls. */
	static char long_name[TIDE_MAX_NAME_BYTES + 2];
	memset(long_name, 's', TIDE_MAX_NAME_BYTES + 1);
	struct {
		const char *stream;
		struct tide_event e;
		const char *want;
	} bad_events[] = {
	        {long_name, ok, "the stream name is 1025 bytes long"},
	        {"bad-\xff", ok, "the stream name is not valid UTF-8 (at byte 5)"},
	        {"bad-1",
	         {.type = "T\xc3", .data = "{}"},
	         "the type of event 1 is not valid UTF-8"},
	        {"bad-1", {.type = long_name, .data = "{}"}, "the type of event 1 is 1025 bytes"},
	        {"bad-1",
	         {.type = "T", .data = "{\"a\":1} x"},
	         "data of event 1 is not valid JSON"},
	        {"bad-1", {.type = "T", .data = "{\"a\":\"\\u0000\"}"}, "contains \\u0000"},
	        {"bad-1", {.type = "T", .data = "{\"a\":1e400}"}, "number out of range"},
	        {"bad-1",
	         {.type = "T", .data = "{}", .metadata = "{\"a\":\"\\udfff\"}"},
	         "metadata of event 1 contains an unpaired surrogate"},
	};
	for (size_t i = 0; i < sizeof(bad_events) / sizeof(bad_events[0]); i++) {
		CHECK_EQ_I64(tide_store_append(s, bad_events[i].stream, &bad_events[i].e, 1,
		                               TIDE_EXPECT_ANY, on_append, &a),
		             TIDE_EINVAL);
		if (!strstr(tide_store_error(s), bad_events[i].want)) {
			fprintf(stderr, "case %zu: '%s'\n", i, tide_store_error(s));
			CHECK(0);
		}
	}
	struct got g = {0};
	CHECK_EQ_I64(tide_store_read_stream(s, long_name, NULL, on_read, &g), TIDE_EINVAL);
	CHECK(strstr(tide_store_error(s), "the stream name is 1025 bytes long"));

	/* Too large: data and metadata together, exactly the limit is accepted. */
	size_t half = TIDE_MAX_EVENT_BYTES / 2;
	char *data = padded_object(half), *meta = padded_object(half);
	char *meta1 = padded_object(half + 1);
	struct tide_event over = {.type = "T", .data = data, .metadata = meta1};
	CHECK_EQ_I64(tide_store_append(s, "big-1", &over, 1, TIDE_EXPECT_ANY, on_append, &a),
	             TIDE_EINVAL);
	CHECK(strstr(tide_store_error(s), "event 1 is too large: its data and metadata are "
	                                  "16777217 bytes"));
	uv_run(test_loop, UV_RUN_NOWAIT);
	CHECK(!a.done);
	struct tide_event fits = {.type = "T", .data = data, .metadata = meta};
	CHECK_EQ_I64(tide_store_append(s, "big-1", &fits, 1, TIDE_EXPECT_ANY, on_append, &a), 0);
	test_wait(&a.done);
	CHECK_EQ_I64(a.status, 0);
	free(data);
	free(meta);
	free(meta1);
	CHECK_EQ_I64(count_rows("bad-1"), 0);
	CHECK_EQ_I64(count_rows("big-1"), 1);
	test_close(s);
}

/* Several events in one append: one transaction, positions in order, one round trip. */
static void batch_and_read_stream(void)
{
	struct tide_store *s = test_store();
	struct tide_event e[5];
	char data[5][32];
	for (int i = 0; i < 5; i++) {
		snprintf(data[i], sizeof(data[i]), "{\"i\":%d}", i + 1);
		e[i] = (struct tide_event){.type = "Numbered", .data = data[i]};
	}
	struct appended a = {0};
	CHECK(tide_store_append(s, "batch-1", e, 5, TIDE_EXPECT_NO_STREAM, on_append, &a) == 0);
	test_wait(&a.done);
	CHECK_EQ_I64(a.status, 0);
	CHECK_EQ_I64(a.next, 5);
	CHECK_EQ_I64(a.count, 5);
	for (int i = 1; i < 5; i++)
		CHECK(a.positions[i] > a.positions[i - 1]);
	/* Each position returned is its own event's row, at its own stream position. */
	PGconn *c = test_pg();
	for (int i = 0; i < 5; i++) {
		char sql[200];
		snprintf(sql, sizeof(sql),
		         "SELECT count(*) FROM emt_messages WHERE stream_id = 'batch-1'"
		         " AND global_position = %" PRId64
		         " AND stream_position = %d AND (message_data->>'i')::int = %d",
		         a.positions[i], i + 1, i + 1);
		CHECK_EQ_I64(test_scalar(c, sql), 1);
	}
	PQfinish(c);

	struct {
		struct tide_read_opts opts;
		size_t count;
		int64_t first;
	} cases[] = {
	        {{0}, 5, a.positions[0]},
	        {{.from = 2, .to = 4}, 3, a.positions[1]},
	        {{.max = 2}, 2, a.positions[0]},
	        {{.backward = 1, .max = 2}, 2, a.positions[4]},
	        {{.from = 2, .to = 3, .backward = 1}, 2, a.positions[2]},
	        {{.from = 6}, 0, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct got g = {0};
		CHECK(tide_store_read_stream(s, "batch-1", &cases[i].opts, on_read, &g) == 0);
		test_wait(&g.done);
		CHECK_EQ_I64(g.status, 0);
		CHECK_EQ_I64(g.count, cases[i].count);
		if (g.count)
			CHECK_EQ_I64(g.positions[0], cases[i].first);
	}
	test_close(s);
}

/* A reply without a row per event (here a trigger of someone else's drops one) is an
 * error that says so, not a success with fewer positions than events. */
static void reply_short_of_rows(void)
{
	PGconn *c = test_pg();
	exec_ok(c, "CREATE FUNCTION drop_skipped() RETURNS trigger LANGUAGE plpgsql AS"
	           " $$BEGIN IF NEW.message_type = 'Skipped' THEN RETURN NULL; END IF;"
	           " RETURN NEW; END$$");
	exec_ok(c, "CREATE TRIGGER drop_skipped BEFORE INSERT ON emt_messages"
	           " FOR EACH ROW EXECUTE FUNCTION drop_skipped()");
	struct tide_store *s = test_store();
	struct tide_event e[2] = {{.type = "Kept", .data = "{}"},
	                          {.type = "Skipped", .data = "{}"}};
	struct appended a = {0};
	CHECK(tide_store_append(s, "short-1", e, 2, TIDE_EXPECT_ANY, on_append, &a) == 0);
	test_wait(&a.done);
	CHECK_EQ_I64(a.status, TIDE_EDB);
	CHECK(strstr(a.err, "does not have a row per event") != NULL);
	exec_ok(c, "DROP TRIGGER drop_skipped ON emt_messages");
	exec_ok(c, "DROP FUNCTION drop_skipped()");
	a = append_sync(s, "short-2", TIDE_EXPECT_NO_STREAM);
	CHECK_EQ_I64(a.status, 0);
	CHECK_EQ_I64(a.count, 1);
	PQfinish(c);
	test_close(s);
}

/* Two stores on one database, one in a tenant's partition: each sees only its own. */
static void partitions(void)
{
	struct tide_store *d = test_store(), *t = test_store();
	CHECK(tide_store_set_partition(t, "") == TIDE_EINVAL);
	CHECK(strstr(tide_store_error(t), "empty") != NULL);
	char name[TIDE_MAX_PARTITION_BYTES + 2];
	memset(name, 'p', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	CHECK(tide_store_set_partition(t, name) == TIDE_EINVAL); /* one byte too long */
	CHECK(strstr(tide_store_error(t), "is 42 bytes long; at most 41") != NULL);
	CHECK(tide_store_set_partition(t, "t\xe9") == TIDE_EINVAL);
	CHECK(strstr(tide_store_error(t), "not valid UTF-8") != NULL);
	CHECK(strcmp(tide_store_partition(t), TIDE_DEFAULT_PARTITION) == 0);
	CHECK(tide_store_set_partition(t, "tenant-7") == 0);
	CHECK(strcmp(tide_store_partition(t), "tenant-7") == 0);
	struct appended a = append_sync(t, "part-1", TIDE_EXPECT_NO_STREAM);
	CHECK_EQ_I64(a.status, 0);
	a = append_sync(t, "part-1", 1);
	CHECK_EQ_I64(a.status, 0);
	CHECK_EQ_I64(a.next, 2);
	a = append_sync(d, "part-1", TIDE_EXPECT_NO_STREAM); /* a stream of the same name */
	CHECK_EQ_I64(a.status, 0);
	CHECK_EQ_I64(a.next, 1);

	struct got g = {0};
	CHECK(tide_store_read_stream(t, "part-1", NULL, on_read, &g) == 0);
	test_wait(&g.done);
	CHECK_EQ_I64(g.count, 2);
	g = read_all_sync(t, (struct tide_cursor){0});
	CHECK_EQ_I64(g.count, 2);
	g = read_all_sync(d, (struct tide_cursor){0});
	CHECK_EQ_I64(g.count, 1);
	CHECK_EQ_I64(g.positions[0], a.positions[0]);

	PGconn *c = test_pg();
	CHECK_EQ_I64(test_scalar(c, "SELECT count(*) FROM emt_messages_tenant_7_active"), 2);
	CHECK_EQ_I64(test_scalar(c, "SELECT count(*) FROM emt_streams WHERE partition = 'tenant-7'"
	                            " AND stream_position = 2"),
	             1);
	PQfinish(c);
	test_close(t);
	test_close(d);
}

/* Closing a store fails its pending requests with TIDE_ECLOSED; none is lost. */
static void close_fails_pending(void)
{
	struct tide_store *s = test_store();
	struct appended a;
	append_async(s, "closing-1", TIDE_EXPECT_ANY, &a);
	tide_store_close(s);
	CHECK(a.done);
	CHECK_EQ_I64(a.status, TIDE_ECLOSED);
	uv_run(test_loop, UV_RUN_NOWAIT);
}

/* A connection that dies under a stream of appends: every append is answered through its
 * callback on a later loop turn, never inside the tide_store_append call that sent it. */
static bool in_call;
static int called_inside;

static void on_append_outside(int status, const char *err, const struct tide_append_result *r,
                              void *arg)
{
	if (in_call)
		called_inside++;
	on_append(status, err, r, arg);
}

static void connection_dies_mid_send(void)
{
	struct tide_store *s = test_store();
	CHECK_EQ_I64(append_sync(s, "before", TIDE_EXPECT_ANY).status, 0);
	PGconn *c = test_pg();
	/* The store's backend: not an autovacuum worker visiting the fresh database (picking
	 * one left the store's connection alive and its appends succeeding). */
	long long pid = test_scalar(c, "SELECT pid FROM pg_stat_activity WHERE datname ="
	                               " current_database() AND pid <> pg_backend_pid()"
	                               " AND backend_type = 'client backend'");
	CHECK(pid > 0);
	char sql[128];
	snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%lld, 5000)", pid);
	test_scalar(c, sql);
	PQfinish(c);
	/* Big events, so that libpq must write while the peer is gone. */
	static char data[200000];
	memset(data, ' ', sizeof(data) - 16);
	memcpy(data, "{\"pad\":\"", 8);
	memset(data + 8, 'x', sizeof(data) - 16);
	strcpy(data + sizeof(data) - 8, "\"}");
	struct tide_event e = {.type = "Big", .data = data};
	enum { N = 20 };
	struct appended a[N];
	int sent = 0;
	for (int i = 0; i < N; i++) {
		memset(&a[i], 0, sizeof(a[i]));
		in_call = true;
		int rc = tide_store_append(s, "dying", &e, 1, TIDE_EXPECT_ANY, on_append_outside,
		                           &a[i]);
		in_call = false;
		if (rc == 0)
			sent++;
		else
			CHECK_EQ_I64(rc, TIDE_ECONN);
	}
	CHECK_EQ_I64(called_inside, 0);
	for (int i = 0; i < sent; i++) {
		test_wait(&a[i].done);
		CHECK(a[i].status != 0);
	}
	CHECK_EQ_I64(called_inside, 0);
	test_close(s);
	c = test_pg();
	CHECK_EQ_I64(test_scalar(c, "SELECT count(*) FROM emt_messages WHERE stream_id = 'dying'"),
	             0);
	PQfinish(c);
}

/* An unreachable server is reported through the open callback, with no password shown. */
struct opened {
	bool done;
	int status;
	char err[512];
};

static void on_opened(struct tide_store *s, int status, const char *err, void *arg)
{
	(void)s;
	struct opened *o = arg;
	o->done = true;
	o->status = status;
	snprintf(o->err, sizeof(o->err), "%s", err ? err : "");
}

static void unreachable(void)
{
	struct opened o = {0};
	struct tide_store *s;
	CHECK(tide_store_open(test_loop, "postgresql://who:Secret123@127.0.0.1:1/none", on_opened,
	                      &o, &s) == 0);
	test_wait(&o.done);
	CHECK_EQ_I64(o.status, TIDE_ECONN);
	CHECK(o.err[0]);
	CHECK(!strstr(o.err, "Secret123"));
	CHECK(!strstr(tide_store_error(s), "Secret123"));
	struct appended a;
	struct tide_event e = {.type = "T", .data = "{}"};
	CHECK_EQ_I64(tide_store_append(s, "x", &e, 1, TIDE_EXPECT_ANY, on_append, &a), TIDE_ECONN);
	test_close(s);
}

/* An append of a large batch, which goes by COPY on a second connection. */
struct large {
	bool done;
	int status;
	int64_t next, actual;
	size_t count;
	bool ascending; /* global positions in stream order, one per event */
	int64_t first, last;
	char err[256];
};

static void on_large(int status, const char *err, const struct tide_append_result *r, void *arg)
{
	struct large *l = arg;
	l->done = true;
	l->status = status;
	if (err)
		snprintf(l->err, sizeof(l->err), "%s", err);
	if (!r)
		return;
	l->next = r->next_expected_version;
	l->actual = r->actual;
	l->count = r->count;
	l->ascending = true;
	for (size_t i = 1; i < r->count; i++)
		l->ascending = l->ascending && r->global_positions[i] > r->global_positions[i - 1];
	if (r->count) {
		l->first = r->global_positions[0];
		l->last = r->global_positions[r->count - 1];
	}
}

static void large_async(struct tide_store *s, const char *stream, size_t n, int64_t expected,
                        struct large *l, struct tide_event *e, char (*data)[32])
{
	for (size_t i = 0; i < n; i++) {
		snprintf(data[i], 32, "{\"i\":%zu}", i + 1);
		e[i] = (struct tide_event){.type = "Bulk", .data = data[i]};
	}
	memset(l, 0, sizeof(*l));
	CHECK(tide_store_append(s, stream, e, n, expected, on_large, l) == 0);
}

static void large_appends(void)
{
	enum { N = TIDE_COPY_MIN_EVENTS + 500 };
	static struct tide_event e[N], f[N];
	static char data[N][32], data2[N][32];
	struct tide_store *s = test_store();
	struct large l;
	large_async(s, "large-1", N, TIDE_EXPECT_NO_STREAM, &l, e, data);
	test_wait(&l.done);
	CHECK_EQ_I64(l.status, 0);
	CHECK_EQ_I64(l.next, N);
	CHECK_EQ_I64(l.count, N);
	CHECK(l.ascending);
	PGconn *c = test_pg();
	/* Every row at its place: position i holds event i, the global positions returned. */
	CHECK_EQ_I64(test_scalar(c, "SELECT count(*) FROM emt_messages WHERE stream_id = 'large-1'"
	                            " AND (message_data->>'i')::int = stream_position"),
	             N);
	char sql[256];
	snprintf(sql, sizeof(sql),
	         "SELECT count(*) FROM emt_messages WHERE stream_id = 'large-1'"
	         " AND global_position BETWEEN %" PRId64 " AND %" PRId64,
	         l.first, l.last);
	CHECK_EQ_I64(test_scalar(c, sql), N);
	CHECK_EQ_I64(test_scalar(c, "SELECT stream_position FROM emt_streams"
	                            " WHERE stream_id = 'large-1'"),
	             N);

	/* A violated expectation writes nothing and says what it found. */
	large_async(s, "large-1", N, TIDE_EXPECT_NO_STREAM, &l, e, data);
	test_wait(&l.done);
	CHECK_EQ_I64(l.status, TIDE_ECONFLICT);
	CHECK_EQ_I64(l.actual, N);
	CHECK(strstr(l.err, "expected no_stream, found version") != NULL);
	large_async(s, "large-1", N, 7, &l, e, data);
	test_wait(&l.done);
	CHECK_EQ_I64(l.status, TIDE_ECONFLICT);
	CHECK_EQ_I64(count_rows("large-1"), N);

	/* Small and large appends to one stream at once serialize on its row: contiguous. */
	struct appended small[4];
	struct large big;
	append_async(s, "large-1", TIDE_EXPECT_ANY, &small[0]);
	large_async(s, "large-1", N, N, &big, f, data2); /* exact: may conflict with small[0] */
	append_async(s, "large-1", TIDE_EXPECT_ANY, &small[1]);
	struct tide_store *t = test_store();
	append_async(t, "large-1", TIDE_EXPECT_ANY, &small[2]);
	test_wait(&small[0].done);
	test_wait(&small[1].done);
	test_wait(&small[2].done);
	test_wait(&big.done);
	CHECK(big.status == 0 || big.status == TIDE_ECONFLICT);
	long long want = N + 3 + (big.status == 0 ? N : 0);
	CHECK_EQ_I64(count_rows("large-1"), want);
	CHECK_EQ_I64(test_scalar(c, "SELECT count(DISTINCT stream_position) FROM emt_messages"
	                            " WHERE stream_id = 'large-1'"),
	             want);
	CHECK_EQ_I64(test_scalar(c, "SELECT max(stream_position) FROM emt_messages"
	                            " WHERE stream_id = 'large-1'"),
	             want);

	/* A new partition gets its tables first, on the second connection too. */
	CHECK(tide_store_set_partition(t, "bulk-tenant") == 0);
	large_async(t, "large-2", N, TIDE_EXPECT_ANY, &l, e, data);
	test_wait(&l.done);
	CHECK_EQ_I64(l.status, 0);
	CHECK_EQ_I64(test_scalar(c, "SELECT count(*) FROM emt_messages_bulk_tenant"), N);
	PQfinish(c);
	test_close(t);
	test_close(s);
}

struct archived {
	bool done;
	int status;
	struct tide_archive_result r;
	char err[640];
};

static void on_archive(int status, const char *err, const struct tide_archive_result *r, void *arg)
{
	struct archived *a = arg;
	a->done = true;
	a->status = status;
	if (err)
		snprintf(a->err, sizeof(a->err), "%s", err);
	if (r)
		a->r = *r;
}

static struct archived archive_sync(struct tide_store *s, const char *stream)
{
	struct archived a = {0};
	CHECK(tide_store_archive(s, stream, on_archive, &a) == 0);
	CHECK(!a.done); /* never inside the call */
	test_wait(&a.done);
	return a;
}

/* Archiving: rows move, reads end with TIDE_EARCHIVED, appends expecting the stream (one
 * event or by COPY) are conflicts with archived set, any begins it again; the refusals. */
static void archive(void)
{
	enum { N = TIDE_COPY_MIN_EVENTS };
	static struct tide_event e[N];
	static char data[N][32];
	struct tide_store *s = test_store();
	PGconn *c = test_pg();
	for (int i = 0; i < 3; i++)
		CHECK_EQ_I64(append_sync(s, "arch-1", TIDE_EXPECT_ANY).status, 0);
	CHECK_EQ_I64(append_sync(s, "arch-2", TIDE_EXPECT_ANY).status, 0);

	struct archived a = archive_sync(s, "arch-1");
	CHECK_EQ_I64(a.status, 0);
	CHECK_EQ_I64(a.r.version, 3);
	CHECK_EQ_I64(a.r.events, 3);
	CHECK_EQ_I64(test_scalar(c, "SELECT count(*) FROM emt_messages WHERE stream_id = 'arch-1'"
	                            " AND is_archived"),
	             3);
	CHECK_EQ_I64(test_scalar(c, "SELECT count(*) FROM emt_streams WHERE stream_id = 'arch-1'"
	                            " AND is_archived AND stream_position = 3"),
	             1);

	struct got g = {0};
	CHECK(tide_store_read_stream(s, "arch-1", NULL, on_read, &g) == 0);
	test_wait(&g.done);
	CHECK_EQ_I64(g.status, TIDE_EARCHIVED);
	g = (struct got){0};
	CHECK(tide_store_read_stream(s, "arch-2", &(struct tide_read_opts){.from = 5}, on_read,
	                             &g) == 0);
	test_wait(&g.done);
	CHECK_EQ_I64(g.status, 0); /* past the end of an active stream: no events, no error */
	CHECK_EQ_I64(g.count, 0);
	g = read_all_sync(s, (struct tide_cursor){0, 0});
	CHECK_EQ_I64(g.count, 1);

	struct appended ap = append_sync(s, "arch-1", 3);
	CHECK_EQ_I64(ap.status, TIDE_ECONFLICT);
	CHECK(ap.archived);
	CHECK_EQ_I64(ap.actual, -1);
	CHECK(strstr(ap.err, "stream arch-1 is archived") != NULL);
	ap = append_sync(s, "arch-2", 3); /* a plain conflict says nothing of archives */
	CHECK_EQ_I64(ap.status, TIDE_ECONFLICT);
	CHECK(!ap.archived);
	struct large l;
	large_async(s, "arch-1", N, TIDE_EXPECT_STREAM_EXISTS, &l, e, data);
	test_wait(&l.done);
	CHECK_EQ_I64(l.status, TIDE_ECONFLICT);
	CHECK(strstr(l.err, "stream arch-1 is archived") != NULL);

	a = archive_sync(s, "arch-1");
	CHECK_EQ_I64(a.status, TIDE_EARCHIVED);
	a = archive_sync(s, "nope");
	CHECK_EQ_I64(a.status, TIDE_EINVAL);
	CHECK(strstr(a.err, "does not exist in partition emt:default") != NULL);
	CHECK_EQ_I64(tide_store_archive(s, "", on_archive, &a), TIDE_EINVAL);

	ap = append_sync(s, "arch-1", TIDE_EXPECT_NO_STREAM);
	CHECK_EQ_I64(ap.status, 0);
	CHECK_EQ_I64(ap.next, 1);
	a = archive_sync(s, "arch-1");
	CHECK_EQ_I64(a.status, TIDE_EARCHIVED);
	CHECK(strstr(a.err, "archived once and begun again") != NULL);
	CHECK_EQ_I64(test_scalar(c, "SELECT count(*) FROM emt_messages WHERE stream_id = 'arch-1'"),
	             4);
	PQfinish(c);
	test_close(s);
}

/* A store closed with a large append waiting for its second connection fails it. */
static void large_append_closed(void)
{
	enum { N = TIDE_COPY_MIN_EVENTS };
	static struct tide_event e[N];
	static char data[N][32];
	struct tide_store *s = test_store();
	struct large l;
	large_async(s, "large-closed", N, TIDE_EXPECT_ANY, &l, e, data);
	CHECK(!l.done);
	test_close(s);
	CHECK(l.done);
	CHECK_EQ_I64(l.status, TIDE_ECLOSED);
}

int main(int argc, char **argv)
{
	static const struct test_case cases[] = {
	        {"expected_matrix", expected_matrix},
	        {"concurrent_same_expected", concurrent_same_expected},
	        {"concurrent_any", concurrent_any},
	        {"gap_out_of_order_commit", gap_out_of_order_commit},
	        {"follow_concurrent_writers", follow_concurrent_writers},
	        {"invalid_input", invalid_input},
	        {"batch_and_read_stream", batch_and_read_stream},
	        {"reply_short_of_rows", reply_short_of_rows},
	        {"partitions", partitions},
	        {"close_fails_pending", close_fails_pending},
	        {"unreachable", unreachable},
	        {"connection_dies_mid_send", connection_dies_mid_send},
	        {"large_appends", large_appends},
	        {"large_append_closed", large_append_closed},
	        {"archive", archive},
	};
	return test_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]));
}
