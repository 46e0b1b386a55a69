/* http_subscribe.c — GET /log/subscribe: the gap-safe global log, live, as Server-Sent
 * Events (http_sse.h). Each event is an SSE event whose id is its cursor, so a client that
 * reconnects with Last-Event-ID goes on after the last event it got: exactly once, in
 * cursor order. It reads the log in pages on the request pool, sends them, and reads on
 * once the stream has taken them; caught up, it waits for tide_http_wake (the daemon's
 * notifications and log probe) or its own poll.
 *
 * Memory: it stops reading while more than QUEUE_BOUND bytes wait for the client, and pages
 * are sized from the last page's bytes so that one page is about half that bound (at
 * least one event, at most PAGE_MAX); a client that takes nothing for the stall time is
 * sent a final event and dropped (http_sse.h). A lost database keeps the client: a comment
 * says so, reads are retried with a growing delay, heartbeats go on. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "http_sse.h"
#include "json_out.h"
#include "log.h"
#include "upcast.h"

#define QUEUE_BOUND  (1u << 20)
#define PAGE_MAX     1000
#define RETRY_MIN_MS 250
#define RETRY_MAX_MS 8000
#define MAX_TYPES    64

struct sub {
	struct tide_http *http;
	struct tide_http_call *call; /* valid until the stream is closed */
	struct tide_sse *sse;        /* NULL before the first page and once closed */
	char *types_text;            /* the names types[] point into */
	const char *types[MAX_TYPES];
	size_t ntypes;
	struct tide_cursor cursor; /* after the last event queued */
	int64_t page;
	uv_timer_t timer; /* the poll, or the retry after a failed read */
	bool reading;     /* a read is out */
	bool woken;       /* a wake came while it was out */
	bool paused;      /* waiting for the stream to drain */
	bool closed;      /* the stream is closed, or was never opened */
	unsigned failures;
};

static void read_next(struct sub *sub);

static void on_timer_closed(uv_handle_t *h)
{
	struct sub *sub = h->data;
	free(sub->types_text);
	free(sub);
}

/* Frees the subscription once it is closed and no read is out. */
static void sub_done(struct sub *sub)
{
	if (sub->closed && !sub->reading && !uv_is_closing((uv_handle_t *)&sub->timer))
		uv_close((uv_handle_t *)&sub->timer, on_timer_closed);
}

/* Ends the stream, with a final `end` event when reason is not NULL. */
static void sub_close(struct sub *sub, const char *reason, const char *message)
{
	if (sub->closed)
		return;
	sub->closed = true;
	uv_timer_stop(&sub->timer);
	if (sub->sse) {
		sub->call->on_wake = NULL;
		char *data = NULL;
		if (reason) {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "reason", reason);
			cJSON_AddStringToObject(o, "message", message);
			data = cJSON_PrintUnformatted(o);
			cJSON_Delete(o);
		}
		char id[48];
		tide_cursor_format(&sub->cursor, id);
		tide_sse_close(sub->sse, data ? "end" : NULL, data ? id : NULL, data);
		cJSON_free(data);
		sub->sse = NULL;
	}
	sub_done(sub);
}

static void on_timer(uv_timer_t *t)
{
	read_next(t->data);
}

/* A read failed (the database, or no connection of the pool is up): try again later,
 * keeping the client; the first failure of a run says so in a comment. */
static void read_failed(struct sub *sub, const char *err)
{
	if (sub->failures++ == 0) {
		char text[512];
		snprintf(text, sizeof(text), "the database is unreachable (%s); retrying", err);
		(void)tide_sse_comment(sub->sse, text);
	}
	unsigned delay = RETRY_MIN_MS << (sub->failures < 6 ? sub->failures - 1 : 5);
	uv_timer_start(&sub->timer, on_timer, delay > RETRY_MAX_MS ? RETRY_MAX_MS : delay, 0);
}

static void on_page(int status, const char *err, const struct tide_read_result *r, void *arg);

static int send_read(struct sub *sub, struct tide_store *s)
{
	int rc = sub->ntypes ? tide_store_read_all_types(s, &sub->cursor, sub->page, sub->types,
	                                                 sub->ntypes, on_page, sub)
	                     : tide_store_read_all(s, &sub->cursor, sub->page, on_page, sub);
	sub->reading = rc == 0;
	return rc;
}

