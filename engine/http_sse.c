/* http_sse.c — a Server-Sent Events stream over H2O (http_sse.h). H2O 2.2 writes what
 * h2o_send hands it straight from those bytes and says when it may have more by calling the
 * generator's proceed; so one chunk at a time is with H2O (a copy, stable while it writes),
 * and the rest waits in a buffer here that only the owner's sends grow. Chunks are at most
 * CHUNK bytes, so that a client's progress (or its lack: a stall) shows at that grain. */
#include "http_sse.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define CHUNK (64u << 10)

enum { OPEN, CLOSING, DONE };

/* Owner callbacks due on the next turn. */
enum { DUE_START = 1, DUE_DRAIN = 2, DUE_END = 4 };

struct tide_sse {
	h2o_generator_t gen; /* first: H2O hands it back to proceed and stop */
	struct tide_http_call *call;
	struct tide_sse_opts opts;
	char *queue; /* waiting: queue[head..len) */
	size_t head, len, cap;
	char *chunk; /* with H2O: chunk[0..sending), CHUNK bytes */
	size_t sending;
	bool in_flight; /* a send is with H2O, awaiting proceed (or stop) */
	bool started;   /* the headers went out */
	bool gone;      /* the client went away */
	bool drain_armed;
	int state;
	unsigned due;
	enum tide_sse_end end_why;
	bool end_told;
	uint64_t last_sent; /* uv_now() of the last bytes handed to H2O */
	uint64_t sent_at;   /* uv_now() of the send in flight */
	uv_timer_t beat;    /* heartbeats and stalls */
	uv_timer_t notify;  /* owner callbacks, each on a turn of its own */
	int handles;
};

static uv_loop_t *loop_of(struct tide_sse *sse)
{
	return sse->beat.loop;
}

size_t tide_sse_queued(const struct tide_sse *sse)
{
	return sse->len - sse->head + sse->sending;
}

static void on_handle_closed(uv_handle_t *h)
{
	struct tide_sse *sse = h->data;
	if (--sse->handles > 0)
		return;
	free(sse->queue);
	free(sse->chunk);
	free(sse);
}

/* The stream is over for us: end the call, close the timers; the memory goes with the
 * last of them. H2O holds none of our bytes by then (it has written them, or the client
 * has gone, or the final ones are in the request's pool). */
static void release(struct tide_sse *sse)
{
	if (sse->state == DONE)
		return;
	sse->state = DONE;
	sse->call->on_stop = NULL;
	tide_http_call_end(sse->call);
	uv_close((uv_handle_t *)&sse->beat, on_handle_closed);
	uv_close((uv_handle_t *)&sse->notify, on_handle_closed);
}

static void on_notify(uv_timer_t *t);

static void due(struct tide_sse *sse, unsigned what)
{
	sse->due |= what;
	uv_timer_start(&sse->notify, on_notify, 0, 0);
}

static void end_due(struct tide_sse *sse, enum tide_sse_end why)
{
	if (sse->end_told || sse->state != OPEN)
		return;
	if (!(sse->due & DUE_END) || why == TIDE_SSE_GONE)
		sse->end_why = why;
	due(sse, DUE_END);
}

/* Hands the next chunk to H2O when none is out; once closing and everything is out, the
 * end of the response. */
static void flush(struct tide_sse *sse)
{
	h2o_req_t *req = sse->call->req;
	if (sse->in_flight || sse->gone || sse->state == DONE || !req)
		return;
	size_t n = sse->len - sse->head;
	if (sse->state == CLOSING) {
		/* The rest in one final send, from the request's pool: H2O frees it once the
		 * request is done, and we can go now. */
		h2o_iovec_t buf = {NULL, n};
		if (n) {
			buf.base = h2o_mem_alloc_pool(&req->pool, n);
			memcpy(buf.base, sse->queue + sse->head, n);
		}
		sse->head = sse->len = 0;
		h2o_send(req, &buf, n ? 1 : 0, H2O_SEND_STATE_FINAL);
		release(sse);
		return;
	}
	if (n == 0 && sse->started)
		return;
	if (n > CHUNK)
		n = CHUNK;
	memcpy(sse->chunk, sse->queue + sse->head, n);
	sse->head += n;
	if (sse->head == sse->len)
		sse->head = sse->len = 0;
	sse->sending = n;
	sse->in_flight = true;
	sse->started = true;
	sse->last_sent = sse->sent_at = uv_now(loop_of(sse));
	h2o_iovec_t buf = {sse->chunk, n};
	/* With no bytes yet, this sends the headers alone. */
	h2o_send(req, &buf, n ? 1 : 0, H2O_SEND_STATE_IN_PROGRESS);
}

