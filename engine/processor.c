/* processor.c — one processor of `tide run`: keeps its script's generations coming (a
 * saved file is loaded off the loop by loader.c) and hands each good one to its consumer
 * (consumer.c), which swaps it in between batches. A file that does not load leaves the
 * running generation in place and its error in the status. Its own state is the script's
 * life (loading, active, broken, inert, stopping), changed only through set_state(). */
#include "processor.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "consumer.h"
#include "loader.h"
#include "log.h"
#include "metrics.h"
#include "rebuild.h"
#include "upcast.h"

enum state {
	P_LOADING,  /* the first load is under way */
	P_ACTIVE,   /* a generation runs (or is being handed over) */
	P_BROKEN,   /* no generation loaded yet: the error is shown until a good save */
	P_INERT,    /* no projection or reactor: a decider (it runs with `tide handle`), a module */
	P_STOPPING, /* the consumer is finishing */
};

struct tide_processor {
	struct tide_processor_opts o;
	struct tide_processor *next;
	char *id, *path;
	enum state state;
	struct tide_consumer *consumer;
	bool loading, reload_again, force_again, stop_requested;
	uint64_t hash;        /* content of the generation running or handed over */
	uint64_t failed_hash; /* content that failed to load: not worth loading again */
	bool showing_error;
	bool inert; /* it never ran: it stops quietly */
	/* A blue-green rebuild (rebuild.h): the builder of a new version, running beside the
	 * consumer; done once it caught up (it is stopping, then the consumer switches). A
	 * version to build after the builder in hand stops waits in next_build. */
	struct tide_consumer *builder;
	char builder_id[TIDE_MAX_NAME_BYTES + 16], builder_suffix[48];
	int builder_version;
	bool builder_done;
	struct tide_generation next_build;
	char next_suffix[48];
	bool reload_after_switch;
	char *app, *name, *script, *base;
	bool takeover;
	int shard, shards; /* which shard it is (sql/0012); shards 1: not sharded */
	int stopped;       /* consumers stopped, of those to wait for */
};

static const char *state_name(enum state s)
{
	static const char *const names[] = {"loading", "active", "broken", "inert", "stopping"};
	return names[s];
}

static void set_state(struct tide_processor *p, enum state s)
{
	if (p->state == s)
		return;
	if (tide_log_enabled("debug"))
		tide_log("debug", "processor.state", "processor", p->id, "from",
		         state_name(p->state), "to", state_name(s), (char *)NULL);
	p->state = s;
}

static void stopped_one(struct tide_processor *p)
{
	if (++p->stopped < (p->builder ? 2 : 1))
		return;
	if (!p->inert)
		tide_log("info", "processor.stopped", "processor", p->id, (char *)NULL);
	p->o.on_stopped(p, p->o.arg);
}

static void consumer_stopped(void *arg)
{
	stopped_one(arg);
}

static void stop_consumer(struct tide_processor *p)
{
	set_state(p, P_STOPPING);
	tide_consumer_stop(p->consumer);
	if (p->builder)
		tide_consumer_stop(p->builder);
}

/* --- blue-green rebuilds ------------------------------------------------------------------- */

static void start_builder(struct tide_processor *p, struct tide_generation *g, const char *suffix);

static void builder_stopped(void *arg)
{
	struct tide_processor *p = arg;
	if (p->stop_requested) {
		stopped_one(p); /* freed with the processor */
		return;
	}
	struct tide_generation g;
	tide_consumer_take_generation(p->builder, &g);
	tide_consumer_free(p->builder);
	p->builder = NULL;
	if (p->next_build.vm) {
		tide_generation_free(&g);
		struct tide_generation next = p->next_build;
		memset(&p->next_build, 0, sizeof(p->next_build));
		start_builder(p, &next, p->next_suffix);
		return;
	}
	if (p->builder_done && g.vm) {
		p->builder_done = false;
		tide_consumer_switch(p->consumer, &g, p->builder_id, p->builder_suffix, false);
	}
	tide_generation_free(&g); /* abandoned: its checkpoint stays for a later build */
	if (p->reload_after_switch) {
		p->reload_after_switch = false;
		tide_processor_reload(p, true);
	}
}

static void builder_built(void *arg)
{
	struct tide_processor *p = arg;
	p->builder_done = true;
	tide_consumer_stop(p->builder);
}

