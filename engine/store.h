/* store.h — the store object behind tide.h's tide_store_* functions, shared by the
 * files that implement them (store.c: append and reads, migrate.c: schema,
 * transaction.c: a caller's transaction). */
#ifndef TIDE_STORE_H
#define TIDE_STORE_H

#include <stdarg.h>
#include <stdbool.h>

#include "append.h"
#include "input.h"
#include "pg.h"
#include "tide.h"

struct tide_store;

/* What runs a store's appends with inline projections (inline_store.c): the store knows it
 * only through these, so that it need not know Lua, scripts or batches. */
struct tide_store_inline {
	/* Takes the append (true: *rc is what tide_store_append returns, cb fires as it would)
	 * or leaves it to the plain path (false). */
	bool (*append)(struct tide_store *store, const char *stream,
	               const struct tide_event *events, size_t n, int64_t expected,
	               tide_append_cb cb, void *arg, int *rc);
	/* An append of its own is in flight or waiting: its transaction is open on pg. */
	bool (*busy)(const struct tide_store *store);
	/* Whether an inline projection takes one of these events (such an append would be
	 * its). */
	bool (*wants)(const struct tide_store *store, const struct tide_event *events, size_t n);
	/* The store is closing: fail what it holds (the one in flight with the connection),
	 * and free its state. */
	void (*close)(struct tide_store *store);
};

struct tide_store {
	uv_loop_t *loop;
	struct tide_pg *pg; /* pipelined connection for appends and reads */
	/* Appends of TIDE_COPY_MIN_EVENTS or more (append_copy.c): opened on first use, and
	 * the appends waiting for it to open. */
	struct tide_pg *bulk;
	struct tide_copy_append *bulk_waiting;
	char *url;
	char partition[TIDE_MAX_PARTITION_BYTES + 1]; /* the emt_* partition every call uses */
	char application_name[64];
	tide_open_cb open_cb;
	void *open_arg;
	bool reconnecting;
	tide_open_cb reopen_cb;
	void *reopen_arg;
	struct tide_wake wake;  /* post-commit wake-ups (tide_store_wake) */
	bool partition_ready;   /* partition's tables exist (an append to it succeeded) */
	unsigned partition_gen; /* counts tide_store_set_partition calls */
	/* Inline projections (inline_store.c, set by tide_store_set_projections): appends go
	 * to inline_ops first, which takes those its projections want; its own in state. */
	const struct tide_store_inline *inline_ops;
	void *inline_state;
	/* A transaction of the caller's is open on pg (BEGIN sent): appends in it wake
	 * consumers only once it commits. */
	bool in_transaction, appended_in_transaction;
	/* transaction.c's own: where the caller's transaction is (beginning, open, ending),
	 * and the connection it was begun on (a transaction does not outlive it). */
	int transaction_state;
	const struct tide_pg *transaction_pg;
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

/* tide_wake on the store's connection: send it behind the COMMIT of a transaction of the
 * caller's that appended. */
void tide_store_wake(struct tide_store *store);

/* Sets the store's error message; returns code. */
int tide_store_fail(struct tide_store *store, int code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* Whether pg can take requests; if not, the error says so (TIDE_ECONN). */
bool tide_store_usable(struct tide_store *store);

static inline bool tide_store_inline_busy(const struct tide_store *store)
{
	return store->inline_ops && store->inline_ops->busy(store);
}

/* For a rebuild's progress: the events after `after` (by global position) that a read of
 * the log with filter f (NULL: none) would return; the reply's one value. */
TIDE_MUST_CHECK int tide_store_count_after(struct tide_store *store,
                                           const struct tide_cursor *after,
                                           const struct tide_log_filter *f, tide_pg_reply_cb cb,
                                           void *arg);

/* The whole schema as one idempotent psql script (malloc'd; NULL when out of memory). */
char *tide_migrate_script(void);

#endif
