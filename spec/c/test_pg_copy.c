/* test_pg_copy.c — COPY FROM STDIN and statements with parameters on a simple-mode
 * connection (engine/pg.c) against a real PostgreSQL: data much larger than the socket's
 * buffer, a source that aborts, a server that refuses a row, a COPY in a script, and a
 * connection killed in the middle; each ends in its callback, never in a hang, and the
 * connection stays usable where the server kept it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pg.h"

struct wait {
	bool done;
	int status;
	char err[600];
	char value[64];
	char tuples[32];
};

static void on_ready(struct tide_pg *pg, int status, const char *err, void *arg)
{
	(void)pg;
	struct wait *w = arg;
	w->done = true;
	w->status = status;
	if (status)
		fprintf(stderr, "connect: %s\n", err);
}

static void on_reply(const struct tide_pg_reply *r, void *arg)
{
	struct wait *w = arg;
	w->done = true;
	w->status = r->status;
	snprintf(w->err, sizeof(w->err), "%s", r->err ? r->err : "");
	w->value[0] = w->tuples[0] = '\0';
	if (!r->status && r->res) {
		snprintf(w->tuples, sizeof(w->tuples), "%s", PQcmdTuples(r->res));
		if (PQntuples(r->res) && PQnfields(r->res))
			snprintf(w->value, sizeof(w->value), "%s",
			         PQgetisnull(r->res, 0, 0) ? "NULL" : PQgetvalue(r->res, 0, 0));
	}
}

static struct tide_pg *open_simple(void)
{
	struct wait w = {0};
	struct tide_pg *pg;
	CHECK(tide_pg_open(test_loop, test_url, "test", TIDE_PG_SIMPLE, on_ready, &w, &pg) == 0);
	test_wait(&w.done);
	CHECK_EQ_I64(w.status, 0);
	return pg;
}

static struct wait query(struct tide_pg *pg, const char *sql, int n, const char *const *v)
{
	struct wait w = {0};
	CHECK(tide_pg_query(pg, sql, n, v, on_reply, &w) == 0);
	test_wait(&w.done);
	return w;
}

/* Text rows "i\tline i\n", i from 1 to rows, handed out a piece of up to 64 KiB at a
 * time; abort_at > 0 ends the data with an error at that row instead, kill_at > 0 kills
 * the backend there, bad_at > 0 writes a row the server refuses. */
struct source {
	long rows, next, abort_at, kill_at, bad_at;
	int pid;
	char buf[65536];
};

static int produce(void *arg, const char **data, size_t *len)
{
	struct source *s = arg;
	if (s->next > s->rows)
		return 0;
	size_t o = 0;
	while (s->next <= s->rows && o + 64 < sizeof(s->buf)) {
		long i = s->next++;
		if (i == s->abort_at) {
			*data = "the source gave up at this row";
			return -1;
		}
		if (i == s->kill_at) {
			PGconn *c = test_pg();
			char sql[64];
			snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%d)", s->pid);
			test_scalar(c, sql);
			PQfinish(c);
		}
		o += (size_t)snprintf(s->buf + o, sizeof(s->buf) - o,
		                      i == s->bad_at ? "x%ld\tline\n" : "%ld\tline %ld\n", i, i);
	}
	*data = s->buf;
	*len = o;
	return 1;
}

static struct wait copy(struct tide_pg *pg, struct source *s)
{
	struct wait w = {0};
	CHECK(tide_pg_copy(pg, "COPY t (a, b) FROM STDIN", produce, s, on_reply, &w) == 0);
	test_wait(&w.done);
	return w;
}

static void make_table(struct tide_pg *pg)
{
	CHECK_EQ_I64(query(pg, "CREATE TABLE IF NOT EXISTS t (a bigint, b text)", 0, NULL).status,
	             0);
}

static void copy_in(void)
{
	struct tide_pg *pg = open_simple();
	make_table(pg);
	/* ~20 MB: the kernel's socket buffer fills many times over. */
	struct source s = {.rows = 1000000, .next = 1};
	struct wait w = copy(pg, &s);
	CHECK_EQ_I64(w.status, 0);
	CHECK(strcmp(w.tuples, "1000000") == 0);
	PGconn *c = test_pg();
	CHECK_EQ_I64(test_scalar(c, "SELECT count(*) FROM t"), 1000000);
	CHECK_EQ_I64(test_scalar(c, "SELECT sum(a) FROM t"), 500000500000ll);
	PQfinish(c);
	/* And again on the same connection, inside a transaction. */
	CHECK_EQ_I64(query(pg, "BEGIN", 0, NULL).status, 0);
	s = (struct source){.rows = 10, .next = 1};
	CHECK_EQ_I64(copy(pg, &s).status, 0);
	CHECK(strcmp(query(pg, "SELECT count(*) FROM t", 0, NULL).value, "1000010") == 0);
	CHECK_EQ_I64(query(pg, "ROLLBACK", 0, NULL).status, 0);
	tide_pg_close(pg);
	uv_run(test_loop, UV_RUN_NOWAIT);
}

