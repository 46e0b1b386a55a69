/* store.h — the store object behind tide.h's tide_store_* functions, shared by the
 * files that implement them (store.c: append and reads, migrate.c: schema). */
#ifndef TIDE_STORE_H
#define TIDE_STORE_H

#include <stdarg.h>
#include <stdbool.h>

#include "pg.h"
#include "tide.h"

struct tide_store {
	uv_loop_t *loop;
	struct tide_pg *pg; /* pipelined connection for appends and reads */
	char *url;
	char partition[TIDE_MAX_PARTITION_BYTES + 1]; /* the emt_* partition every call uses */
	char application_name[64];
	tide_open_cb open_cb;
	void *open_arg;
	bool reconnecting;
	tide_open_cb reopen_cb;
	void *reopen_arg;
	/* Post-commit wake-ups (tide_store_wake): one in flight, one more owed at most. */
	bool wake_in_flight, wake_owed;
	/* A transaction of the caller's is open on pg (BEGIN sent): appends in it wake
	 * consumers only once it commits. */
	bool in_transaction, appended_in_transaction;
	char error[640];
};

/* The backend whose open transaction holds every consumer back (for 5 s or more):
 * pid, user, application, state, seconds open; no row when there is none. */
extern const struct tide_pg_stmt tide_stmt_held_back;

/* tide_store_open with the name pg_stat_activity shows for the connection (e.g. the
 * processor's), unless the URL names one. */
TIDE_MUST_CHECK int tide_store_open_named(uv_loop_t *loop, const char *url,
                                          const char *application_name, tide_open_cb cb, void *arg,
                                          struct tide_store **out);

/* The reply's message, with a hint when the tide schema is missing. */
const char *tide_store_explain(const struct tide_pg_reply *reply, char *buf, size_t n);

bool tide_uuid_valid(const char *s);

/* Tells idle consumers (LISTEN tide_messages) that events were committed: a NOTIFY in a
 * transaction of its own that does not wait for the disk, sent behind whatever is queued
 * and never waited for by the caller; while one is in flight further calls are folded
 * into one more. Call it after the commit of anything that appended, never before. */
void tide_store_wake(struct tide_store *store);

/* 0 when name[0..len) is a name tide stores (a stream, an event type, a partition):
 * 1..max bytes of valid UTF-8 without NUL bytes. Otherwise TIDE_EINVAL and one line in
 * err that names it by `what` ("stream name"). */
int tide_check_name(const char *what, const char *name, size_t len, size_t max, char *err,
                    size_t n);

/* "any", "no_stream", "stream_exists" or the number. */
void tide_expected_format(int64_t expected, char *buf, size_t n);

/* The whole schema as one idempotent psql script (malloc'd; NULL when out of memory). */
char *tide_migrate_script(void);

#endif
