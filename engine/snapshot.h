/* snapshot.h — a decider's aggregate snapshots (tide_snapshots, sql/0008): the one read and
 * the one write of that table, on the store's connection, in the store's partition. What a
 * snapshot is for, and when one is taken, is lua/tide/command.lua's business. */
#ifndef TIDE_SNAPSHOT_H
#define TIDE_SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>

#include "tide.h"

/* The most JSON a snapshot's state may take: a state larger than this is not snapshotted
 * (folding it from the events is then the cheaper way anyway). */
#define TIDE_MAX_SNAPSHOT_BYTES (64u << 20)

struct tide_snapshot {
	int version;             /* the decider's snapshot version it was taken with */
	int64_t stream_position; /* the last event folded into it (>= 1) */
	int64_t global_position; /* that event's global position */
	const char *state;       /* JSON text */
	/* Load only: the stream's active event at stream_position is still the one it was taken
	 * at. False when the stream was archived, truncated or begun again since: the snapshot
	 * must not be folded onto. */
	bool current;
};

/* s is NULL when the stream has no snapshot for this decider; valid during the call only. */
typedef void (*tide_snapshot_cb)(int status, const char *err, const struct tide_snapshot *s,
                                 void *arg);

/* Reads the snapshot of (the store's partition, stream, decider) in one statement, with
 * whether it is current. Returns TIDE_EINVAL (cb not called, message in tide_store_error())
 * for a bad stream or decider name, or inside a transaction of the caller's (where a failed
 * statement would abort it: snapshots are read and written outside), TIDE_ECONN when the
 * store is not connected. */
TIDE_MUST_CHECK int tide_snapshot_load(struct tide_store *store, const char *stream,
                                       const char *decider, tide_snapshot_cb cb, void *arg);

/* Writes s (current is ignored) as the snapshot of (partition, stream, decider), replacing
 * one taken at an earlier global position or with another version; an existing one that is
 * newer is kept (two writers racing). cb's status 0 either way. Returns as
 * tide_snapshot_load(), and TIDE_EINVAL for a state of more than TIDE_MAX_SNAPSHOT_BYTES. */
TIDE_MUST_CHECK int tide_snapshot_save(struct tide_store *store, const char *stream,
                                       const char *decider, const struct tide_snapshot *s,
                                       tide_end_cb cb, void *arg);

#endif
