/* processor.c — one processor of `tide run`. Its loop: claim the lease (and the
 * checkpoint) → read the gap-safe global log after the checkpoint → run the batch in
 * the script (batch.c), committing effects and checkpoint together → read again; idle,
 * it waits for a wake-up or the poll timer. Script generations load off the loop (libuv
 * work queue) and replace the running one only between batches. */
#include "processor.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "log.h"
#include "store.h"

enum state {
	S_LOADING,    /* no generation yet */
	S_CONNECTING, /* opening the connection */
	S_CLAIMING,   /* asking for the lease */
	S_WAITING,    /* another daemon holds the lease */
	S_IDLE,       /* caught up; the timer polls */
	S_READING,
	S_RUNNING, /* a batch is in flight */
	S_BACKOFF, /* the last batch failed; retrying later */
	S_RELEASING,
	S_STOPPED,
	S_BROKEN, /* the first generation failed to load; waiting for a good file */
	S_INERT,  /* a decider: it lives beside projections but runs with `tide handle` */
};

struct generation {
	struct tide_vm *vm;
	int ref;
	char kind[16];
	int version;
	char partition[128];
	uint64_t hash;
};

struct load_job {
	uv_work_t req;
	struct tide_processor *p;
	char *path;
	char *id;
	uint64_t known_hash, failed_hash;
	bool force;
	unsigned cpu_ms;
	struct generation gen;
	bool unchanged;
	bool inert; /* a decider: nothing to run */
	char err[1024];
};

struct tide_processor {
	struct tide_daemon *d;
	struct tide_processor *next;
	char *id, *path;
	enum state state;
	struct generation cur, pending;
	bool has_pending, loading, reload_again, force_again;
	uint64_t failed_hash; /* content that failed to load: not worth loading again */
	int generation;
	struct tide_store *store;
	struct tide_cursor cursor, pending_cursor;
	bool setup_pending, reset_pending, stop_requested, wake_pending;
	bool leased; /* the last claim succeeded */
	uv_timer_t timer;
	uint64_t renewed_at;
	int failures;
	/* The next batch, read while the current one runs (see read_ahead). */
	struct {
		bool inflight, ready, discard;
		int status;
		int ref; /* its events, in cur.vm */
		int64_t count;
		struct tide_cursor next;
	} ahead;
	/* The backlog being worked off: events done since the last idle read, and since when. */
	int64_t busy_events, pending_count;
	uint64_t busy_since_ns;
	char last_error[1024];
	char error_buf[1024];
};

static void claim(struct tide_processor *p);
static void read_batch(struct tide_processor *p);
static void drop_ahead(struct tide_processor *p);
static void release(struct tide_processor *p);
static void timer_start_cb(uv_timer_t *t);

static uint64_t fnv1a(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
	return h;
}

static void gen_free(struct generation *g)
{
	tide_vm_close(g->vm);
	memset(g, 0, sizeof(*g));
}

/* --- status, reported in tide_processors ---------------------------------------------- */

static const char *state_name(const struct tide_processor *p)
{
	if (p->state == S_STOPPED || p->state == S_RELEASING)
		return "stopped";
	if (p->state == S_BROKEN || p->state == S_BACKOFF)
		return "failed";
	if (p->state == S_WAITING || (p->state == S_CLAIMING && !p->leased))
		return "waiting";
	return "running";
}

static void on_reported(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_processor *p = arg;
	if (reply->status && reply->status != TIDE_ECLOSED)
		tide_log("warn", "status.failed", "processor", p->id, "error", reply->err,
		         (char *)NULL);
}

static void report(struct tide_processor *p)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_report",
	        "INSERT INTO tide_processors (processor_id, kind, version, status, generation,"
	        " last_error, script) VALUES ($1, $2, $3::int, $4, $5::int, $6, $7)"
	        " ON CONFLICT (processor_id) DO UPDATE SET status = excluded.status,"
	        " generation = excluded.generation, last_error = excluded.last_error,"
	        " script = excluded.script, updated_at = now()"
	        " WHERE tide_processors.owner IS NULL OR tide_processors.owner = $8",
	        8,
	};
	if (!p->store || !tide_pg_ready(p->store->pg))
		return;
	char version[16], generation[16];
	snprintf(version, sizeof(version), "%d", p->cur.version ? p->cur.version : 1);
	snprintf(generation, sizeof(generation), "%d", p->generation);
	const char *v[8] = {
	        p->id,      p->cur.kind[0] ? p->cur.kind : "unknown", version, state_name(p),
	        generation, p->last_error[0] ? p->last_error : NULL,  p->path, p->d->owner};
	if (tide_pg_exec(p->store->pg, &stmt, v, on_reported, p) != 0)
		tide_log("warn", "status.failed", "processor", p->id, (char *)NULL);
}

