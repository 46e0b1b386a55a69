/* publish.c — a publisher's deliveries (publish.h): libcurl's multi interface driven by the
 * daemon's libuv loop. curl says which sockets to watch (CURLMOPT_SOCKETFUNCTION: one
 * uv_poll_t per socket, made on first sight, closed when curl drops the socket) and when to
 * wake it (CURLMOPT_TIMERFUNCTION: one uv_timer_t); each wake-up is handed back with
 * curl_multi_socket_action, and finished transfers are collected after it. Nothing here
 * blocks: name resolution runs in curl's resolver thread.
 *
 * One event is in flight at a time, so the endpoint sees a stream's events in order (and the
 * log's). 2xx is delivered; anything else — another status, no answer within timeout_ms, a
 * refused connection, a TLS failure — ends the delivery at that event. Redirects are not
 * followed (a POST that moved is a failure to fix at the source). */
#include "publish.h"

#include <curl/curl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_out.h"

struct event {
	char *body, *message_id;
	struct tide_cursor after;
};

struct tide_publish_events {
	size_t count;
	struct event *events;
};

/* A socket curl asked us to watch. */
struct sock {
	uv_poll_t poll;
	curl_socket_t fd;
	struct tide_publisher *p;
	struct sock *next; /* in p->socks, until its poll is closing */
};

struct tide_publisher {
	uv_loop_t *loop;
	CURLM *multi;
	uv_timer_t timer; /* curl's timeouts */
	uv_timer_t later; /* callbacks that must not fire inside the call that queued them */
	struct sock *socks;
	int open; /* uv handles not yet closed */
	bool closing;
	void (*closed)(void *arg);
	void *closed_arg;
	/* The delivery in flight. */
	bool busy;
	const struct tide_publish_dest *dest;
	const struct tide_publish_events *ev;
	size_t next;      /* the event on the wire */
	uint64_t started; /* ms, loop time */
	CURL *easy;
	struct curl_slist *headers;
	char curl_err[CURL_ERROR_SIZE];
	char answer[160]; /* the start of the endpoint's answer, for the error */
	size_t answer_len;
	int status;
	char err[1024];
	tide_publish_cb cb;
	void *arg;
};

/* --- events ------------------------------------------------------------------------------- */

void tide_publish_events_free(struct tide_publish_events *ev)
{
	if (!ev)
		return;
	for (size_t i = 0; i < ev->count; i++) {
		free(ev->events[i].body);
		free(ev->events[i].message_id);
	}
	free(ev->events);
	free(ev);
}

struct tide_publish_events *tide_publish_events_new(const struct tide_read_result *r)
{
	struct tide_publish_events *ev = calloc(1, sizeof(*ev));
	if (!ev)
		return NULL;
	ev->events = calloc(r->count ? r->count : 1, sizeof(*ev->events));
	if (!ev->events)
		goto fail;
	for (size_t i = 0; i < r->count; i++) {
		const struct tide_message *m = &r->messages[i];
		struct event *e = &ev->events[i];
		ev->count = i + 1;
		cJSON *o = tide_json_message(m, false);
		e->body = o ? cJSON_PrintUnformatted(o) : NULL;
		cJSON_Delete(o);
		e->message_id = strdup(m->message_id ? m->message_id : "");
		if (!e->body || !e->message_id)
			goto fail;
		e->after = (struct tide_cursor){m->transaction_id, m->global_position};
	}
	return ev;
fail:
	tide_publish_events_free(ev);
	return NULL;
}

struct tide_cursor tide_publish_events_cursor(const struct tide_publish_events *ev, size_t i)
{
	return ev->events[i].after;
}

/* --- the url in logs ------------------------------------------------------------------------ */

void tide_publish_redact(const char *url, char *out, size_t n)
{
	const char *host = strstr(url, "://");
	host = host ? host + 3 : url;
	size_t scheme = (size_t)(host - url);
	size_t auth = strcspn(host, "/?#"); /* [user[:password]@]host[:port] */
	const char *at = NULL;
	for (const char *s = host; s < host + auth; s++)
		if (*s == '@')
			at = s;
	const char *h = at ? at + 1 : host;
	size_t hlen = (size_t)(host + auth - h);
	size_t path = strcspn(host + auth, "?#");
	snprintf(out, n, "%.*s%.*s%.*s", (int)scheme, url, (int)hlen, h, (int)path, host + auth);
}

/* --- handles -------------------------------------------------------------------------------- */

static void handle_closed(uv_handle_t *h)
{
	struct tide_publisher *p = h->data;
	if (h->type == UV_POLL) {
		struct sock *k = h->data;
		p = k->p;
		free(k);
	}
	if (--p->open == 0 && p->closing) {
		void (*closed)(void *) = p->closed;
		void *arg = p->closed_arg;
		free(p);
		if (closed)
			closed(arg);
	}
}

