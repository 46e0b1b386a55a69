/* test_documents.c — tide_store_doc and tide_store_docs (engine/documents.c) against rows of
 * tide_documents: every field, containment filters, keyset pages that add up to the whole
 * collection, the live generation behind a public name, and bad input refused up front. */
#include <inttypes.h>

#include "harness.h"

/* What a callback saw, copied out (the strings die with the callback). */
#define MAX_DOCS 64
struct seen {
	bool done;
	int status;
	char err[700];
	size_t count;
	struct {
		char id[64], doc[256], stream[64], updated_at[40];
		bool has_stream;
		int64_t stream_position, global_position;
	} d[MAX_DOCS];
};

static void on_docs(int status, const char *err, const struct tide_docs_result *r, void *arg)
{
	struct seen *s = arg;
	s->done = true;
	s->status = status;
	if (status) {
		snprintf(s->err, sizeof(s->err), "%s", err);
		return;
	}
	CHECK(r->count <= MAX_DOCS);
	s->count = r->count;
	for (size_t i = 0; i < r->count; i++) {
		const struct tide_document *d = &r->documents[i];
		snprintf(s->d[i].id, sizeof(s->d[i].id), "%s", d->id);
		snprintf(s->d[i].doc, sizeof(s->d[i].doc), "%s", d->doc);
		snprintf(s->d[i].updated_at, sizeof(s->d[i].updated_at), "%s", d->updated_at);
		s->d[i].has_stream = d->last_stream_id != NULL;
		snprintf(s->d[i].stream, sizeof(s->d[i].stream), "%s",
		         d->last_stream_id ? d->last_stream_id : "");
		s->d[i].stream_position = d->last_stream_position;
		s->d[i].global_position = d->last_global_position;
	}
}

static void exec_sql(PGconn *c, const char *sql)
{
	PGresult *res = PQexec(c, sql);
	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
		fprintf(stderr, "%s: %s\n", sql, PQerrorMessage(c));
		exit(1);
	}
	PQclear(res);
}

/* 30 documents p-00 .. p-29 of collection 'products' (status open for even numbers),
 * written as a projection writes them; one of another collection; one without positions. */
static void load(PGconn *c)
{
	exec_sql(c, "INSERT INTO tide_documents (collection, id, doc, last_stream_id,"
	            " last_stream_position, last_global_position, updated_at)"
	            " SELECT 'products', 'p-' || lpad(i::text, 2, '0'),"
	            "  jsonb_build_object('n', i, 'status', CASE WHEN i % 2 = 0 THEN 'open'"
	            "   ELSE 'closed' END, 'tags', jsonb_build_array('t' || (i % 3))),"
	            "  'cart-' || i, i + 1, 1000 + i, '2026-01-31 12:34:56.123456+00'"
	            " FROM generate_series(0, 29) i");
	exec_sql(c, "INSERT INTO tide_documents (collection, id, doc)"
	            " VALUES ('other', 'p-00', '{\"n\": -1}'), ('legacy', 'x', '{}')");
}

static struct seen *seen_new(void)
{
	struct seen *s = calloc(1, sizeof(*s));
	CHECK(s);
	return s;
}

static void doc_fields(void)
{
	PGconn *c = test_pg();
	load(c);
	struct tide_store *store = test_store();
	struct seen *s = seen_new();
	CHECK(tide_store_doc(store, "products", "p-07", on_docs, s) == 0);
	test_wait(&s->done);
	CHECK_EQ_I64(s->status, 0);
	CHECK_EQ_I64(s->count, 1);
	CHECK(strcmp(s->d[0].id, "p-07") == 0);
	CHECK(strcmp(s->d[0].doc, "{\"n\": 7, \"tags\": [\"t1\"], \"status\": \"closed\"}") == 0);
	CHECK(s->d[0].has_stream && strcmp(s->d[0].stream, "cart-7") == 0);
	CHECK_EQ_I64(s->d[0].stream_position, 8);
	CHECK_EQ_I64(s->d[0].global_position, 1007);
	CHECK(strcmp(s->d[0].updated_at, "2026-01-31T12:34:56.123456Z") == 0);

	/* None: a count of 0, not an error. Another collection's document of that id. */
	memset(s, 0, sizeof(*s));
	CHECK(tide_store_doc(store, "products", "p-99", on_docs, s) == 0);
	test_wait(&s->done);
	CHECK_EQ_I64(s->status, 0);
	CHECK_EQ_I64(s->count, 0);
	memset(s, 0, sizeof(*s));
	CHECK(tide_store_doc(store, "other", "p-00", on_docs, s) == 0);
	test_wait(&s->done);
	CHECK_EQ_I64(s->count, 1);
	CHECK(strcmp(s->d[0].doc, "{\"n\": -1}") == 0);

	/* Written before documents recorded their event: NULL and 0. */
	memset(s, 0, sizeof(*s));
	CHECK(tide_store_doc(store, "legacy", "x", on_docs, s) == 0);
	test_wait(&s->done);
	CHECK_EQ_I64(s->count, 1);
	CHECK(!s->d[0].has_stream);
	CHECK_EQ_I64(s->d[0].stream_position, 0);
	CHECK_EQ_I64(s->d[0].global_position, 0);
	free(s);
	test_close(store);
	PQfinish(c);
}