static void set_error(struct tide_processor *p, const char *err)
{
	snprintf(p->last_error, sizeof(p->last_error), "%s", err ? err : "");
}

/* --- timers --------------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
	struct tide_processor *p = t->data;
	switch (p->state) {
	case S_WAITING: claim(p); break;
	case S_BACKOFF: read_batch(p); break;
	case S_IDLE:
		/* Renew the lease well before it runs out; claim reads the checkpoint too. */
		if (uv_now(p->d->loop) - p->renewed_at >= p->d->lease_ms / 3)
			claim(p);
		else
			read_batch(p);
		break;
	default: break;
	}
}

static void later(struct tide_processor *p, uint64_t ms)
{
	uv_timer_start(&p->timer, on_timer, ms, 0);
}

static void go_idle(struct tide_processor *p)
{
	p->state = S_IDLE;
	uint64_t renew = p->d->lease_ms / 3;
	later(p, p->d->poll_ms < renew ? p->d->poll_ms : renew);
}

/* --- generations ---------------------------------------------------------------------- */

/* Takes the pending generation, if any. Only between batches. */
static bool swap_generation(struct tide_processor *p)
{
	if (!p->has_pending)
		return false;
	drop_ahead(p); /* its events live in the VM that goes */
	int old_version = p->cur.version;
	char old_partition[sizeof(p->cur.partition)];
	memcpy(old_partition, p->cur.partition, sizeof(old_partition));
	bool had = p->cur.vm != NULL;
	gen_free(&p->cur);
	p->cur = p->pending;
	memset(&p->pending, 0, sizeof(p->pending));
	p->has_pending = false;
	p->generation++;
	p->setup_pending = true;
	char gen[16];
	snprintf(gen, sizeof(gen), "%d", p->generation);
	tide_log("info", had ? "processor.reloaded" : "processor.loaded", "processor", p->id,
	         "kind", p->cur.kind, "generation", gen, "script", p->path, (char *)NULL);
	if (had && strcmp(old_partition, p->cur.partition) != 0) {
		tide_log("info", "processor.repartitioned", "processor", p->id, "partition",
		         p->cur.partition, "reason",
		         "partition changed: going on from its own checkpoint there", (char *)NULL);
		return true;
	}
	if (had && old_version != p->cur.version) {
		char v[16];
		snprintf(v, sizeof(v), "%d", p->cur.version);
		tide_log("info", "processor.rebuild", "processor", p->id, "version", v, "reason",
		         "version changed: checkpoint and target reset, replaying from the start",
		         (char *)NULL);
		return true; /* the caller claims again: a new version has its own checkpoint */
	}
	report(p);
	return false;
}

