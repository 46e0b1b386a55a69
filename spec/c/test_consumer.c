/* test_consumer.c — the consumer's state machine (engine/consumer.c) against a real
 * PostgreSQL: the states it goes through, what it commits, and what it does when a script
 * fails, when its connection is killed in the middle of a batch, and when it is stopped
 * with a batch in flight. */
#include <stdint.h>
#include <unistd.h>

#include "consumer.h"
#include "harness.h"

/* --- helpers ------------------------------------------------------------------------------ */

struct loaded {
	bool done;
	struct tide_generation gen;
	char err[512];
};

static void on_loaded(struct tide_load_result *r, void *arg)
{
	struct loaded *l = arg;
	l->done = true;
	if (r->outcome == TIDE_LOAD_OK) {
		l->gen = r->gen;
		memset(&r->gen, 0, sizeof(r->gen));
	} else {
		snprintf(l->err, sizeof(l->err), "%s", r->err ? r->err : "not a processor");
	}
}

static char script_path[256];

/* A generation of the given script source. */
static struct tide_generation load(const char *source)
{
	static int n;
	snprintf(script_path, sizeof(script_path), "/tmp/tide-consumer-%d-%d.lua", (int)getpid(),
	         ++n);
	FILE *f = fopen(script_path, "w");
	CHECK(f);
	fputs(source, f);
	fclose(f);
	struct loaded l = {0};
	struct tide_load_request req = {.path = script_path, .id = "p", .force = true};
	CHECK(tide_load(test_loop, &req, on_loaded, &l) == 0);
	test_wait(&l.done);
	unlink(script_path);
	if (l.err[0])
		fprintf(stderr, "load: %s\n", l.err);
	CHECK(!l.err[0]);
	return l.gen;
}

/* Every state the consumer was seen in, in order (repeats collapsed), checked each loop turn. */
struct watch {
	uv_prepare_t prepare;
	struct tide_consumer *c;
	enum tide_consumer_state seen[256];
	int n;
};

static void on_prepare(uv_prepare_t *h)
{
	struct watch *w = h->data;
	enum tide_consumer_state s = tide_consumer_state(w->c);
	if ((w->n == 0 || w->seen[w->n - 1] != s) && w->n < 256)
		w->seen[w->n++] = s;
}

static int seen_at(const struct watch *w, enum tide_consumer_state s, int from)
{
	for (int i = from; i < w->n; i++)
		if (w->seen[i] == s)
			return i;
	return -1;
}

static void print_states(const struct watch *w)
{
	fprintf(stderr, "states:");
	for (int i = 0; i < w->n; i++)
		fprintf(stderr, " %s", tide_consumer_state_name(w->seen[i]));
	fprintf(stderr, "\n");
}

static bool stopped;
static void on_stopped(void *arg)
{
	(void)arg;
	stopped = true;
}

static struct tide_consumer *consumer(struct watch *w, int batch_size)
{
	struct tide_consumer_opts o = {
	        .loop = test_loop,
	        .url = test_url,
	        .owner = "test-owner",
	        .id = "p",
	        .script = "p.lua",
	        .batch_size = batch_size,
	        .poll_ms = 50,
	        .lease_ms = 5000,
	        .on_stopped = on_stopped,
	};
	struct tide_consumer *c = tide_consumer_new(&o);
	CHECK(c);
	memset(w, 0, sizeof(*w));
	w->c = c;
	uv_prepare_init(test_loop, &w->prepare);
	w->prepare.data = w;
	uv_prepare_start(&w->prepare, on_prepare);
	return c;
}

static void finish(struct tide_consumer *c, struct watch *w)
{
	stopped = false;
	tide_consumer_stop(c);
	test_wait(&stopped);
	tide_consumer_free(c);
	uv_close((uv_handle_t *)&w->prepare, NULL);
}

