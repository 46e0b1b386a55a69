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

/* Checks the stream name, the expectation and every event (the rules of tide.h): 0, or
 * TIDE_EINVAL with one line in err. */
/* Whether v is a schema version an event may be written with: "1" to "999999999". */
bool tide_schema_version_valid(const char *v);

TIDE_MUST_CHECK int tide_append_check(const char *stream, const struct tide_event *events, size_t n,
                                      int64_t expected, char *err, size_t errn);

/* tide_append_check, then builds the statement's parameters. ensure_partition: make sure the
 * partition has its tables first (SELECT tide_ensure_partition). 0 and *out; TIDE_EINVAL or
 * TIDE_ENOMEM with one line in err. */
TIDE_MUST_CHECK int tide_append_build(const char *stream, const char *partition,
                                      const struct tide_event *events, size_t n, int64_t expected,
                                      bool ensure_partition, char *err, size_t errn,
                                      struct tide_append **out);

/* Makes a built append (not one that returns rows) conditional: it appends only when no
 * event of the partition matching q came after global position `after` (tide.h,
 * tide_store_append_if); else its callback gets TIDE_ECONFLICT with found_position. 0;
 * TIDE_EINVAL or TIDE_ENOMEM with one line in err (the append is still the caller's). */
TIDE_MUST_CHECK int tide_append_condition(struct tide_append *a, const struct tide_query *q,
                                          int64_t after, char *err, size_t errn);

/* Sends it on pg (pipeline mode) and calls cb once with its outcome, as tide_store_append
 * describes it (a conflict carries the version found). wake: when the append is a
 * transaction of its own, tide_wake(pg, wake) right behind it; NULL inside a transaction
 * (wake behind its COMMIT). Takes the append: it is freed after cb, or at once when this
 * fails (TIDE_ECONN, pg's error says why; cb not called). */
TIDE_MUST_CHECK int tide_append_send(struct tide_pg *pg, struct tide_append *a,
                                     struct tide_wake *wake, tide_append_cb cb, void *arg);

void tide_append_free(struct tide_append *a);

/* What an append wrote besides its positions, for the inline projections that get its events
 * (inline.c): each event's message id, and the time stamp of the rows (`created`, the
 * transaction's start) as reads give it. */
struct tide_append_rows {
	char (*message_ids)[37]; /* count of them, in the events' order; malloc'd: free() it */
	size_t count;
	char created[40];
};

/* Makes a built append return its rows too (another statement: an append that does not ask
 * sends exactly what it did): *out is filled just before its callback reports success. */
void tide_append_return_rows(struct tide_append *a, struct tide_append_rows *out);

/* --- shared with appends by COPY (append_copy.c) --- */

/* Appends of this many events or more go by COPY when the store can (measured: below it
 * the one statement is as fast; at 2,000 COPY gains 9 %, at 10,000 10-16 %). */
#define TIDE_COPY_MIN_EVENTS 2000

/* Moves (or creates) the stream's row under the expectation for $3 events and returns the
 * new position and pg_current_xact_id(); no row when the expectation does not hold.
 * Parameters: $1 stream, $2 partition, $3 count, $4 expected version (*nparams is 4
 * only for expectations of an existing stream). */
const char *tide_append_stream_sql(int64_t expected, int *nparams);
/* $1 stream, $2 partition → one row: the stream's position (NULL when there is none) and
 * whether an archived stream of that id is kept (tide_store_archive). */
extern const char tide_stream_version_sql[];
/* The same, prepared (one statement object: a connection prepares each once). */
extern const struct tide_pg_stmt tide_stmt_stream_version;
/* Whether a stream found at actual (-1: none) meets expected. */
bool tide_append_holds(int64_t expected, int64_t actual);
/* "version conflict: expected X, found Y". */
void tide_append_conflict_text(int64_t expected, int64_t actual, char *buf, size_t n);
/* A conflict from a tide_stream_version_sql reply: sets r->actual, r->archived and the
 * message in buf; returns TIDE_ECONFLICT. */
int tide_append_conflict(const PGresult *res, const char *stream, struct tide_append_result *r,
                         char *buf, size_t n);
/* The version found in a tide_stream_version_sql reply (-1: no stream). */
int64_t tide_stream_version_found(const PGresult *res);
/* Whether a tide_stream_version_sql reply says the stream is archived (and not begun again). */
bool tide_stream_archived(const PGresult *res);
/* "stream S is archived" and what to do about it, S cut short when long. */
void tide_archived_text(const char *stream, const char *what, char *buf, size_t n);
/* A reply that says the connection is gone (also the server's own 57P0x/08xxx errors). */
bool tide_append_lost(const struct tide_pg_reply *reply);
/* An append by COPY (append_copy.c), for a simple-mode connection that is not in a
 * transaction: built (checked, rows encoded), then queued whole. */
struct tide_copy_append;
TIDE_MUST_CHECK int tide_copy_append_build(const char *stream, const char *partition,
                                           const struct tide_event *events, size_t n,
                                           int64_t expected, bool ensure_partition,
                                           tide_append_cb cb, void *arg, char *err, size_t errn,
                                           struct tide_copy_append **out);
/* Queues BEGIN … COMMIT on pg; cb fires once, from its replies. false when it could not be
 * queued whole: then close pg (which fails what was queued without calling cb) and end the
 * append with _fail. */
bool tide_copy_append_queue(struct tide_pg *pg, struct tide_copy_append *ca);
/* Ends an append that was not queued: cb with status and err, then freed. */
void tide_copy_append_fail(struct tide_copy_append *ca, int status, const char *err);
/* Frees one whose cb must not be called (the caller reports the failure itself). */
void tide_copy_append_discard(struct tide_copy_append *ca);
/* Its link in a caller's list of appends waiting for their connection. */
struct tide_copy_append **tide_copy_append_next(struct tide_copy_append *ca);

/* A PostgreSQL array of bigints ({1,2,3}) as a malloc'd array; its length, 0 and *out NULL
 * when out of memory. */
size_t tide_append_parse_positions(const char *text, int64_t **out);

/* The wake-up: a NOTIFY in a transaction of its own whose commit does not wait for the
 * disk. */
#define TIDE_WAKE_SQL                                                                              \
	"SELECT set_config('synchronous_commit', 'off', true), pg_notify('tide_messages', '')"

/* Post-commit wake-ups on one connection: one in flight, one more owed at most. Every
 * TIDE_WAKE_ASK_MS it also asks whether any live daemon needs them (tide_wake_wanted():
 * one that streams the WAL does not) and sends none while none does. */
#define TIDE_WAKE_ASK_MS 2000
struct tide_wake {
	struct tide_pg *pg;
	bool in_flight, owed;
	bool asking, unwanted; /* unwanted: the last answer was that no daemon needs them */
	uint64_t ask_at;       /* uv_now when to ask again; 0: at the next wake-up */
};

/* Tells idle consumers (LISTEN tide_messages) that events were committed: a NOTIFY in a
 * transaction of its own whose commit does not wait for the disk, sent behind whatever is
 * queued on pg (so the server runs it right after the commit it follows) and never waited
 * for; while one is in flight, further calls fold into one more. Send it behind the
 * statement that commits an append, never inside that transaction: a NOTIFY in an
 * appending transaction holds a server-wide lock through that commit's flush, so every
 * appending commit would run one at a time. Even after it, a NOTIFY costs the writers
 * 15-40 % of their rate with 8-32 of them (its own transaction id, commit and lock), so it
 * is sent only while a daemon needs it. w must live as long as pg. */
void tide_wake(struct tide_pg *pg, struct tide_wake *w);

#endif