static void sock_forget(struct tide_publisher *p, struct sock *k)
{
	for (struct sock **s = &p->socks; *s; s = &(*s)->next)
		if (*s == k) {
			*s = k->next;
			break;
		}
	uv_close((uv_handle_t *)&k->poll, handle_closed);
}

static void collect(struct tide_publisher *p);

static void on_poll(uv_poll_t *h, int status, int events)
{
	struct sock *k = h->data;
	struct tide_publisher *p = k->p;
	int flags = 0;
	if (status < 0)
		flags = CURL_CSELECT_ERR;
	if (events & UV_READABLE)
		flags |= CURL_CSELECT_IN;
	if (events & UV_WRITABLE)
		flags |= CURL_CSELECT_OUT;
	int running;
	curl_multi_socket_action(p->multi, k->fd, flags, &running); /* may forget k */
	collect(p);
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	(void)easy;
	struct tide_publisher *p = userp;
	struct sock *k = socketp;
	if (what == CURL_POLL_REMOVE) {
		if (k) {
			if (!p->closing)
				curl_multi_assign(p->multi, fd, NULL);
			sock_forget(p, k);
		}
		return 0;
	}
	if (!k) {
		k = calloc(1, sizeof(*k));
		if (!k || uv_poll_init_socket(p->loop, &k->poll, fd) != 0) {
			free(k);
			return -1; /* curl fails the transfer */
		}
		k->poll.data = k;
		k->fd = fd;
		k->p = p;
		k->next = p->socks;
		p->socks = k;
		p->open++;
		curl_multi_assign(p->multi, fd, k);
	}
	int events =
	        (what & CURL_POLL_IN ? UV_READABLE : 0) | (what & CURL_POLL_OUT ? UV_WRITABLE : 0);
	uv_poll_start(&k->poll, events, on_poll);
	return 0;
}

static void on_timeout(uv_timer_t *t)
{
	struct tide_publisher *p = t->data;
	int running;
	curl_multi_socket_action(p->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	collect(p);
}

static int on_curl_timer(CURLM *multi, long ms, void *userp)
{
	(void)multi;
	struct tide_publisher *p = userp;
	if (ms < 0)
		uv_timer_stop(&p->timer);
	else /* 0: on the next loop turn, never from inside curl */
		uv_timer_start(&p->timer, on_timeout, (uint64_t)ms, 0);
	return 0;
}

struct tide_publisher *tide_publisher_new(uv_loop_t *loop)
{
	static bool initialized; /* the loop thread only */
	if (!initialized) {
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			return NULL;
		initialized = true;
	}
	struct tide_publisher *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->multi = curl_multi_init();
	if (!p->multi) {
		free(p);
		return NULL;
	}
	p->loop = loop;
	curl_multi_setopt(p->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
	curl_multi_setopt(p->multi, CURLMOPT_SOCKETDATA, p);
	curl_multi_setopt(p->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
	curl_multi_setopt(p->multi, CURLMOPT_TIMERDATA, p);
	uv_timer_init(loop, &p->timer);
	uv_timer_init(loop, &p->later);
	p->timer.data = p->later.data = p;
	p->open = 2;
	return p;
}

/* --- one event ------------------------------------------------------------------------------- */

static size_t on_answer(char *data, size_t size, size_t nmemb, void *arg)
{
	struct tide_publisher *p = arg;
	size_t n = size * nmemb, room = sizeof(p->answer) - 1 - p->answer_len;
	size_t take = n < room ? n : room;
	for (size_t i = 0; i < take; i++) /* one line of printable text */
		p->answer[p->answer_len++] =
		        (data[i] >= 0x20 && data[i] < 0x7f) || (unsigned char)data[i] >= 0x80
		                ? data[i]
		                : ' ';
	p->answer[p->answer_len] = '\0';
	return n;
}

static void drop_easy(struct tide_publisher *p)
{
	if (p->easy) {
		curl_multi_remove_handle(p->multi, p->easy);
		curl_easy_cleanup(p->easy);
		p->easy = NULL;
	}
	curl_slist_free_all(p->headers);
	p->headers = NULL;
}

static void on_later(uv_timer_t *t)
{
	struct tide_publisher *p = t->data;
	if (!p->busy)
		return;
	p->busy = false;
	struct tide_publish_outcome o = {p->status, p->next, p->err};
	p->cb(&o, p->arg);
}

/* The delivery ends at p->next (all delivered when it is ev->count). */
static void finish(struct tide_publisher *p, int status)
{
	drop_easy(p);
	p->status = status;
	if (status == 0)
		p->err[0] = '\0';
	uv_timer_start(&p->later, on_later, 0, 0);
}

static int add_header(struct tide_publisher *p, const char *line)
{
	struct curl_slist *l = curl_slist_append(p->headers, line);
	if (!l)
		return TIDE_ENOMEM;
	p->headers = l;
	return 0;
}

static int send_one(struct tide_publisher *p)
{
	const struct event *e = &p->ev->events[p->next];
	const struct tide_publish_dest *d = p->dest;
	p->answer_len = 0;
	p->answer[0] = p->curl_err[0] = '\0';
	char key[200];
	snprintf(key, sizeof(key), "Idempotency-Key: %s", e->message_id);
	/* "Expect:" off: no wait for a 100 Continue before larger bodies. */
	if (add_header(p, "Content-Type: application/json") || add_header(p, key) ||
	    add_header(p, "Expect:"))
		return TIDE_ENOMEM;
	for (size_t i = 0; i < d->nheaders; i++)
		if (add_header(p, d->headers[i]))
			return TIDE_ENOMEM;
	p->easy = curl_easy_init();
	if (!p->easy)
		return TIDE_ENOMEM;
	CURL *c = p->easy;
	curl_easy_setopt(c, CURLOPT_URL, d->url);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	curl_easy_setopt(c, CURLOPT_POST, 1L);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, e->body);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(e->body));
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, p->headers);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "tide");
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)d->timeout_ms);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_answer);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, p);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, p->curl_err);
	if (curl_multi_add_handle(p->multi, c) != CURLM_OK)
		return TIDE_ENOMEM;
	return 0; /* curl asks for its timer at once: the transfer starts on the next turn */
}