static void on_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
	(void)req;
	struct tide_sse *sse = (struct tide_sse *)gen;
	sse->in_flight = false;
	sse->sending = 0;
	flush(sse);
	if (sse->state == OPEN && sse->drain_armed && tide_sse_queued(sse) <= sse->opts.low_water) {
		sse->drain_armed = false;
		due(sse, DUE_DRAIN);
	}
}

static void on_client_gone(h2o_generator_t *gen, h2o_req_t *req)
{
	(void)req;
	struct tide_sse *sse = (struct tide_sse *)gen;
	sse->gone = true;
	sse->in_flight = false;
	sse->sending = 0;
	if (sse->state == CLOSING)
		release(sse);
	else
		end_due(sse, TIDE_SSE_GONE);
}

static void on_server_stop(void *arg)
{
	end_due(arg, TIDE_SSE_STOPPING);
}

/* A client that will not read: end its connection (H2O then stops the generator). */
static void cut(struct tide_sse *sse)
{
	h2o_req_t *req = sse->call->req;
	if (!req || sse->gone) {
		release(sse);
		return;
	}
	if (!sse->in_flight) {
		h2o_send(req, NULL, 0, H2O_SEND_STATE_ERROR);
		release(sse);
		return;
	}
	h2o_socket_t *sock = req->conn->callbacks->get_socket
	                             ? req->conn->callbacks->get_socket(req->conn)
	                             : NULL;
	int fd = sock ? h2o_socket_get_fd(sock) : -1;
	if (fd >= 0)
		shutdown(fd, SHUT_RDWR);
}

static void on_notify(uv_timer_t *t)
{
	struct tide_sse *sse = t->data;
	unsigned what = sse->due;
	sse->due = 0;
	if (what & DUE_START)
		flush(sse);
	if (sse->state != OPEN)
		return;
	if ((what & DUE_END) && !sse->end_told) {
		sse->end_told = true;
		sse->opts.on_end(sse, sse->end_why, sse->opts.arg);
		return;
	}
	if ((what & DUE_DRAIN) && sse->opts.on_drain && !sse->gone)
		sse->opts.on_drain(sse, sse->opts.arg);
}

/* Queues prefix, text[0..n) and suffix. */
static int append(struct tide_sse *sse, const char *prefix, const char *text, size_t n,
                  const char *suffix)
{
	size_t pn = strlen(prefix), sn = strlen(suffix), all = pn + n + sn;
	if (sse->len + all > sse->cap && sse->head) { /* room at the front first */
		memmove(sse->queue, sse->queue + sse->head, sse->len - sse->head);
		sse->len -= sse->head;
		sse->head = 0;
	}
	if (sse->len + all > sse->cap) {
		size_t cap = sse->cap ? sse->cap : 4096;
		while (cap < sse->len + all)
			cap *= 2;
		char *q = realloc(sse->queue, cap);
		if (!q)
			return TIDE_ENOMEM;
		sse->queue = q;
		sse->cap = cap;
	}
	memcpy(sse->queue + sse->len, prefix, pn);
	if (n)
		memcpy(sse->queue + sse->len + pn, text, n);
	memcpy(sse->queue + sse->len + pn + n, suffix, sn);
	sse->len += all;
	return 0;
}

/* After a whole event or comment was queued. */
static void queued(struct tide_sse *sse)
{
	if (tide_sse_queued(sse) > sse->opts.low_water)
		sse->drain_armed = true;
	if (sse->started)
		flush(sse);
}

static void on_beat(uv_timer_t *t)
{
	struct tide_sse *sse = t->data;
	uint64_t now = uv_now(t->loop);
	if (sse->gone || sse->state == DONE)
		return;
	if (sse->in_flight && now - sse->sent_at >= sse->opts.stall_ms) {
		if (sse->state == CLOSING)
			cut(sse);
		else
			end_due(sse, TIDE_SSE_STALLED);
		return;
	}
	if (sse->state == OPEN && sse->started && !sse->in_flight && sse->len == sse->head &&
	    now - sse->last_sent >= sse->opts.heartbeat_ms &&
	    append(sse, ": ping\n\n", "", 0, "") == 0)
		flush(sse);
}

static bool one_line(const char *s)
{
	return !s || !s[strcspn(s, "\r\n")];
}

static int check_open(const struct tide_sse *sse)
{
	return sse->state != OPEN || sse->gone || !sse->call->req ? TIDE_ECLOSED : 0;
}