static void load_work(uv_work_t *req)
{
	struct load_job *j = req->data;
	FILE *f = fopen(j->path, "rb");
	if (!f) {
		snprintf(j->err, sizeof(j->err), "cannot read %s: %s", j->path, strerror(errno));
		return;
	}
	char *buf = NULL;
	size_t len = 0, cap = 0;
	for (;;) {
		if (len + 4096 > cap) {
			char *nb = realloc(buf, cap = cap * 2 + 8192);
			if (!nb)
				break;
			buf = nb;
		}
		size_t got = fread(buf + len, 1, cap - len, f);
		if (got == 0)
			break;
		len += got;
	}
	fclose(f);
	if (!buf) {
		snprintf(j->err, sizeof(j->err), "out of memory reading %s", j->path);
		return;
	}
	j->gen.hash = fnv1a(buf, len);
	if (!j->force && (j->gen.hash == j->known_hash || j->gen.hash == j->failed_hash)) {
		j->unchanged = true;
		free(buf);
		return;
	}
	struct tide_vm_opts opts = {.cpu_ms = j->cpu_ms};
	if (tide_vm_open(&opts, &j->gen.vm, j->err, sizeof(j->err)) != 0) {
		free(buf);
		return;
	}
	int rc = tide_vm_load(j->gen.vm, j->path, buf, len, j->err, sizeof(j->err));
	free(buf);
	if (rc)
		goto fail;
	lua_State *L = tide_vm_state(j->gen.vm);
	lua_getfield(L, -1, "kind");
	snprintf(j->gen.kind, sizeof(j->gen.kind), "%s", lua_tostring(L, -1));
	lua_pop(L, 1);
	if (strcmp(j->gen.kind, "decider") == 0) {
		j->inert = true;
		goto fail;
	}
	lua_getfield(L, -1, "version");
	j->gen.version = lua_isnumber(L, -1) ? (int)lua_tonumber(L, -1) : 1;
	lua_pop(L, 1);
	if (j->gen.version < 1) {
		snprintf(j->err, sizeof(j->err), "%s: version must be a whole number >= 1",
		         j->path);
		goto fail;
	}
	lua_getfield(L, -1, "partition");
	const char *partition = lua_isstring(L, -1) ? lua_tostring(L, -1) : TIDE_DEFAULT_PARTITION;
	if (strlen(partition) >= sizeof(j->gen.partition)) {
		snprintf(j->err, sizeof(j->err), "%s: partition must be shorter than %zu bytes",
		         j->path, sizeof(j->gen.partition));
		goto fail;
	}
	snprintf(j->gen.partition, sizeof(j->gen.partition), "%s", partition);
	lua_pop(L, 1);
	j->gen.ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_pushstring(L, j->id);
	lua_setfield(L, LUA_REGISTRYINDEX, "tide.processor_id");
	tide_batch_init_vm(j->gen.vm);
	return;
fail:
	tide_vm_close(j->gen.vm);
	j->gen.vm = NULL;
}

static void start(struct tide_processor *p);

static void load_done(uv_work_t *req, int status)
{
	(void)status;
	struct load_job *j = req->data;
	struct tide_processor *p = j->p;
	p->loading = false;
	if (p->stop_requested) {
		if (j->gen.vm)
			tide_vm_close(j->gen.vm);
		free(j->path);
		free(j->id);
		free(j);
		if (p->state == S_LOADING || p->state == S_BROKEN)
			release(p);
		return;
	}
	if (j->unchanged) {
		/* An editor touched the file without changing it, or put back the content that
		 * is running: then the error of a broken save in between is over. */
		if (j->gen.hash == p->cur.hash && p->last_error[0]) {
			p->last_error[0] = '\0';
			p->failed_hash = 0;
			report(p);
		}
	} else if (j->inert) {
		if (p->state == S_LOADING)
			tide_log("info", "processor.skipped", "processor", p->id, "reason",
			         "a decider: it handles commands with `tide handle`", (char *)NULL);
		if (p->state == S_LOADING || p->state == S_BROKEN)
			p->state = S_INERT;
		p->cur.hash = j->gen.hash;
	} else if (!j->gen.vm) {
		p->failed_hash = j->gen.hash;
		set_error(p, j->err);
		tide_log("error", p->cur.vm ? "processor.reload_failed" : "processor.load_failed",
		         "processor", p->id, "error", j->err, p->cur.vm ? "keeping" : NULL,
		         p->cur.vm ? "the running generation keeps serving" : NULL, (char *)NULL);
		if (!p->cur.vm && p->state == S_LOADING)
			p->state = S_BROKEN;
		if (p->store)
			report(p);
		else if (p->state == S_BROKEN)
			start(p); /* connect anyway, so that status can show the error */
	} else {
		if (p->has_pending)
			gen_free(&p->pending);
		p->pending = j->gen;
		p->has_pending = true;
		p->last_error[0] = '\0';
		if (p->state == S_LOADING || p->state == S_BROKEN || p->state == S_INERT) {
			bool broken_connected = p->state == S_BROKEN && p->store;
			swap_generation(p);
			if (broken_connected)
				claim(p);
			else
				start(p);
		} else if (p->state != S_RUNNING && p->state != S_READING &&
		           p->state != S_RELEASING && p->state != S_STOPPED &&
		           p->state != S_CONNECTING && p->state != S_CLAIMING) {
			uv_timer_stop(&p->timer);
			swap_generation(p);
			claim(p); /* renews the lease, reads the checkpoint of this version */
		}
		/* otherwise the batch in flight finishes first (see on_batch) */
	}
	free(j->path);
	free(j->id);
	free(j);
	if (p->reload_again && !p->stop_requested) {
		p->reload_again = false;
		tide_processor_reload(p, p->force_again);
	}
}

