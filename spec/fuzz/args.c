/* args.c — libFuzzer target for the command line's argument parsing: the input, split at
 * NUL bytes, is the arguments of one `tide` command (tide_cli_main, every command, `run`
 * and `dlq` included). With no database in sight (none in the environment, and arguments
 * that name one are left out, so nothing waits on a network), every command must end in a
 * usage error, a clean failure or its output: exit 0, 1 or 2, no crash, no sanitizer
 * report, no hang. `test` and `init` are left out: one execs busted, the other writes files. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define MAX_ARGS 16

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	unsetenv("TIDE_DATABASE_URL");
	unsetenv("DATABASE_URL");
	int null = open("/dev/null", O_RDONLY);
	if (null >= 0)
		dup2(null, 0); /* `append ... -` reads stdin */
	/* Commands print: keep their stdout and stderr out of the fuzzer's log. */
	static char *args[64];
	int n = 0;
	for (; n < *argc && n < 62; n++)
		args[n] = (*argv)[n];
	args[n++] = "-close_fd_mask=3";
	args[n] = NULL;
	*argc = n;
	*argv = args;
	return 0;
}

/* An argument that could name a database (getopt takes any prefix of --database) or a
 * configuration file that might: left out, as connecting could wait on the network. */
static int names_a_database(const char *a)
{
	return (strncmp(a, "--d", 3) == 0) || (strncmp(a, "--co", 4) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size + 1);
	if (!buf)
		abort();
	memcpy(buf, data, size);
	buf[size] = '\0';
	char *argv[MAX_ARGS + 2] = {"tide"};
	int argc = 1;
	for (size_t i = 0; i <= size && argc <= MAX_ARGS; argc++) {
		argv[argc] = buf + i;
		if (names_a_database(argv[argc])) {
			free(buf);
			return 0;
		}
		i += strlen(buf + i) + 1;
	}
	argv[argc] = NULL;
	/* `tide test` replaces the process with busted, `tide init` writes files: not here. */
	if (argc > 1 && (strcmp(argv[1], "test") == 0 || strcmp(argv[1], "init") == 0)) {
		free(buf);
		return 0;
	}
	int code = tide_cli_main(argc, argv);
	if (code < 0 || code > 2) {
		fprintf(stderr, "args: exit code %d\n", code);
		abort();
	}
	free(buf);
	return 0;
}