static void copy_abort(void)
{
	struct tide_pg *pg = open_simple();
	make_table(pg);
	struct source s = {.rows = 100000, .next = 1, .abort_at = 50000};
	struct wait w = copy(pg, &s);
	CHECK_EQ_I64(w.status, TIDE_EDB);
	CHECK(strstr(w.err, "the source gave up at this row"));
	CHECK(strcmp(query(pg, "SELECT count(*) FROM t", 0, NULL).value, "0") == 0);
	tide_pg_close(pg);
	uv_run(test_loop, UV_RUN_NOWAIT);
}

static void copy_refused_row(void)
{
	struct tide_pg *pg = open_simple();
	make_table(pg);
	struct source s = {.rows = 100000, .next = 1, .bad_at = 10};
	struct wait w = copy(pg, &s);
	CHECK_EQ_I64(w.status, TIDE_EDB);
	CHECK(strstr(w.err, "invalid input syntax for type bigint"));
	CHECK(s.next > s.rows); /* the data went on to its end: the server said so after it */
	CHECK(strcmp(query(pg, "SELECT 1", 0, NULL).value, "1") == 0);
	tide_pg_close(pg);
	uv_run(test_loop, UV_RUN_NOWAIT);
}

static void copy_in_script(void)
{
	struct tide_pg *pg = open_simple();
	make_table(pg);
	struct wait w = {0};
	CHECK(tide_pg_script(pg, "SELECT 1; COPY t FROM STDIN", on_reply, &w) == 0);
	test_wait(&w.done);
	CHECK_EQ_I64(w.status, TIDE_EDB);
	CHECK(strstr(w.err, "COPY FROM STDIN is not supported in a script"));
	CHECK(strcmp(query(pg, "SELECT 2", 0, NULL).value, "2") == 0);
	tide_pg_close(pg);
	uv_run(test_loop, UV_RUN_NOWAIT);
}

static void query_params(void)
{
	struct tide_pg *pg = open_simple();
	const char *v[3] = {"2", "3", NULL};
	CHECK(strcmp(query(pg, "SELECT $1::int + $2::int", 2, v).value, "5") == 0);
	CHECK(strcmp(query(pg, "SELECT $3::text, $1::int, $2::int", 3, v).value, "NULL") == 0);
	const char *quote[1] = {"it's \"quoted\"; DROP TABLE x"};
	CHECK(strcmp(query(pg, "SELECT length($1)", 1, quote).value, "27") == 0);
	struct wait w = query(pg, "SELECT 1; SELECT 2", 0, NULL); /* one statement only */
	CHECK_EQ_I64(w.status, TIDE_EDB);
	/* Queued behind one another, answered in order. */
	struct wait a = {0}, b = {0};
	CHECK(tide_pg_query(pg, "SELECT pg_sleep(0.05), 'a'", 0, NULL, on_reply, &a) == 0);
	CHECK(tide_pg_query(pg, "SELECT 'b'", 0, NULL, on_reply, &b) == 0);
	test_wait(&b.done);
	CHECK(a.done);
	tide_pg_close(pg);
	uv_run(test_loop, UV_RUN_NOWAIT);
}

static void copy_connection_killed(void)
{
	struct tide_pg *pg = open_simple();
	make_table(pg);
	struct source s = {.rows = 2000000, .next = 1, .kill_at = 100000};
	s.pid = (int)atoi(query(pg, "SELECT pg_backend_pid()", 0, NULL).value);
	struct wait w = copy(pg, &s);
	CHECK(w.status == TIDE_ECONN || w.status == TIDE_EDB);
	CHECK(w.err[0]);
	CHECK(!tide_pg_ready(pg) || w.status == TIDE_EDB);
	tide_pg_close(pg);
	uv_run(test_loop, UV_RUN_NOWAIT);
}

int main(int argc, char **argv)
{
	static const struct test_case cases[] = {
	        {"copy_in", copy_in},
	        {"copy_abort", copy_abort},
	        {"copy_refused_row", copy_refused_row},
	        {"copy_in_script", copy_in_script},
	        {"query_params", query_params},
	        {"copy_connection_killed", copy_connection_killed},
	};
	return test_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]));
}
