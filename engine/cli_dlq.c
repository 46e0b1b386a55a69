/* cli_dlq.c — `tide dlq`: the dead letters processors parked (tide_dead_letters): list
 * them, show one, queue them for a retry by their processor (which takes each once, through
 * its on_error policy), or discard them. */
#include "cli_dlq.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "cli_common.h"
#include "json.h"
#include "store.h"

static const char usage[] =
        "usage: tide dlq list [--processor P] [--json] [--database URL]\n"
        "       tide dlq show ID [--database URL]\n"
        "       tide dlq retry (ID... | --all) [--processor P] [--database URL]\n"
        "       tide dlq discard (ID... | --all) [--processor P] [--database URL]\n"
        "\n"
        "Dead letters are events a processor with on_error = \"dead_letter\" (the default)\n"
        "gave up on after max_attempts tries: the event (a copy), the processor, the number\n"
        "of tries, the last error and the script's traceback. The processor went on past it.\n"
        "  list      one line per dead letter (--json: one JSON object per line)\n"
        "  show      everything about one, as JSON, with the event's data and the traceback\n"
        "  retry     hand them back to their processor: the daemon running it processes each\n"
        "            once more (the script may have been fixed meanwhile); one that fails\n"
        "            again stays parked with the new error\n"
        "  discard   delete them\n"
        "  --processor P  only the dead letters of processor P (APP/NAME, or NAME of any app)\n"
        "  --all          every dead letter (of P, with --processor)\n";

struct dlq {
	const char *sub;
	const char *url;
	const char *processor;
	bool json, all;
	char **ids;
	int nids;
	char *id_array; /* the ids as a PostgreSQL bigint[] literal */
	uv_loop_t loop;
	struct tide_store *store;
	int exit_code;
};

static void done(struct dlq *d)
{
	tide_store_close(d->store);
	d->store = NULL;
}

static void fail(struct dlq *d, const struct tide_pg_reply *reply)
{
	char buf[800];
	fprintf(stderr, "tide dlq %s: %s\n", d->sub, tide_pg_explain(reply, buf, sizeof(buf)));
	d->exit_code = 1;
	done(d);
}

static void exec(struct dlq *d, const char *sql, int n, const char *const *v, tide_pg_reply_cb cb)
{
	if (tide_pg_exec_sql(d->store->pg, sql, n, v, cb, d) != 0) {
		fprintf(stderr, "tide dlq %s: %s\n", d->sub, tide_pg_error(d->store->pg));
		d->exit_code = 1;
		done(d);
	}
}

#define COLUMNS                                                                                    \
	"id, processor_id, partition, version, stream_id, stream_position, global_position,"       \
	" transaction_id::text, message_id, message_type, message_data, message_metadata,"         \
	" to_char(created AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), attempts,"     \
	" last_error, traceback, status,"                                                          \
	" to_char(parked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* One dead letter as JSON; with the event's data and the traceback when full. */
static cJSON *row_json(PGresult *res, int r, bool full)
{
	static const char *const names[] = {
	        "id",
	        "processor",
	        "partition",
	        "version",
	        "stream_id",
	        "stream_position",
	        "global_position",
	        "transaction_id",
	        "message_id",
	        "type",
	        "data",
	        "metadata",
	        "created",
	        "attempts",
	        "last_error",
	        "traceback",
	        "status",
	        "parked_at",
	};
	cJSON *o = cJSON_CreateObject();
	for (int c = 0; c < (int)(sizeof(names) / sizeof(names[0])); c++) {
		if (!full && (c == 10 || c == 11 || c == 15))
			continue;
		const char *v = PQgetvalue(res, r, c);
		if (PQgetisnull(res, r, c))
			cJSON_AddNullToObject(o, names[c]);
		else if (c == 10 || c == 11) /* jsonb: printed compact, as `tide read` does */
			tide_json_add_compact(o, names[c], v);
		else if (c == 0 || c == 3 || c == 5 || c == 6 || c == 13)
			cJSON_AddRawToObject(o, names[c], v);
		else
			cJSON_AddStringToObject(o, names[c], v);
	}
	return o;
}

static void print_json(cJSON *o)
{
	char *s = cJSON_PrintUnformatted(o);
	if (s)
		puts(s);
	cJSON_free(s);
	cJSON_Delete(o);
}

