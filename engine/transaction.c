/* transaction.c — a caller's transaction on a store (tide_store_begin/commit/rollback): BEGIN,
 * the stream row's lock, then COMMIT or ROLLBACK, each a pipelined statement of its own on the
 * store's one connection, so that whatever the caller sends meanwhile runs inside. A decider's
 * last attempt uses it (lua/tide/command.lua): under the lock its append cannot conflict.
 *
 * States: none → beginning (BEGIN and the lock sent) → open (lock held) → ending (COMMIT or
 * ROLLBACK sent) → none. A failed begin rolls back before it reports, so its callback finds
 * the store free. A transaction belongs to its connection: once that is lost, so is it. */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TXN_NONE, TXN_BEGINNING, TXN_OPEN, TXN_ENDING };

/* READ COMMITTED whatever the database's default: each statement after the lock sees what
 * every writer before the lock's holder committed, and nothing fails to serialize. */
static const struct tide_pg_stmt stmt_begin = {
        "tide_begin",
        "BEGIN ISOLATION LEVEL READ COMMITTED",
        0,
};

/* The row every append moves (tide's in append.c, Emmett's too): while it is held, the
 * stream's version cannot move. */
static const struct tide_pg_stmt stmt_lock = {
        "tide_lock_stream",
        "SELECT stream_position FROM emt_streams"
        " WHERE stream_id = $1 AND partition = $2 AND NOT is_archived FOR UPDATE",
        2,
};

static const struct tide_pg_stmt stmt_commit = {"tide_commit", "COMMIT", 0};
static const struct tide_pg_stmt stmt_rollback = {"tide_rollback", "ROLLBACK", 0};

struct txn_call {
	struct tide_store *store;
	union {
		tide_begin_cb begin;
		tide_end_cb end;
	} cb;
	void *arg;
	bool lock_sent;  /* begin: the lock follows BEGIN and finishes the begin */
	bool commit;     /* end: COMMIT, not ROLLBACK */
	int status;      /* begin: the first failure of BEGIN or the lock */
	int64_t version; /* begin: the locked version, -1 when there is no row */
	char err[640];
};

static int fail(struct tide_store *store, int code, const char *msg)
{
	snprintf(store->error, sizeof(store->error), "%s", msg);
	return code;
}

static void set_state(struct tide_store *store, int state)
{
	store->transaction_state = state;
	store->in_transaction = state != TXN_NONE;
	if (state == TXN_NONE) {
		store->appended_in_transaction = false;
		store->transaction_pg = NULL;
	}
}

/* The transaction is over, committed or not. An append in it may have created the
 * partition's tables (the first append to a partition does): unless it committed they are
 * gone again, and the next append must make sure of them (store.c's partition_ready). */
static void ended(struct tide_store *store, bool committed)
{
	if (!committed && store->appended_in_transaction)
		store->partition_ready = strcmp(store->partition, TIDE_DEFAULT_PARTITION) == 0;
	set_state(store, TXN_NONE);
}

/* The connection is gone, whatever the request was: the server going away answers with an
 * error of its own (57P01 on a fast shutdown or pg_terminate_backend). */
static bool lost(const struct tide_pg_reply *reply)
{
	return reply->status == TIDE_ECONN || reply->status == TIDE_ECLOSED ||
	       (reply->status == TIDE_EDB && (strncmp(reply->sqlstate, "57P0", 4) == 0 ||
	                                      strncmp(reply->sqlstate, "08", 2) == 0));
}

/* The status a lost connection is reported as: the store's closing stays TIDE_ECLOSED. */
static int lost_status(const struct tide_pg_reply *reply)
{
	return reply->status == TIDE_ECLOSED ? TIDE_ECLOSED : TIDE_ECONN;
}

static void record(struct txn_call *c, const struct tide_pg_reply *reply, const char *what)
{
	if (c->status)
		return;
	char buf[640];
	c->status = lost(reply) ? lost_status(reply) : reply->status;
	snprintf(c->err, sizeof(c->err), "%s: %s", what, tide_pg_explain(reply, buf, sizeof(buf)));
}

static void report_begin(struct txn_call *c)
{
	c->cb.begin(c->status, c->status ? c->err : NULL, c->status ? -1 : c->version, c->arg);
	free(c);
}

static void on_cleanup(const struct tide_pg_reply *reply, void *arg)
{
	(void)reply; /* the begin's own failure is what the caller hears about */
	struct txn_call *c = arg;
	ended(c->store, false);
	report_begin(c);
}

/* Both replies of the begin are in (or the only one, without a lock). */
static void finish_begin(struct txn_call *c)
{
	struct tide_store *store = c->store;
	if (c->status == 0) {
		set_state(store, TXN_OPEN);
		store->transaction_pg = store->pg;
		report_begin(c);
		return;
	}
	/* A failed statement left the transaction open and aborted: end it before the caller
	 * hears, so that it finds the store free. On a lost connection it is gone already. */
	if (c->status != TIDE_ECONN && c->status != TIDE_ECLOSED) {
		set_state(store, TXN_ENDING);
		if (tide_pg_exec(store->pg, &stmt_rollback, NULL, on_cleanup, c) == 0)
			return;
	}
	ended(store, false);
	report_begin(c);
}

static void on_begin(const struct tide_pg_reply *reply, void *arg)
{
	struct txn_call *c = arg;
	if (reply->status)
		record(c, reply, "cannot begin a transaction");
	if (!c->lock_sent)
		finish_begin(c);
}

static void on_lock(const struct tide_pg_reply *reply, void *arg)
{
	struct txn_call *c = arg;
	if (reply->status) {
		record(c, reply, "cannot lock the stream");
	} else if (PQntuples(reply->res) == 1 && !PQgetisnull(reply->res, 0, 0)) {
		c->version = strtoll(PQgetvalue(reply->res, 0, 0), NULL, 10);
	}
	finish_begin(c);
}

