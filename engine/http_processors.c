/* http_processors.c — GET /processors: what `tide status --json` shows, in one JSON object,
 * with the live daemons that share them and the backend that holds every consumer back, if
 * one does. The dashboard's live stream
 * (http_dashboard.c) sends the same object once a second: tide_http_processors_query. */
#include <stdlib.h>

#include "http.h"
#include "status.h"
#include "store.h"

struct query {
	struct tide_store *store;
	cJSON *body;
	tide_http_processors_cb cb;
	void *arg;
};

static void finish(struct query *q, int status, const char *err)
{
	if (status) {
		cJSON_Delete(q->body);
		q->body = NULL;
	}
	q->cb(q->body, status, err, q->arg);
	free(q);
}

static void on_held_back(const struct tide_pg_reply *reply, void *arg)
{
	struct query *q = arg;
	if (reply->status) {
		finish(q, reply->status, reply->err);
		return;
	}
	PGresult *res = reply->res;
	if (PQntuples(res) == 1) {
		cJSON *h = cJSON_AddObjectToObject(q->body, "held_back_by");
		cJSON_AddRawToObject(h, "pid", PQgetvalue(res, 0, 0));
		cJSON_AddStringToObject(h, "user", PQgetvalue(res, 0, 1));
		cJSON_AddStringToObject(h, "application", PQgetvalue(res, 0, 2));
		cJSON_AddStringToObject(h, "state", PQgetvalue(res, 0, 3));
		cJSON_AddRawToObject(h, "seconds", PQgetvalue(res, 0, 4));
	} else {
		cJSON_AddNullToObject(q->body, "held_back_by");
	}
	finish(q, 0, NULL);
}

/* "daemons": the live daemons sharing the processors (sql/0012). */
static void on_daemons(const struct tide_pg_reply *reply, void *arg)
{
	struct query *q = arg;
	if (reply->status) {
		finish(q, reply->status, reply->err);
		return;
	}
	cJSON *list = cJSON_AddArrayToObject(q->body, "daemons");
	for (int r = 0; r < PQntuples(reply->res); r++)
		cJSON_AddItemToArray(list, tide_status_daemon_json(reply->res, r));
	if (tide_pg_exec(q->store->pg, &tide_stmt_held_back, NULL, on_held_back, q) != 0)
		finish(q, TIDE_ECONN, tide_store_error(q->store));
}

static void on_status(const struct tide_pg_reply *reply, void *arg)
{
	struct query *q = arg;
	if (reply->status) {
		finish(q, reply->status, reply->err);
		return;
	}
	cJSON *list = cJSON_AddArrayToObject(q->body, "processors");
	for (int r = 0; r < PQntuples(reply->res); r++)
		cJSON_AddItemToArray(list, tide_status_json(reply->res, r));
	if (tide_pg_exec(q->store->pg, &tide_stmt_daemons, NULL, on_daemons, q) != 0)
		finish(q, TIDE_ECONN, tide_store_error(q->store));
}

int tide_http_processors_query(struct tide_store *s, tide_http_processors_cb cb, void *arg)
{
	struct query *q = calloc(1, sizeof(*q));
	cJSON *body = cJSON_CreateObject();
	if (!q || !body) {
		free(q);
		cJSON_Delete(body);
		return TIDE_ENOMEM;
	}
	*q = (struct query){s, body, cb, arg};
	if (tide_pg_exec(s->pg, &tide_stmt_status, NULL, on_status, q) != 0) {
		cJSON_Delete(body);
		free(q);
		return TIDE_ECONN;
	}
	return 0;
}

static void on_processors(cJSON *body, int status, const char *err, void *arg)
{
	struct tide_http_call *c = arg;
	if (status)
		tide_http_fail_code(c, status, err);
	else
		tide_http_reply_json(c, 200, body);
}

void tide_http_processors(struct tide_http_call *c)
{
	struct tide_store *s = tide_http_store(c);
	if (!s)
		return;
	int rc = tide_http_processors_query(s, on_processors, c);
	if (rc)
		tide_http_fail_code(c, rc, rc == TIDE_ECONN ? tide_store_error(s) : NULL);
}