/* Runs the loop until cond(arg) holds, looking every 20 ms (fails after 60 s). */
struct until {
	uv_timer_t timer;
	bool (*cond)(void *);
	void *arg;
	bool done;
};

static void on_until(uv_timer_t *t)
{
	struct until *u = t->data;
	if (u->cond(u->arg))
		u->done = true;
}

static void wait_until(bool (*cond)(void *), void *arg)
{
	struct until u = {.cond = cond, .arg = arg};
	uv_timer_init(test_loop, &u.timer);
	u.timer.data = &u;
	uv_timer_start(&u.timer, on_until, 20, 20);
	test_wait(&u.done);
	uv_close((uv_handle_t *)&u.timer, NULL);
	uv_run(test_loop, UV_RUN_NOWAIT);
}

static long long scalar(const char *sql)
{
	PGconn *c = test_pg();
	long long v = test_scalar(c, sql);
	PQfinish(c);
	return v;
}

static void sql(const char *text)
{
	scalar(text);
}

/* n events to 5 streams; the i-th (from 1) of poison_at gets data {"poison": true}. */
static void append(int n, int poison_at)
{
	char q[512];
	snprintf(q, sizeof(q),
	         "SELECT count(*) FROM (SELECT tide_append('s-' || (i %% 5), 'any',"
	         " jsonb_build_array(jsonb_build_object('type', 'Added', 'data',"
	         " CASE WHEN i = %d THEN '{\"poison\": true}'::jsonb ELSE '{}'::jsonb END)))"
	         " FROM generate_series(1, %d) i) x",
	         poison_at, n);
	sql(q);
}

struct idle_with {
	struct tide_consumer *c;
	long long rows;
};

static bool idle_with_rows(void *arg)
{
	struct idle_with *x = arg;
	return tide_consumer_state(x->c) == TIDE_CONSUMER_IDLE &&
	       scalar("SELECT count(*) FROM seen") == x->rows;
}

static bool in_state(void *arg)
{
	struct idle_with *x = arg;
	return tide_consumer_state(x->c) == (enum tide_consumer_state)x->rows;
}

#define SEEN_TABLE                                                                                 \
	"  setup = function(sql) sql:exec('CREATE TABLE IF NOT EXISTS seen (message_id text "      \
	"PRIMARY "                                                                                 \
	"KEY, pos bigint)') end,\n"

static const char *const SEEN =
        "return tide.projection {\n" SEEN_TABLE "  handle = function(events, sql)\n"
        "    for _, e in ipairs(events) do\n"
        "      sql:exec('INSERT INTO seen VALUES ($1, $2)', e.message_id, "
        "e.global_position)\n"
        "    end\n"
        "  end,\n"
        "}\n";

/* SEEN, but each batch first waits 0.3 s on the server: time to act while it runs. */
static const char *const SLOW_SEEN =
        "return tide.projection {\n" SEEN_TABLE "  handle = function(events, sql)\n"
        "    sql:query('SELECT pg_sleep(0.3)')\n"
        "    for _, e in ipairs(events) do\n"
        "      sql:exec('INSERT INTO seen VALUES ($1, $2)', "
        "e.message_id, e.global_position)\n"
        "    end\n"
        "  end,\n"
        "}\n";

/* --- tests -------------------------------------------------------------------------------- */

