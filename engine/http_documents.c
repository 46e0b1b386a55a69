/* http_documents.c — GET /documents/{collection}/{id} and GET /documents/{collection}: what
 * document projections keep, as `tide doc` and `tide docs` show it. */
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "json_out.h"

static void on_doc(int status, const char *err, const struct tide_docs_result *r, void *arg)
{
	struct tide_http_call *c = arg;
	if (status)
		tide_http_fail_code(c, status, err);
	else if (r->count == 0)
		tide_http_fail(c, 404, "not_found", "collection %.200s has no document %.200s",
		               c->args[0], c->args[1]);
	else
		tide_http_reply_json(c, 200, tide_json_document(&r->documents[0]));
}

void tide_http_document(struct tide_http_call *c)
{
	struct tide_store *s = tide_http_store(c);
	if (!s)
		return;
	int rc = tide_store_doc(s, c->args[0], c->args[1], on_doc, c);
	if (rc)
		tide_http_fail_code(c, rc, tide_store_error(s));
}

static void on_docs(int status, const char *err, const struct tide_docs_result *r, void *arg)
{
	struct tide_http_call *c = arg;
	if (status) {
		tide_http_fail_code(c, status, err);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON *list = cJSON_AddArrayToObject(o, "documents");
	for (size_t i = 0; i < r->count; i++)
		cJSON_AddItemToArray(list, tide_json_document(&r->documents[i]));
	/* A full page may have more behind it: where the next one starts. */
	intptr_t limit = (intptr_t)c->route_state;
	if (r->count > 0 && (intptr_t)r->count == limit)
		cJSON_AddStringToObject(o, "next", r->documents[r->count - 1].id);
	else
		cJSON_AddNullToObject(o, "next");
	tide_http_reply_json(c, 200, o);
}

void tide_http_documents(struct tide_http_call *c)
{
	struct tide_docs_opts opts = {
	        .where = tide_http_param(c, "where"),
	        .after = tide_http_param(c, "after"),
	};
	const char *limit = tide_http_param(c, "limit");
	if (limit) {
		char *end;
		long n = strtol(limit, &end, 10);
		if (end == limit || *end || n < 1 || n > TIDE_DOCS_MAX_LIMIT) {
			tide_http_fail(c, 400, "invalid", "limit wants a number from 1 to %d",
			               TIDE_DOCS_MAX_LIMIT);
			return;
		}
		opts.limit = n;
	}
	c->route_state = (void *)(intptr_t)(opts.limit ? opts.limit : TIDE_DOCS_DEFAULT_LIMIT);
	struct tide_store *s = tide_http_store(c);
	if (!s)
		return;
	int rc = tide_store_docs(s, c->args[0], &opts, on_docs, c);
	if (rc)
		tide_http_fail_code(c, rc, tide_store_error(s));
}