static void read_next(struct sub *sub)
{
	if (sub->closed || sub->reading || sub->paused)
		return;
	uv_timer_stop(&sub->timer);
	sub->woken = false;
	struct tide_store *s = tide_http_store_if_up(sub->call->http);
	if (!s) {
		read_failed(sub, "no connection of the request pool is up");
		return;
	}
	/* The partition was checked when the call came. */
	const char *partition = sub->call->partition;
	if (tide_store_set_partition(s, partition ? partition : TIDE_DEFAULT_PARTITION) ||
	    send_read(sub, s) != 0)
		read_failed(sub, tide_store_error(s));
}

/* Queues the page's events (upcast: the stream ends when an upcaster fails); 0, or -1 when
 * the stream took no more (it ends). */
static int deliver_messages(struct sub *sub, const struct tide_read_result *r,
                            const struct tide_message *messages);

static int deliver(struct sub *sub, const struct tide_read_result *r)
{
	struct tide_upcast_result up;
	const struct tide_message *messages;
	char why[2048];
	int rc = tide_http_upcast(sub->http, r, &up, &messages, why, sizeof(why));
	if (rc == 0)
		rc = deliver_messages(sub, r, messages);
	else
		sub_close(sub, "error", why);
	tide_upcast_result_free(&up);
	return rc == 0 ? 0 : -1;
}

static int deliver_messages(struct sub *sub, const struct tide_read_result *r,
                            const struct tide_message *messages)
{
	size_t bytes = 0;
	for (size_t i = 0; i < r->count; i++) {
		const struct tide_message *m = &messages[i];
		cJSON *o = tide_json_message(m, true);
		char *text = o ? cJSON_PrintUnformatted(o) : NULL;
		cJSON_Delete(o);
		if (!text) {
			sub_close(sub, "error", "out of memory");
			return -1;
		}
		struct tide_cursor at = {m->transaction_id, m->global_position};
		char id[48];
		tide_cursor_format(&at, id);
		size_t len = strlen(text);
		int rc = tide_sse_event(sub->sse, NULL, id, text, len);
		cJSON_free(text);
		if (rc == TIDE_ENOMEM) {
			sub_close(sub, "error", "out of memory");
			return -1;
		}
		if (rc)
			return -1; /* the client has gone: on_end comes */
		sub->cursor = at;
		bytes += len;
	}
	/* Pages of about half the bound. */
	if (r->count) {
		int64_t per = (int64_t)(bytes / r->count) + 1;
		int64_t page = (int64_t)(QUEUE_BOUND / 2) / per;
		sub->page = page < 1 ? 1 : page > PAGE_MAX ? PAGE_MAX : page;
	}
	return 0;
}

static void on_drain(struct tide_sse *sse, void *arg)
{
	(void)sse;
	struct sub *sub = arg;
	if (!sub->paused)
		return;
	sub->paused = false;
	read_next(sub);
}

static void on_end(struct tide_sse *sse, enum tide_sse_end why, void *arg)
{
	(void)sse;
	struct sub *sub = arg;
	char msg[256];
	switch (why) {
	case TIDE_SSE_GONE: sub_close(sub, NULL, NULL); break;
	case TIDE_SSE_STOPPING:
		sub_close(sub, "stopping",
		          "the server is stopping; reconnect with Last-Event-ID to go on");
		break;
	case TIDE_SSE_STALLED:
		snprintf(msg, sizeof(msg),
		         "the client took nothing for %u ms while %zu bytes waited; reconnect "
		         "with Last-Event-ID to go on",
		         tide_http_opts(sub->http)->stall_ms ? tide_http_opts(sub->http)->stall_ms
		                                             : TIDE_SSE_STALL_MS,
		         tide_sse_queued(sub->sse));
		tide_log("warn", "http.slow_subscriber", "message", msg, (char *)NULL);
		sub_close(sub, "slow_consumer", msg);
		break;
	}
}

static void on_wake(void *arg)
{
	struct sub *sub = arg;
	if (sub->reading)
		sub->woken = true;
	else if (!sub->failures)
		read_next(sub); /* idle (paused: the drain reads; failing: the retry does) */
}

/* The first page opens the stream: until then a failure is an HTTP error. */
static bool open_stream(struct sub *sub, int status, const char *err)
{
	struct tide_http_call *c = sub->call;
	if (status) {
		tide_http_fail_code(c, status, err);
	} else {
		struct tide_sse_opts opts = {.low_water = QUEUE_BOUND / 2,
		                             .on_drain = on_drain,
		                             .on_end = on_end,
		                             .arg = sub};
		sub->sse = tide_sse_open(c, &opts);
	}
	if (!sub->sse) {
		sub->closed = true;
		return false;
	}
	c->on_wake = on_wake;
	c->wake_arg = sub;
	return true;
}