/* Goes on with the next event, or finishes. */
static void send_next(struct tide_publisher *p)
{
	if (p->next == p->ev->count) {
		finish(p, 0);
		return;
	}
	if (send_one(p) != 0) {
		snprintf(p->err, sizeof(p->err), "out of memory");
		finish(p, TIDE_ENOMEM);
	}
}

/* Why the transfer of p->next failed, for the log, the status and the dead letter. */
static void explain(struct tide_publisher *p, CURLcode rc, long code)
{
	char url[256];
	tide_publish_redact(p->dest->url, url, sizeof(url));
	if (rc == CURLE_OPERATION_TIMEDOUT)
		snprintf(p->err, sizeof(p->err), "POST %s: no answer within timeout_ms = %u", url,
		         p->dest->timeout_ms);
	else if (rc != CURLE_OK)
		snprintf(p->err, sizeof(p->err), "POST %s: %.300s", url,
		         p->curl_err[0] ? p->curl_err : curl_easy_strerror(rc));
	else
		snprintf(p->err, sizeof(p->err), "POST %s: HTTP %ld%s%.160s", url, code,
		         p->answer_len ? ": " : " (only 2xx counts as delivered)", p->answer);
}

/* Transfers curl has finished. */
static void collect(struct tide_publisher *p)
{
	CURLMsg *m;
	int left;
	while ((m = curl_multi_info_read(p->multi, &left))) {
		if (m->msg != CURLMSG_DONE || m->easy_handle != p->easy)
			continue;
		CURLcode rc = m->data.result;
		long code = 0;
		curl_easy_getinfo(p->easy, CURLINFO_RESPONSE_CODE, &code);
		drop_easy(p);
		if (rc == CURLE_OK && code >= 200 && code < 300) {
			p->next++;
			if (uv_now(p->loop) - p->started >= p->dest->budget_ms)
				finish(p, 0); /* the rest in the next batch */
			else
				send_next(p);
		} else {
			explain(p, rc, code);
			finish(p, TIDE_EINVAL);
		}
	}
}

int tide_publisher_deliver(struct tide_publisher *p, const struct tide_publish_dest *dest,
                           const struct tide_publish_events *ev, tide_publish_cb cb, void *arg)
{
	if (p->busy || p->closing)
		return TIDE_EINVAL;
	p->busy = true;
	p->dest = dest;
	p->ev = ev;
	p->next = 0;
	p->started = uv_now(p->loop);
	p->cb = cb;
	p->arg = arg;
	send_next(p); /* a failure here still calls back, later */
	return 0;
}

void tide_publisher_cancel(struct tide_publisher *p)
{
	if (!p->busy || uv_is_active((uv_handle_t *)&p->later))
		return;
	snprintf(p->err, sizeof(p->err), "cancelled: the processor stops");
	finish(p, TIDE_ECLOSED);
}

void tide_publisher_close(struct tide_publisher *p, void (*closed)(void *arg), void *arg)
{
	drop_easy(p);
	p->busy = false; /* its callback is not wanted any more */
	p->closing = true;
	p->closed = closed;
	p->closed_arg = arg;
	curl_multi_cleanup(p->multi); /* may still tell on_socket to drop sockets */
	p->multi = NULL;
	while (p->socks)
		sock_forget(p, p->socks);
	uv_close((uv_handle_t *)&p->timer, handle_closed);
	uv_close((uv_handle_t *)&p->later, handle_closed);
}
