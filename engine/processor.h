/* processor.h — one processor of the daemon: a script file whose generations the loader
 * (loader.c) loads off the loop and whose events the consumer (consumer.c) processes. */
#ifndef TIDE_PROCESSOR_H
#define TIDE_PROCESSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "sharing.h"

struct tide_processor;
struct tide_upcasters;

struct tide_processor_opts {
	uv_loop_t *loop;
	const char *url;      /* not copied: outlives the processor */
	const char *owner;    /* the daemon's lease owner id */
	const char *sql_role; /* the role scripts' SQL runs as, or NULL */
	int batch_size;
	unsigned poll_ms, lease_ms, cpu_ms;
	size_t memory; /* bytes a script's VM may use; 0: the default */
	/* The upcasters every load gets (upcast.h): the daemon's, kept current, or NULL. */
	const struct tide_upcasters *upcasters;
	struct tide_sharing
	        *sharing; /* the daemon's share of the processors (sharing.h), or NULL */
	/* Fires once, on a later loop turn than tide_processor_stop, when the processor has
	 * released its lease and closed everything; free it then. */
	void (*on_stopped)(struct tide_processor *p, void *arg);
	/* Its script asks for another number of shards than this processor is one of: the
	 * daemon stops the processors of the file and starts them again as `shards`. */
	void (*on_reshard)(struct tide_processor *p, int shards, void *arg);
	void *arg;
};

/* Which processor a script is: its id (APP/NAME), and whether it may take the id over
 * from the script that claimed it before. The strings are copied. */
struct tide_processor_identity {
	const char *id, *app, *name;
	const char *path; /* the script as found in its directory */
	bool takeover;
	/* A shard (sql/0012): shard `shard` of `shards` of processor base (APP/NAME); its id is
	 * BASE#KofN. shards 0 or 1: not sharded (base NULL: id). */
	const char *base;
	int shard, shards;
};

/* A processor for a script; starts loading it at once. NULL when out of memory. */
struct tide_processor *tide_processor_new(const struct tide_processor_opts *o,
                                          const struct tide_processor_identity *who);

/* Loads the file again (off the loop) if its content changed, or always when force;
 * a good load replaces the running generation between batches. */
void tide_processor_reload(struct tide_processor *p, bool force);

/* New events may be there: read now if idle. */
void tide_processor_wake(struct tide_processor *p);

/* `tide dlq retry` queued dead letters of this processor. */
void tide_processor_check_retries(struct tide_processor *p);

/* Finish the batch in flight, release the lease, close; then on_stopped. */
void tide_processor_stop(struct tide_processor *p);

/* Whether tide_processor_stop was called. */
bool tide_processor_stopping(const struct tide_processor *p);

void tide_processor_free(struct tide_processor *p);

const char *tide_processor_id(const struct tide_processor *p);
const char *tide_processor_path(const struct tide_processor *p);
/* The id of the processor a shard is one of (its own id when not sharded). */
const char *tide_processor_base(const struct tide_processor *p);
struct tide_processor *tide_processor_next(struct tide_processor *p);
void tide_processor_set_next(struct tide_processor *p, struct tide_processor *next);

#endif