static void on_page(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	struct sub *sub = arg;
	sub->reading = false;
	if (!sub->closed && !sub->sse && !open_stream(sub, status, err)) {
		sub_done(sub);
		return;
	}
	if (sub->closed) {
		sub_done(sub);
		return;
	}
	if (status == TIDE_ECLOSED) { /* the pool is closing: the server stops */
		sub_close(sub, "stopping",
		          "the server is stopping; reconnect with Last-Event-ID to go on");
		return;
	}
	if (status) {
		read_failed(sub, err);
		return;
	}
	sub->failures = 0;
	struct tide_cursor was = sub->cursor;
	int64_t asked = sub->page;
	if (deliver(sub, r) != 0)
		return;
	sub->cursor = r->next; /* past what a type filter walked over, too */
	bool more = (int64_t)r->count >= asked ||
	            (sub->ntypes && (r->next.transaction_id != was.transaction_id ||
	                             r->next.global_position != was.global_position));
	if (tide_sse_queued(sub->sse) > QUEUE_BOUND)
		sub->paused = true;
	else if (more || sub->woken)
		read_next(sub);
	else
		uv_timer_start(&sub->timer, on_timer, tide_http_opts(sub->http)->poll_ms, 0);
}

/* ?types=A,B into sub->types; -1 (and the call answered 400) when malformed. */
static int parse_types(struct tide_http_call *c, struct sub *sub, const char *text)
{
	if (!text)
		return 0;
	sub->types_text = strdup(text);
	if (!sub->types_text) {
		tide_http_fail(c, 500, "memory", "out of memory");
		return -1;
	}
	for (char *p = sub->types_text;;) {
		char *comma = strchr(p, ',');
		if (comma)
			*comma = '\0';
		if (!*p || sub->ntypes == MAX_TYPES) {
			tide_http_fail(c, 400, "invalid",
			               "types wants 1 to %d event types separated by commas "
			               "(types=A,B), none of them empty",
			               MAX_TYPES);
			return -1;
		}
		sub->types[sub->ntypes++] = p;
		if (!comma)
			return 0;
		p = comma + 1;
	}
}

/* The cursor to go on after: Last-Event-ID (a reconnecting EventSource sends it) wins over
 * ?after=. -1 (and the call answered 400) when it is not a cursor. */
static int parse_after(struct tide_http_call *c, struct tide_cursor *out)
{
	char buf[64];
	const char *text = tide_http_param(c, "after"), *what = "after";
	ssize_t i = h2o_find_header_by_str(&c->req->headers, H2O_STRLIT("last-event-id"), -1);
	if (i != -1) {
		h2o_iovec_t v = c->req->headers.entries[i].value;
		snprintf(buf, sizeof(buf), "%.*s", (int)(v.len < sizeof(buf) ? v.len : sizeof(buf)),
		         v.base);
		text = buf;
		what = "Last-Event-ID";
	}
	*out = (struct tide_cursor){0, 0};
	if (text && *text && tide_cursor_parse(text, out) != 0) {
		tide_http_fail(c, 400, "invalid",
		               "%s wants a cursor XID:POS (an event's id, or a \"cursor\" or "
		               "\"next\" of GET /log), got '%.60s'",
		               what, text);
		return -1;
	}
	return 0;
}

void tide_http_subscribe(struct tide_http_call *c)
{
	struct sub *sub = calloc(1, sizeof(*sub));
	if (!sub) {
		tide_http_fail(c, 500, "memory", "out of memory");
		return;
	}
	struct tide_store *s = NULL;
	if (parse_after(c, &sub->cursor) != 0 ||
	    parse_types(c, sub, tide_http_param(c, "types")) != 0)
		goto fail;
	if (!(s = tide_http_store(c)))
		goto fail;
	sub->http = c->http;
	sub->call = c;
	sub->page = PAGE_MAX / 2;
	uv_timer_init(tide_http_opts(c->http)->loop, &sub->timer);
	sub->timer.data = sub;
	c->route_state = sub;
	int rc = send_read(sub, s);
	if (rc) {
		tide_http_fail_code(c, rc, tide_store_error(s));
		sub->closed = true;
		sub_done(sub);
	}
	return;
fail:
	free(sub->types_text);
	free(sub);
}
