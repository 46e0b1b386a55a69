/* http_streams.c — the routes of the event store: POST /streams/{id} (append), GET
 * /streams/{id} (read a stream), POST /streams/{id}/archive, GET /log (the gap-safe global
 * read). Bodies and replies
 * have the CLI's shapes: an append's outcome, events as `tide read` prints them. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "input.h"
#include "json.h"
#include "json_out.h"
#include "metrics.h"
#include "upcast.h"

/* A whole number >= 0 from the query; 0 when absent. -1 (and the call answered 400) when
 * it is not one. */
static int param_count(struct tide_http_call *c, const char *name, int64_t *out)
{
	const char *v = tide_http_param(c, name);
	*out = 0;
	if (!v)
		return 0;
	char *end;
	errno = 0;
	long long n = strtoll(v, &end, 10);
	if (errno || end == v || *end || n < 0) {
		tide_http_fail(c, 400, "invalid", "%s wants a whole number >= 0, got '%.40s'", name,
		               v);
		return -1;
	}
	*out = n;
	return 0;
}

/* --- POST /streams/{id} ----------------------------------------------------------------- */

struct append {
	struct tide_http_call *call;
	struct tide_event *events;
	char **texts;         /* what events point to */
	char (*versions)[16]; /* each event's schema_version, when given */
	size_t n, ntexts;
};

static void append_free(struct append *a)
{
	for (size_t i = 0; i < a->ntexts; i++)
		cJSON_free(a->texts[i]);
	free(a->texts);
	free(a->versions);
	free(a->events);
	free(a);
}

static void on_appended(int status, const char *err, const struct tide_append_result *r, void *arg)
{
	struct tide_http_call *c = arg;
	tide_metrics_append(TIDE_METRICS_HTTP, status, r ? r->count : 0, uv_hrtime() - c->started);
	if (status == 0) {
		tide_http_reply_json(c, 200, tide_json_append_result(r));
		return;
	}
	if (status == TIDE_ECONFLICT || (r && r->processor)) {
		cJSON *e;
		cJSON *o = tide_http_error_body(tide_strerror(status), err, &e);
		if (status == TIDE_ECONFLICT) {
			/* As the request says it: "no_stream", a version; the version found or
			 * null. */
			char expected[32];
			tide_expected_format(r->expected, expected, sizeof(expected));
			if (r->expected >= 0)
				tide_json_add_i64(e, "expected", r->expected);
			else
				cJSON_AddStringToObject(e, "expected", expected);
			if (r->actual >= 0)
				tide_json_add_i64(e, "actual", r->actual);
			else
				cJSON_AddNullToObject(e, "actual");
			if (r->archived)
				cJSON_AddBoolToObject(e, "archived", 1);
		} else {
			cJSON_AddStringToObject(e, "processor", r->processor);
			cJSON_AddStringToObject(e, "traceback", r->traceback ? r->traceback : "");
		}
		tide_http_reply_json(c, status == TIDE_ECONFLICT ? 409 : 422, o);
		return;
	}
	tide_http_fail_code(c, status, err);
}

/* `expected` as the CLI's --expected takes it, or a number. */
static int parse_expected(struct tide_http_call *c, const cJSON *v, int64_t *out)
{
	*out = TIDE_EXPECT_ANY;
	if (!v || cJSON_IsNull(v))
		return 0;
	if (cJSON_IsString(v)) {
		if (strcmp(v->valuestring, "any") == 0)
			return 0;
		if (strcmp(v->valuestring, "no_stream") == 0) {
			*out = TIDE_EXPECT_NO_STREAM;
			return 0;
		}
		if (strcmp(v->valuestring, "stream_exists") == 0) {
			*out = TIDE_EXPECT_STREAM_EXISTS;
			return 0;
		}
	} else if (cJSON_IsNumber(v) && v->valuedouble >= 0 &&
	           v->valuedouble <= 9007199254740991.0 &&
	           v->valuedouble == (double)(int64_t)v->valuedouble) {
		*out = (int64_t)v->valuedouble;
		return 0;
	}
	tide_http_fail(c, 400, "invalid",
	               "\"expected\" wants \"any\", \"no_stream\", \"stream_exists\" or a version "
	               "number >= 0");
	return -1;
}

/* An event's data or metadata: a JSON object, printed back for the store to check. */
static int event_object(struct tide_http_call *c, struct append *a, const cJSON *v, size_t i,
                        const char *key, const char **out)
{
	*out = NULL;
	if (!v || (cJSON_IsNull(v) && strcmp(key, "metadata") == 0))
		return 0;
	if (!cJSON_IsObject(v)) {
		tide_http_fail(c, 400, "invalid", "events[%zu].%s must be a JSON object", i, key);
		return -1;
	}
	char *text = cJSON_PrintUnformatted(v);
	if (!text) {
		tide_http_fail(c, 500, "memory", "out of memory");
		return -1;
	}
	a->texts[a->ntexts++] = text;
	*out = text;
	return 0;
}

