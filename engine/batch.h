/* batch.h — where a batch reaches Lua: one transaction on the processor's connection
 * (BEGIN → the script's SQL → checkpoint → COMMIT), with the script run in a coroutine
 * of its VM that yields while a sql:query is out. */
#ifndef TIDE_BATCH_H
#define TIDE_BATCH_H

#include "lua_vm.h"
#include "pg.h"

struct tide_batch;

#define TIDE_BATCH_COMMIT_ARGS 9

struct tide_batch_spec {
	struct tide_vm *vm;
	int processor_ref; /* registry ref of the processor table in vm */
	struct tide_pg *pg;
	int events_ref; /* from tide_batch_events(); the batch takes it */
	bool setup;     /* run the processor's setup first */
	bool reset;     /* clear its target first (rebuild) */
	/* tide_processor_commit's arguments, as text: id, version, owner, ttl_ms,
	 * from xid, from position, to xid, to position, partition. */
	const char *commit[TIDE_BATCH_COMMIT_ARGS];
};

/* status 0: committed. Otherwise err says why and sqlstate (maybe "") comes from the
 * server; nothing of the batch was committed. */
typedef void (*tide_batch_cb)(int status, const char *err, const char *sqlstate, void *arg);

TIDE_MUST_CHECK int tide_batch_run(const struct tide_batch_spec *spec, tide_batch_cb cb, void *arg);

/* Turns a read's messages into the events list a batch hands the script, as a registry
 * ref in vm, so that the rows need not outlive the read's callback. On failure (the VM's
 * memory cap) err says why. A ref no batch takes is given back with _free. */
TIDE_MUST_CHECK int tide_batch_events(struct tide_vm *vm, const struct tide_read_result *read,
                                      int *ref, char *err, size_t n);
void tide_batch_events_free(struct tide_vm *vm, int ref);

/* Registers the C side of the transaction handle in vm (once per VM). */
void tide_batch_init_vm(struct tide_vm *vm);

#endif
