/* test_append_if.c — conditional appends through the C API (tide_store_append_if,
 * tide_store_read_query) against a real PostgreSQL: the conflict and what it found, stream
 * expectations beside the query, writers on eight connections racing for one boundary, and
 * the queries the store refuses. */
#include <inttypes.h>

#include "harness.h"

struct appended {
	bool done;
	int status;
	int64_t next, expected, actual, found, position;
	char err[512];
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
		a->found = r->found_position;
		a->position = r->count ? r->global_positions[0] : 0;
	}
}

static const char *const seat_types[] = {"SeatReserved"};

static int append_if(struct tide_store *s, const char *seat_json, int64_t after, const char *stream,
                     int64_t expected, struct appended *a)
{
	struct tide_query q = {.types = seat_types, .ntypes = 1, .data = seat_json};
	struct tide_event e = {.type = "SeatReserved", .data = seat_json};
	memset(a, 0, sizeof(*a));
	return tide_store_append_if(s, &q, after, stream, &e, 1, expected, on_append, a);
}

static struct appended append_if_sync(struct tide_store *s, const char *seat_json, int64_t after,
                                      const char *stream, int64_t expected)
{
	struct appended a;
	CHECK(append_if(s, seat_json, after, stream, expected, &a) == 0);
	test_wait(&a.done);
	return a;
}

static long long scalar(const char *sql)
{
	PGconn *c = test_pg();
	long long n = test_scalar(c, sql);
	PQfinish(c);
	return n;
}

static void conflict_and_found(void)
{
	struct tide_store *s = test_store();
	struct appended first =
	        append_if_sync(s, "{\"seat\":\"1A\"}", 0, "booking-1", TIDE_EXPECT_ANY);
	CHECK_EQ_I64(first.status, 0);
	CHECK_EQ_I64(first.next, 1);
	struct appended lost =
	        append_if_sync(s, "{\"seat\":\"1A\"}", 0, "booking-2", TIDE_EXPECT_ANY);
	CHECK_EQ_I64(lost.status, TIDE_ECONFLICT);
	CHECK_EQ_I64(lost.found, first.position);
	CHECK(strstr(lost.err, "an event matching the query was appended after global position 0"));
	CHECK_EQ_I64(scalar("SELECT count(*) FROM emt_streams WHERE stream_id = 'booking-2'"), 0);
	/* After what it found, and for another seat, it goes through. */
	CHECK_EQ_I64(append_if_sync(s, "{\"seat\":\"1A\"}", first.position, "booking-2",
	                            TIDE_EXPECT_NO_STREAM)
	                     .status,
	             0);
	CHECK_EQ_I64(append_if_sync(s, "{\"seat\":\"1B\"}", 0, "booking-3", TIDE_EXPECT_ANY).status,
	             0);
	/* A version conflict: found_position 0, the version found. */
	struct appended version = append_if_sync(s, "{\"seat\":\"1C\"}", 0, "booking-3", 5);
	CHECK_EQ_I64(version.status, TIDE_ECONFLICT);
	CHECK_EQ_I64(version.found, 0);
	CHECK_EQ_I64(version.expected, 5);
	CHECK_EQ_I64(version.actual, 1);
	CHECK(strstr(version.err, "version conflict: expected 5, found version 1"));
	test_close(s);
}

/* Eight connections send one append_if each for the same seat, all at once, for 50 seats:
 * exactly one of each eight is appended, the others conflict with it. */
static void racing_connections(void)
{
	enum { N = 8, SEATS = 50 };
	struct tide_store *s[N];
	for (int i = 0; i < N; i++)
		s[i] = test_store();
	for (int seat = 0; seat < SEATS; seat++) {
		struct appended a[N];
		char data[64], stream[64];
		snprintf(data, sizeof(data), "{\"seat\":\"race-%d\"}", seat);
		for (int i = 0; i < N; i++) {
			snprintf(stream, sizeof(stream), "booking-%d-%d", seat, i);
			CHECK(append_if(s[i], data, 0, stream, TIDE_EXPECT_ANY, &a[i]) == 0);
		}
		int ok = 0, winner = -1;
		for (int i = 0; i < N; i++) {
			test_wait(&a[i].done);
			if (a[i].status == 0) {
				ok++;
				winner = i;
			}
		}
		CHECK_EQ_I64(ok, 1);
		for (int i = 0; i < N; i++)
			if (i != winner) {
				CHECK_EQ_I64(a[i].status, TIDE_ECONFLICT);
				CHECK_EQ_I64(a[i].found, a[winner].position);
			}
	}
	CHECK_EQ_I64(
	        scalar("SELECT count(*) FROM emt_messages WHERE message_type = 'SeatReserved'"),
	        SEATS);
	for (int i = 0; i < N; i++)
		test_close(s[i]);
}