static void on_list(const struct tide_pg_reply *reply, void *arg)
{
	struct dlq *d = arg;
	if (reply->status) {
		fail(d, reply);
		return;
	}
	PGresult *res = reply->res;
	int rows = PQntuples(res);
	if (d->json) {
		for (int r = 0; r < rows; r++)
			print_json(row_json(res, r, false));
	} else if (rows == 0) {
		printf("no dead letters%s%s\n", d->processor ? " of " : "",
		       d->processor ? d->processor : "");
	} else {
		printf("%-8s %-20s %-28s %-20s %8s %-7s  %s\n", "ID", "PROCESSOR", "EVENT", "TYPE",
		       "ATTEMPTS", "STATUS", "LAST ERROR");
		for (int r = 0; r < rows; r++) {
			char event[64], err[160];
			snprintf(event, sizeof(event), "%.40s@%s", PQgetvalue(res, r, 4),
			         PQgetvalue(res, r, 5));
			snprintf(err, sizeof(err), "%s", PQgetvalue(res, r, 14));
			for (char *c = err; *c; c++)
				if (*c == '\n' || *c == '\t')
					*c = ' ';
			printf("%-8s %-20s %-28s %-20s %8s %-7s  %s\n", PQgetvalue(res, r, 0),
			       PQgetvalue(res, r, 1), event, PQgetvalue(res, r, 9),
			       PQgetvalue(res, r, 13), PQgetvalue(res, r, 16), err);
		}
	}
	done(d);
}

static void on_show(const struct tide_pg_reply *reply, void *arg)
{
	struct dlq *d = arg;
	if (reply->status) {
		fail(d, reply);
		return;
	}
	if (PQntuples(reply->res) == 0) {
		fprintf(stderr, "tide dlq show: no dead letter %s\n", d->ids[0]);
		d->exit_code = 1;
	} else {
		print_json(row_json(reply->res, 0, true));
	}
	done(d);
}

/* retry and discard: the statement returns the ids it touched and the processors to wake. */
static void on_changed(const struct tide_pg_reply *reply, void *arg)
{
	struct dlq *d = arg;
	if (reply->status) {
		fail(d, reply);
		return;
	}
	PGresult *res = reply->res;
	int n = atoi(PQgetvalue(res, 0, 0));
	bool retry = strcmp(d->sub, "retry") == 0;
	printf("%s %d dead letter%s%s\n", retry ? "queued for a retry:" : "discarded", n,
	       n == 1 ? "" : "s",
	       retry && n ? " (the daemon running each processor takes them in turn)" : "");
	if (!d->all && n < d->nids) {
		fprintf(stderr, "tide dlq %s: %d of the ids given %s no dead letter%s\n", d->sub,
		        d->nids - n, d->nids - n == 1 ? "is" : "are",
		        d->processor ? " of that processor" : "");
		d->exit_code = 1;
	}
	done(d);
}

/* --processor P: the id APP/NAME, or NAME alone (of whichever app). */
#define OF_PROCESSOR                                                                               \
	"($1::text IS NULL OR processor_id = $1"                                                   \
	" OR right(processor_id, length($1) + 1) = '/' || $1)"

static void run(struct dlq *d)
{
	const char *v[2] = {d->processor, d->id_array};
	if (strcmp(d->sub, "list") == 0) {
		exec(d,
		     "SELECT " COLUMNS " FROM tide_dead_letters"
		     " WHERE " OF_PROCESSOR " ORDER BY id",
		     1, v, on_list);
	} else if (strcmp(d->sub, "show") == 0) {
		const char *id[1] = {d->ids[0]};
		exec(d, "SELECT " COLUMNS " FROM tide_dead_letters WHERE id = $1::bigint", 1, id,
		     on_show);
	} else if (strcmp(d->sub, "retry") == 0) {
		/* One statement: queue them, and wake the daemons running their processors. */
		exec(d,
		     "WITH q AS (UPDATE tide_dead_letters SET status = 'retry'"
		     "  WHERE " OF_PROCESSOR
		     "   AND ($2::bigint[] IS NULL OR id = ANY ($2::bigint[]))"
		     "  RETURNING processor_id),"
		     " w AS (SELECT pg_notify('tide_dlq', p) FROM (SELECT DISTINCT processor_id AS "
		     "p"
		     "  FROM q) x)"
		     " SELECT (SELECT count(*) FROM q), (SELECT count(*) FROM w)",
		     2, v, on_changed);
	} else {
		exec(d,
		     "WITH q AS (DELETE FROM tide_dead_letters"
		     "  WHERE " OF_PROCESSOR
		     "   AND ($2::bigint[] IS NULL OR id = ANY ($2::bigint[])) RETURNING id)"
		     " SELECT count(*) FROM q",
		     2, v, on_changed);
	}
}

