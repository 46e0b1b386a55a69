/* harness.c — fresh database per C test, loop helpers, and the test runner. */
#include "harness.h"

#include <unistd.h>

char test_url[1024];
uv_loop_t *test_loop;
static char db_name[64];

static void fatal(const char *what, PGconn *c)
{
	fprintf(stderr, "harness: %s: %s\n", what, c ? PQerrorMessage(c) : "");
	exit(1);
}

/* base URL with its database replaced, as a key=value conninfo string. */
static void url_for(const char *base, const char *db, char *out, size_t n)
{
	char *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(base, &err);
	if (!opts) {
		fprintf(stderr, "harness: bad TIDE_TEST_DATABASE_URL: %s\n", err);
		exit(1);
	}
	size_t o = 0;
	o += (size_t)snprintf(out + o, n - o, "dbname='%s'", db);
	for (PQconninfoOption *p = opts; p->keyword; p++) {
		if (!p->val || !p->val[0] || strcmp(p->keyword, "dbname") == 0)
			continue;
		o += (size_t)snprintf(out + o, n - o, " %s='%s'", p->keyword, p->val);
	}
	PQconninfoFree(opts);
}

static void admin(const char *base, const char *sql)
{
	char url[1024];
	url_for(base, "postgres", url, sizeof(url));
	PGconn *c = PQconnectdb(url);
	if (PQstatus(c) != CONNECTION_OK)
		fatal("connect", c);
	PGresult *r = PQexec(c, sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		fatal(sql, c);
	PQclear(r);
	PQfinish(c);
}

void test_wait(const bool *flag)
{
	uint64_t deadline = uv_now(test_loop) + 60000;
	while (!*flag) {
		uv_run(test_loop, UV_RUN_ONCE);
		uv_update_time(test_loop);
		if (uv_now(test_loop) > deadline) {
			fprintf(stderr, "harness: timed out waiting\n");
			exit(1);
		}
	}
}

struct open_wait {
	bool done;
	int status;
};

static void on_open(struct tide_store *s, int status, const char *err, void *arg)
{
	(void)s;
	struct open_wait *w = arg;
	w->done = true;
	w->status = status;
	if (status)
		fprintf(stderr, "harness: open: %s\n", err);
}

struct tide_store *test_store(void)
{
	struct open_wait w = {0};
	struct tide_store *s;
	CHECK(tide_store_open(test_loop, test_url, on_open, &w, &s) == 0);
	test_wait(&w.done);
	CHECK_EQ_I64(w.status, 0);
	return s;
}

void test_close(struct tide_store *store)
{
	tide_store_close(store);
	uv_run(test_loop, UV_RUN_NOWAIT);
}

PGconn *test_pg(void)
{
	PGconn *c = PQconnectdb(test_url);
	if (PQstatus(c) != CONNECTION_OK)
		fatal("connect", c);
	return c;
}

long long test_scalar(PGconn *c, const char *sql)
{
	PGresult *r = PQexec(c, sql);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		fatal(sql, c);
	long long v = PQntuples(r) && !PQgetisnull(r, 0, 0) ? atoll(PQgetvalue(r, 0, 0)) : 0;
	PQclear(r);
	return v;
}

static void on_migrated(int status, const char *err, size_t applied, void *arg)
{
	(void)applied;
	if (status)
		fprintf(stderr, "harness: migrate: %s\n", err);
	CHECK_EQ_I64(status, 0);
	*(bool *)arg = true;
}

int test_main(int argc, char **argv, const struct test_case *cases, size_t n)
{
	const char *base = getenv("TIDE_TEST_DATABASE_URL");
	if (argc != 2) {
		fprintf(stderr, "usage: %s TEST\n", argv[0]);
		return 2;
	}
	const struct test_case *tc = NULL;
	for (size_t i = 0; i < n; i++)
		if (strcmp(cases[i].name, argv[1]) == 0)
			tc = &cases[i];
	if (!tc) {
		fprintf(stderr, "no test named %s\n", argv[1]);
		return 2;
	}
	if (!base || !base[0]) {
		printf("skipped: TIDE_TEST_DATABASE_URL is not set (run scripts/test)\n");
		return SKIP_CODE;
	}
	snprintf(db_name, sizeof(db_name), "tide_c_%s_%d", tc->name, (int)getpid());
	char sql[256];
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s", db_name);
	admin(base, sql);
	url_for(base, db_name, test_url, sizeof(test_url));

	uv_loop_t loop;
	uv_loop_init(&loop);
	test_loop = &loop;
	struct tide_store *s = test_store();
	bool migrated = false;
	CHECK(tide_store_migrate(s, on_migrated, &migrated) == 0);
	test_wait(&migrated);
	test_close(s);

	tc->fn();

	uv_run(&loop, UV_RUN_DEFAULT); /* every handle must be closed by now */
	CHECK(uv_loop_close(&loop) == 0);
	snprintf(sql, sizeof(sql), "DROP DATABASE %s WITH (FORCE)", db_name);
	admin(base, sql);
	printf("ok %s\n", tc->name);
	return 0;
}
