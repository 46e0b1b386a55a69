/* bench.c — the append driver of scripts/bench: N clients (one connection each, one
 * append in flight each) append K events per call through libtide for a duration or a
 * number of calls, optionally spaced by an interval, optionally running the inline
 * projections of a directory (`--projections DIR`), and print one JSON object:
 * {"calls":…, "events":…, "seconds":…, "events_per_s":…, "p50_ms":…, "p99_ms":…}.
 * Streams: each client its own `--streams N` (PREFIX-CLIENT-K, round robin), or with
 * `--stream-pool N` one pool shared by all clients (PREFIX-K, K uniform at random), as
 * pgbench's `random(1, N)` picks them for the reference it is compared with. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

struct client {
	struct tide_store *store;
	int id;
	long calls;
	uint64_t sent_at;
	uint64_t rng;
	uv_timer_t timer;
};

static struct {
	uv_loop_t *loop;
	const char *url, *prefix, *projections;
	int clients, per_call, streams, pool;
	const char *data;
	long max_calls; /* per client; 0: run for duration */
	double duration_s, interval_ms;
	uint64_t start, deadline;
	struct tide_event *events;
	double *lat;
	size_t nlat, cap;
	int open, done;
	long total_calls;
} b;

static uint64_t now_ns(void)
{
	return uv_hrtime();
}

static void send_append(struct client *c);

static void on_timer(uv_timer_t *t)
{
	send_append(t->data);
}

static void finish(struct client *c)
{
	b.done++;
	uv_close((uv_handle_t *)&c->timer, NULL);
	tide_store_close(c->store);
}

static void on_append(int status, const char *err, const struct tide_append_result *r, void *arg)
{
	(void)r;
	struct client *c = arg;
	if (status) {
		fprintf(stderr, "bench: append failed: %s\n", err);
		exit(1);
	}
	uint64_t t = now_ns();
	if (b.nlat == b.cap) {
		b.cap = b.cap ? b.cap * 2 : 4096;
		b.lat = realloc(b.lat, b.cap * sizeof(double));
	}
	b.lat[b.nlat++] = (double)(t - c->sent_at) / 1e6;
	c->calls++;
	b.total_calls++;
	if ((b.max_calls && c->calls >= b.max_calls) || (!b.max_calls && t >= b.deadline)) {
		finish(c);
		return;
	}
	if (b.interval_ms > 0)
		uv_timer_start(&c->timer, on_timer, (uint64_t)b.interval_ms, 0);
	else
		send_append(c);
}

/* xorshift64*: a private generator per client, so clients never share state. */
static uint64_t next_random(struct client *c)
{
	c->rng ^= c->rng >> 12;
	c->rng ^= c->rng << 25;
	c->rng ^= c->rng >> 27;
	return c->rng * 2685821657736338717ULL;
}

static void send_append(struct client *c)
{
	char stream[96];
	if (b.pool)
		snprintf(stream, sizeof(stream), "%s-%" PRIu64, b.prefix,
		         next_random(c) % (uint64_t)b.pool);
	else
		snprintf(stream, sizeof(stream), "%s-%d-%ld", b.prefix, c->id,
		         b.streams ? c->calls % b.streams : 0);
	c->sent_at = now_ns();
	if (tide_store_append(c->store, stream, b.events, (size_t)b.per_call, TIDE_EXPECT_ANY,
	                      on_append, c) != 0) {
		fprintf(stderr, "bench: %s\n", tide_store_error(c->store));
		exit(1);
	}
}

static void on_open(struct tide_store *s, int status, const char *err, void *arg)
{
	(void)s;
	(void)arg;
	if (status) {
		fprintf(stderr, "bench: cannot connect: %s\n", err);
		exit(1);
	}
	if (++b.open < b.clients)
		return;
	/* Everyone connected: start the clock and the clients together. */
	b.start = now_ns();
	b.deadline = b.start + (uint64_t)(b.duration_s * 1e9);
}

static int cmp(const void *x, const void *y)
{
	double a = *(const double *)x, c = *(const double *)y;
	return a < c ? -1 : a > c;
}

int main(int argc, char **argv)
{
	b.url = getenv("TIDE_DATABASE_URL");
	b.prefix = "bench";
	b.clients = 1;
	b.per_call = 1;
	b.duration_s = 5;
	b.data = "{\"amount\":1,\"note\":\"benchmark\"}";
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--clients"))
			b.clients = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--events-per-call"))
			b.per_call = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--calls"))
			b.max_calls = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--seconds"))
			b.duration_s = atof(argv[i + 1]);
		else if (!strcmp(argv[i], "--interval-ms"))
			b.interval_ms = atof(argv[i + 1]);
		else if (!strcmp(argv[i], "--streams"))
			b.streams = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--stream-pool"))
			b.pool = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--data"))
			b.data = argv[i + 1];
		else if (!strcmp(argv[i], "--prefix"))
			b.prefix = argv[i + 1];
		else if (!strcmp(argv[i], "--database"))
			b.url = argv[i + 1];
		else if (!strcmp(argv[i], "--projections"))
			b.projections = argv[i + 1];
		else {
			fprintf(stderr, "bench: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	if (!b.url || b.clients < 1 || b.per_call < 1) {
		fprintf(stderr,
		        "usage: tide-bench --database URL [--clients N] [--events-per-call K]"
		        " [--calls C | --seconds S] [--interval-ms MS]"
		        " [--streams N | --stream-pool N] [--prefix P] [--data JSON]"
		        " [--projections DIR]\n");
		return 2;
	}
	b.events = calloc((size_t)b.per_call, sizeof(*b.events));
	for (int i = 0; i < b.per_call; i++)
		b.events[i] = (struct tide_event){.type = "BenchEvent", .data = b.data};
	uv_loop_t loop;
	uv_loop_init(&loop);
	b.loop = &loop;
	struct client *cl = calloc((size_t)b.clients, sizeof(*cl));
	for (int i = 0; i < b.clients; i++) {
		cl[i].id = i;
		cl[i].rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1);
		uv_timer_init(&loop, &cl[i].timer);
		cl[i].timer.data = &cl[i];
		if (tide_store_open(&loop, b.url, on_open, NULL, &cl[i].store) != 0)
			return 1;
		if (b.projections && tide_store_set_projections(cl[i].store, b.projections) != 0) {
			fprintf(stderr, "bench: %s\n", tide_store_error(cl[i].store));
			return 1;
		}
	}
	while (b.open < b.clients)
		uv_run(&loop, UV_RUN_ONCE);
	for (int i = 0; i < b.clients; i++)
		send_append(&cl[i]);
	uv_run(&loop, UV_RUN_DEFAULT);
	double secs = (double)(now_ns() - b.start) / 1e9;
	qsort(b.lat, b.nlat, sizeof(double), cmp);
	double p50 = b.nlat ? b.lat[b.nlat / 2] : 0, p99 = b.nlat ? b.lat[(b.nlat * 99) / 100] : 0;
	printf("{\"calls\":%ld,\"events\":%ld,\"seconds\":%.3f,\"events_per_s\":%.1f,"
	       "\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n",
	       b.total_calls, b.total_calls * b.per_call, secs,
	       (double)(b.total_calls * b.per_call) / secs, p50, p99);
	uv_loop_close(&loop);
	free(cl);
	free(b.events);
	free(b.lat);
	return 0;
}
