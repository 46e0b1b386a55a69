/* test_inline.c — inline projections from the C library (tide_store_set_projections) against
 * a real PostgreSQL: a document and an SQL projection updated in the append's transaction,
 * appends queued behind one another, a failing projection's error with nothing written, a
 * directory that does not load, a caller's transaction, and closing the store mid-append. */
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

static char dir[256];

static const char carts[] = "local tide = require 'tide'\n"
                            "return tide.projection {\n"
                            "  inline = true, collection = 'carts', events = { 'Added' },\n"
                            "  initial = function() return { items = 0, last = 0 } end,\n"
                            "  evolve = function(doc, e)\n"
                            "    if e.data.boom then error('boom') end\n"
                            "    doc.items = doc.items + e.data.n\n"
                            "    doc.last = e.stream_position\n"
                            "    return doc\n"
                            "  end,\n"
                            "}\n";

static const char totals[] =
        "local tide = require 'tide'\n"
        "return tide.projection {\n"
        "  inline = true,\n"
        "  setup = function(sql) sql:exec('CREATE TABLE IF NOT EXISTS totals (id text PRIMARY "
        "KEY, n bigint)') end,\n"
        "  handle = function(events, sql)\n"
        "    for _, e in ipairs(events) do\n"
        "      if e.data.sql_boom then sql:exec('SELECT 1/0') end\n"
        "      sql:exec('INSERT INTO totals AS t VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET "
        "n = t.n + $2', e.stream_id, e.data.n or 0)\n"
        "    end\n"
        "  end,\n"
        "}\n";

static void write_file(const char *name, const char *text)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	CHECK(f);
	fputs(text, f);
	fclose(f);
}

/* A directory "shop" holding the two projections; the app of their ids is "shop". */
static void make_dir(void)
{
	char root[] = "/tmp/tide-inline-XXXXXX";
	CHECK(mkdtemp(root));
	snprintf(dir, sizeof(dir), "%s/shop", root);
	CHECK(mkdir(dir, 0700) == 0);
	write_file("carts.lua", carts);
	write_file("totals.lua", totals);
}

struct appended {
	bool done;
	int status;
	int64_t next;
	int64_t positions[8];
	size_t count;
	char err[1024], processor[128], traceback[2048];
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
		for (size_t i = 0; i < r->count && i < 8; i++)
			a->positions[i] = r->global_positions[i];
		a->count = r->count;
		if (r->processor)
			snprintf(a->processor, sizeof(a->processor), "%s", r->processor);
		if (r->traceback)
			snprintf(a->traceback, sizeof(a->traceback), "%s", r->traceback);
	}
}

static void append_async(struct tide_store *s, const char *stream, const char *data,
                         struct appended *a)
{
	struct tide_event e[2] = {{.type = "Added", .data = data}, {.type = "Added", .data = data}};
	memset(a, 0, sizeof(*a));
	CHECK(tide_store_append(s, stream, e, 1, TIDE_EXPECT_ANY, on_append, a) == 0);
}

static struct appended append_sync(struct tide_store *s, const char *stream, const char *data)
{
	struct appended a;
	append_async(s, stream, data, &a);
	test_wait(&a.done);
	return a;
}

static long long items(PGconn *c, const char *id)
{
	char sql[256];
	snprintf(sql, sizeof(sql),
	         "SELECT (doc->>'items')::int FROM tide_documents WHERE collection = 'carts' AND "
	         "id = '%s'",
	         id);
	return test_scalar(c, sql);
}

static void document_and_sql(void)
{
	make_dir();
	struct tide_store *s = test_store();
	CHECK(tide_store_set_projections(s, dir) == 0);
	/* Two events in one append, then two appends sent at once: they queue. */
	struct tide_event two[2] = {{.type = "Added", .data = "{\"n\":2}"},
	                            {.type = "Added", .data = "{\"n\":3}"}};
	struct appended a = {0}, b, c;
	CHECK(tide_store_append(s, "cart-1", two, 2, TIDE_EXPECT_NO_STREAM, on_append, &a) == 0);
	append_async(s, "cart-1", "{\"n\":10}", &b);
	append_async(s, "cart-1", "{\"n\":20}", &c);
	test_wait(&a.done);
	test_wait(&b.done);
	test_wait(&c.done);
	CHECK_EQ_I64(a.status, 0);
	CHECK_EQ_I64(b.status, 0);
	CHECK_EQ_I64(c.status, 0);
	CHECK_EQ_I64(a.next, 2);
	CHECK_EQ_I64(a.count, 2);
	CHECK_EQ_I64(b.next, 3);
	CHECK_EQ_I64(c.next, 4);
	PGconn *pg = test_pg();
	CHECK_EQ_I64(items(pg, "cart-1"), 35);
	CHECK_EQ_I64(test_scalar(pg, "SELECT (doc->>'last')::int FROM tide_documents"), 4);
	CHECK_EQ_I64(test_scalar(pg, "SELECT n FROM totals WHERE id = 'cart-1'"), 35);
	CHECK_EQ_I64(test_scalar(pg, "SELECT count(*) FROM tide_processors WHERE status = 'inline'"
	                             " AND processor_id IN ('shop/carts', 'shop/totals')"),
	             2);
	/* Without projections, appends are plain again. */
	CHECK(tide_store_set_projections(s, NULL) == 0);
	CHECK_EQ_I64(append_sync(s, "cart-1", "{\"n\":100}").status, 0);
	CHECK_EQ_I64(items(pg, "cart-1"), 35);
	PQfinish(pg);
	test_close(s);
}

