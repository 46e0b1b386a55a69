/* cli_common.h — what the files of the `tide` command line share: the state of one
 * invocation and the helpers that report its outcome (cli_common.c). cli.c parses and runs
 * the store commands and calls the others; cli_script.c runs Lua scripts (handle,
 * aggregate, check), cli_replay.c folds a stream through one (replay); cli_status.c shows the
 * daemon's processors and forgets one; cli_dlq.c the dead letters. None of them calls back into
 * cli.c. */
#ifndef TIDE_CLI_COMMON_H
#define TIDE_CLI_COMMON_H

#include <cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "tide.h"

struct tide_vm;

enum { EXIT_USAGE = 2, EXIT_CONFLICT = 3, EXIT_REJECTED = 4, EXIT_UNKNOWN = 5, EXIT_ARCHIVED = 6 };

struct cli {
	const char *cmd;
	const char *url;
	const char *partition; /* NULL: the default */
	uv_loop_t loop;
	struct tide_store *store;
	int exit_code;
	/* append; read; forget: the processor id */
	const char *stream;
	struct tide_event event;
	int64_t expected;
	/* read, read-all */
	struct tide_read_opts read;
	struct tide_cursor after;
	/* append, handle: a directory whose inline projections the append runs */
	const char *projections;
	/* read, read-all: --upcasters DIR, and the VM they are loaded in */
	const char *upcasters;
	struct tide_vm *upcast_vm;
	/* handle, aggregate, replay (its --to is read.to) */
	const char *script;
	const char *command_json;
	unsigned cpu_ms;
	int64_t retries;
	/* doc, docs: --where KEY=VALUE texts (argv's), checked and put together when run */
	const char *collection, *doc_id;
	struct tide_docs_opts docs;
	const char *where[32];
	int nwhere;
	bool stats;         /* handle, aggregate: --stats */
	bool json;          /* status; replay: JSON lines on a terminal too */
	int notify_trigger; /* migrate: 1 --notify-trigger, -1 --no-notify-trigger, 0 neither */
	char **scripts;     /* check */
	int nscripts;
	void (*run)(struct cli *cli);
};

/* One line on stderr, "tide CMD: ... (see `tide CMD --help`)"; returns the usage exit code. */
int tide_cli_usage_error(struct cli *cli, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
/* The same, for the commands that parse their own arguments (dlq, init, test). */
int tide_cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One line on stderr for a failed operation, and the exit code for its status. */
void tide_cli_fail(struct cli *cli, int status, const char *err);

/* Closes the store; the loop then ends. */
void tide_cli_done(struct cli *cli);

/* The database URL: the one given (--database), else TIDE_DATABASE_URL, else DATABASE_URL;
 * NULL when there is none. */
const char *tide_cli_database_url(const char *given);

/* Prints o as one line of JSON and frees it. */
void tide_cli_print_line(cJSON *o);

/* A script error's stack on stderr, after its one-line message: the script's frames and the
 * C functions between them; not the runtime's, nor the C frames below the script's last. */
void tide_cli_print_traceback(const char *traceback);

int tide_cli_run_script(struct cli *cli); /* handle, aggregate */
int tide_cli_run_replay(struct cli *cli);

/* cli_script.c's, for the commands that run a script: a fresh sandboxed VM (*vm) with the
 * script's processor table anchored at *ref; else a negative code and err: the file cannot
 * be read or the script does not load (TIDE_VM_NOT_PROCESSOR: it returned no processor). */
struct tide_vm;
struct lua_State;
int tide_cli_load_script(struct cli *cli, const char *path, struct tide_vm **vm, int *ref,
                         char *err, size_t n);
/* In a script's VM (under its guard): the runtime's store for cli's database, partition and
 * inline projections, pushed; its stack index, or 0 with *status and msg saying why not. */
int tide_cli_connect_vm(struct lua_State *L, struct cli *cli, int *status, char *msg, size_t n);
int tide_cli_run_check(struct cli *cli);
void tide_cli_run_status(struct cli *cli);
void tide_cli_run_forget(struct cli *cli);

#endif
