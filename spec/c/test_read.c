/* test_read.c — reads deliver every field exactly as the text reads before them did: the
 * binary rows (engine/store.c) against the same rows fetched as text by libpq, with
 * `created` as to_char(created AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') gives
 * it, over time stamps from 4713 BC to 294276 AD and the infinities; and a stream read whose
 * messages go on as they arrive (tide_store_read_stream_each) hands on the same messages in
 * the same order, alone or among other requests on the same connection. */
#include <inttypes.h>

#include "harness.h"

#define ROWS 24

/* Every stored time stamp tried, one per event. */
static const char *const stamps[ROWS] = {
        "2000-01-01 00:00:00+00",
        "1999-12-31 23:59:59.999999+00",
        "2000-02-29 12:34:56.000001+00",
        "2024-02-29 23:00:00.5+00",
        "1970-01-01 00:00:00+00",
        "1969-12-31 23:59:59.123456+00",
        "2100-03-01 01:02:03+00",
        "1900-02-28 00:00:00.000010+00",
        "1600-02-29 11:11:11+00",
        "0001-01-01 00:00:00+00",
        "0001-12-31 23:59:59.999999+00 BC",
        "0044-03-15 12:00:00+00 BC",
        "4713-11-24 00:00:00+00 BC",
        "9999-12-31 23:59:59.999999+00",
        "10000-01-01 00:00:00+00",
        "294276-12-31 23:59:59.999999+00",
        "2026-01-31 12:34:56.123456+05:30",
        "2026-07-01 00:00:00-11",
        "infinity",
        "-infinity",
        "2038-01-19 03:14:08+00",
        "1582-10-15 00:00:00+00",
        "1582-10-04 00:00:00+00",
        "2001-09-09 01:46:40+00",
};

/* The fields of the stream's events as the text read fetched them, by position. */
struct text_row {
	char stream_id[64], type[64], data[1024], metadata[256], message_id[64], created[40];
	int64_t stream_position, global_position;
	uint64_t transaction_id;
};
static struct text_row text_rows[ROWS];

static void load_text_rows(PGconn *c)
{
	PGresult *res = PQexec(
	        c, "SELECT stream_id, stream_position, global_position, transaction_id, "
	           "message_type, message_data, message_metadata, message_id, "
	           "to_char(created AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
	           "FROM emt_messages WHERE stream_id = 'when-1' ORDER BY stream_position");
	CHECK(PQresultStatus(res) == PGRES_TUPLES_OK);
	CHECK_EQ_I64(PQntuples(res), ROWS);
	for (int i = 0; i < ROWS; i++) {
		struct text_row *t = &text_rows[i];
		snprintf(t->stream_id, sizeof(t->stream_id), "%s", PQgetvalue(res, i, 0));
		t->stream_position = strtoll(PQgetvalue(res, i, 1), NULL, 10);
		t->global_position = strtoll(PQgetvalue(res, i, 2), NULL, 10);
		t->transaction_id = strtoull(PQgetvalue(res, i, 3), NULL, 10);
		snprintf(t->type, sizeof(t->type), "%s", PQgetvalue(res, i, 4));
		snprintf(t->data, sizeof(t->data), "%s", PQgetvalue(res, i, 5));
		snprintf(t->metadata, sizeof(t->metadata), "%s", PQgetvalue(res, i, 6));
		snprintf(t->message_id, sizeof(t->message_id), "%s", PQgetvalue(res, i, 7));
		snprintf(t->created, sizeof(t->created), "%s", PQgetvalue(res, i, 8));
	}
	PQclear(res);
}

struct compared {
	bool done;
	int status;
	size_t count;
};

static void same_as_text(const struct tide_message *m, bool global)
{
	CHECK(m->stream_position >= 1 && m->stream_position <= ROWS);
	const struct text_row *t = &text_rows[m->stream_position - 1];
	if (strcmp(m->created, t->created) != 0) {
		fprintf(stderr, "created of %s: %s, to_char gives %s\n",
		        stamps[m->stream_position - 1], m->created, t->created);
		exit(1);
	}
	CHECK(strcmp(m->stream_id, t->stream_id) == 0);
	CHECK_EQ_I64(m->global_position, t->global_position);
	if (global)
		CHECK(m->transaction_id == t->transaction_id);
	CHECK(strcmp(m->type, t->type) == 0);
	CHECK(strcmp(m->data, t->data) == 0);
	CHECK(strcmp(m->metadata, t->metadata) == 0);
	CHECK(strcmp(m->message_id, t->message_id) == 0);
}

static void on_stream(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	struct compared *c = arg;
	c->done = true;
	c->status = status;
	if (status) {
		fprintf(stderr, "read: %s\n", err);
		return;
	}
	c->count = r->count;
	for (size_t i = 0; i < r->count; i++)
		same_as_text(&r->messages[i], false);
}

