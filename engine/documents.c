/* documents.c — reading what document projections wrote (tide_documents): one document by
 * id, or a page of a collection in id order, filtered by JSONB containment. A public
 * collection name goes through tide_collection() (sql/0007), so that readers see the
 * generation a blue-green rebuild made live, never the one being built. */
#include "store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define DOC_COLUMNS                                                                                \
	"id, doc, last_stream_id, last_stream_position, last_global_position,"                     \
	" to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

static const struct tide_pg_stmt stmt_doc = {
        "tide_doc",
        "SELECT " DOC_COLUMNS " FROM tide_documents"
        " WHERE collection = tide_collection($1) AND id = $2",
        2,
};

/* Keyset pages on the primary key (collection, id): a page after an id starts where the
 * index has it, however deep. Two statements, so that each plan uses the key as a bound. */
static const struct tide_pg_stmt stmt_docs_first = {
        "tide_docs_first",
        "SELECT " DOC_COLUMNS " FROM tide_documents"
        " WHERE collection = tide_collection($1) AND ($2::jsonb IS NULL OR doc @> $2::jsonb)"
        " ORDER BY id LIMIT $3",
        3,
};

static const struct tide_pg_stmt stmt_docs_after = {
        "tide_docs_after",
        "SELECT " DOC_COLUMNS " FROM tide_documents"
        " WHERE collection = tide_collection($1) AND ($2::jsonb IS NULL OR doc @> $2::jsonb)"
        " AND id > $4 ORDER BY id LIMIT $3",
        4,
};

enum { COL_ID, COL_DOC, COL_STREAM, COL_STREAM_POSITION, COL_GLOBAL_POSITION, COL_UPDATED_AT };

struct docs_call {
	tide_docs_cb cb;
	void *arg;
};

static int fail(struct tide_store *store, int code, const char *what, const char *detail)
{
	snprintf(store->error, sizeof(store->error), "%s%s", what, detail);
	return code;
}

static int64_t int_or_zero(const PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static void on_docs(const struct tide_pg_reply *reply, void *arg)
{
	struct docs_call *c = arg;
	char buf[700];
	if (reply->status) {
		c->cb(reply->status, tide_pg_explain(reply, buf, sizeof(buf)), NULL, c->arg);
		free(c);
		return;
	}
	PGresult *res = reply->res;
	int rows = PQntuples(res);
	struct tide_document *d = rows ? calloc((size_t)rows, sizeof(*d)) : NULL;
	if (rows && !d) {
		c->cb(TIDE_ENOMEM, "out of memory", NULL, c->arg);
		free(c);
		return;
	}
	for (int i = 0; i < rows; i++) {
		d[i].id = PQgetvalue(res, i, COL_ID);
		d[i].doc = PQgetvalue(res, i, COL_DOC);
		d[i].last_stream_id =
		        PQgetisnull(res, i, COL_STREAM) ? NULL : PQgetvalue(res, i, COL_STREAM);
		d[i].last_stream_position = int_or_zero(res, i, COL_STREAM_POSITION);
		d[i].last_global_position = int_or_zero(res, i, COL_GLOBAL_POSITION);
		d[i].updated_at = PQgetvalue(res, i, COL_UPDATED_AT);
	}
	struct tide_docs_result r = {d, (size_t)rows};
	c->cb(0, NULL, &r, c->arg);
	free(d);
	free(c);
}

static int send_query(struct tide_store *store, const struct tide_pg_stmt *stmt,
                      const char *const *values, tide_docs_cb cb, void *arg)
{
	if (!tide_store_connected(store)) {
		if (!store->error[0])
			fail(store, TIDE_ECONN, "not connected to the database", "");
		return TIDE_ECONN;
	}
	struct docs_call *c = calloc(1, sizeof(*c));
	if (!c)
		return fail(store, TIDE_ENOMEM, "out of memory", "");
	c->cb = cb;
	c->arg = arg;
	if (tide_pg_exec(store->pg, stmt, values, on_docs, c) != 0) {
		free(c);
		return fail(store, TIDE_ECONN, "cannot send the query: ", tide_pg_error(store->pg));
	}
	return 0;
}

static int check_text(struct tide_store *store, const char *what, const char *s)
{
	return tide_check_name(what, s, s ? strlen(s) : 0, TIDE_MAX_NAME_BYTES, store->error,
	                       sizeof(store->error));
}

int tide_store_doc(struct tide_store *store, const char *collection, const char *id,
                   tide_docs_cb cb, void *arg)
{
	if (check_text(store, "collection name", collection) ||
	    check_text(store, "document id", id))
		return TIDE_EINVAL;
	const char *values[2] = {collection, id};
	return send_query(store, &stmt_doc, values, cb, arg);
}

int tide_store_docs(struct tide_store *store, const char *collection,
                    const struct tide_docs_opts *opts, tide_docs_cb cb, void *arg)
{
	static const struct tide_docs_opts none = {0};
	if (!opts)
		opts = &none;
	if (check_text(store, "collection name", collection) ||
	    (opts->after && check_text(store, "document id of after", opts->after)))
		return TIDE_EINVAL;
	if (opts->limit < 0 || opts->limit > TIDE_DOCS_MAX_LIMIT) {
		snprintf(store->error, sizeof(store->error),
		         "limit must be from 1 to %d (0: %d), got %" PRId64
		         "; read further pages with after",
		         TIDE_DOCS_MAX_LIMIT, TIDE_DOCS_DEFAULT_LIMIT, opts->limit);
		return TIDE_EINVAL;
	}
	if (opts->where &&
	    tide_json_check_object(opts->where, "where", store->error, sizeof(store->error)))
		return TIDE_EINVAL;
	char limit[24];
	snprintf(limit, sizeof(limit), "%" PRId64,
	         opts->limit ? opts->limit : (int64_t)TIDE_DOCS_DEFAULT_LIMIT);
	const char *values[4] = {collection, opts->where, limit, opts->after};
	return send_query(store, opts->after ? &stmt_docs_after : &stmt_docs_first, values, cb,
	                  arg);
}