void tide_processor_reload(struct tide_processor *p, bool force)
{
	if (p->stop_requested)
		return;
	if (p->loading) {
		p->reload_again = true;
		p->force_again = p->force_again || force;
		return;
	}
	struct load_job *j = calloc(1, sizeof(*j));
	if (!j)
		return;
	j->req.data = j;
	j->p = p;
	j->path = strdup(p->path);
	j->id = strdup(p->id);
	j->known_hash = p->has_pending ? p->pending.hash : p->cur.hash;
	j->failed_hash = p->failed_hash;
	j->force = force;
	j->cpu_ms = p->d->cpu_ms;
	p->loading = true;
	p->force_again = false;
	if (uv_queue_work(p->d->loop, &j->req, load_work, load_done) != 0) {
		p->loading = false;
		free(j->path);
		free(j->id);
		free(j);
	}
}

/* --- the consumer loop ---------------------------------------------------------------- */

static void on_batch(int status, const char *err, const char *sqlstate, void *arg);

/* The connection is gone (a restarted server, a killed backend): drop it, reconnect, and
 * claim the lease again; the checkpoint in the database says where to go on. */
static void reconnect(struct tide_processor *p, const char *why)
{
	tide_log("warn", "connection.lost", "processor", p->id, "error", why, (char *)NULL);
	tide_store_close(p->store);
	p->store = NULL;
	p->leased = false;
	p->state = S_CONNECTING;
	uv_timer_start(&p->timer, timer_start_cb, 500, 0);
}

/* The read ahead's reply: in pipeline order, before any reply of the batch it overlaps. */
static void on_ahead(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	(void)err;
	struct tide_processor *p = arg;
	p->ahead.inflight = false;
	if (!status && !p->ahead.discard && !p->stop_requested) {
		p->ahead.count = (int64_t)r->count;
		p->ahead.next = r->next;
		p->ahead.ready = tide_batch_events(p->cur.vm, r, &p->ahead.ref, p->error_buf,
		                                   sizeof(p->error_buf)) == 0;
	}
	p->ahead.discard = false;
}

/* A full batch suggests more is waiting: ask for the next one now, so that PostgreSQL
 * reads it while the script runs this one. Sent before the batch's BEGIN, it is a
 * statement of its own; rows of this batch's transaction (a reactor's appends) are not
 * in it, and come with a later read, as their transaction id is above the cursor. */
static void read_ahead(struct tide_processor *p, struct tide_cursor next)
{
	if (tide_store_read_all(p->store, &next, p->d->batch_size, on_ahead, p) == 0)
		p->ahead.inflight = true;
}

static void drop_ahead(struct tide_processor *p)
{
	if (p->ahead.inflight)
		p->ahead.discard = true;
	if (p->ahead.ready)
		tide_batch_events_free(p->cur.vm, p->ahead.ref);
	p->ahead.ready = false;
}

