/* wal_wake.h — the daemon's wake-up from the server's WAL: a physical replication
 * connection that streams the WAL from its current end and says "flushed" for each piece
 * the server sends, which it does as soon as a commit is on disk — whoever the writer.
 * Nothing is kept: no replication slot, no WAL retained, no position ever confirmed (so
 * the server never counts it as a synchronous standby). Needs a role with REPLICATION (or
 * a superuser), a free max_wal_senders place and pg_hba.conf admitting a replication
 * connection; without them it reports why and tries again later, and the daemon wakes by
 * NOTIFY and its probe meanwhile (daemon.c). */
#ifndef TIDE_WAL_WAKE_H
#define TIDE_WAL_WAKE_H

#include <stdbool.h>
#include <uv.h>

struct tide_wal_wake;

struct tide_wal_wake_opts {
	uv_loop_t *loop;
	const char *url;            /* not copied: outlives the object */
	void (*flushed)(void *arg); /* WAL arrived: something was committed */
	/* The stream began (why NULL) or stopped or could not begin (why says what failed). */
	void (*state)(void *arg, bool streaming, const char *why);
	void *arg;
};

/* Connects at once. NULL when out of memory. */
struct tide_wal_wake *tide_wal_wake_start(const struct tide_wal_wake_opts *o);

/* Closes the stream; no callback runs after it. */
void tide_wal_wake_stop(struct tide_wal_wake *w);

#endif