static int parse_events(struct tide_http_call *c, struct append *a, const cJSON *events)
{
	static const char *const keys[] = {"type", "data", "metadata", "id", "schema_version"};
	a->n = (size_t)cJSON_GetArraySize(events);
	a->events = calloc(a->n, sizeof(*a->events));
	a->texts = calloc(a->n * 2, sizeof(*a->texts));
	a->versions = calloc(a->n, sizeof(*a->versions));
	if (!a->events || !a->texts || !a->versions) {
		tide_http_fail(c, 500, "memory", "out of memory");
		return -1;
	}
	size_t i = 0;
	for (const cJSON *e = events->child; e; e = e->next, i++) {
		if (!cJSON_IsObject(e)) {
			tide_http_fail(c, 400, "invalid",
			               "events[%zu] must be an object {\"type\", \"data\", "
			               "\"metadata\"?, \"id\"?}",
			               i);
			return -1;
		}
		for (const cJSON *k = e->child; k; k = k->next) {
			bool known = false;
			for (int j = 0; j < 5; j++)
				known |= strcmp(k->string, keys[j]) == 0;
			if (!known) {
				tide_http_fail(
				        c, 400, "invalid",
				        "events[%zu] has an unknown key \"%.40s\" (an event has "
				        "type, data, and optionally metadata, id and "
				        "schema_version)",
				        i, k->string);
				return -1;
			}
		}
		const cJSON *type = cJSON_GetObjectItemCaseSensitive(e, "type");
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
		const cJSON *data = cJSON_GetObjectItemCaseSensitive(e, "data");
		if (!cJSON_IsString(type)) {
			tide_http_fail(c, 400, "invalid", "events[%zu].type must be a string", i);
			return -1;
		}
		if (!data) {
			tide_http_fail(c, 400, "invalid", "events[%zu].data is missing", i);
			return -1;
		}
		if (id && !cJSON_IsNull(id) && !cJSON_IsString(id)) {
			tide_http_fail(c, 400, "invalid",
			               "events[%zu].id must be a string (a UUID)", i);
			return -1;
		}
		a->events[i].type = type->valuestring;
		a->events[i].message_id = cJSON_IsString(id) ? id->valuestring : NULL;
		/* The shape data has (upcasters bring older ones up to date): 1 to 999999999. */
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, "schema_version");
		if (v && !cJSON_IsNull(v)) {
			double x = cJSON_IsNumber(v) ? v->valuedouble : 0;
			if (x < 1 || x > 999999999 || x != (double)(long)x) {
				tide_http_fail(
				        c, 400, "invalid",
				        "events[%zu].schema_version must be a whole number from "
				        "1 to 999999999",
				        i);
				return -1;
			}
			snprintf(a->versions[i], sizeof(a->versions[i]), "%ld", (long)x);
			a->events[i].schema_version = a->versions[i];
		}
		if (event_object(c, a, data, i, "data", &a->events[i].data) ||
		    event_object(c, a, cJSON_GetObjectItemCaseSensitive(e, "metadata"), i,
		                 "metadata", &a->events[i].metadata))
			return -1;
	}
	return 0;
}

void tide_http_append(struct tide_http_call *c)
{
	h2o_iovec_t body = tide_http_body(c);
	cJSON *doc = cJSON_ParseWithLength(body.base, body.len);
	if (!doc || !cJSON_IsObject(doc)) {
		const char *at = cJSON_GetErrorPtr();
		long pos = doc || !at ? -1 : (long)(at - body.base) + 1;
		cJSON_Delete(doc);
		if (pos > 0 && (size_t)pos <= body.len + 1)
			tide_http_fail(c, 400, "invalid",
			               "the body is not JSON (near byte %ld); it must be "
			               "{\"events\": [...], \"expected\": ...}",
			               pos);
		else
			tide_http_fail(c, 400, "invalid",
			               "the body must be a JSON object {\"events\": [...], "
			               "\"expected\": ...}");
		return;
	}
	for (const cJSON *k = doc->child; k; k = k->next)
		if (strcmp(k->string, "events") != 0 && strcmp(k->string, "expected") != 0) {
			tide_http_fail(c, 400, "invalid",
			               "unknown key \"%.40s\" in the body (it has events and "
			               "optionally expected)",
			               k->string);
			cJSON_Delete(doc);
			return;
		}
	const cJSON *events = cJSON_GetObjectItemCaseSensitive(doc, "events");
	int64_t expected;
	if (!cJSON_IsArray(events) || !events->child) {
		tide_http_fail(c, 400, "invalid",
		               "\"events\" must be an array of one or more events");
		cJSON_Delete(doc);
		return;
	}
	if (parse_expected(c, cJSON_GetObjectItemCaseSensitive(doc, "expected"), &expected)) {
		cJSON_Delete(doc);
		return;
	}
	struct append *a = calloc(1, sizeof(*a));
	if (!a) {
		cJSON_Delete(doc);
		tide_http_fail(c, 500, "memory", "out of memory");
		return;
	}
	if (parse_events(c, a, events) == 0) {
		struct tide_store *s = tide_http_store(c);
		if (s) {
			/* The store copies the events before it returns. */
			int rc = tide_store_append(s, c->args[0], a->events, a->n, expected,
			                           on_appended, c);
			if (rc)
				tide_http_fail_code(c, rc, tide_store_error(s));
		}
	}
	append_free(a);
	cJSON_Delete(doc);
}