static void on_all(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	struct compared *c = arg;
	c->done = true;
	c->status = status;
	if (status) {
		fprintf(stderr, "read_all: %s\n", err);
		return;
	}
	c->count = r->count;
	for (size_t i = 0; i < r->count; i++)
		same_as_text(&r->messages[i], true);
	CHECK_EQ_I64(r->next.global_position, r->messages[r->count - 1].global_position);
	CHECK(r->next.transaction_id == r->messages[r->count - 1].transaction_id);
}

/* tide_store_read_stream_each: the messages as they came, then the end. */
struct arriving {
	bool done;
	int status;
	size_t count;
	int64_t last_position; /* of the message before */
	int step;              /* +1 forward, -1 backward: positions go up or down by it */
	bool compare;          /* against text_rows */
};

static void on_arriving(const struct tide_message *m, void *arg)
{
	struct arriving *a = arg;
	CHECK(!a->done);
	if (a->compare)
		same_as_text(m, false);
	if (a->count > 0)
		CHECK_EQ_I64(m->stream_position, a->last_position + a->step);
	a->last_position = m->stream_position;
	a->count++;
}

static void on_arrived(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	struct arriving *a = arg;
	a->done = true;
	a->status = status;
	if (status && status != TIDE_EARCHIVED)
		fprintf(stderr, "read_stream_each: %s\n", err);
	if (!status)
		CHECK_EQ_I64(r->count, 0);
}

struct appended {
	bool done;
	int status;
};

static void on_append(int status, const char *err, const struct tide_append_result *r, void *arg)
{
	(void)r;
	struct appended *a = arg;
	a->done = true;
	a->status = status;
	if (status)
		fprintf(stderr, "append: %s\n", err);
}

static void fields_as_the_text_read_gave_them(void)
{
	struct tide_store *s = test_store();
	struct tide_event e[ROWS];
	char data[ROWS][96];
	for (int i = 0; i < ROWS; i++) {
		snprintf(data[i], sizeof(data[i]),
		         "{\"i\": %d, \"s\": \"\\u00e9\\n\\\"x\\\"\", \"n\": [1.5e300, -0, null, "
		         "true], \"o\": {}}",
		         i);
		e[i] = (struct tide_event){.type = i % 2 ? "Odd" : "Even",
		                           .data = data[i],
		                           .metadata =
		                                   i % 3 ? NULL : "{\"correlation_id\": \"c-1\"}"};
	}
	struct appended a = {0};
	CHECK(tide_store_append(s, "when-1", e, ROWS, TIDE_EXPECT_NO_STREAM, on_append, &a) == 0);
	test_wait(&a.done);
	CHECK_EQ_I64(a.status, 0);

	PGconn *c = test_pg();
	for (int i = 0; i < ROWS; i++) {
		char sql[200];
		snprintf(sql, sizeof(sql),
		         "UPDATE emt_messages SET created = '%s' WHERE stream_id = 'when-1' AND "
		         "stream_position = %d",
		         stamps[i], i + 1);
		PGresult *res = PQexec(c, sql);
		CHECK(PQresultStatus(res) == PGRES_COMMAND_OK);
		PQclear(res);
	}
	load_text_rows(c);
	PQfinish(c);
	CHECK(strcmp(text_rows[ROWS - 6].created, "") == 0); /* infinity: to_char gives NULL */

	struct {
		struct tide_read_opts opts;
		size_t count;
	} reads[] = {
	        {{0}, ROWS},
	        {{.backward = 1}, ROWS},
	        {{.from = 3, .to = 7}, 5},
	        {{.max = 1}, 1},
	};
	for (size_t i = 0; i < sizeof(reads) / sizeof(reads[0]); i++) {
		struct compared got = {0};
		CHECK(tide_store_read_stream(s, "when-1", &reads[i].opts, on_stream, &got) == 0);
		test_wait(&got.done);
		CHECK_EQ_I64(got.status, 0);
		CHECK_EQ_I64(got.count, reads[i].count);
		struct arriving each = {.step = reads[i].opts.backward ? -1 : 1, .compare = true};
		CHECK(tide_store_read_stream_each(s, "when-1", &reads[i].opts, on_arriving,
		                                  on_arrived, &each) == 0);
		test_wait(&each.done);
		CHECK_EQ_I64(each.status, 0);
		CHECK_EQ_I64(each.count, reads[i].count);
	}
	struct compared got = {0};
	struct tide_cursor start = {0, 0};
	CHECK(tide_store_read_all(s, &start, 100, on_all, &got) == 0);
	test_wait(&got.done);
	CHECK_EQ_I64(got.status, 0);
	CHECK_EQ_I64(got.count, ROWS);
	test_close(s);
}

