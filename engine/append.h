/* append.h — where appends happen: the one statement that appends events to a stream,
 * checked and built once, sent on any pipelined connection (a store's, or a processor's
 * transaction for a reactor's ctx.append), its reply turned into a tide_append_result or a
 * typed conflict; and the wake-up that tells idle consumers after the commit. */
#ifndef TIDE_APPEND_H
#define TIDE_APPEND_H

#include "pg.h"
#include "tide.h"

/* An append, built (checked, encoded) and ready to send; everything it sends is its own. */
struct tide_append;
struct tide_wake;

/* Checks the stream name, the expectation and every event (the rules of tide.h) and
 * builds the statement's parameters. ensure_partition: make sure the partition has its
 * tables first (SELECT tide_ensure_partition). 0 and *out; TIDE_EINVAL or TIDE_ENOMEM with
 * one line in err. */
TIDE_MUST_CHECK int tide_append_build(const char *stream, const char *partition,
                                      const struct tide_event *events, size_t n, int64_t expected,
                                      bool ensure_partition, char *err, size_t errn,
                                      struct tide_append **out);

/* Sends it on pg (pipeline mode) and calls cb once with its outcome, as tide_store_append
 * describes it (a conflict carries the version found). wake: when the append is a
 * transaction of its own, tide_wake(pg, wake) right behind it; NULL inside a transaction
 * (wake behind its COMMIT). Takes the append: it is freed after cb, or at once when this
 * fails (TIDE_ECONN, pg's error says why; cb not called). */
TIDE_MUST_CHECK int tide_append_send(struct tide_pg *pg, struct tide_append *a,
                                     struct tide_wake *wake, tide_append_cb cb, void *arg);

void tide_append_free(struct tide_append *a);

/* The wake-up: a NOTIFY in a transaction of its own whose commit does not wait for the
 * disk. */
#define TIDE_WAKE_SQL                                                                              \
	"SELECT set_config('synchronous_commit', 'off', true), pg_notify('tide_messages', '')"

/* Post-commit wake-ups on one connection: one in flight, one more owed at most. */
struct tide_wake {
	struct tide_pg *pg;
	bool in_flight, owed;
};

/* Tells idle consumers (LISTEN tide_messages) that events were committed: a NOTIFY in a
 * transaction of its own whose commit does not wait for the disk, sent behind whatever is
 * queued on pg (so the server runs it right after the commit it follows) and never waited
 * for; while one is in flight, further calls fold into one more. Send it behind the
 * statement that commits an append, never inside that transaction: a NOTIFY in an
 * appending transaction holds a server-wide lock through that commit's flush, so every
 * appending commit would run one at a time. w must live as long as pg. */
void tide_wake(struct tide_pg *pg, struct tide_wake *w);

#endif