/* Runs the batch whose events (ref, in cur.vm) follow the checkpoint up to next. */
static void run_batch(struct tide_processor *p, int ref, int64_t count, struct tide_cursor next)
{
	char id_v[16], ttl[16], fx[24], fp[24], tx[24], tp[24];
	snprintf(id_v, sizeof(id_v), "%d", p->cur.version);
	snprintf(ttl, sizeof(ttl), "%u", p->d->lease_ms);
	snprintf(fx, sizeof(fx), "%" PRIu64, p->cursor.transaction_id);
	snprintf(fp, sizeof(fp), "%" PRId64, p->cursor.global_position);
	snprintf(tx, sizeof(tx), "%" PRIu64, next.transaction_id);
	snprintf(tp, sizeof(tp), "%" PRId64, next.global_position);
	struct tide_batch_spec spec = {
	        .vm = p->cur.vm,
	        .processor_ref = p->cur.ref,
	        .pg = p->store->pg,
	        .events_ref = ref,
	        .setup = p->setup_pending,
	        .reset = p->reset_pending,
	        .commit = {p->id, id_v, p->d->owner, ttl, fx, fp, tx, tp, p->cur.partition},
	};
	p->state = S_RUNNING;
	p->pending_cursor = next;
	p->pending_count = count;
	if (count >= (int64_t)p->d->batch_size)
		read_ahead(p, next);
	if (tide_batch_run(&spec, on_batch, p) != 0)
		on_batch(TIDE_ENOMEM, "cannot start the batch", "", p);
}

/* After a committed batch: the batch read ahead if there is one and it still fits (the
 * same generation, more events), else a fresh read. */
static void next_batch(struct tide_processor *p)
{
	if (!p->ahead.ready || p->has_pending || p->stop_requested || p->ahead.count == 0) {
		drop_ahead(p);
		read_batch(p);
		return;
	}
	p->ahead.ready = false;
	run_batch(p, p->ahead.ref, p->ahead.count, p->ahead.next);
}

/* A backlog of at least TIDE_BACKLOG_EVENTS is done: say how fast it went (smaller ones
 * would make a line per trickle of appends). */
#define TIDE_BACKLOG_EVENTS 1000
static void caught_up(struct tide_processor *p)
{
	if (p->busy_events >= TIDE_BACKLOG_EVENTS) {
		double s = (double)(uv_hrtime() - p->busy_since_ns) / 1e9;
		char n[24], secs[24], rate[24], c[48];
		snprintf(n, sizeof(n), "%" PRId64, p->busy_events);
		snprintf(secs, sizeof(secs), "%.3f", s);
		snprintf(rate, sizeof(rate), "%.0f", s > 0 ? (double)p->busy_events / s : 0.0);
		tide_cursor_format(&p->cursor, c);
		tide_log("info", "processor.caught_up", "processor", p->id, "events", n, "seconds",
		         secs, "events_per_second", rate, "checkpoint", c, (char *)NULL);
	}
	p->busy_events = 0;
}

static void on_read(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	struct tide_processor *p = arg;
	if (p->stop_requested) {
		release(p);
		return;
	}
	if (status == TIDE_ECONN) {
		reconnect(p, err);
		return;
	}
	if (status) {
		set_error(p, err);
		tide_log("error", "read.failed", "processor", p->id, "error", err, (char *)NULL);
		p->state = S_BACKOFF;
		later(p, 1000);
		return;
	}
	bool reclaim = swap_generation(p);
	if (reclaim) {
		claim(p);
		return;
	}
	if (r->count == 0 && !p->setup_pending && !p->reset_pending) {
		caught_up(p);
		go_idle(p);
		if (p->wake_pending) {
			p->wake_pending = false;
			uv_timer_stop(&p->timer);
			read_batch(p);
		}
		return;
	}
	int ref;
	if (tide_batch_events(p->cur.vm, r, &ref, p->error_buf, sizeof(p->error_buf)) != 0) {
		p->state = S_RUNNING;
		p->pending_count = 0;
		on_batch(TIDE_ENOMEM, p->error_buf, "", p);
		return;
	}
	run_batch(p, ref, (int64_t)r->count, r->next);
}

static void read_batch(struct tide_processor *p)
{
	if (p->stop_requested) {
		release(p);
		return;
	}
	p->state = S_READING;
	p->wake_pending = false;
	if (p->busy_events == 0)
		p->busy_since_ns = uv_hrtime();
	int rc = tide_store_read_all(p->store, &p->cursor, p->d->batch_size, on_read, p);
	if (rc == TIDE_ECONN) {
		reconnect(p, tide_store_error(p->store));
	} else if (rc) {
		set_error(p, tide_store_error(p->store));
		p->state = S_BACKOFF;
		later(p, 1000);
	}
}

