/* cli_status.c — `tide status`: the daemon's processors as a table or JSON lines, with
 * checkpoint, lag and last error, read from tide_processors and emt_processors, and a
 * warning naming the backend whose open transaction holds every consumer back; `tide
 * forget`: a processor's rows removed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_common.h"
#include "json.h"
#include "rebuild.h"
#include "status.h"
#include "store.h"

static void on_blocker(const struct tide_pg_reply *reply, void *arg)
{
	struct cli *cli = arg;
	if (!reply->status && PQntuples(reply->res) == 1) {
		PGresult *res = reply->res;
		fprintf(stderr,
		        "warning: consumers are held back by backend pid %s (user %s, application "
		        "%s, %s), whose transaction has been open for %s s: no event written after "
		        "it began is delivered until it ends (commit or roll it back, or "
		        "SELECT pg_terminate_backend(%s))\n",
		        PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
		        PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 4), PQgetvalue(res, 0, 0));
	}
	tide_cli_done(cli);
}

/* JSON lines, as tide_status_json gives them. */
static void print_json(PGresult *res, int rows)
{
	for (int r = 0; r < rows; r++)
		tide_cli_print_line(tide_status_json(res, r));
}

/* The first line of s (at most n - 1 bytes of it). */
static void first_line(const char *s, char *out, size_t n)
{
	size_t len = strcspn(s, "\n");
	snprintf(out, n, "%.*s", (int)len, s);
}

/* The owner as people know it: host:pid (owners are tide:HOST:PID:RANDOM). */
static void owner_shown(const char *owner, char *out, size_t n)
{
	if (!owner[0]) {
		snprintf(out, n, "-");
		return;
	}
	const char *from = strncmp(owner, "tide:", 5) == 0 ? owner + 5 : owner;
	const char *last = strrchr(from, ':');
	size_t len = last && last != from ? (size_t)(last - from) : strlen(from);
	snprintf(out, n, "%.*s", (int)len, from);
}

static const char *or_dash(const char *v)
{
	return v[0] ? v : "-";
}

/* A table; under a failing processor, the first lines of its traceback. */
#define TRACEBACK_LINES 4
static void print_table(PGresult *res, int rows)
{
	int width = (int)strlen("PROCESSOR");
	for (int r = 0; r < rows; r++) {
		int w = PQgetlength(res, r, COL_ID);
		if (strcmp(PQgetvalue(res, r, COL_PARTITION), TIDE_DEFAULT_PARTITION) != 0)
			w += 1 + PQgetlength(res, r, COL_PARTITION);
		if (w > width)
			width = w < 64 ? w : 64;
	}
	printf("%-*s %-10s %-8s %3s %-22s %8s %8s %4s %-20s %4s  %s\n", width, "PROCESSOR", "KIND",
	       "STATE", "VER", "CHECKPOINT", "LAG", "LAG(s)", "GEN", "OWNER", "DLQ", "LAST ERROR");
	for (int r = 0; r < rows; r++) {
		char id[200], err[400], owner[128];
		const char *part = PQgetvalue(res, r, COL_PARTITION);
		if (strcmp(part, TIDE_DEFAULT_PARTITION) == 0)
			snprintf(id, sizeof(id), "%s", PQgetvalue(res, r, COL_ID));
		else
			snprintf(id, sizeof(id), "%s@%s", PQgetvalue(res, r, COL_ID), part);
		first_line(PQgetvalue(res, r, COL_LAST_ERROR), err, sizeof(err));
		owner_shown(PQgetvalue(res, r, COL_OWNER), owner, sizeof(owner));
		printf("%-*s %-10s %-8s %3s %-22s %8s %8s %4s %-20s %4s  %s\n", width, id,
		       PQgetvalue(res, r, COL_KIND), PQgetvalue(res, r, COL_STATE),
		       PQgetvalue(res, r, COL_VERSION), or_dash(PQgetvalue(res, r, COL_CHECKPOINT)),
		       or_dash(PQgetvalue(res, r, COL_LAG_EVENTS)),
		       or_dash(PQgetvalue(res, r, COL_LAG_SECONDS)),
		       PQgetvalue(res, r, COL_GENERATION), owner,
		       PQgetvalue(res, r, COL_DEAD_LETTERS), err[0] ? err : "-");
		struct tide_progress p;
		if (tide_status_progress(res, r, &p)) {
			char line[160];
			tide_progress_format(&p, line, sizeof(line));
			printf("%*s  rebuilding %s: %s\n", width, "",
			       PQgetvalue(res, r, COL_REBUILD_OF), line);
		}
		/* The traceback of the failure under way: its first frames (the log has it all). */
		const char *tb = PQgetvalue(res, r, COL_TRACEBACK);
		const char *frames = strstr(tb, "stack traceback:\n");
		if (frames)
			tb = frames + strlen("stack traceback:\n");
		for (int i = 0; tb[0] && err[0] && i < TRACEBACK_LINES; i++) {
			char line[300];
			first_line(tb, line, sizeof(line));
			if (line[0])
				printf("%*s  %s\n", width, "", line);
			tb += strcspn(tb, "\n");
			if (*tb == '\n')
				tb++;
		}
	}
}