static void refused(struct tide_store *s, const struct tide_query *q, int64_t after,
                    const char *message)
{
	struct tide_event e = {.type = "SeatReserved", .data = "{}"};
	struct appended a = {0};
	int rc = tide_store_append_if(s, q, after, "refused-1", &e, 1, TIDE_EXPECT_ANY, on_append,
	                              &a);
	if (rc != TIDE_EINVAL || !strstr(tide_store_error(s), message)) {
		fprintf(stderr, "expected TIDE_EINVAL with '%s', got %d: %s\n", message, rc,
		        tide_store_error(s));
		exit(1);
	}
	CHECK(!a.done);
}

static void invalid_queries(void)
{
	struct tide_store *s = test_store();
	const char *types[65];
	for (int i = 0; i < 65; i++)
		types[i] = "T";
	const char *empty[] = {""};
	struct tide_query none = {0}, too_many = {.types = types, .ntypes = 65},
	                  empty_type = {.types = empty, .ntypes = 1}, not_object = {.data = "[1]"},
	                  nested = {.data = "{\"seat\":{\"row\":1}}"},
	                  null_field = {.data = "{\"seat\":null}"}, no_fields = {.data = "{}"},
	                  good = {.types = seat_types, .ntypes = 1};
	refused(s, NULL, 0, "the query matches every event");
	refused(s, &none, 0, "the query matches every event");
	refused(s, &too_many, 0, "the query has 65 types; at most 64 are allowed");
	refused(s, &empty_type, 0, "type 1 of the query");
	refused(s, &not_object, 0, "the query's data");
	refused(s, &nested, 0, "the query's data field 'seat' is an object");
	refused(s, &null_field, 0, "the query's data field 'seat' is null");
	refused(s, &no_fields, 0, "the query's data has no fields");
	refused(s, &good, -1, "the position to check after must be >= 0");
	CHECK_EQ_I64(scalar("SELECT count(*) FROM emt_messages"), 0);
	test_close(s);
}

struct read {
	bool done;
	int status;
	size_t count;
	int64_t first, next;
};

static void on_read(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	(void)err;
	struct read *rd = arg;
	rd->done = true;
	rd->status = status;
	if (r) {
		rd->count = r->count;
		rd->first = r->count ? r->messages[0].global_position : 0;
		rd->next = r->next.global_position;
	}
}

static void read_query(void)
{
	struct tide_store *s = test_store();
	struct appended a = append_if_sync(s, "{\"seat\":\"9Z\"}", 0, "booking-9", TIDE_EXPECT_ANY);
	CHECK_EQ_I64(a.status, 0);
	struct appended other =
	        append_if_sync(s, "{\"seat\":\"9Y\"}", 0, "booking-9", TIDE_EXPECT_ANY);
	struct tide_query q = {.types = seat_types, .ntypes = 1, .data = "{\"seat\":\"9Z\"}"};
	struct read rd = {0};
	CHECK(tide_store_read_query(s, &q, 0, 0, on_read, &rd) == 0);
	test_wait(&rd.done);
	CHECK_EQ_I64(rd.status, 0);
	CHECK_EQ_I64(rd.count, 1);
	CHECK_EQ_I64(rd.first, a.position);
	/* The head of the log: past the other seat's event too. */
	CHECK_EQ_I64(rd.next, other.position);
	CHECK(tide_store_read_query(s, &q, -1, 0, on_read, &rd) == TIDE_EINVAL);
	test_close(s);
}

int main(int argc, char **argv)
{
	static const struct test_case cases[] = {
	        {"conflict_and_found", conflict_and_found},
	        {"racing_connections", racing_connections},
	        {"invalid_queries", invalid_queries},
	        {"read_query", read_query},
	};
	return test_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]));
}