static void start_builder(struct tide_processor *p, struct tide_generation *g, const char *suffix)
{
	char name[TIDE_MAX_NAME_BYTES + 16];
	snprintf(name, sizeof(name), "%s" TIDE_REBUILD_TAG, p->name);
	if (!tide_rebuild_builder_id(p->id, p->builder_id, sizeof(p->builder_id))) {
		tide_log("error", "rebuild.failed", "processor", p->id, "error",
		         "the processor id is too long for its rebuild's", (char *)NULL);
		tide_generation_free(g);
		return;
	}
	struct tide_consumer_opts co = {
	        .loop = p->o.loop,
	        .url = p->o.url,
	        .owner = p->o.owner,
	        .id = p->builder_id,
	        .app = p->app,
	        .name = name,
	        .script = p->script,
	        .given = p->path,
	        .takeover = p->takeover,
	        .sql_role = p->o.sql_role,
	        .batch_size = p->o.batch_size,
	        .poll_ms = p->o.poll_ms,
	        .lease_ms = p->o.lease_ms,
	        .on_stopped = builder_stopped,
	        .rebuild_of = p->id,
	        .target_suffix = suffix,
	        .on_built = builder_built,
	        .arg = p,
	};
	p->builder = tide_consumer_new(&co);
	if (!p->builder) {
		tide_log("error", "rebuild.failed", "processor", p->id, "error", "out of memory",
		         (char *)NULL);
		tide_generation_free(g);
		return;
	}
	char v[16];
	snprintf(v, sizeof(v), "%d", g->version);
	tide_log("info", "processor.rebuild", "processor", p->id, "version", v, "builder",
	         p->builder_id, "suffix", suffix, "reason",
	         "a new version: built from the start beside the running one, which keeps "
	         "serving until the new one has caught up",
	         (char *)NULL);
	p->builder_version = g->version;
	p->builder_done = false;
	snprintf(p->builder_suffix, sizeof(p->builder_suffix), "%s", suffix);
	tide_consumer_set_generation(p->builder, g);
}

/* The consumer hands over a generation of another version: build it (after the builder in
 * hand, if any, has stopped). */
static void on_rebuild(struct tide_generation *g, const char *suffix, void *arg)
{
	struct tide_processor *p = arg;
	if (p->stop_requested)
		return; /* not taken: the consumer frees it */
	if (p->builder) {
		if (p->next_build.vm)
			tide_generation_free(&p->next_build);
		p->next_build = *g;
		memset(g, 0, sizeof(*g));
		snprintf(p->next_suffix, sizeof(p->next_suffix), "%s", suffix);
		p->builder_done = false;
		tide_consumer_stop(p->builder);
		return;
	}
	struct tide_generation mine = *g;
	memset(g, 0, sizeof(*g));
	start_builder(p, &mine, suffix);
}