/* The live daemons under the table (sql/0012): which one is which owner, and its share. */
static void on_daemons(const struct tide_pg_reply *reply, void *arg)
{
	struct cli *cli = arg;
	if (!reply->status && PQntuples(reply->res) > 0) {
		PGresult *res = reply->res;
		printf("\n%-28s %-20s %8s %6s %6s %5s %-6s\n", "DAEMON", "STARTED", "BEAT(s)",
		       "UNITS", "SHARE", "HELD", "WAKE");
		for (int r = 0; r < PQntuples(res); r++) {
			char owner[128];
			owner_shown(PQgetvalue(res, r, 0), owner, sizeof(owner));
			printf("%-28s %-20s %8s %6s %6s %5s %-6s\n", owner, PQgetvalue(res, r, 3),
			       PQgetvalue(res, r, 4), PQgetvalue(res, r, 5), PQgetvalue(res, r, 6),
			       PQgetvalue(res, r, 7), PQgetvalue(res, r, 8));
		}
	}
	if (tide_pg_exec(cli->store->pg, &tide_stmt_held_back, NULL, on_blocker, cli) != 0)
		tide_cli_done(cli);
}

static void on_status(const struct tide_pg_reply *reply, void *arg)
{
	struct cli *cli = arg;
	char buf[800];
	if (reply->status) {
		tide_cli_fail(cli, reply->status, tide_pg_explain(reply, buf, sizeof(buf)));
		tide_cli_done(cli);
		return;
	}
	PGresult *res = reply->res;
	int rows = PQntuples(res);
	if (cli->json)
		print_json(res, rows);
	else if (rows == 0)
		printf("no processors yet: start some with `tide run DIR`\n");
	else
		print_table(res, rows);
	if (!cli->json) {
		if (tide_pg_exec(cli->store->pg, &tide_stmt_daemons, NULL, on_daemons, cli) != 0)
			tide_cli_done(cli);
		return;
	}
	if (tide_pg_exec(cli->store->pg, &tide_stmt_held_back, NULL, on_blocker, cli) != 0)
		tide_cli_done(cli);
}

void tide_cli_run_status(struct cli *cli)
{
	if (tide_pg_exec(cli->store->pg, &tide_stmt_status, NULL, on_status, cli) != 0) {
		tide_cli_fail(cli, TIDE_ECONN, tide_store_error(cli->store));
		tide_cli_done(cli);
	}
}

static void on_forgot(const struct tide_pg_reply *reply, void *arg)
{
	struct cli *cli = arg;
	char buf[800];
	if (reply->status) {
		tide_cli_fail(cli, reply->status, tide_pg_explain(reply, buf, sizeof(buf)));
	} else if (strcmp(PQgetvalue(reply->res, 0, 0), "0") == 0 &&
	           strcmp(PQgetvalue(reply->res, 0, 1), "0") == 0) {
		snprintf(buf, sizeof(buf), "no processor '%s' (ids are APP/NAME: see tide status)",
		         cli->stream);
		tide_cli_fail(cli, TIDE_EINVAL, buf);
	} else {
		printf("forgot processor %s: %s status row, %s checkpoint(s), %s dead letter(s)\n",
		       cli->stream, PQgetvalue(reply->res, 0, 0), PQgetvalue(reply->res, 0, 1),
		       PQgetvalue(reply->res, 0, 2));
	}
	tide_cli_done(cli);
}

void tide_cli_run_forget(struct cli *cli)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_forget",
	        "SELECT processors, checkpoints, dead_letters FROM tide_processor_forget($1)", 1};
	const char *v[1] = {cli->stream};
	if (tide_pg_exec(cli->store->pg, &stmt, v, on_forgot, cli) != 0) {
		tide_cli_fail(cli, TIDE_ECONN, tide_store_error(cli->store));
		tide_cli_done(cli);
	}
}
