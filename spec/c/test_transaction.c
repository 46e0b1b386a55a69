/* test_transaction.c — a caller's transaction on a store (tide_store_begin/commit/rollback)
 * against a real PostgreSQL: what runs inside it, the stream lock it holds, failures inside
 * it, misuse, and a connection lost while it is open or while COMMIT is on its way. */
#include <inttypes.h>
#include <unistd.h>

#include "harness.h"

struct appended {
	bool done;
	int status;
	int64_t next, actual;
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
		a->actual = r->actual;
	}
}

static void append_async(struct tide_store *s, const char *stream, int64_t expected,
                         struct appended *a)
{
	struct tide_event e = {.type = "Deposited", .data = "{\"amount\":1}"};
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

struct begun {
	bool done;
	int status;
	int64_t version;
	bool in_transaction; /* as the callback found it */
	struct tide_store *store;
	char err[640];
};

static void on_begin(int status, const char *err, int64_t version, void *arg)
{
	struct begun *b = arg;
	b->done = true;
	b->status = status;
	b->version = version;
	b->in_transaction = tide_store_in_transaction(b->store);
	if (err)
		snprintf(b->err, sizeof(b->err), "%s", err);
}

static struct begun begin_sync(struct tide_store *s, const char *stream)
{
	struct begun b = {.store = s};
	CHECK(tide_store_begin(s, stream, on_begin, &b) == 0);
	test_wait(&b.done);
	return b;
}

struct ended {
	bool done;
	int status;
	bool in_transaction;
	struct tide_store *store;
	char err[640];
};

static void on_end(int status, const char *err, void *arg)
{
	struct ended *e = arg;
	e->done = true;
	e->status = status;
	e->in_transaction = tide_store_in_transaction(e->store);
	if (err)
		snprintf(e->err, sizeof(e->err), "%s", err);
}

static struct ended end_sync(struct tide_store *s, bool commit)
{
	struct ended e = {.store = s};
	CHECK((commit ? tide_store_commit(s, on_end, &e) : tide_store_rollback(s, on_end, &e)) ==
	      0);
	CHECK(tide_store_in_transaction(s));
	test_wait(&e.done);
	CHECK(!e.in_transaction);
	return e;
}

static long long scalar(const char *sql)
{
	PGconn *c = test_pg();
	long long v = test_scalar(c, sql);
	PQfinish(c);
	return v;
}

static long long count_rows(const char *stream)
{
	char sql[256];
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM emt_messages WHERE stream_id = '%s'",
	         stream);
	return scalar(sql);
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

/* Runs the loop for ms milliseconds. */
static void on_timer(uv_timer_t *t)
{
	*(bool *)t->data = true;
}

static void run_for(uint64_t ms)
{
	bool fired = false;
	uv_timer_t t;
	uv_timer_init(test_loop, &t);
	t.data = &fired;
	uv_timer_start(&t, on_timer, ms, 0);
	test_wait(&fired);
	uv_close((uv_handle_t *)&t, NULL);
	uv_run(test_loop, UV_RUN_NOWAIT);
}

/* The backend of the one other session of this test's database in the given state. */
static long long backend_where(const char *condition)
{
	char sql[512];
	snprintf(sql, sizeof(sql),
	         "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
	         " AND pid <> pg_backend_pid() AND %s",
	         condition);
	for (int i = 0; i < 1000; i++) {
		long long pid = scalar(sql);
		if (pid > 0)
			return pid;
		usleep(10000);
	}
	fprintf(stderr, "no backend where %s\n", condition);
	exit(1);
}

static void terminate(long long pid)
{
	char sql[128];
	snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%lld, 5000)::int", pid);
	CHECK_EQ_I64(scalar(sql), 1);
}

/* Connections opened after this wait at most that long for a lock. */
static void set_lock_timeout(const char *timeout)
{
	PGconn *c = test_pg();
	char sql[256];
	snprintf(sql, sizeof(sql),
	         "DO $$ BEGIN EXECUTE format('ALTER DATABASE %%I SET lock_timeout = %%L',"
	         " current_database(), '%s'); END $$",
	         timeout);
	exec_ok(c, sql);
	PQfinish(c);
}