static void on_batch(int status, const char *err, const char *sqlstate, void *arg)
{
	struct tide_processor *p = arg;
	if (status == 0) {
		bool was_failing = p->failures > 0;
		p->cursor = p->pending_cursor;
		p->busy_events += p->pending_count;
		p->renewed_at = uv_now(p->d->loop);
		p->failures = 0;
		p->setup_pending = p->reset_pending = false;
		if (was_failing) {
			p->last_error[0] = '\0';
			tide_log("info", "processor.recovered", "processor", p->id, (char *)NULL);
			report(p);
		}
		next_batch(p);
		return;
	}
	drop_ahead(p); /* it follows a checkpoint that did not move */
	p->failures++;
	set_error(p, err);
	char n[16];
	snprintf(n, sizeof(n), "%d", p->failures);
	tide_log("error", "batch.failed", "processor", p->id, "attempt", n, "error", err,
	         (char *)NULL);
	if (p->stop_requested) {
		release(p);
		return;
	}
	if (status == TIDE_ECONN) {
		reconnect(p, err);
		return;
	}
	if (sqlstate && (strcmp(sqlstate, "55006") == 0 || strcmp(sqlstate, "40001") == 0)) {
		p->leased = false;
		claim(p); /* lease lost or checkpoint moved: find out where we stand */
		return;
	}
	p->state = S_BACKOFF;
	report(p);
	uint64_t delay = 100u << (p->failures < 9 ? p->failures : 9);
	later(p, delay > 30000 ? 30000 : delay);
}

static void on_claim(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_processor *p = arg;
	if (p->stop_requested) {
		release(p);
		return;
	}
	if (reply->status == TIDE_ECONN) {
		reconnect(p, reply->err);
		return;
	}
	if (reply->status) {
		set_error(p, reply->err);
		tide_log("error", "claim.failed", "processor", p->id, "error", reply->err,
		         (char *)NULL);
		p->state = S_WAITING;
		later(p, 1000);
		return;
	}
	PGresult *res = reply->res;
	bool acquired = PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
	if (!acquired) {
		p->leased = false;
		if (p->state != S_WAITING)
			tide_log("info", "processor.waiting", "processor", p->id, "reason",
			         "another daemon holds the lease", (char *)NULL);
		p->state = S_WAITING;
		later(p, p->d->lease_ms / 3);
		return;
	}
	bool was_waiting = !p->leased;
	p->leased = true;
	p->renewed_at = uv_now(p->d->loop);
	p->cursor.transaction_id = strtoull(PQgetvalue(res, 0, 1), NULL, 10);
	p->cursor.global_position = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	if (PQgetvalue(res, 0, 3)[0] == 't')
		p->reset_pending = true;
	if (was_waiting) {
		char c[48];
		tide_cursor_format(&p->cursor, c);
		tide_log("info", "processor.started", "processor", p->id, "partition",
		         p->cur.partition, "checkpoint", c, (char *)NULL);
		report(p);
	}
	read_batch(p);
}

static void claim(struct tide_processor *p)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_claim",
	        "SELECT acquired, transaction_id, global_position, rebuilt"
	        " FROM tide_processor_claim($1, $2, $3::int, $4, $5::int, $6)",
	        6,
	};
	/* Also when renewing: a wake-up must not start a read while the claim is out. */
	p->state = S_CLAIMING;
	char version[16], ttl[16];
	snprintf(version, sizeof(version), "%d", p->cur.version);
	snprintf(ttl, sizeof(ttl), "%u", p->d->lease_ms);
	const char *v[6] = {p->id, p->cur.kind, version, p->d->owner, ttl, p->cur.partition};
	/* The partition is the script's: reads follow it from this claim on. */
	if (tide_store_set_partition(p->store, p->cur.partition) != 0) {
		set_error(p, tide_store_error(p->store)); /* the loader checked: not expected */
		p->state = S_WAITING;
		report(p);
		later(p, 30000);
		return;
	}
	if (!tide_pg_ready(p->store->pg)) {
		reconnect(p, tide_pg_error(p->store->pg));
		return;
	}
	if (tide_pg_exec(p->store->pg, &stmt, v, on_claim, p) != 0) {
		p->state = S_WAITING;
		later(p, 1000);
	}
}