/* The event's lines, whole or not at all. */
static int frame(struct tide_sse *sse, const char *name, const char *id, const char *data,
                 size_t len)
{
	size_t kept = sse->len - sse->head; /* append may move the queue, never reorder it */
	int rc = name ? append(sse, "event: ", name, strlen(name), "\n") : 0;
	if (!rc && id)
		rc = append(sse, "id: ", id, strlen(id), "\n");
	const char *p = data ? data : "", *end = p + (data ? len : 0);
	while (!rc) {
		const char *eol = p;
		while (eol < end && *eol != '\n' && *eol != '\r')
			eol++;
		rc = append(sse, "data: ", p, (size_t)(eol - p), "\n");
		if (eol == end)
			break;
		p = eol + (eol[0] == '\r' && eol + 1 < end && eol[1] == '\n' ? 2 : 1);
	}
	if (!rc)
		rc = append(sse, "\n", "", 0, "");
	if (rc)
		sse->len = sse->head + kept;
	return rc;
}

int tide_sse_event(struct tide_sse *sse, const char *name, const char *id, const char *data,
                   size_t len)
{
	int rc = check_open(sse);
	if (rc)
		return rc;
	if (!one_line(name) || !one_line(id))
		return TIDE_EINVAL;
	rc = frame(sse, name, id, data, len);
	if (rc)
		return rc;
	queued(sse);
	return 0;
}

int tide_sse_comment(struct tide_sse *sse, const char *text)
{
	int rc = check_open(sse);
	if (rc)
		return rc;
	size_t n = strlen(text);
	rc = append(sse, ": ", text, n, "\n\n");
	if (rc)
		return rc;
	for (size_t i = sse->len - 2 - n; i < sse->len - 2; i++)
		if (sse->queue[i] == '\n' || sse->queue[i] == '\r')
			sse->queue[i] = ' ';
	queued(sse);
	return 0;
}

void tide_sse_close(struct tide_sse *sse, const char *name, const char *id, const char *data)
{
	if (sse->state != OPEN)
		return;
	if (check_open(sse) != 0) {
		release(sse);
		return;
	}
	if ((name || data) && one_line(name) && one_line(id))
		(void)frame(sse, name, id, data, data ? strlen(data) : 0);
	sse->state = CLOSING;
	sse->due = 0;
	if (sse->started)
		flush(sse);
	else
		due(sse, DUE_START); /* the headers and all in one send, on the next turn */
}

struct tide_sse *tide_sse_open(struct tide_http_call *c, const struct tide_sse_opts *opts)
{
	h2o_req_t *req = c->req;
	if (!req) {
		tide_http_call_end(c);
		return NULL;
	}
	struct tide_sse *sse = calloc(1, sizeof(*sse));
	char *chunk = malloc(CHUNK);
	if (!sse || !chunk) {
		free(sse);
		free(chunk);
		tide_http_fail(c, 500, "memory", "out of memory");
		return NULL;
	}
	const struct tide_http_opts *hopts = tide_http_opts(c->http);
	sse->opts = *opts;
	if (!sse->opts.heartbeat_ms)
		sse->opts.heartbeat_ms =
		        hopts->heartbeat_ms ? hopts->heartbeat_ms : TIDE_SSE_HEARTBEAT_MS;
	if (!sse->opts.stall_ms)
		sse->opts.stall_ms = hopts->stall_ms ? hopts->stall_ms : TIDE_SSE_STALL_MS;
	sse->chunk = chunk;
	sse->call = c;
	sse->gen.proceed = on_proceed;
	sse->gen.stop = on_client_gone;
	c->on_stop = on_server_stop;
	c->stop_arg = sse;

	req->res.status = 200;
	req->res.reason = "OK";
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
	               H2O_STRLIT("text/event-stream"));
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
	               H2O_STRLIT("no-cache"));
	/* Proxies that buffer responses (nginx) pass this one through as it comes. */
	h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-accel-buffering"), 0,
	                      NULL, H2O_STRLIT("no"));
	h2o_start_response(req, &sse->gen);

	uv_loop_t *loop = hopts->loop;
	uv_timer_init(loop, &sse->beat);
	uv_timer_init(loop, &sse->notify);
	sse->beat.data = sse->notify.data = sse;
	sse->handles = 2;
	/* Checks at a quarter of the shorter period, at most each second. */
	unsigned tick = sse->opts.heartbeat_ms < sse->opts.stall_ms ? sse->opts.heartbeat_ms
	                                                            : sse->opts.stall_ms;
	tick = tick / 4 > 1000 ? 1000 : tick / 4 ? tick / 4 : 1;
	uv_timer_start(&sse->beat, on_beat, tick, tick);
	sse->last_sent = uv_now(loop);
	due(sse, DUE_START);
	return sse;
}