/* Appends and reads inside run in the transaction; a writer on another store waits for the
 * lock until the commit, then goes on after it. */
static void begin_append_commit(void)
{
	struct tide_store *s = test_store(), *other = test_store();
	CHECK_EQ_I64(append_sync(s, "acct-1", TIDE_EXPECT_ANY).status, 0);
	CHECK_EQ_I64(append_sync(s, "acct-1", 1).status, 0);
	CHECK(!tide_store_in_transaction(s));

	struct begun b = begin_sync(s, "acct-1");
	CHECK_EQ_I64(b.status, 0);
	CHECK_EQ_I64(b.version, 2);
	CHECK(b.in_transaction);
	struct appended a = append_sync(s, "acct-1", b.version);
	CHECK_EQ_I64(a.status, 0);
	CHECK_EQ_I64(a.next, 3);
	CHECK_EQ_I64(count_rows("acct-1"), 2); /* not committed yet */

	struct appended waiting;
	append_async(other, "acct-1", TIDE_EXPECT_ANY, &waiting);
	run_for(300);
	CHECK(!waiting.done); /* it waits for the stream's lock */

	struct ended e = end_sync(s, true);
	CHECK_EQ_I64(e.status, 0);
	test_wait(&waiting.done);
	CHECK_EQ_I64(waiting.status, 0);
	CHECK_EQ_I64(waiting.next, 4);
	CHECK_EQ_I64(count_rows("acct-1"), 4);
	CHECK_EQ_I64(scalar("SELECT max(stream_position) FROM emt_messages"
	                    " WHERE stream_id = 'acct-1'"),
	             4);

	/* Without a stream: a plain transaction around appends to several streams. */
	b = begin_sync(s, NULL);
	CHECK_EQ_I64(b.status, 0);
	CHECK_EQ_I64(b.version, -1);
	CHECK_EQ_I64(append_sync(s, "acct-2", TIDE_EXPECT_NO_STREAM).status, 0);
	CHECK_EQ_I64(append_sync(s, "acct-3", TIDE_EXPECT_NO_STREAM).status, 0);
	CHECK_EQ_I64(count_rows("acct-2") + count_rows("acct-3"), 0);
	CHECK_EQ_I64(end_sync(s, true).status, 0);
	CHECK_EQ_I64(count_rows("acct-2") + count_rows("acct-3"), 2);
	test_close(other);
	test_close(s);
}

/* A rollback keeps nothing and releases the lock. */
static void begin_rollback(void)
{
	struct tide_store *s = test_store(), *other = test_store();
	CHECK_EQ_I64(append_sync(s, "acct-1", TIDE_EXPECT_ANY).status, 0);
	struct begun b = begin_sync(s, "acct-1");
	CHECK_EQ_I64(b.status, 0);
	CHECK_EQ_I64(b.version, 1);
	CHECK_EQ_I64(append_sync(s, "acct-1", 1).next, 2);
	CHECK_EQ_I64(append_sync(s, "acct-9", TIDE_EXPECT_ANY).status, 0);
	struct appended waiting;
	append_async(other, "acct-1", 1, &waiting);
	run_for(200);
	CHECK(!waiting.done);
	CHECK_EQ_I64(end_sync(s, false).status, 0);
	test_wait(&waiting.done);
	CHECK_EQ_I64(waiting.status, 0); /* version 1 again: the rolled back event is gone */
	CHECK_EQ_I64(waiting.next, 2);
	CHECK_EQ_I64(count_rows("acct-1"), 2);
	CHECK_EQ_I64(count_rows("acct-9"), 0);
	test_close(other);
	test_close(s);
}

/* A stream without a row: version -1, the append creates it; a writer that creates it
 * meanwhile makes that append conflict, and the next begin locks the new row. */