/* connecting → claiming → reading → recording → running → … → idle, everything once. */
static void processes_then_idles(void)
{
	append(25, 0);
	struct watch w;
	struct tide_consumer *c = consumer(&w, 10);
	struct tide_generation g = load(SEEN);
	tide_consumer_set_generation(c, &g);
	CHECK(g.vm == NULL); /* moved */
	struct idle_with x = {c, 25};
	wait_until(idle_with_rows, &x);
	CHECK_EQ_I64(scalar("SELECT max(last_processed_checkpoint::bigint) FROM emt_processors"),
	             scalar("SELECT max(global_position) FROM emt_messages"));
	int i = seen_at(&w, TIDE_CONSUMER_CONNECTING, 0);
	CHECK(i >= 0);
	CHECK((i = seen_at(&w, TIDE_CONSUMER_CLAIMING, i)) > 0);
	CHECK((i = seen_at(&w, TIDE_CONSUMER_READING, i)) > 0);
	/* recording: within the same loop turn as running once the record is flushed */
	CHECK((i = seen_at(&w, TIDE_CONSUMER_RUNNING, i)) > 0);
	CHECK((i = seen_at(&w, TIDE_CONSUMER_IDLE, i)) > 0);
	CHECK(seen_at(&w, TIDE_CONSUMER_BACKOFF, 0) < 0);
	/* Nothing is left of the attempts once the batches committed. */
	CHECK_EQ_I64(scalar("SELECT attempts FROM tide_processors"), 0);
	finish(c, &w);
	CHECK_EQ_I64(scalar("SELECT count(*) FROM tide_processors WHERE owner IS NULL AND status = "
	                    "'stopped'"),
	             1);
}

/* A poison event in a batch: the batch fails, its events are taken one at a time, the poison
 * one is tried max_attempts times with backoff and parked; all others go through once. */
static void isolates_and_parks(void)
{
	append(10, 4);
	struct watch w;
	struct tide_consumer *c = consumer(&w, 100);
	struct tide_generation g =
	        load("return tide.projection {\n"
	             "  max_attempts = 2, backoff_ms = 5,\n" SEEN_TABLE
	             "  handle = function(events, sql)\n"
	             "    for _, e in ipairs(events) do\n"
	             "      if e.data.poison then error('poison at ' .. e.global_position) end\n"
	             "      sql:exec('INSERT INTO seen VALUES ($1, $2)', e.message_id, "
	             "e.global_position)\n"
	             "    end\n"
	             "  end,\n"
	             "}\n");
	tide_consumer_set_generation(c, &g);
	struct idle_with x = {c, 9};
	wait_until(idle_with_rows, &x);
	CHECK_EQ_I64(scalar("SELECT count(*) FROM tide_dead_letters WHERE processor_id = 'p'"
	                    " AND attempts = 2 AND last_error LIKE '%poison at%'"
	                    " AND traceback LIKE '%.lua:%'"),
	             1);
	CHECK_EQ_I64(scalar("SELECT count(*) FROM seen s JOIN tide_dead_letters d"
	                    " ON d.global_position = s.pos"),
	             0);
	int i = seen_at(&w, TIDE_CONSUMER_RUNNING, 0);
	CHECK((i = seen_at(&w, TIDE_CONSUMER_BACKOFF, i)) > 0);
	CHECK((i = seen_at(&w, TIDE_CONSUMER_PARKING, i)) > 0);
	CHECK(seen_at(&w, TIDE_CONSUMER_IDLE, i) > 0);
	if (seen_at(&w, TIDE_CONSUMER_PARKING, 0) < 0)
		print_states(&w);
	finish(c, &w);
}

/* The backend is killed while a batch waits on the server: the batch is lost, the consumer
 * reconnects, claims again and redoes it from the committed checkpoint: nothing twice. */
static void connection_killed_mid_batch(void)
{
	append(30, 0);
	struct watch w;
	struct tide_consumer *c = consumer(&w, 10);
	struct tide_generation g = load(SLOW_SEEN);
	tide_consumer_set_generation(c, &g);
	struct idle_with running = {c, TIDE_CONSUMER_RUNNING};
	wait_until(in_state, &running);
	sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
	    " WHERE application_name = 'tide run: p'");
	struct idle_with x = {c, 30};
	wait_until(idle_with_rows, &x);
	int i = seen_at(&w, TIDE_CONSUMER_RUNNING, 0);
	CHECK((i = seen_at(&w, TIDE_CONSUMER_CONNECTING, i)) > 0);
	CHECK((i = seen_at(&w, TIDE_CONSUMER_CLAIMING, i)) > 0);
	CHECK(seen_at(&w, TIDE_CONSUMER_IDLE, i) > 0);
	/* The lost try was not the script's doing: it did not count. */
	CHECK_EQ_I64(scalar("SELECT count(*) FROM tide_dead_letters"), 0);
	finish(c, &w);
}