static void on_open(struct tide_store *s, int status, const char *err, void *arg)
{
	(void)s;
	struct tide_processor *p = arg;
	if (p->stop_requested) {
		release(p);
		return;
	}
	if (status) {
		tide_log("error", "connect.failed", "processor", p->id, "error", err, (char *)NULL);
		tide_store_close(p->store);
		p->store = NULL;
		p->state = S_CONNECTING;
		uv_timer_start(&p->timer, timer_start_cb, 1000, 0);
		return;
	}
	if (!p->cur.vm) {
		report(p); /* broken from the start: show why */
		return;
	}
	claim(p);
}

static void start(struct tide_processor *p)
{
	if (p->store) {
		claim(p);
		return;
	}
	if (p->state != S_BROKEN)
		p->state = S_CONNECTING;
	if (tide_store_open(p->d->loop, p->d->url, on_open, p, &p->store) != 0) {
		p->store = NULL;
		uv_timer_start(&p->timer, timer_start_cb, 1000, 0);
	}
}

static void timer_start_cb(uv_timer_t *t)
{
	start(t->data);
}

/* --- stopping ------------------------------------------------------------------------- */

static void timer_closed(uv_handle_t *h)
{
	struct tide_processor *p = h->data;
	tide_daemon_processor_stopped(p->d, p);
}

static void finish_stop(struct tide_processor *p)
{
	if (p->state != S_INERT)
		tide_log("info", "processor.stopped", "processor", p->id, (char *)NULL);
	p->state = S_STOPPED;
	tide_store_close(p->store);
	p->store = NULL;
	uv_close((uv_handle_t *)&p->timer, timer_closed);
}

static void on_released(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_processor *p = arg;
	if (reply->status && reply->status != TIDE_ECLOSED)
		tide_log("warn", "release.failed", "processor", p->id, "error", reply->err,
		         (char *)NULL);
	finish_stop(p);
}

static void release(struct tide_processor *p)
{
	if (p->state == S_RELEASING || p->state == S_STOPPED)
		return;
	uv_timer_stop(&p->timer);
	if (p->state == S_INERT) {
		finish_stop(p);
		return;
	}
	p->state = S_RELEASING;
	const char *v[2] = {p->id, p->d->owner};
	static const struct tide_pg_stmt stmt = {"tide_release",
	                                         "SELECT tide_processor_release($1, $2)", 2};
	if (!p->store || !tide_pg_ready(p->store->pg) ||
	    tide_pg_exec(p->store->pg, &stmt, v, on_released, p) != 0)
		finish_stop(p);
}

void tide_processor_stop(struct tide_processor *p)
{
	if (p->stop_requested)
		return;
	p->stop_requested = true;
	switch (p->state) {
	case S_READING:
	case S_RUNNING:
	case S_CLAIMING:
	case S_CONNECTING:
		if (p->state == S_CONNECTING && !p->store)
			release(p);
		break; /* the reply in flight ends it */
	case S_LOADING:
		if (!p->loading)
			release(p);
		break;
	default: release(p); break;
	}
}

/* --- life ----------------------------------------------------------------------------- */

struct tide_processor *tide_processor_new(struct tide_daemon *d, const char *id, const char *path)
{
	struct tide_processor *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->d = d;
	p->id = strdup(id);
	p->path = strdup(path);
	p->state = S_LOADING;
	uv_timer_init(d->loop, &p->timer);
	p->timer.data = p;
	tide_processor_reload(p, true);
	return p;
}

void tide_processor_wake(struct tide_processor *p)
{
	if (p->state == S_IDLE) {
		uv_timer_stop(&p->timer);
		read_batch(p);
	} else {
		p->wake_pending = true;
	}
}

void tide_processor_free(struct tide_processor *p)
{
	gen_free(&p->cur);
	if (p->has_pending)
		gen_free(&p->pending);
	free(p->id);
	free(p->path);
	free(p);
}

const char *tide_processor_id(const struct tide_processor *p)
{
	return p->id;
}

const char *tide_processor_path(const struct tide_processor *p)
{
	return p->path;
}

struct tide_processor *tide_processor_next(struct tide_processor *p)
{
	return p->next;
}

void tide_processor_set_next(struct tide_processor *p, struct tide_processor *next)
{
	p->next = next;
}
