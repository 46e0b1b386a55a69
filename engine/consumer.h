/* consumer.h — the processing loop of one processor: its connection, its lease, the
 * gap-safe read of the global log after its checkpoint, each batch run in the script with
 * its effects and the checkpoint committed together, and what happens when a batch fails
 * (the processor's on_error policy). The processor (processor.c) hands it generations. */
#ifndef TIDE_CONSUMER_H
#define TIDE_CONSUMER_H

#include <stdbool.h>
#include <uv.h>

#include "loader.h"
#include "rebuild.h"
#include "sharing.h"

struct tide_consumer;

struct tide_consumer_opts {
	uv_loop_t *loop;
	const char *url;   /* not copied: outlives the consumer */
	const char *owner; /* this daemon's lease owner id; copied */
	const char *id;    /* the processor id (APP/NAME); copied */
	const char *app;   /* the app and name the id is made of; copied */
	const char *name;
	const char *script;   /* the script's real path: its identity, shown by status; copied */
	const char *given;    /* its path as found in the directory; copied */
	bool takeover;        /* it may take the id over from another script */
	const char *sql_role; /* the role the script's SQL runs as, or NULL; copied */
	int batch_size;
	unsigned poll_ms, lease_ms;
	void (*on_stopped)(void *arg); /* after tide_consumer_stop, once all is closed */
	/* Blue-green rebuilds (rebuild.h). A builder is a consumer with rebuild_of set: the
	 * processor id whose new version it builds, into targets named with target_suffix. */
	const char *rebuild_of, *target_suffix; /* copied */
	/* The processor: gen (taken) is of another version than the processor's row and is
	 * to be built beside what runs, under suffix. NULL: rebuild in place. */
	void (*on_rebuild)(struct tide_generation *gen, const char *suffix, void *arg);
	/* A builder: it has caught up with the log (once). */
	void (*on_built)(void *arg);
	/* A builder: how far it got, about once a second. */
	void (*on_progress)(const struct tide_progress *p, void *arg);
	/* Sharded processors (sql/0012): shard `shard` (0..shards-1) of processor base (APP/NAME;
	 * copied), reading only its streams. base NULL: id; shards 0: 1. */
	const char *base;
	int shard, shards;
	/* Fair sharing (sharing.h): the daemon's share, or NULL (claim whenever free). */
	struct tide_sharing *sharing;
	void *arg;
};

/* The consumer's states; every change goes through one function that logs it. */
enum tide_consumer_state {
	TIDE_CONSUMER_NEW,          /* no script yet */
	TIDE_CONSUMER_BROKEN,       /* no script loaded: connected only to report why */
	TIDE_CONSUMER_CONNECTING,   /* opening the connection, or waiting to try again */
	TIDE_CONSUMER_CLAIMING,     /* asking for (or renewing) the lease */
	TIDE_CONSUMER_WAITING,      /* another daemon holds the lease */
	TIDE_CONSUMER_READING,      /* reading the log after the checkpoint */
	TIDE_CONSUMER_RECORDING,    /* recording the attempt before the script runs */
	TIDE_CONSUMER_RUNNING,      /* a batch is in the script and its transaction */
	TIDE_CONSUMER_PARKING,      /* moving past an event it gave up on */
	TIDE_CONSUMER_RETRYING,     /* fetching a dead letter queued for a retry */
	TIDE_CONSUMER_IDLE,         /* caught up; a wake-up or the poll timer reads again */
	TIDE_CONSUMER_BACKOFF,      /* the last try failed; the timer tries again */
	TIDE_CONSUMER_HALTED,       /* on_error = "stop" gave up: waits for a new script */
	TIDE_CONSUMER_REBUILDING,   /* no generation of its own: a builder makes the next one */
	TIDE_CONSUMER_SWITCHING,    /* making a finished build the processor's (rebuild.h) */
	TIDE_CONSUMER_HANDING_OVER, /* above the daemon's share: giving the lease back */
	TIDE_CONSUMER_RELEASING,    /* stopping: giving the lease back */
	TIDE_CONSUMER_STOPPED,
};

const char *tide_consumer_state_name(enum tide_consumer_state s);

struct tide_consumer *tide_consumer_new(const struct tide_consumer_opts *o);

/* Hands over a loaded generation (moved: *g is zeroed). The first one starts the
 * consumer; later ones replace the running generation between batches. */
void tide_consumer_set_generation(struct tide_consumer *c, struct tide_generation *g);

/* No generation could be loaded: connect anyway and show err in the status. */
void tide_consumer_set_broken(struct tide_consumer *c, const char *err);

/* A newer script failed to load while an older one keeps running: show err. */
void tide_consumer_note_error(struct tide_consumer *c, const char *err);

/* New events may be there: read now if idle. */
void tide_consumer_wake(struct tide_consumer *c);

/* Dead letters may have been queued for a retry: look at the next chance. */
void tide_consumer_check_retries(struct tide_consumer *c);

/* Makes the finished build of builder (a stopped builder whose generation g is taken) this
 * processor's, between batches: tide_rebuild_switch, then g goes on from the builder's
 * checkpoint. keep: the old targets stay. */
void tide_consumer_switch(struct tide_consumer *c, struct tide_generation *g, const char *builder,
                          const char *suffix, bool keep);

/* A builder that caught up: read on, and call on_built again once caught up once more. */
void tide_consumer_build_on(struct tide_consumer *c);

/* Moves the running generation out of a stopped consumer (*out is zeroed when none). */
void tide_consumer_take_generation(struct tide_consumer *c, struct tide_generation *out);

/* Finishes what is in flight, gives the lease back, closes; then on_stopped. */
void tide_consumer_stop(struct tide_consumer *c);

/* After on_stopped. */
void tide_consumer_free(struct tide_consumer *c);

enum tide_consumer_state tide_consumer_state(const struct tide_consumer *c);

#endif