/* on_error = "stop": halted before the poison event, processing nothing past it, until a
 * new generation, which gets its own try. */
static void halts_then_resumes_with_a_new_script(void)
{
	append(6, 3);
	struct watch w;
	struct tide_consumer *c = consumer(&w, 100);
	static const char fmt[] = "return tide.projection {\n"
	                          "  on_error = 'stop', max_attempts = 1,\n" SEEN_TABLE
	                          "  handle = function(events, sql)\n"
	                          "    for _, e in ipairs(events) do\n"
	                          "      if e.data.poison and %s then error('poison') end\n"
	                          "      sql:exec('INSERT INTO seen VALUES ($1, $2)', "
	                          "e.message_id, e.global_position)\n"
	                          "    end\n"
	                          "  end,\n"
	                          "}\n";
	char src[1024];
	snprintf(src, sizeof(src), fmt, "true");
	struct tide_generation g = load(src);
	tide_consumer_set_generation(c, &g);
	struct idle_with halted = {c, TIDE_CONSUMER_HALTED};
	wait_until(in_state, &halted);
	CHECK_EQ_I64(scalar("SELECT count(*) FROM seen"), 2);
	CHECK_EQ_I64(scalar("SELECT count(*) FROM tide_processors WHERE status = 'halted'"), 1);
	CHECK_EQ_I64(scalar("SELECT count(*) FROM tide_dead_letters"), 0);
	append(2, 0);
	uv_sleep(200);
	uv_run(test_loop, UV_RUN_NOWAIT);
	CHECK(tide_consumer_state(c) == TIDE_CONSUMER_HALTED);
	CHECK_EQ_I64(scalar("SELECT count(*) FROM seen"), 2);
	snprintf(src, sizeof(src), fmt, "false");
	g = load(src);
	tide_consumer_set_generation(c, &g);
	struct idle_with x = {c, 8};
	wait_until(idle_with_rows, &x);
	finish(c, &w);
}

/* Stopped with a batch in flight: the batch commits, then the lease is released. */
static void stop_finishes_the_batch(void)
{
	append(10, 0);
	struct watch w;
	struct tide_consumer *c = consumer(&w, 100);
	struct tide_generation g = load(SLOW_SEEN);
	tide_consumer_set_generation(c, &g);
	struct idle_with running = {c, TIDE_CONSUMER_RUNNING};
	wait_until(in_state, &running);
	finish(c, &w);
	CHECK_EQ_I64(scalar("SELECT count(*) FROM seen"), 10);
	CHECK_EQ_I64(scalar("SELECT max(last_processed_checkpoint::bigint) FROM emt_processors"),
	             scalar("SELECT max(global_position) FROM emt_messages"));
	CHECK_EQ_I64(scalar("SELECT count(*) FROM tide_processors WHERE owner IS NULL"), 1);
	int i = seen_at(&w, TIDE_CONSUMER_RUNNING, 0);
	CHECK(seen_at(&w, TIDE_CONSUMER_RELEASING, i) > 0); /* then on_stopped (finish) */
}

int main(int argc, char **argv)
{
	static const struct test_case cases[] = {
	        {"processes_then_idles", processes_then_idles},
	        {"isolates_and_parks", isolates_and_parks},
	        {"connection_killed_mid_batch", connection_killed_mid_batch},
	        {"halts_then_resumes_with_a_new_script", halts_then_resumes_with_a_new_script},
	        {"stop_finishes_the_batch", stop_finishes_the_batch},
	};
	return test_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]));
}