static void on_open(struct tide_store *s, int status, const char *err, void *arg)
{
	(void)s;
	struct dlq *d = arg;
	if (status) {
		fprintf(stderr, "tide dlq %s: cannot connect to the database: %s\n", d->sub, err);
		d->exit_code = 1;
		done(d);
		return;
	}
	run(d);
}

static bool is_id(const char *s)
{
	if (!*s || strlen(s) > 18)
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

int tide_cli_dlq_main(int argc, char **argv)
{
	static const struct option opts[] = {
	        {"processor", required_argument, NULL, 'p'},
	        {"json", no_argument, NULL, 'j'},
	        {"all", no_argument, NULL, 'a'},
	        {"database", required_argument, NULL, 'd'},
	        {"help", no_argument, NULL, 'h'},
	        {NULL, 0, NULL, 0},
	};
	struct dlq d = {0};
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		fputs(usage, argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	d.sub = argv[1];
	if (strcmp(d.sub, "list") != 0 && strcmp(d.sub, "show") != 0 &&
	    strcmp(d.sub, "retry") != 0 && strcmp(d.sub, "discard") != 0)
		return tide_cli_usage(
		        "dlq", "unknown subcommand '%s': list, show, retry or discard", d.sub);
	opterr = 0;
	optind = 1;
	int o;
	while ((o = getopt_long(argc - 1, argv + 1, ":", opts, NULL)) != -1) {
		switch (o) {
		case 'p': d.processor = optarg; break;
		case 'j': d.json = true; break;
		case 'a': d.all = true; break;
		case 'd': d.url = optarg; break;
		case 'h': fputs(usage, stdout); return 0;
		case ':': return tide_cli_usage("dlq", "option '%s' needs a value", argv[optind]);
		default: return tide_cli_usage("dlq", "unknown option '%s'", argv[optind]);
		}
	}
	d.ids = argv + 1 + optind;
	d.nids = argc - 1 - optind;
	bool list = strcmp(d.sub, "list") == 0, show = strcmp(d.sub, "show") == 0;
	if (d.json && !list)
		return tide_cli_usage("dlq", "%s takes no --json", d.sub);
	if (list && (d.nids || d.all))
		return tide_cli_usage("dlq", "list takes no ids (use --processor to narrow it)");
	if (show && (d.nids != 1 || d.all || d.processor))
		return tide_cli_usage("dlq", "show takes exactly one dead letter id");
	if (!list && !show && !d.all && d.nids == 0)
		return tide_cli_usage("dlq", "%s wants dead letter ids, or --all", d.sub);
	if (d.all && d.nids)
		return tide_cli_usage("dlq", "give ids or --all, not both");
	size_t len = 3;
	for (int i = 0; i < d.nids; i++) {
		if (!is_id(d.ids[i]))
			return tide_cli_usage(
			        "dlq",
			        "'%s' is not a dead letter id (a number; see `tide dlq list`)",
			        d.ids[i]);
		len += strlen(d.ids[i]) + 1;
	}
	if (d.nids && !show) {
		d.id_array = malloc(len);
		if (!d.id_array)
			return 1;
		char *p = d.id_array;
		*p++ = '{';
		for (int i = 0; i < d.nids; i++)
			p += sprintf(p, "%s%s", i ? "," : "", d.ids[i]);
		strcpy(p, "}");
	}
	d.url = tide_cli_database_url(d.url);
	if (!d.url) {
		free(d.id_array);
		return tide_cli_usage("dlq", "no database given: pass --database URL or set %s",
		                      "TIDE_DATABASE_URL");
	}
	uv_loop_init(&d.loop);
	if (tide_store_open(&d.loop, d.url, on_open, &d, &d.store) != 0) {
		free(d.id_array);
		fprintf(stderr, "tide dlq: out of memory\n");
		return 1;
	}
	uv_run(&d.loop, UV_RUN_DEFAULT);
	uv_loop_close(&d.loop);
	free(d.id_array);
	if (fflush(stdout) != 0 && d.exit_code == 0)
		return 1;
	return d.exit_code;
}
