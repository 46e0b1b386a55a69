/* test_publish.c — publish.c's deliveries against a tiny HTTP endpoint on the same loop that
 * answers each request as a script says (a status, or never): a delivered prefix stops at
 * the first failure, a silent endpoint times out, a cancel ends a delivery at once, and the
 * url's secrets stay out of what is shown. No database; one named test per process. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "publish.h"

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

static uv_loop_t loop;

/* --- the endpoint ---------------------------------------------------------------------------- */

static const int *script; /* the answer to request i: a status, or 0 for none */
static int requests;
static char last_key[128];
static uv_tcp_t server;

struct conn {
	uv_tcp_t tcp;
	char buf[16384];
	size_t len;
};

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
	(void)hint;
	struct conn *c = h->data;
	*b = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len));
}

static void freed(uv_handle_t *h)
{
	free(h->data);
}

static void written(uv_write_t *w, int status)
{
	(void)status;
	free(w);
}

/* Answers every complete request in the buffer. */
static void serve(struct conn *c)
{
	for (;;) {
		c->buf[c->len < sizeof(c->buf) ? c->len : sizeof(c->buf) - 1] = '\0';
		char *end = strstr(c->buf, "\r\n\r\n");
		if (!end)
			return;
		const char *cl = strstr(c->buf, "Content-Length: ");
		size_t body = cl && cl < end ? strtoul(cl + 16, NULL, 10) : 0;
		size_t total = (size_t)(end + 4 - c->buf) + body;
		if (c->len < total)
			return;
		const char *key = strstr(c->buf, "Idempotency-Key: ");
		if (key && key < end)
			sscanf(key + 17, "%127[^\r]", last_key);
		int answer = script[requests++];
		memmove(c->buf, c->buf + total, c->len - total);
		c->len -= total;
		if (answer == 0)
			continue; /* never answered */
		static char reply[128];
		snprintf(reply, sizeof(reply), "HTTP/1.1 %d X\r\nContent-Length: 4\r\n\r\nnope",
		         answer);
		uv_write_t *w = malloc(sizeof(*w));
		uv_buf_t b = uv_buf_init(reply, (unsigned)strlen(reply));
		uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, written);
	}
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	(void)b;
	struct conn *c = s->data;
	if (n < 0) {
		uv_close((uv_handle_t *)s, freed);
		return;
	}
	c->len += (size_t)n;
	serve(c);
}

static void on_connection(uv_stream_t *s, int status)
{
	CHECK(status == 0);
	struct conn *c = calloc(1, sizeof(*c));
	uv_tcp_init(&loop, &c->tcp);
	c->tcp.data = c;
	CHECK(uv_accept(s, (uv_stream_t *)&c->tcp) == 0);
	uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
}

static int listen_any(void)
{
	struct sockaddr_in a;
	uv_ip4_addr("127.0.0.1", 0, &a);
	uv_tcp_init(&loop, &server);
	CHECK(uv_tcp_bind(&server, (const struct sockaddr *)&a, 0) == 0);
	CHECK(uv_listen((uv_stream_t *)&server, 16, on_connection) == 0);
	struct sockaddr_in got;
	int len = sizeof(got);
	uv_tcp_getsockname(&server, (struct sockaddr *)&got, &len);
	return ntohs(got.sin_port);
}

static void close_all(uv_handle_t *h, void *arg)
{
	(void)arg;
	if (!uv_is_closing(h))
		uv_close(h, h->type == UV_TCP && h != (uv_handle_t *)&server ? freed : NULL);
}

/* --- deliveries ------------------------------------------------------------------------------- */

static struct tide_publish_events *events(int n)
{
	static struct tide_message m[8];
	static char ids[8][40];
	CHECK(n <= 8);
	for (int i = 0; i < n; i++) {
		snprintf(ids[i], sizeof(ids[i]), "00000000-0000-4000-8000-00000000000%d", i);
		m[i] = (struct tide_message){.stream_id = "s-1",
		                             .stream_position = i + 1,
		                             .global_position = 10 + i,
		                             .transaction_id = 7,
		                             .type = "Added",
		                             .data = "{\"i\": 1}",
		                             .metadata = "{}",
		                             .message_id = ids[i],
		                             .created = "2026-01-01T00:00:00Z"};
	}
	struct tide_read_result r = {.messages = m, .count = (size_t)n};
	struct tide_publish_events *ev = tide_publish_events_new(&r);
	CHECK(ev);
	return ev;
}

static bool done;
static struct {
	int status;
	size_t delivered;
	char err[1024];
} out;

static void on_done(const struct tide_publish_outcome *o, void *arg)
{
	(void)arg;
	done = true;
	out.status = o->status;
	out.delivered = o->delivered;
	snprintf(out.err, sizeof(out.err), "%s", o->err ? o->err : "");
}

static void closed(void *arg)
{
	*(bool *)arg = true;
}

static struct tide_publisher *pub;
static void on_cancel(uv_timer_t *t)
{
	(void)t;
	tide_publisher_cancel(pub);
}

/* Delivers n events with the endpoint answering as `answers` says; cancel_after_ms > 0
 * cancels then. */
