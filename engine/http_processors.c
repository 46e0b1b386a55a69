/* http_processors.c — GET /processors: what `tide status --json` shows, in one JSON object,
 * with the backend that holds every consumer back, if one does. */
#include <stdlib.h>

#include "http.h"
#include "status.h"
#include "store.h"

static void on_held_back(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_http_call *c = arg;
	cJSON *o = c->route_state;
	if (reply->status) {
		cJSON_Delete(o);
		tide_http_fail_code(c, reply->status, reply->err);
		return;
	}
	PGresult *res = reply->res;
	if (PQntuples(res) == 1) {
		cJSON *h = cJSON_AddObjectToObject(o, "held_back_by");
		cJSON_AddRawToObject(h, "pid", PQgetvalue(res, 0, 0));
		cJSON_AddStringToObject(h, "user", PQgetvalue(res, 0, 1));
		cJSON_AddStringToObject(h, "application", PQgetvalue(res, 0, 2));
		cJSON_AddStringToObject(h, "state", PQgetvalue(res, 0, 3));
		cJSON_AddRawToObject(h, "seconds", PQgetvalue(res, 0, 4));
	} else {
		cJSON_AddNullToObject(o, "held_back_by");
	}
	tide_http_reply_json(c, 200, o);
}

static void on_status(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_http_call *c = arg;
	struct tide_store *s = c->route_state;
	if (reply->status) {
		tide_http_fail_code(c, reply->status, reply->err);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON *list = cJSON_AddArrayToObject(o, "processors");
	for (int r = 0; r < PQntuples(reply->res); r++)
		cJSON_AddItemToArray(list, tide_status_json(reply->res, r));
	c->route_state = o;
	if (tide_pg_exec(s->pg, &tide_stmt_held_back, NULL, on_held_back, c) != 0) {
		cJSON_Delete(o);
		tide_http_fail_code(c, TIDE_ECONN, tide_store_error(s));
	}
}

void tide_http_processors(struct tide_http_call *c)
{
	struct tide_store *s = tide_http_store(c);
	if (!s)
		return;
	c->route_state = s;
	if (tide_pg_exec(s->pg, &tide_stmt_status, NULL, on_status, c) != 0)
		tide_http_fail_code(c, TIDE_ECONN, tide_store_error(s));
}
