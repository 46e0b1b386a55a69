/* batch.h — where a batch reaches Lua: one transaction on the processor's connection
 * (BEGIN → [role] → the script's SQL → [role check] → the closing statement, e.g. the
 * checkpoint → COMMIT), with the script run in a coroutine of its VM that yields while a
 * sql:query is out. A nested batch runs in a transaction its caller began and ends (an
 * inline projection in an append: inline.c). */
#ifndef TIDE_BATCH_H
#define TIDE_BATCH_H

#include "append.h"
#include "lua_vm.h"
#include "pg.h"

#define TIDE_BATCH_MAX_ARGS 12

struct tide_batch_spec {
	uv_loop_t *loop;
	struct tide_vm *vm;
	int processor_ref; /* registry ref of the processor table in vm */
	struct tide_pg *pg;
	/* After a commit that appended (a reactor's ctx.append), wake idle consumers with it
	 * (tide_wake); lives as long as pg. */
	struct tide_wake *wake;
	int events_ref; /* from tide_batch_events(); the batch takes it */
	bool setup;     /* run the processor's setup first */
	bool reset;     /* clear its target first (rebuild) */
	/* Record where each sql:exec comes from, so that a statement's error (which arrives
	 * after the script went on) names the script line and the statement. It costs a
	 * little per statement: the consumer asks for it when finding a failing event. */
	bool trace_sql;
	/* What the generation's targets are called: NAME plus this (sql/0007); NULL for "". */
	const char *target_suffix;
	/* In a transaction the caller began and ends: no BEGIN, role or COMMIT. After the script
	 * succeeded, close_sql (if any) is sent at once, behind its statements — "COMMIT", say,
	 * with wake behind it — and the batch reports once every reply is in. */
	bool nested;
	/* The batch runs inside an append (inline.c): a document projection keyed by id(event)
	 * locks its documents first, as concurrent appenders may share them. */
	bool in_append;
	/* The script's SQL runs as this role (SET LOCAL ROLE); before the closing statement
	 * the batch checks that the script did not change it, and resets it. NULL: the
	 * connecting user. */
	const char *role;
	/* Runs in the transaction first, as the connecting user: checks that the batch may
	 * go on (the processor's targets are still the ones it writes). Arguments are text. */
	const char *open_sql;
	int open_nargs;
	const char *open_args[TIDE_BATCH_MAX_ARGS];
	/* Runs in the transaction after the script, as the connecting user: moves the
	 * checkpoint (or marks a dead letter done). Arguments are text, copied. */
	const char *close_sql;
	int close_nargs;
	const char *close_args[TIDE_BATCH_MAX_ARGS];
	char close_text[TIDE_BATCH_MAX_ARGS][32]; /* room for arguments given as numbers */
};

/* How a batch ended. Nothing of a failed batch was committed. */
struct tide_batch_outcome {
	int status;            /* 0 committed; TIDE_ECONN the connection was lost; else failed */
	bool script;           /* the script failed (error, CPU or memory limit, bad yield) */
	const char *err;       /* one line: what failed */
	const char *sqlstate;  /* from the server, or "" */
	const char *traceback; /* the script's Lua traceback, or "" */
	bool closed;           /* nested: close_sql was sent */
};

/* Fires once, on a later loop turn than tide_batch_run's. */
typedef void (*tide_batch_cb)(const struct tide_batch_outcome *o, void *arg);

/* Starts the batch. On failure to start (out of memory, connection gone) the callback
 * still fires, on the next loop turn, and the events ref is released either way. */
void tide_batch_run(const struct tide_batch_spec *spec, tide_batch_cb cb, void *arg);

/* Turns a read's messages into the events list a batch hands the script, as a registry
 * ref in vm, so that the rows need not outlive the read's callback. On failure (the VM's
 * memory cap) err says why. A ref no batch takes is given back with _free. */
TIDE_MUST_CHECK int tide_batch_events(struct tide_vm *vm, const struct tide_read_result *read,
                                      int *ref, char *err, size_t n);
void tide_batch_events_free(struct tide_vm *vm, int ref);

/* Registers the C side of the transaction handle in vm (once per VM). */
void tide_batch_init_vm(struct tide_vm *vm);

/* How a reactor's ctx.append reaches the database. By default the append goes alone on the
 * batch's connection (tide_append_send); `tide run` hands it to its inline projections
 * (inline.c), which run in the batch's transaction after it. send takes a as
 * tide_append_send does, copies what it keeps of events, and calls cb once; role is the
 * batch's sql_role or NULL. Set before any batch runs; NULL: the default. */
struct tide_batch_appender {
	int (*send)(void *ctx, uv_loop_t *loop, struct tide_pg *pg, struct tide_append *a,
	            const char *stream, const char *partition, const struct tide_event *events,
	            size_t n, const char *role, tide_append_cb cb, void *arg);
	void *ctx;
};
void tide_batch_set_appender(const struct tide_batch_appender *appender);

#endif