static void begin_missing_stream(void)
{
	struct tide_store *s = test_store(), *other = test_store();
	struct begun b = begin_sync(s, "new-1");
	CHECK_EQ_I64(b.status, 0);
	CHECK_EQ_I64(b.version, -1);
	CHECK_EQ_I64(append_sync(s, "new-1", TIDE_EXPECT_NO_STREAM).next, 1);
	CHECK_EQ_I64(end_sync(s, true).status, 0);
	CHECK_EQ_I64(count_rows("new-1"), 1);

	b = begin_sync(s, "new-2");
	CHECK_EQ_I64(b.version, -1);
	CHECK_EQ_I64(append_sync(other, "new-2", TIDE_EXPECT_NO_STREAM).status, 0);
	struct appended a = append_sync(s, "new-2", TIDE_EXPECT_NO_STREAM);
	CHECK_EQ_I64(a.status, TIDE_ECONFLICT);
	CHECK_EQ_I64(a.actual, 1);
	CHECK_EQ_I64(end_sync(s, false).status, 0);
	b = begin_sync(s, "new-2");
	CHECK_EQ_I64(b.version, 1);
	CHECK_EQ_I64(append_sync(s, "new-2", b.version).next, 2);
	CHECK_EQ_I64(end_sync(s, true).status, 0);
	CHECK_EQ_I64(count_rows("new-2"), 2);
	test_close(other);
	test_close(s);
}

/* A statement that fails inside (a lock it could not get) aborts the transaction: COMMIT
 * rolls it back and says so, and nothing of it is kept. */
static void failed_statement_rolls_back(void)
{
	set_lock_timeout("200ms");
	struct tide_store *s = test_store();
	CHECK_EQ_I64(append_sync(s, "acct-1", TIDE_EXPECT_ANY).status, 0);
	CHECK_EQ_I64(append_sync(s, "held-1", TIDE_EXPECT_ANY).status, 0);
	PGconn *holder = test_pg();
	exec_ok(holder, "BEGIN");
	exec_ok(holder, "SELECT 1 FROM emt_streams WHERE stream_id = 'held-1' FOR UPDATE");

	CHECK_EQ_I64(begin_sync(s, "acct-1").status, 0);
	CHECK_EQ_I64(append_sync(s, "acct-1", 1).status, 0);
	struct appended a = append_sync(s, "held-1", TIDE_EXPECT_ANY);
	CHECK_EQ_I64(a.status, TIDE_EDB);
	CHECK(strstr(a.err, "lock"));
	struct ended e = end_sync(s, true);
	CHECK_EQ_I64(e.status, TIDE_EDB);
	CHECK(strstr(e.err, "rolled back"));
	CHECK_EQ_I64(count_rows("acct-1"), 1);
	exec_ok(holder, "ROLLBACK");
	PQfinish(holder);

	/* The store is free and outside any transaction again. */
	CHECK_EQ_I64(append_sync(s, "acct-1", 1).status, 0);
	CHECK_EQ_I64(count_rows("acct-1"), 2);
	test_close(s);
}

/* A begin whose lock fails has ended its transaction when its callback fires. */
static void begin_lock_fails(void)
{
	set_lock_timeout("200ms");
	struct tide_store *s = test_store();
	CHECK_EQ_I64(append_sync(s, "acct-1", TIDE_EXPECT_ANY).status, 0);
	PGconn *holder = test_pg();
	exec_ok(holder, "BEGIN");
	exec_ok(holder, "SELECT 1 FROM emt_streams WHERE stream_id = 'acct-1' FOR UPDATE");
	struct begun b = begin_sync(s, "acct-1");
	CHECK_EQ_I64(b.status, TIDE_EDB);
	CHECK_EQ_I64(b.version, -1);
	CHECK(!b.in_transaction);
	CHECK(strstr(b.err, "cannot lock the stream"));
	exec_ok(holder, "ROLLBACK");
	PQfinish(holder);
	CHECK_EQ_I64(append_sync(s, "acct-1", 1).status, 0);
	CHECK_EQ_I64(count_rows("acct-1"), 2); /* committed on its own */
	b = begin_sync(s, "acct-1");
	CHECK_EQ_I64(b.status, 0);
	CHECK_EQ_I64(b.version, 2);
	CHECK_EQ_I64(end_sync(s, false).status, 0);
	test_close(s);
}

/* Whether a notification for idle consumers came to listener within ms. */
static bool notified(PGconn *listener, int ms)
{
	for (int waited = 0;; waited += 20) {
		run_for(20); /* lets the store send what it queued */
		CHECK(PQconsumeInput(listener));
		PGnotify *n = PQnotifies(listener);
		if (n) {
			PQfreemem(n);
			while ((n = PQnotifies(listener)))
				PQfreemem(n);
			return true;
		}
		if (waited >= ms)
			return false;
	}
}