int tide_store_begin(struct tide_store *store, const char *stream, tide_begin_cb cb, void *arg)
{
	if (store->transaction_state != TXN_NONE)
		return fail(store, TIDE_EINVAL, "a transaction is already open on this store");
	if (tide_store_inline_busy(store))
		return fail(
		        store, TIDE_EINVAL,
		        "an append with inline projections is in flight: wait for its callback");
	if (stream && tide_check_name("stream name", stream, strlen(stream), TIDE_MAX_NAME_BYTES,
	                              store->error, sizeof(store->error)))
		return TIDE_EINVAL;
	if (!tide_pg_ready(store->pg))
		return fail(store, TIDE_ECONN, "not connected to the database");
	struct txn_call *c = calloc(1, sizeof(*c));
	if (!c)
		return fail(store, TIDE_ENOMEM, "out of memory");
	c->store = store;
	c->cb.begin = cb;
	c->arg = arg;
	c->version = -1;
	int rc = tide_pg_exec(store->pg, &stmt_begin, NULL, on_begin, c);
	if (rc) {
		free(c);
		return fail(store, rc, "cannot send BEGIN");
	}
	set_state(store, TXN_BEGINNING);
	if (stream) {
		const char *values[2] = {stream, store->partition};
		/* When this cannot be queued, BEGIN's reply finishes the begin; a connection
		 * that refuses it is failing, so that reply is a failure too — and when it is
		 * not (out of memory), a transaction without its lock must not pass for one. */
		c->lock_sent = tide_pg_exec(store->pg, &stmt_lock, values, on_lock, c) == 0;
		if (!c->lock_sent && !c->status) {
			c->status = TIDE_ENOMEM;
			snprintf(c->err, sizeof(c->err), "cannot lock the stream: out of memory");
		}
	}
	return 0;
}

static void on_end(const struct tide_pg_reply *reply, void *arg)
{
	struct txn_call *c = arg;
	struct tide_store *store = c->store;
	bool committing = c->commit;
	bool appended = store->appended_in_transaction;
	char buf[640];
	int status = 0;
	const char *err = NULL;
	if (lost(reply)) {
		status = lost_status(reply);
		if (committing && reply->sent && status == TIDE_ECONN) {
			status = TIDE_EUNKNOWN;
			snprintf(
			        c->err, sizeof(c->err),
			        "the connection was lost after COMMIT was sent, so the transaction "
			        "may or may not have been committed (read to find out): %s",
			        reply->err);
		} else {
			snprintf(c->err, sizeof(c->err),
			         "the connection was lost, and the transaction with it (nothing in "
			         "it was committed): %s",
			         reply->err);
		}
		err = c->err;
	} else if (reply->status) {
		status = reply->status;
		snprintf(c->err, sizeof(c->err), "%s failed: %s",
		         committing ? "COMMIT" : "ROLLBACK",
		         tide_pg_explain(reply, buf, sizeof(buf)));
		err = c->err;
	} else if (committing && strcmp(PQcmdStatus(reply->res), "COMMIT") != 0) {
		/* COMMIT of a transaction in which a statement failed rolls it back. */
		status = TIDE_EDB;
		err = "the transaction was rolled back, not committed: a statement in it had "
		      "failed";
	}
	bool committed = committing && status == 0;
	ended(store, committed);
	if (committed && appended)
		tide_store_wake(store);
	c->cb.end(status, err, c->arg);
	free(c);
}

static int end(struct tide_store *store, bool commit, tide_end_cb cb, void *arg)
{
	switch (store->transaction_state) {
	case TXN_NONE: return fail(store, TIDE_EINVAL, "no transaction is open on this store");
	case TXN_BEGINNING:
		return fail(store, TIDE_EINVAL,
		            "the transaction is not begun yet: wait for the callback of "
		            "tide_store_begin()");
	case TXN_ENDING: return fail(store, TIDE_EINVAL, "the transaction is already ending");
	default: break;
	}
	if (tide_store_inline_busy(store) && tide_pg_ready(store->pg))
		return fail(
		        store, TIDE_EINVAL,
		        "an append with inline projections is in flight in the transaction: wait "
		        "for its callback");
	if (!tide_pg_ready(store->pg) || store->pg != store->transaction_pg) {
		ended(store, false);
		return fail(store, TIDE_ECONN,
		            "the connection was lost, and the transaction with it (nothing in it "
		            "was committed)");
	}
	struct txn_call *c = calloc(1, sizeof(*c));
	if (!c)
		return fail(store, TIDE_ENOMEM, "out of memory");
	c->store = store;
	c->cb.end = cb;
	c->arg = arg;
	c->commit = commit;
	int rc = tide_pg_exec(store->pg, commit ? &stmt_commit : &stmt_rollback, NULL, on_end, c);
	if (rc == TIDE_ENOMEM) {
		free(c);
		return fail(store, rc, "out of memory"); /* still open: try again */
	}
	if (rc) {
		free(c);
		ended(store, false);
		return fail(store, TIDE_ECONN,
		            "the connection was lost, and the transaction with it (nothing in it "
		            "was committed)");
	}
	set_state(store, TXN_ENDING);
	return 0;
}

int tide_store_commit(struct tide_store *store, tide_end_cb cb, void *arg)
{
	return end(store, true, cb, arg);
}

int tide_store_rollback(struct tide_store *store, tide_end_cb cb, void *arg)
{
	return end(store, false, cb, arg);
}

bool tide_store_in_transaction(const struct tide_store *store)
{
	return store->in_transaction;
}