/* --- POST /streams/{id}/archive ------------------------------------------------------- */

static void on_archived(int status, const char *err, const struct tide_archive_result *r, void *arg)
{
	struct tide_http_call *c = arg;
	if (status == TIDE_EINVAL) { /* no such stream */
		tide_http_fail(c, 404, "invalid", "%s", err);
		return;
	}
	if (status) {
		tide_http_fail_code(c, status, err);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "stream_id", c->args[0]);
	cJSON_AddBoolToObject(o, "archived", 1);
	tide_json_add_i64(o, "version", r->version);
	tide_json_add_i64(o, "events", r->events);
	tide_http_reply_json(c, 200, o);
}

void tide_http_archive(struct tide_http_call *c)
{
	struct tide_store *s = tide_http_store(c);
	if (!s)
		return;
	int rc = tide_store_archive(s, c->args[0], on_archived, c);
	if (rc)
		tide_http_fail_code(c, rc, tide_store_error(s));
}

/* --- GET /streams/{id}, GET /log ------------------------------------------------------ */

static void on_read(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	struct tide_http_call *c = arg;
	if (status) {
		tide_http_fail_code(c, status, err);
		return;
	}
	bool log = c->route_state != NULL;
	struct tide_upcast_result up;
	const struct tide_message *messages;
	char why[2048];
	status = tide_http_upcast(c->http, r, &up, &messages, why, sizeof(why));
	if (status) {
		tide_upcast_result_free(&up);
		tide_http_fail_code(c, status, why);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON *events = cJSON_AddArrayToObject(o, "events");
	for (size_t i = 0; i < r->count; i++)
		cJSON_AddItemToArray(events, tide_json_message(&messages[i], log));
	tide_upcast_result_free(&up);
	if (log) {
		char next[48];
		tide_cursor_format(&r->next, next);
		cJSON_AddStringToObject(o, "next", next);
	}
	tide_http_reply_json(c, 200, o);
}

void tide_http_read_stream(struct tide_http_call *c)
{
	struct tide_read_opts opts = {0};
	const char *backward = tide_http_param(c, "backward");
	if (param_count(c, "from", &opts.from) || param_count(c, "to", &opts.to) ||
	    param_count(c, "max", &opts.max))
		return;
	if (backward && strcmp(backward, "false") != 0 && strcmp(backward, "0") != 0)
		opts.backward = 1;
	struct tide_store *s = tide_http_store(c);
	if (!s)
		return;
	int rc = tide_store_read_stream(s, c->args[0], &opts, on_read, c);
	if (rc)
		tide_http_fail_code(c, rc, tide_store_error(s));
}

#define LOG_MAX 10000

void tide_http_read_log(struct tide_http_call *c)
{
	struct tide_cursor after = {0, 0};
	const char *text = tide_http_param(c, "after");
	int64_t max;
	if (text && tide_cursor_parse(text, &after) != 0) {
		tide_http_fail(c, 400, "invalid",
		               "after wants a cursor XID:POS (a \"cursor\" or \"next\" of an "
		               "earlier read), got '%.60s'",
		               text);
		return;
	}
	if (param_count(c, "max", &max))
		return;
	if (max > LOG_MAX) {
		tide_http_fail(c, 400, "invalid", "max is at most %d", LOG_MAX);
		return;
	}
	struct tide_store *s = tide_http_store(c);
	if (!s)
		return;
	c->route_state = c; /* on_read: a log read (cursors, next) */
	int rc = tide_store_read_all(s, &after, max, on_read, c);
	if (rc)
		tide_http_fail_code(c, rc, tide_store_error(s));
}