/* Consumers are woken once the transaction commits what it appended: not before, not
 * after a rollback. */
static void commit_wakes_consumers(void)
{
	struct tide_store *s = test_store();
	PGconn *listener = test_pg();
	exec_ok(listener, "LISTEN tide_messages");
	CHECK_EQ_I64(begin_sync(s, "acct-1").status, 0);
	CHECK_EQ_I64(append_sync(s, "acct-1", TIDE_EXPECT_NO_STREAM).status, 0);
	CHECK(!notified(listener, 300));
	CHECK_EQ_I64(end_sync(s, true).status, 0);
	CHECK(notified(listener, 5000));

	CHECK_EQ_I64(begin_sync(s, "acct-1").status, 0);
	CHECK_EQ_I64(append_sync(s, "acct-1", 1).status, 0);
	CHECK_EQ_I64(end_sync(s, false).status, 0);
	CHECK(!notified(listener, 300));

	CHECK_EQ_I64(begin_sync(s, "acct-1").status, 0); /* nothing appended: nothing to tell */
	CHECK_EQ_I64(end_sync(s, true).status, 0);
	CHECK(!notified(listener, 300));
	PQfinish(listener);
	test_close(s);
}

/* The first append to a new partition creates its tables, inside the transaction: a
 * rollback takes them away again, and the store must not go on believing they exist. */
static void rollback_forgets_a_new_partition(void)
{
	struct tide_store *s = test_store();
	CHECK_EQ_I64(tide_store_set_partition(s, "tenant-x"), 0);
	CHECK_EQ_I64(begin_sync(s, "acct-1").status, 0);
	CHECK_EQ_I64(append_sync(s, "acct-1", TIDE_EXPECT_NO_STREAM).status, 0);
	CHECK_EQ_I64(end_sync(s, false).status, 0);
	CHECK_EQ_I64(
	        scalar("SELECT count(*) FROM pg_class WHERE relname LIKE 'emt_messages_tenant_x%'"),
	        0);
	struct appended a = append_sync(s, "acct-1", TIDE_EXPECT_NO_STREAM);
	if (a.status)
		fprintf(stderr, "append: %s\n", a.err);
	CHECK_EQ_I64(a.status, 0);
	CHECK_EQ_I64(count_rows("acct-1"), 1);
	test_close(s);
}

/* Calls out of order are refused at once, and no callback fires. */
static void misuse(void)
{
	struct tide_store *s = test_store();
	struct ended e = {.store = s};
	CHECK_EQ_I64(tide_store_commit(s, on_end, &e), TIDE_EINVAL);
	CHECK(strstr(tide_store_error(s), "no transaction"));
	CHECK_EQ_I64(tide_store_rollback(s, on_end, &e), TIDE_EINVAL);
	struct begun b = {.store = s};
	CHECK_EQ_I64(tide_store_begin(s, "", on_begin, &b), TIDE_EINVAL);
	CHECK(!tide_store_in_transaction(s));

	CHECK_EQ_I64(tide_store_begin(s, "acct-1", on_begin, &b), 0);
	CHECK(tide_store_in_transaction(s));
	struct begun b2 = {.store = s};
	CHECK_EQ_I64(tide_store_begin(s, "acct-2", on_begin, &b2), TIDE_EINVAL);
	CHECK(strstr(tide_store_error(s), "already open"));
	CHECK_EQ_I64(tide_store_commit(s, on_end, &e), TIDE_EINVAL);
	CHECK(strstr(tide_store_error(s), "not begun yet"));
	test_wait(&b.done);
	CHECK_EQ_I64(b.status, 0);
	CHECK_EQ_I64(tide_store_commit(s, on_end, &e), 0);
	CHECK_EQ_I64(tide_store_rollback(s, on_end, &e), TIDE_EINVAL);
	CHECK(strstr(tide_store_error(s), "already ending"));
	test_wait(&e.done);
	CHECK_EQ_I64(e.status, 0);
	CHECK(!b2.done);
	test_close(s);
}

/* The connection dies while the transaction is open: it is gone, with what it appended;
 * commit says so at once, and the store connects again outside any transaction. */
