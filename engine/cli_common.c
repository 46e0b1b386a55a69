/* cli_common.c — what the commands of the `tide` command line share: reporting an
 * outcome (one line on stderr and the exit code for its status), printing JSON lines,
 * ending a command. */
#include "cli_common.h"
#include "lua_vm.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg.h"
#include "store.h"

static int usage_v(const char *cmd, const char *fmt, va_list ap)
{
	/* Arguments are echoed in messages: keep a newline in one from breaking the line. */
	char msg[900], clean[900];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	tide_pg_redact(NULL, msg, clean, sizeof(clean));
	fprintf(stderr, "tide %s: %s (see `tide %s --help`)\n", cmd, clean, cmd);
	return EXIT_USAGE;
}

int tide_cli_usage_error(struct cli *cli, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int rc = usage_v(cli->cmd, fmt, ap);
	va_end(ap);
	return rc;
}

int tide_cli_usage(const char *cmd, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int rc = usage_v(cmd, fmt, ap);
	va_end(ap);
	return rc;
}

void tide_cli_fail(struct cli *cli, int status, const char *err)
{
	char clean[700];
	tide_pg_redact(NULL, err ? err : tide_strerror(status), clean, sizeof(clean));
	fprintf(stderr, "tide %s: %s\n", cli->cmd, clean);
	cli->exit_code = status == TIDE_ECONFLICT   ? EXIT_CONFLICT
	                 : status == TIDE_EINVAL    ? EXIT_USAGE
	                 : status == TIDE_EUNKNOWN  ? EXIT_UNKNOWN
	                 : status == TIDE_EARCHIVED ? EXIT_ARCHIVED
	                                            : 1;
}

void tide_cli_done(struct cli *cli)
{
	tide_store_close(cli->store);
	cli->store = NULL;
}

void tide_cli_print_line(cJSON *o)
{
	char *s = cJSON_PrintUnformatted(o);
	if (s) {
		fputs(s, stdout);
		fputc('\n', stdout);
		free(s);
	}
	cJSON_Delete(o);
}

const char *tide_cli_database_url(const char *given)
{
	const char *sources[] = {given, getenv("TIDE_DATABASE_URL"), getenv("DATABASE_URL")};
	for (size_t i = 0; i < sizeof(sources) / sizeof(sources[0]); i++)
		if (sources[i] && sources[i][0])
			return sources[i];
	return NULL;
}

void tide_cli_print_traceback(const char *tb)
{
	char *frames = tide_vm_script_frames(tb);
	if (frames)
		fputs(frames, stderr);
	free(frames);
}