static void failure_rolls_back(void)
{
	make_dir();
	struct tide_store *s = test_store();
	CHECK(tide_store_set_projections(s, dir) == 0);
	CHECK_EQ_I64(append_sync(s, "cart-2", "{\"n\":1}").status, 0);
	struct appended a = append_sync(s, "cart-2", "{\"n\":1,\"boom\":true}");
	CHECK_EQ_I64(a.status, TIDE_ESCRIPT);
	CHECK(strcmp(a.processor, "shop/carts") == 0);
	CHECK(strstr(a.err, "inline projection shop/carts: ") &&
	      strstr(a.err, "carts.lua:6: boom"));
	CHECK(strstr(a.traceback, "in function 'evolve'"));
	struct appended b = append_sync(s, "cart-2", "{\"n\":1,\"sql_boom\":true}");
	CHECK_EQ_I64(b.status, TIDE_EDB);
	CHECK(strcmp(b.processor, "shop/totals") == 0);
	CHECK(strstr(b.err, "division by zero"));
	PGconn *pg = test_pg();
	CHECK_EQ_I64(test_scalar(pg, "SELECT count(*) FROM emt_messages"), 1);
	CHECK_EQ_I64(test_scalar(pg, "SELECT stream_position FROM emt_streams"), 1);
	CHECK_EQ_I64(items(pg, "cart-2"), 1);
	CHECK_EQ_I64(test_scalar(pg, "SELECT n FROM totals"), 1);
	/* The connection is clean for what comes next. */
	struct appended c = append_sync(s, "cart-2", "{\"n\":5}");
	CHECK_EQ_I64(c.status, 0);
	CHECK_EQ_I64(c.next, 2);
	CHECK_EQ_I64(items(pg, "cart-2"), 6);
	PQfinish(pg);
	test_close(s);
}

static void bad_directory(void)
{
	make_dir();
	struct tide_store *s = test_store();
	CHECK_EQ_I64(tide_store_set_projections(s, "/nonexistent/tide-inline"), TIDE_EINVAL);
	CHECK(strstr(tide_store_error(s), "/nonexistent/tide-inline"));
	CHECK(tide_store_set_projections(s, dir) == 0);
	write_file("broken.lua", "return tide.projection { inline = true, collection = 'x' }\n");
	CHECK_EQ_I64(tide_store_set_projections(s, dir), TIDE_ESCRIPT);
	CHECK(strstr(tide_store_error(s), "broken.lua"));
	CHECK(strstr(tide_store_error(s), "'evolve' must be a function"));
	/* The store keeps the projections it had. */
	CHECK_EQ_I64(append_sync(s, "cart-3", "{\"n\":4}").status, 0);
	PGconn *pg = test_pg();
	CHECK_EQ_I64(items(pg, "cart-3"), 4);
	PQfinish(pg);
	test_close(s);
}

struct begun {
	bool done;
	int status;
};

static void on_begin(int status, const char *err, int64_t version, void *arg)
{
	(void)err;
	(void)version;
	struct begun *b = arg;
	b->done = true;
	b->status = status;
}

static void on_end(int status, const char *err, void *arg)
{
	(void)err;
	struct begun *b = arg;
	b->done = true;
	b->status = status;
}

static void in_transaction(void)
{
	make_dir();
	struct tide_store *s = test_store();
	CHECK(tide_store_set_projections(s, dir) == 0);
	struct begun b = {0};
	CHECK(tide_store_begin(s, "cart-4", on_begin, &b) == 0);
	test_wait(&b.done);
	CHECK_EQ_I64(b.status, 0);
	CHECK_EQ_I64(append_sync(s, "cart-4", "{\"n\":2}").status, 0);
	CHECK_EQ_I64(append_sync(s, "cart-4", "{\"n\":2,\"boom\":true}").status, TIDE_ESCRIPT);
	/* While one is in flight, the transaction cannot end under it. */
	struct appended a;
	append_async(s, "cart-4", "{\"n\":3}", &a);
	struct begun e = {0};
	CHECK_EQ_I64(tide_store_commit(s, on_end, &e), TIDE_EINVAL);
	CHECK(strstr(tide_store_error(s), "in flight"));
	test_wait(&a.done);
	CHECK_EQ_I64(a.status, 0);
	CHECK(tide_store_commit(s, on_end, &e) == 0);
	test_wait(&e.done);
	CHECK_EQ_I64(e.status, 0);
	PGconn *pg = test_pg();
	CHECK_EQ_I64(test_scalar(pg, "SELECT stream_position FROM emt_streams"), 2);
	CHECK_EQ_I64(items(pg, "cart-4"), 5);
	PQfinish(pg);
	test_close(s);
}

static void close_while_in_flight(void)
{
	make_dir();
	struct tide_store *s = test_store();
	CHECK(tide_store_set_projections(s, dir) == 0);
	struct appended a, b;
	append_async(s, "cart-5", "{\"n\":1}", &a);
	append_async(s, "cart-5", "{\"n\":1}", &b);
	tide_store_close(s);
	/* Both hear of it, in order; nothing is left behind (the sanitizer build checks). */
	test_wait(&a.done);
	test_wait(&b.done);
	CHECK_EQ_I64(a.status, TIDE_ECLOSED);
	CHECK_EQ_I64(b.status, TIDE_ECLOSED);
	uv_run(test_loop, UV_RUN_DEFAULT);
	PGconn *pg = test_pg();
	CHECK_EQ_I64(test_scalar(pg, "SELECT count(*) FROM emt_messages"), 0);
	PQfinish(pg);
}

int main(int argc, char **argv)
{
	static const struct test_case cases[] = {
	        {"document_and_sql", document_and_sql},
	        {"failure_rolls_back", failure_rolls_back},
	        {"bad_directory", bad_directory},
	        {"in_transaction", in_transaction},
	        {"close_while_in_flight", close_while_in_flight},
	};
	return test_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]));
}