static void on_counted(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	struct compared *c = arg;
	c->done = true;
	c->status = status;
	if (status)
		fprintf(stderr, "read: %s\n", err);
	else
		c->count = r->count;
}

static void on_archived(int status, const char *err, const struct tide_archive_result *r, void *arg)
{
	(void)r;
	on_append(status, err, NULL, arg);
}

/* Reads whose rows go on as they arrive, sent together with appends and whole reads on one
 * pipelined connection, statements prepared or not yet: each gets its own stream's
 * messages, all of them, in order; a stream never written ends with none, an archived one
 * with TIDE_EARCHIVED; bad arguments are refused at once. */
static void each_among_other_requests(void)
{
	enum { STREAMS = 3, EVENTS = 3000, BATCH = 500 };
	struct tide_store *s = test_store();
	static struct tide_event e[BATCH];
	for (int i = 0; i < BATCH; i++)
		e[i] = (struct tide_event){.type = "Counted", .data = "{\"n\": 1}"};
	char name[STREAMS][16];
	for (int k = 0; k < STREAMS; k++) {
		snprintf(name[k], sizeof(name[k]), "long-%d", k);
		for (int b = 0; b < EVENTS / BATCH; b++) {
			struct appended a = {0};
			CHECK(tide_store_append(s, name[k], e, BATCH, TIDE_EXPECT_ANY, on_append,
			                        &a) == 0);
			test_wait(&a.done);
			CHECK_EQ_I64(a.status, 0);
		}
	}
	struct appended archived = {0};
	CHECK(tide_store_append(s, "gone-1", e, 1, TIDE_EXPECT_ANY, on_append, &archived) == 0);
	test_wait(&archived.done);
	CHECK_EQ_I64(archived.status, 0);
	archived.done = false;
	CHECK(tide_store_archive(s, "gone-1", on_archived, &archived) == 0);
	test_wait(&archived.done);
	CHECK_EQ_I64(archived.status, 0);

	for (int round = 0; round < 2; round++) { /* the first prepares the statements */
		struct arriving each[STREAMS] = {0}, missing = {0}, gone = {0};
		struct compared whole[STREAMS] = {{0}};
		struct appended more[STREAMS] = {{0}};
		for (int k = 0; k < STREAMS; k++) {
			each[k].step = 1;
			CHECK(tide_store_read_stream_each(s, name[k], NULL, on_arriving, on_arrived,
			                                  &each[k]) == 0);
			CHECK(tide_store_read_stream(s, name[k], NULL, on_counted, &whole[k]) == 0);
			CHECK(tide_store_append(s, name[k], e, 1, TIDE_EXPECT_ANY, on_append,
			                        &more[k]) == 0);
		}
		CHECK(tide_store_read_stream_each(s, "never-1", NULL, on_arriving, on_arrived,
		                                  &missing) == 0);
		CHECK(tide_store_read_stream_each(s, "gone-1", NULL, on_arriving, on_arrived,
		                                  &gone) == 0);
		test_wait(&gone.done);
		for (int k = 0; k < STREAMS; k++) {
			CHECK(each[k].done && more[k].done);
			CHECK_EQ_I64(each[k].status, 0);
			/* sent before the append behind it: all the events before, none after */
			CHECK_EQ_I64(each[k].count, EVENTS + round);
			CHECK_EQ_I64(each[k].last_position, EVENTS + round);
			CHECK_EQ_I64(more[k].status, 0);
			CHECK(whole[k].done);
			CHECK_EQ_I64(whole[k].status, 0);
			CHECK_EQ_I64(whole[k].count, EVENTS + round);
		}
		CHECK(missing.done);
		CHECK_EQ_I64(missing.status, 0);
		CHECK_EQ_I64(missing.count, 0);
		CHECK_EQ_I64(gone.status, TIDE_EARCHIVED);
		CHECK_EQ_I64(gone.count, 0);
	}
	struct arriving unused = {0};
	static const struct tide_read_opts negative = {.from = -1};
	CHECK_EQ_I64(tide_store_read_stream_each(s, "", NULL, on_arriving, on_arrived, &unused),
	             TIDE_EINVAL);
	CHECK_EQ_I64(tide_store_read_stream_each(s, "long-0", &negative, on_arriving, on_arrived,
	                                         &unused),
	             TIDE_EINVAL);
	CHECK_EQ_I64(tide_store_read_stream_each(s, "long-0", NULL, NULL, on_arrived, &unused),
	             TIDE_EINVAL);
	CHECK(!unused.done);
	test_close(s);
}

int main(int argc, char **argv)
{
	static const struct test_case cases[] = {
	        {"fields_as_the_text_read_gave_them", fields_as_the_text_read_gave_them},
	        {"each_among_other_requests", each_among_other_requests},
	};
	return test_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]));
}