static void load_done(struct tide_load_result *r, void *arg)
{
	struct tide_processor *p = arg;
	p->loading = false;
	if (p->stop_requested) {
		stop_consumer(p);
		return; /* a loaded generation is freed by the loader */
	}
	switch (r->outcome) {
	case TIDE_LOAD_UNCHANGED:
		/* An editor touched the file without changing it, or put back the content that
		 * is running: then the error of a broken save in between is over. */
		if (r->hash == p->hash && p->showing_error) {
			p->showing_error = false;
			p->failed_hash = 0;
			tide_consumer_note_error(p->consumer, "");
		}
		break;
	case TIDE_LOAD_INERT:
		p->hash = r->hash;
		if (p->state == P_LOADING) {
			tide_log("info", "script.skipped", "processor", p->id, "script", p->path,
			         "reason", r->err, (char *)NULL);
			set_state(p, P_INERT);
			p->inert = true;
		} else if (p->state != P_INERT) {
			/* It ran (or failed to): it stops as if its file were gone; the daemon
			 * then finds the file again, as a script to skip. */
			tide_log("info", "processor.retired", "processor", p->id, "reason",
			         "its script returns no projection or reactor any more",
			         (char *)NULL);
			tide_processor_stop(p);
			return;
		}
		break;
	case TIDE_LOAD_FAILED:
		if (p->state != P_LOADING)
			tide_metrics_reload(false);
		p->failed_hash = r->hash;
		p->showing_error = true;
		if (p->state == P_ACTIVE) {
			tide_log("error", "processor.reload_failed", "processor", p->id, "error",
			         r->err, "keeping", "the running generation keeps serving",
			         (char *)NULL);
			tide_consumer_note_error(p->consumer, r->err);
		} else {
			tide_log("error", "processor.load_failed", "processor", p->id, "error",
			         r->err, (char *)NULL);
			set_state(p, P_BROKEN);
			p->inert = false;
			tide_consumer_set_broken(p->consumer, r->err);
		}
		break;
	case TIDE_LOAD_OK:
		if (r->gen.shards != p->shards && p->o.on_reshard) {
			char from[16], to[16];
			snprintf(from, sizeof(from), "%d", p->shards);
			snprintf(to, sizeof(to), "%d", r->gen.shards);
			tide_log("info", "processor.reshard", "processor", p->base, "shards", to,
			         "was", from, "reason",
			         "its script asks for another number of shards: its workers start "
			         "again",
			         (char *)NULL);
			p->o.on_reshard(p, r->gen.shards, p->o.arg); /* it stops us */
			return; /* the loader frees the generation */
		}
		if (p->state != P_LOADING)
			tide_metrics_reload(true);
		p->hash = r->hash;
		p->showing_error = false;
		p->inert = false; /* a module that became a projection, say */
		set_state(p, P_ACTIVE);
		if (p->builder && p->builder_done) {
			p->reload_after_switch = true; /* the switch comes first */
		} else if (p->builder && r->gen.version == p->builder_version) {
			tide_consumer_set_generation(p->builder, &r->gen); /* the build goes on */
		} else {
			if (p->builder && !p->next_build.vm) {
				tide_log("info", "processor.rebuild_abandoned", "processor", p->id,
				         "builder", p->builder_id, (char *)NULL);
				tide_consumer_stop(p->builder);
			}
			tide_consumer_set_generation(p->consumer, &r->gen);
		}
		break;
	}
	if (p->reload_again) {
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
	struct tide_load_request req = {
	        .path = p->path,
	        .id = p->id,
	        .known_hash = p->hash,
	        .failed_hash = p->failed_hash,
	        .force = force,
	        .cpu_ms = p->o.cpu_ms,
	        .memory = p->o.memory,
	        .upcasters = p->o.upcasters ? p->o.upcasters->paths : NULL,
	        .upcasters_error = p->o.upcasters ? p->o.upcasters->error : NULL,
	};
	p->force_again = false;
	if (tide_load(p->o.loop, &req, load_done, p) == 0)
		p->loading = true;
	else
		tide_log("error", "processor.load_failed", "processor", p->id, "error",
		         "out of memory", (char *)NULL);
}

struct tide_processor *tide_processor_new(const struct tide_processor_opts *o,
                                          const struct tide_processor_identity *who)
{
	struct tide_processor *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->o = *o;
	p->id = strdup(who->id);
	p->path = strdup(who->path);
	/* The script's identity is its real path: the same file however it was reached. */
	char real[PATH_MAX];
	const char *script = realpath(who->path, real) ? real : who->path;
	struct tide_consumer_opts co = {
	        .loop = o->loop,
	        .url = o->url,
	        .owner = o->owner,
	        .id = who->id,
	        .app = who->app,
	        .name = who->name,
	        .script = script,
	        .given = who->path,
	        .takeover = who->takeover,
	        .sql_role = o->sql_role,
	        .batch_size = o->batch_size,
	        .poll_ms = o->poll_ms,
	        .lease_ms = o->lease_ms,
	        .on_stopped = consumer_stopped,
	        .on_rebuild = on_rebuild,
	        .sharing = o->sharing,
	        .base = who->base,
	        .shard = who->shard,
	        .shards = who->shards,
	        .arg = p,
	};
	p->app = strdup(who->app ? who->app : "");
	p->name = strdup(who->name ? who->name : who->id);
	p->script = strdup(script);
	p->takeover = who->takeover;
	p->base = strdup(who->base ? who->base : who->id);
	p->shard = who->shard;
	p->shards = who->shards > 1 ? who->shards : 1;
	p->consumer = p->id && p->path && p->app && p->name && p->script && p->base
	                      ? tide_consumer_new(&co)
	                      : NULL;
	if (!p->consumer) {
		free(p->base);
		free(p->id);
		free(p->path);
		free(p->app);
		free(p->name);
		free(p->script);
		free(p);
		return NULL;
	}
	p->state = P_LOADING;
	tide_processor_reload(p, true);
	return p;
}

void tide_processor_wake(struct tide_processor *p)
{
	if (p->state == P_ACTIVE)
		tide_consumer_wake(p->consumer);
	if (p->builder && !p->stop_requested)
		tide_consumer_wake(p->builder);
}

void tide_processor_check_retries(struct tide_processor *p)
{
	if (p->state == P_ACTIVE)
		tide_consumer_check_retries(p->consumer);
}

void tide_processor_stop(struct tide_processor *p)
{
	if (p->stop_requested)
		return;
	p->stop_requested = true;
	if (!p->loading)
		stop_consumer(p); /* else load_done does */
}

bool tide_processor_stopping(const struct tide_processor *p)
{
	return p->stop_requested;
}

void tide_processor_free(struct tide_processor *p)
{
	tide_consumer_free(p->consumer);
	if (p->builder)
		tide_consumer_free(p->builder);
	tide_generation_free(&p->next_build);
	free(p->id);
	free(p->path);
	free(p->app);
	free(p->name);
	free(p->script);
	free(p->base);
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

const char *tide_processor_base(const struct tide_processor *p)
{
	return p->base;
}

struct tide_processor *tide_processor_next(struct tide_processor *p)
{
	return p->next;
}

void tide_processor_set_next(struct tide_processor *p, struct tide_processor *next)
{
	p->next = next;
}
