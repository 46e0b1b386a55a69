/* test_sharing.c — a daemon's share of the processors (engine/sharing.c) against a real
 * PostgreSQL: two daemons' heartbeats, the share each computes, which units the one above
 * its share hands over, and what a clean stop leaves. */
#include <unistd.h>

#include "harness.h"
#include "sharing.h"

#define LEASE_MS 900
#define UNITS    4

struct daemon {
	struct tide_sharing *s;
	struct tide_sharing_unit *u[UNITS];
	bool kicked, stopped;
};

static void on_kick(void *arg)
{
	*(bool *)arg = true;
}

static void on_stopped(void *arg)
{
	*(bool *)arg = true;
}

static void start(struct daemon *d, const char *owner)
{
	struct tide_sharing_opts o = {
	        .loop = test_loop, .url = test_url, .owner = owner, .lease_ms = LEASE_MS};
	d->s = tide_sharing_new(&o);
	CHECK(d->s);
	static const char *const ids[UNITS] = {"x/a", "x/b", "x/c", "x/d"};
	for (int i = 0; i < UNITS; i++) {
		d->u[i] = tide_sharing_join(d->s, ids[i], on_kick, &d->kicked);
		CHECK(d->u[i]);
	}
}

static void stop(struct daemon *d)
{
	for (int i = 0; i < UNITS; i++)
		tide_sharing_leave(d->u[i]);
	tide_sharing_stop(d->s, on_stopped, &d->stopped);
	test_wait(&d->stopped);
	tide_sharing_free(d->s);
}

static void on_elapsed(uv_timer_t *t)
{
	*(bool *)t->data = true;
	uv_close((uv_handle_t *)t, NULL);
}

/* Runs the loop for ms: long enough for every daemon to beat again. */
static void run_for(uint64_t ms)
{
	static uv_timer_t t;
	bool done = false;
	uv_timer_init(test_loop, &t);
	t.data = &done;
	uv_timer_start(&t, on_elapsed, ms, 0);
	test_wait(&done);
	uv_run(test_loop, UV_RUN_NOWAIT); /* the timer's close */
}

/* Four units, one daemon then two: the first holds all four, then hands over the two whose
 * ids sort last; the second claims up to its share of two; a clean stop removes its row and
 * gives the first its whole share back. */
static void shares_and_hands_over(void)
{
	struct daemon a = {0}, b = {0};
	start(&a, "tide:test:1:a");
	CHECK(!tide_sharing_may_claim(a.u[0])); /* no heartbeat answered yet: nothing */
	test_wait(&a.kicked);
	for (int i = 0; i < UNITS; i++) {
		CHECK(tide_sharing_may_claim(a.u[i]));
		tide_sharing_held(a.u[i], true);
	}
	CHECK(!tide_sharing_surplus(a.u[3]));

	start(&b, "tide:test:2:b");
	test_wait(&b.kicked); /* its first beat: two daemons, a share of two */
	CHECK(tide_sharing_may_claim(b.u[0]));
	CHECK(tide_sharing_may_claim(b.u[1]));
	CHECK(!tide_sharing_may_claim(b.u[2])); /* two claims out: at its share */
	tide_sharing_held(b.u[0], false);       /* refused: another daemon holds them */
	tide_sharing_held(b.u[1], false);

	run_for(LEASE_MS / 2); /* a beats again and learns of b */
	CHECK(!tide_sharing_surplus(a.u[0]));
	CHECK(!tide_sharing_surplus(a.u[1]));
	CHECK(tide_sharing_surplus(a.u[2]));
	CHECK(tide_sharing_surplus(a.u[3]));
	tide_sharing_held(a.u[3], false); /* handed over */
	CHECK(tide_sharing_surplus(a.u[2]));
	tide_sharing_held(a.u[2], false);
	CHECK(!tide_sharing_surplus(a.u[1]));
	CHECK(!tide_sharing_may_claim(a.u[3])); /* at its share */

	CHECK(tide_sharing_may_claim(b.u[2]));
	tide_sharing_held(b.u[2], true);
	CHECK(tide_sharing_may_claim(b.u[3]));
	tide_sharing_held(b.u[3], true);

	PGconn *pg = test_pg();
	CHECK_EQ_I64(
	        test_scalar(pg, "SELECT count(*) FROM tide_daemons WHERE alive_until >= now()"), 2);
	stop(&b);
	CHECK_EQ_I64(test_scalar(pg, "SELECT count(*) FROM tide_daemons"), 1);
	a.kicked = false;
	test_wait(&a.kicked); /* alone again: its share grows back to four */
	CHECK(tide_sharing_may_claim(a.u[2]));
	CHECK(tide_sharing_may_claim(a.u[3]));
	run_for(LEASE_MS / 2); /* its row says so at its next beat */
	CHECK_EQ_I64(test_scalar(pg, "SELECT units * 10 + budget FROM tide_daemons"), 44);
	PQfinish(pg);
	stop(&a);
}

int main(int argc, char **argv)
{
	static const struct test_case cases[] = {
	        {"shares_and_hands_over", shares_and_hands_over},
	};
	return test_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]));
}
