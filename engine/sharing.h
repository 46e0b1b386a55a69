/* sharing.h — fair sharing of the processors among the daemons of one database: this
 * daemon's heartbeat row in tide_daemons (sql/0012_tide_sharing.sql), the count of live
 * daemons it learns with each beat, and this daemon's share of its units (a unit: a
 * processor, or one shard of one), ceil(units / live daemons). A consumer asks before it
 * claims a lease it does not hold, says what came of it, and asks after each batch whether
 * it is surplus: then it hands its lease back. No coordinator: every daemon applies the same
 * rule, and the leases (lease.c) keep any two from running one unit at once. */
#ifndef TIDE_SHARING_H
#define TIDE_SHARING_H

#include <stdbool.h>
#include <uv.h>

struct tide_pg;

struct tide_sharing;
struct tide_sharing_unit;

struct tide_sharing_opts {
	uv_loop_t *loop;
	const char *url;   /* not copied: outlives the object */
	const char *owner; /* this daemon's lease owner id; copied */
	unsigned lease_ms; /* a daemon silent this long is dead; beats every third of it */
};

/* Starts beating at once (connecting first). NULL when out of memory. */
struct tide_sharing *tide_sharing_new(const struct tide_sharing_opts *o);

/* Deletes the daemon's row (a clean stop) and closes; done fires on a later loop turn.
 * Every unit must have left. */
void tide_sharing_stop(struct tide_sharing *s, void (*done)(void *arg), void *arg);

/* After done. */
void tide_sharing_free(struct tide_sharing *s);

/* A unit of s named id (sorted by it to choose which to hand over). kick is called when the
 * share grows and this unit, not held, may be claimed now. s NULL: NULL (no sharing: the
 * functions below then always allow and never hand over). */
struct tide_sharing_unit *tide_sharing_join(struct tide_sharing *s, const char *id,
                                            void (*kick)(void *arg), void *arg);
void tide_sharing_leave(struct tide_sharing_unit *u);

/* Before claiming a lease not held: true reserves a place in the share (the claim's
 * outcome then goes to tide_sharing_held). False: the daemon runs its share already, or
 * has not learnt yet how many daemons there are. */
bool tide_sharing_may_claim(struct tide_sharing_unit *u);

/* The unit's lease is held (claimed) or not (refused, lost, handed over). */
void tide_sharing_held(struct tide_sharing_unit *u, bool held);

/* The daemon holds more than its share and this unit is one to hand over (those whose ids
 * sort last). */
bool tide_sharing_surplus(const struct tide_sharing_unit *u);

/* A daemon handed a unit back (NOTIFY tide_share): units not held claim now, if the share
 * has room, rather than at their next try. */
void tide_sharing_kick(struct tide_sharing *s);

/* Whether tide's writers must send their post-commit NOTIFY for this daemon to wake (it
 * has no WAL stream: wal_wake.h); said in its heartbeat row at once. Starts true. */
void tide_sharing_set_wakes_by_notify(struct tide_sharing *s, bool yes);

/* Says so to the other daemons, on pg (after the release has committed). */
void tide_sharing_notify_handed_over(struct tide_pg *pg);

/* "held/share of units, daemons live" for log lines (buf of n bytes). */
const char *tide_sharing_describe(const struct tide_sharing_unit *u, char *buf, size_t n);

#endif