static void on_reopened(struct tide_store *s, int status, const char *err, void *arg)
{
	(void)s;
	(void)err;
	*(int *)arg = status + 1000; /* done, with the status */
}

static void connection_lost_while_open(void)
{
	struct tide_store *s = test_store();
	CHECK_EQ_I64(begin_sync(s, "lost-1").status, 0);
	CHECK_EQ_I64(append_sync(s, "lost-1", TIDE_EXPECT_NO_STREAM).status, 0);
	terminate(backend_where("state = 'idle in transaction'"));
	for (int i = 0; i < 500 && tide_store_connected(s); i++)
		run_for(10);
	CHECK(!tide_store_connected(s));
	CHECK(tide_store_in_transaction(s));
	struct ended e = {.store = s};
	CHECK_EQ_I64(tide_store_commit(s, on_end, &e), TIDE_ECONN);
	CHECK(strstr(tide_store_error(s), "transaction"));
	CHECK(!tide_store_in_transaction(s));
	CHECK(!e.done);
	int reopened = 0;
	CHECK_EQ_I64(tide_store_reconnect(s, on_reopened, &reopened), 0);
	while (reopened == 0)
		uv_run(test_loop, UV_RUN_ONCE);
	CHECK_EQ_I64(reopened, 1000);
	CHECK_EQ_I64(count_rows("lost-1"), 0);
	CHECK_EQ_I64(append_sync(s, "lost-1", TIDE_EXPECT_NO_STREAM).status, 0);
	CHECK_EQ_I64(count_rows("lost-1"), 1);

	/* Lost while waiting for the lock: the begin fails, and no transaction is left. */
	PGconn *holder = test_pg();
	exec_ok(holder, "BEGIN");
	exec_ok(holder, "SELECT 1 FROM emt_streams WHERE stream_id = 'lost-1' FOR UPDATE");
	struct begun b = {.store = s};
	CHECK_EQ_I64(tide_store_begin(s, "lost-1", on_begin, &b), 0);
	terminate(backend_where("wait_event_type = 'Lock'"));
	test_wait(&b.done);
	CHECK_EQ_I64(b.status, TIDE_ECONN);
	CHECK(!b.in_transaction);
	exec_ok(holder, "ROLLBACK");
	PQfinish(holder);
	test_close(s);
}

/* The connection dies while COMMIT is running (a deferred trigger makes it slow): the
 * outcome is unknown, never reported as a failure or a success. */
static void commit_outcome_unknown(void)
{
	PGconn *c = test_pg();
	exec_ok(c, "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS"
	           " $$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$");
	exec_ok(c, "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON emt_messages"
	           " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
	           " WHEN (NEW.stream_id = 'slow-1') EXECUTE FUNCTION slow_commit()");
	PQfinish(c);
	struct tide_store *s = test_store();
	CHECK_EQ_I64(begin_sync(s, "slow-1").status, 0);
	CHECK_EQ_I64(append_sync(s, "slow-1", TIDE_EXPECT_NO_STREAM).status, 0);
	struct ended e = {.store = s};
	CHECK_EQ_I64(tide_store_commit(s, on_end, &e), 0);
	terminate(backend_where("wait_event = 'PgSleep'"));
	test_wait(&e.done);
	CHECK_EQ_I64(e.status, TIDE_EUNKNOWN);
	CHECK(strstr(e.err, "may or may not"));
	CHECK(!e.in_transaction);
	CHECK_EQ_I64(count_rows("slow-1"), 0);
	test_close(s);
}

int main(int argc, char **argv)
{
	static const struct test_case cases[] = {
	        {"begin_append_commit", begin_append_commit},
	        {"begin_rollback", begin_rollback},
	        {"begin_missing_stream", begin_missing_stream},
	        {"failed_statement_rolls_back", failed_statement_rolls_back},
	        {"begin_lock_fails", begin_lock_fails},
	        {"commit_wakes_consumers", commit_wakes_consumers},
	        {"rollback_forgets_a_new_partition", rollback_forgets_a_new_partition},
	        {"misuse", misuse},
	        {"connection_lost_while_open", connection_lost_while_open},
	        {"commit_outcome_unknown", commit_outcome_unknown},
	};
	return test_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]));
}
