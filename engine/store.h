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
	/* Inline projections (inline.c): the set every append runs, and the appends that run
	 * it, in order: the first is in flight, the others wait for it (store.c's calls). */
	struct tide_inline_set *inline_set;
	struct call *inline_head, *inline_tail;
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

/* For a rebuild's progress: the events of the store's partition after `after` (by global
 * position) of the given types (all when ntypes is 0); the reply's one value. */
TIDE_MUST_CHECK int tide_store_count_after(struct tide_store *store,
                                           const struct tide_cursor *after,
                                           const char *const *types, size_t ntypes,
                                           tide_pg_reply_cb cb, void *arg);

/* The whole schema as one idempotent psql script (malloc'd; NULL when out of memory). */
char *tide_migrate_script(void);

#endif