/* Reads every page of a filtered collection; returns the ids joined by ',' (and checks
 * that each page but the last is full). */
static void all_pages(struct tide_store *store, const char *where, int64_t limit, char *out,
                      size_t n)
{
	struct seen *s = seen_new();
	char after[64] = "";
	out[0] = '\0';
	for (int page = 0; page < 100; page++) {
		memset(s, 0, sizeof(*s));
		struct tide_docs_opts o = {
		        .where = where, .limit = limit, .after = after[0] ? after : NULL};
		CHECK(tide_store_docs(store, "products", &o, on_docs, s) == 0);
		test_wait(&s->done);
		CHECK_EQ_I64(s->status, 0);
		for (size_t i = 0; i < s->count; i++) {
			size_t len = strlen(out);
			snprintf(out + len, n - len, "%s%s", len ? "," : "", s->d[i].id);
		}
		if ((int64_t)s->count < (limit ? limit : TIDE_DOCS_DEFAULT_LIMIT))
			break;
		snprintf(after, sizeof(after), "%s", s->d[s->count - 1].id);
	}
	free(s);
}

/* The ids the database gives for the same filter, in id order, joined by ','. */
static void expected_ids(PGconn *c, const char *where, char *out, size_t n)
{
	char sql[512];
	snprintf(sql, sizeof(sql),
	         "SELECT coalesce(string_agg(id, ',' ORDER BY id), '') FROM tide_documents"
	         " WHERE collection = 'products' AND ($1::jsonb IS NULL OR doc @> $1::jsonb)");
	const char *v[1] = {where};
	PGresult *res = PQexecParams(c, sql, 1, NULL, v, NULL, NULL, 0);
	CHECK(PQresultStatus(res) == PGRES_TUPLES_OK);
	snprintf(out, n, "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
}

static void pages_and_filters(void)
{
	PGconn *c = test_pg();
	load(c);
	struct tide_store *store = test_store();
	static const char *const wheres[] = {
	        NULL,
	        "{\"status\":\"open\"}",
	        "{\"tags\":[\"t1\"]}",
	        "{\"status\":\"open\",\"tags\":[\"t0\"]}",
	        "{\"n\":7}",
	        "{\"n\":\"7\"}", /* a string is not the number: no document */
	        "{}",
	};
	static const int64_t limits[] = {0, 1, 4, 7, 30, 1000};
	char got[2048], want[2048];
	for (size_t w = 0; w < sizeof(wheres) / sizeof(wheres[0]); w++) {
		expected_ids(c, wheres[w], want, sizeof(want));
		for (size_t l = 0; l < sizeof(limits) / sizeof(limits[0]); l++) {
			all_pages(store, wheres[w], limits[l], got, sizeof(got));
			if (strcmp(got, want) != 0) {
				fprintf(stderr, "where %s limit %" PRId64 ": %s, expected %s\n",
				        wheres[w] ? wheres[w] : "NULL", limits[l], got, want);
				exit(1);
			}
		}
	}
	expected_ids(c, "{\"status\":\"open\"}", want, sizeof(want));
	CHECK(strncmp(want, "p-00,p-02,p-04", 14) == 0); /* the filter does filter */

	/* A page after an id that is not there starts after where it would be. */
	struct seen *s = seen_new();
	struct tide_docs_opts o = {.after = "p-105", .limit = 2};
	CHECK(tide_store_docs(store, "products", &o, on_docs, s) == 0);
	test_wait(&s->done);
	CHECK_EQ_I64(s->count, 2);
	CHECK(strcmp(s->d[0].id, "p-11") == 0 && strcmp(s->d[1].id, "p-12") == 0);
	/* The default limit (100) takes all 30; a collection with none gives none. */
	memset(s, 0, sizeof(*s));
	CHECK(tide_store_docs(store, "products", NULL, on_docs, s) == 0);
	test_wait(&s->done);
	CHECK_EQ_I64(s->count, 30);
	memset(s, 0, sizeof(*s));
	CHECK(tide_store_docs(store, "nothing_here", NULL, on_docs, s) == 0);
	test_wait(&s->done);
	CHECK_EQ_I64(s->status, 0);
	CHECK_EQ_I64(s->count, 0);
	free(s);
	test_close(store);
	PQfinish(c);
}

/* A public name that tide_targets maps (a blue-green rebuild made NAME__v2 live) reads the
 * physical collection, never the one of the same name. */
static void live_generation(void)
{
	PGconn *c = test_pg();
	exec_sql(c, "INSERT INTO tide_documents (collection, id, doc) VALUES"
	            " ('sales', 'tea', '{\"v\": 1}'), ('sales__v2', 'tea', '{\"v\": 2}'),"
	            " ('sales__v2', 'mug', '{\"v\": 2}')");
	struct tide_store *store = test_store();
	struct seen *s = seen_new();
	CHECK(tide_store_doc(store, "sales", "tea", on_docs, s) == 0);
	test_wait(&s->done);
	CHECK(s->count == 1 && strcmp(s->d[0].doc, "{\"v\": 1}") == 0);
	exec_sql(c, "INSERT INTO tide_targets (kind, name, physical, processor_id, live)"
	            " VALUES ('collection', 'sales', 'sales__v2', 'app/sales', true)");
	memset(s, 0, sizeof(*s));
	CHECK(tide_store_doc(store, "sales", "tea", on_docs, s) == 0);
	test_wait(&s->done);
	CHECK(s->count == 1 && strcmp(s->d[0].doc, "{\"v\": 2}") == 0);
	memset(s, 0, sizeof(*s));
	CHECK(tide_store_docs(store, "sales", NULL, on_docs, s) == 0);
	test_wait(&s->done);
	CHECK_EQ_I64(s->count, 2);
	CHECK(strcmp(s->d[0].id, "mug") == 0 && strcmp(s->d[1].id, "tea") == 0);
	free(s);
	test_close(store);
	PQfinish(c);
}

static void never_called(int status, const char *err, const struct tide_docs_result *r, void *arg)
{
	(void)status, (void)err, (void)r, (void)arg;
	fprintf(stderr, "a refused request called back\n");
	exit(1);
}

/* Refused before anything is sent: TIDE_EINVAL, a message that says what, no callback. */
static void invalid_input(void)
{
	struct tide_store *store = test_store();
	struct {
		const char *collection, *id, *where, *after;
		int64_t limit;
		const char *message;
	} bad[] = {
	        {"", "x", NULL, NULL, 0, "collection name"},
	        {NULL, "x", NULL, NULL, 0, "collection name"},
	        {"c", "", NULL, NULL, 0, "document id"},
	        {"c\xff", "x", NULL, NULL, 0, "UTF-8"},
	        {"c", NULL, "[1]", NULL, 0, "where"},
	        {"c", NULL, "{\"a\":", NULL, 0, "where"},
	        {"c", NULL, "{\"a\":1} x", NULL, 0, "where"},
	        {"c", NULL, NULL, NULL, -1, "limit"},
	        {"c", NULL, NULL, NULL, TIDE_DOCS_MAX_LIMIT + 1, "limit"},
	        {"c", NULL, NULL, "", 0, "after"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc;
		if (bad[i].id)
			rc = tide_store_doc(store, bad[i].collection, bad[i].id, never_called,
			                    NULL);
		else {
			struct tide_docs_opts o = {bad[i].where, bad[i].after, bad[i].limit};
			rc = tide_store_docs(store, bad[i].collection, &o, never_called, NULL);
		}
		if (rc != TIDE_EINVAL || !strstr(tide_store_error(store), bad[i].message)) {
			fprintf(stderr, "case %zu: rc %d, message '%s', expected one about %s\n", i,
			        rc, tide_store_error(store), bad[i].message);
			exit(1);
		}
	}
	/* And the store still answers. */
	struct seen *s = seen_new();
	CHECK(tide_store_docs(store, "c", NULL, on_docs, s) == 0);
	test_wait(&s->done);
	CHECK_EQ_I64(s->status, 0);
	free(s);
	test_close(store);
}

int main(int argc, char **argv)
{
	static const struct test_case cases[] = {
	        {"doc_fields", doc_fields},
	        {"pages_and_filters", pages_and_filters},
	        {"live_generation", live_generation},
	        {"invalid_input", invalid_input},
	};
	return test_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]));
}
