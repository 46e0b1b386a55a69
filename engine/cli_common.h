/* cli_common.h — what the files of the `tide` command line share: the state of one
 * invocation and the helpers that report its outcome (cli_common.c). cli.c parses and runs
 * the store commands and calls the others; cli_script.c runs Lua scripts (handle,
 * aggregate, check); cli_status.c shows the daemon's processors and forgets one; cli_dlq.c the dead
 * letters. None of them calls back into cli.c. */
#ifndef TIDE_CLI_COMMON_H
#define TIDE_CLI_COMMON_H

#include <cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "tide.h"

enum { EXIT_USAGE = 2, EXIT_CONFLICT = 3, EXIT_REJECTED = 4, EXIT_UNKNOWN = 5 };

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
	/* handle, aggregate */
	const char *script;
	const char *command_json;
	unsigned cpu_ms;
	int64_t retries;
	bool json;          /* status */
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
int tide_cli_run_check(struct cli *cli);
void tide_cli_run_status(struct cli *cli);
void tide_cli_run_forget(struct cli *cli);

#endif
