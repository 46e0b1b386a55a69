/* lease.h — a processor's rows in the database and the statements that change them: the
 * lease and status in tide_processors, the checkpoint in emt_processors, the attempt
 * recorded before a batch runs, and dead letters. The SQL functions they call live in
 * sql/0003_tide_processors.sql and sql/0004_tide_failures.sql. */
#ifndef TIDE_LEASE_H
#define TIDE_LEASE_H

#include <stdbool.h>
#include <stdint.h>

#include "batch.h"
#include "pg.h"

/* Who is asking, about which processor. The strings are not copied. */
struct tide_lease {
	struct tide_pg *pg;
	const char *id, *owner, *kind, *partition;
	/* The id is app/name; script is the real path of the script claiming it, given the
	 * path it was found by; takeover: it may take the id over from another script. */
	const char *app, *name, *script, *given;
	bool takeover;
	int version;
	unsigned ttl_ms;
};

/* What a claim found. */
struct tide_claim {
	bool acquired;
	struct tide_cursor checkpoint;
	bool rebuilt; /* the version changed: the target must be reset */
	/* The last attempt: at the checkpoint `at` (when has_attempt), how many tries, how
	 * many events the last one held, and what the last failure said (maybe ""). */
	bool has_attempt;
	struct tide_cursor at;
	int attempts, events;
	const char *error;
	const char *script;  /* the hash of the script that made the tries (maybe "") */
	int64_t retries;     /* dead letters queued for a retry */
	const char *refused; /* NULL, or why the id is not this script's (in res) */
	const char *suffix;  /* the processor's target suffix (sql/0007; in res) */
	/* Who held the lease before this claim: NULL when nobody did (new, released), another
	 * owner when its lease had lapsed (a take-over), or this one (a renewal). In res. */
	const char *previous_owner;
};

TIDE_MUST_CHECK int tide_lease_claim(const struct tide_lease *l, tide_pg_reply_cb cb, void *arg);
void tide_lease_parse_claim(PGresult *res, struct tide_claim *out);

/* Before claiming under a layout of sharded processor base (sql/0012): the reply's one value
 * is "ok", "wait" or "reset". */
TIDE_MUST_CHECK int tide_lease_layout(const struct tide_lease *l, const char *base, int shards,
                                      tide_pg_reply_cb cb, void *arg);

TIDE_MUST_CHECK int tide_lease_release(const struct tide_lease *l, tide_pg_reply_cb cb, void *arg);

/* Writes the status `tide status` shows (and a heartbeat), unless the id belongs to another
 * script; failures are only logged. */
void tide_lease_report(const struct tide_lease *l, const char *status, const char *error,
                       int generation);

/* Records a try of `events` events after `at` by the script whose hash is given; the reply's
 * one value is the try's number. */
TIDE_MUST_CHECK int tide_lease_attempt(const struct tide_lease *l, struct tide_cursor at,
                                       int events, bool replace, const char *script,
                                       tide_pg_reply_cb cb, void *arg);
/* What the try at `at` died of; failures are only logged. */
void tide_lease_attempt_failed(const struct tide_lease *l, struct tide_cursor at, const char *error,
                               const char *traceback);

/* Sets the closing statement of a batch to the checkpoint's move from → to. */
void tide_lease_commit(const struct tide_lease *l, struct tide_cursor from, struct tide_cursor to,
                       struct tide_batch_spec *spec);

/* Sets the opening statement of a batch: it goes on only while the processor's targets
 * are those with suffix (a rebuild switched them otherwise: 40001). suffix is not copied. */
void tide_lease_enter(const struct tide_lease *l, const char *suffix, struct tide_batch_spec *spec);

/* The same for the batch of a shard that resets its processor base's targets (a layout
 * change, sql/0012): the reset is done when it commits. base is not copied. */
void tide_lease_enter_reset(const struct tide_lease *l, const char *suffix, const char *base,
                            struct tide_batch_spec *spec);

/* Moves the checkpoint past the one event at `to`, parking it as a dead letter first when
 * park is set. */
TIDE_MUST_CHECK int tide_lease_park(const struct tide_lease *l, struct tide_cursor from,
                                    struct tide_cursor to, bool park, int attempts,
                                    const char *error, const char *traceback, tide_pg_reply_cb cb,
                                    void *arg);

/* The next dead letter queued for a retry: no row, or one row (id, then the message's
 * columns in the order of tide_lease_dead_letter_message). */
TIDE_MUST_CHECK int tide_lease_dead_letter_next(const struct tide_lease *l, tide_pg_reply_cb cb,
                                                void *arg);
/* The message of that row (strings point into res); returns the dead letter's id. */
int64_t tide_lease_dead_letter_message(PGresult *res, struct tide_message *m);
/* Sets the closing statement of a retry's batch: the dead letter leaves the queue. */
void tide_lease_dead_letter_done(const struct tide_lease *l, int64_t dead_letter,
                                 struct tide_batch_spec *spec);
/* The retry failed: parked again; failures are only logged. */
void tide_lease_dead_letter_failed(const struct tide_lease *l, int64_t dead_letter,
                                   const char *error, const char *traceback);

#endif
