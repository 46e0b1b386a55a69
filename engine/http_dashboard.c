/* http_dashboard.c — the dashboard: GET / serves the page (dashboard/index.html, embedded in
 * the binary at build time), GET /live the Server-Sent Events it draws from: first the
 * daemon's recent activity (activity.h: "activity" events, one per entry), then each second
 * the ring's new entries and "processors", what GET /processors answers ("problem" instead,
 * {"error": {kind, message}}, when the database cannot answer). The page holds no data, so
 * it is public; /live wants the read scope. Each stream queries on its own: a dashboard is
 * a page or two, not a fan-out. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "activity.h"
#include "http.h"
#include "http_sse.h"

extern const struct {
	const char *name;
	const char *content;
} tide_dashboard_files[];
extern const size_t tide_dashboard_files_count;

static void add_header(h2o_req_t *req, const char *name, const char *value)
{
	h2o_add_header_by_str(&req->pool, &req->res.headers, name, strlen(name), 1, NULL, value,
	                      strlen(value));
}

/* The base64 SHA-256 of what lies between open and close in page (the first such). */
static int inline_hash(const char *page, const char *open, const char *close, char *out)
{
	const char *from = strstr(page, open);
	const char *to = from ? strstr(from, close) : NULL;
	if (!to)
		return -1;
	from += strlen(open);
	unsigned char hash[TIDE_HTTP_SHA256_BYTES];
	tide_http_sha256(from, (size_t)(to - from), hash);
	h2o_base64_encode(out, hash, sizeof(hash), 0);
	return 0;
}

/* The page may run its one inline script and style, by their hashes (nothing injected into
 * it would run), talk to this server only, and be framed by no one. */
static const char *page_policy(const char *page)
{
	static char policy[512];
	char script[64], style[64];
	if (!policy[0] && inline_hash(page, "<script>", "</script>", script) == 0 &&
	    inline_hash(page, "<style>", "</style>", style) == 0)
		snprintf(policy, sizeof(policy),
		         "default-src 'none'; script-src 'sha256-%s'; style-src 'sha256-%s'; "
		         "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
		         "frame-ancestors 'none'",
		         script, style);
	return policy[0] ? policy : "default-src 'none'";
}

void tide_http_dashboard(struct tide_http_call *c)
{
	const char *page = NULL;
	for (size_t i = 0; i < tide_dashboard_files_count; i++)
		if (strcmp(tide_dashboard_files[i].name, "index.html") == 0)
			page = tide_dashboard_files[i].content;
	if (!page) {
		tide_http_fail(c, 404, "not_found", "this build has no dashboard page");
		return;
	}
	if (c->req) {
		add_header(c->req, "content-security-policy", page_policy(page));
		add_header(c->req, "x-content-type-options", "nosniff");
		add_header(c->req, "cache-control", "no-cache");
		add_header(c->req, "referrer-policy", "no-referrer");
	}
	tide_http_reply(c, 200, "text/html; charset=utf-8", page, strlen(page));
}

/* --- GET /live ------------------------------------------------------------------------ */

/* What waits for a slow client is bounded: above this, a tick sends nothing (the next
 * snapshot replaces the skipped one; activity waits in the ring). */
#define LIVE_QUEUE_MAX (256u << 10)
#define LIVE_TICK_MS   1000

/* One page's stream. It outlives its SSE stream while a query is out or its timer closes. */
struct live {
	struct tide_http *http;
	struct tide_sse *sse; /* NULL once closed */
	uv_timer_t tick;
	uint64_t activity; /* the last activity entry sent */
	bool querying, tick_closed;
};

static void live_free_if_done(struct live *l)
{
	if (!l->sse && l->tick_closed && !l->querying)
		free(l);
}

static void on_tick_closed(uv_handle_t *h)
{
	struct live *l = h->data;
	l->tick_closed = true;
	live_free_if_done(l);
}

static void live_close(struct live *l, const char *name, const char *data)
{
	tide_sse_close(l->sse, name, NULL, data);
	l->sse = NULL;
	uv_close((uv_handle_t *)&l->tick, on_tick_closed);
}

static void send_activity(uint64_t seq, const char *json, void *arg)
{
	struct live *l = arg;
	if (tide_sse_event(l->sse, "activity", NULL, json, strlen(json)) == 0)
		l->activity = seq;
}

static void send_problem(struct live *l, const char *kind, const char *message)
{
	cJSON *o = tide_http_error_body(kind, message, NULL);
	char *text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (text)
		(void)tide_sse_event(l->sse, "problem", NULL, text, strlen(text));
	cJSON_free(text);
}

static void on_processors(cJSON *body, int status, const char *err, void *arg)
{
	struct live *l = arg;
	l->querying = false;
	if (!l->sse) {
		cJSON_Delete(body);
		live_free_if_done(l);
		return;
	}
	if (status) {
		send_problem(l, tide_strerror(status), err ? err : tide_strerror(status));
		return;
	}
	char *text = cJSON_PrintUnformatted(body);
	cJSON_Delete(body);
	if (text)
		(void)tide_sse_event(l->sse, "processors", NULL, text, strlen(text));
	cJSON_free(text);
}

/* Each second: what the activity ring gained, and a query for the processors' snapshot. */
static void on_tick(uv_timer_t *t)
{
	struct live *l = t->data;
	if (tide_sse_queued(l->sse) > LIVE_QUEUE_MAX)
		return; /* a client that reads slowly: wait for it */
	tide_activity_since(l->activity, send_activity, l);
	if (l->querying)
		return;
	struct tide_store *s = tide_http_store_if_up(l->http);
	if (!s) {
		send_problem(l, "connection", "the database is unreachable; tide is reconnecting");
		return;
	}
	if (tide_http_processors_query(s, on_processors, l) == 0)
		l->querying = true;
}

static void on_live_end(struct tide_sse *sse, enum tide_sse_end why, void *arg)
{
	(void)sse;
	struct live *l = arg;
	live_close(l, why == TIDE_SSE_STOPPING ? "end" : NULL,
	           why == TIDE_SSE_STOPPING ? "{\"reason\":\"the server is stopping\"}" : NULL);
}

void tide_http_live(struct tide_http_call *c)
{
	struct live *l = calloc(1, sizeof(*l));
	if (!l) {
		tide_http_fail(c, 500, "memory", "out of memory");
		return;
	}
	l->http = c->http;
	struct tide_sse_opts opts = {.on_end = on_live_end, .arg = l};
	l->sse = tide_sse_open(c, &opts);
	if (!l->sse) {
		free(l);
		return;
	}
	uv_timer_init(tide_http_opts(c->http)->loop, &l->tick);
	l->tick.data = l;
	/* The ring first, so that a fresh page shows what happened lately; then the snapshot,
	 * now and each second. */
	tide_activity_since(0, send_activity, l);
	uv_timer_start(&l->tick, on_tick, 0, LIVE_TICK_MS);
}