static void run(const int *answers, int n, unsigned timeout_ms, uint64_t cancel_after_ms)
{
	script = answers;
	requests = 0;
	done = false;
	int port = listen_any();
	char url[128];
	snprintf(url, sizeof(url), "http://user:secret@127.0.0.1:%d/hook?token=secret", port);
	char *headers[] = {"Authorization: Bearer secret"};
	struct tide_publish_dest d = {url, headers, 1, timeout_ms, 60000};
	struct tide_publish_events *ev = events(n);
	pub = tide_publisher_new(&loop);
	CHECK(pub);
	uv_timer_t cancel;
	uv_timer_init(&loop, &cancel);
	if (cancel_after_ms)
		uv_timer_start(&cancel, on_cancel, cancel_after_ms, 0);
	CHECK(tide_publisher_deliver(pub, &d, ev, on_done, NULL) == 0);
	CHECK(!done); /* never inside the call */
	while (!done)
		uv_run(&loop, UV_RUN_ONCE);
	bool is_closed = false;
	tide_publisher_close(pub, closed, &is_closed);
	uv_close((uv_handle_t *)&cancel, NULL);
	while (!is_closed)
		uv_run(&loop, UV_RUN_ONCE);
	tide_publish_events_free(ev);
	CHECK(strstr(out.err, "secret") == NULL);
}

static void delivers_a_prefix(void)
{
	static const int answers[] = {200, 204, 500, 200};
	run(answers, 4, 5000, 0);
	CHECK(out.status != 0);
	CHECK(out.delivered == 2);
	CHECK(requests == 3); /* nothing after the failure */
	CHECK(strstr(out.err, "HTTP 500: nope"));
	CHECK(strstr(out.err, "POST http://127.0.0.1:"));
	CHECK(strcmp(last_key, "00000000-0000-4000-8000-000000000002") == 0);
}

static void delivers_all(void)
{
	static const int answers[] = {200, 201, 299};
	run(answers, 3, 5000, 0);
	CHECK(out.status == 0);
	CHECK(out.delivered == 3);
	CHECK(requests == 3);
}

static void times_out(void)
{
	static const int answers[] = {200, 0};
	run(answers, 2, 200, 0);
	CHECK(out.status != 0);
	CHECK(out.delivered == 1);
	CHECK(strstr(out.err, "no answer within timeout_ms = 200"));
}

static void cancels(void)
{
	static const int answers[] = {0};
	run(answers, 1, 60000, 100);
	CHECK(out.status == TIDE_ECLOSED);
	CHECK(out.delivered == 0);
}

static void refused(void)
{
	/* A port nobody listens on: bind one, learn it, close it. */
	static const int answers[] = {200};
	script = answers;
	uv_tcp_t t;
	struct sockaddr_in a, got;
	uv_ip4_addr("127.0.0.1", 0, &a);
	uv_tcp_init(&loop, &t);
	CHECK(uv_tcp_bind(&t, (const struct sockaddr *)&a, 0) == 0);
	int len = sizeof(got);
	uv_tcp_getsockname(&t, (struct sockaddr *)&got, &len);
	uv_close((uv_handle_t *)&t, NULL);
	uv_run(&loop, UV_RUN_NOWAIT);
	char url[96];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/", ntohs(got.sin_port));
	struct tide_publish_dest d = {url, NULL, 0, 2000, 60000};
	struct tide_publish_events *ev = events(1);
	pub = tide_publisher_new(&loop);
	done = false;
	CHECK(tide_publisher_deliver(pub, &d, ev, on_done, NULL) == 0);
	while (!done)
		uv_run(&loop, UV_RUN_ONCE);
	CHECK(out.status != 0 && out.delivered == 0);
	CHECK(strstr(out.err, "POST http://127.0.0.1:"));
	bool is_closed = false;
	tide_publisher_close(pub, closed, &is_closed);
	while (!is_closed)
		uv_run(&loop, UV_RUN_ONCE);
	tide_publish_events_free(ev);
}

static void redacts(void)
{
	static const char *const cases[][2] = {
	        {"https://u:p@h.example:8443/a/b?k=v#f", "https://h.example:8443/a/b"},
	        {"http://h/", "http://h/"},
	        {"http://h?x=1", "http://h"},
	        {"http://a@b@h/p", "http://h/p"},
	        {"HTTP://H:1", "HTTP://H:1"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char got[128];
		tide_publish_redact(cases[i][0], got, sizeof(got));
		if (strcmp(got, cases[i][1]) != 0) {
			fprintf(stderr, "redact(%s) = %s, expected %s\n", cases[i][0], got,
			        cases[i][1]);
			exit(1);
		}
	}
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*fn)(void);
	} tests[] = {
	        {"delivers_all", delivers_all}, {"delivers_a_prefix", delivers_a_prefix},
	        {"times_out", times_out},       {"cancels", cancels},
	        {"refused", refused},           {"redacts", redacts},
	};
	CHECK(argc == 2);
	uv_loop_init(&loop);
	for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
		if (strcmp(tests[i].name, argv[1]) != 0)
			continue;
		tests[i].fn();
		uv_walk(&loop, close_all, NULL);
		uv_run(&loop, UV_RUN_DEFAULT);
		CHECK(uv_loop_close(&loop) == 0);
		return 0;
	}
	fprintf(stderr, "no test named %s\n", argv[1]);
	return 2;
}
