/* command.h — a command through a decider loaded in a sandboxed VM, as the runtime's
 * tide.command runs it (read, fold, decide, append; after a conflict the tail and a retry,
 * then a locked attempt; snapshots), or a stream folded by it (aggregate), with the outcome
 * as JSON: what `tide handle` and `tide aggregate` print (cli_script.c) and what POST
 * /commands answers (http_commands.c). */
#ifndef TIDE_COMMAND_H
#define TIDE_COMMAND_H

#include <cJSON.h>
#include <lua.h>
#include <stdbool.h>
#include <stdint.h>

#include "lua_vm.h"

struct tide_command {
	int ref;          /* the decider's table in the VM's registry */
	const char *name; /* its snapshots' name unless it has one: the file name without .lua */
	const char *stream;
	const char *command_json; /* {"type": ..., "data": ...}; NULL: aggregate */
	size_t command_len;
	int64_t retries; /* optimistic retries after a conflict before the lock */
	bool stats;      /* add "stats" to the result */
	/* Pushes the store to run on (tide.core's store object) and returns 1; or returns 0
	 * with *status (TIDE_E*) and msg saying why not. Called inside the protected call. */
	int (*push_store)(lua_State *L, void *arg, int *status, char *msg, size_t n);
	void *arg;
};

struct tide_command_result {
	int status;       /* 0, or the TIDE_E* of the failure */
	bool not_decider; /* the script is no decider (status TIDE_EINVAL; kind: what it is) */
	bool rejected;    /* decide refused the command (tide.reject) */
	char kind[16];    /* the failure's kind as the runtime gives it: "rejected", "script",
	                     "timeout", "memory", "conflict", "connection", ... */
	char message[1024];
	char warning[1024]; /* a snapshot that could not be read or saved */
	char *traceback;    /* a script error's stack (malloc'd), or NULL */
	/* On success handle's {"events","next_expected_version","global_positions","attempts",
	 * "locked"[,"stats"]} or aggregate's {"state","version"[,"stats"]}; on a failure the
	 * runtime's error as {"error":{"kind","message","details"?,"expected"?,"actual"?,
	 * "processor"?}} (NULL when it cannot be JSON). */
	cJSON *out;
};

/* Runs cmd on the decider in vm; the outcome in *r (release it with the function below).
 * -1 with *e filled when the call itself failed (misuse raised, or the VM's memory ran
 * out outside the script's guarded calls), else 0. */
int tide_command_run(struct tide_vm *vm, const struct tide_command *cmd,
                     struct tide_command_result *r, struct tide_vm_error *e);
void tide_command_result_free(struct tide_command_result *r);

/* The TIDE_E* status of an error kind of the runtime (err.kind). */
int tide_command_error_status(const char *kind);

#endif
