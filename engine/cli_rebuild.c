/* cli_rebuild.c — `tide rebuild PROCESSOR`: builds a projection again from the start of the
 * log into fresh targets while its current ones keep serving (and a daemon keeps them up to
 * date), then makes the new ones what readers see in one transaction (rebuild.h). The build
 * is a consumer of its own (ID@rebuild) on this process's loop, as in the daemon. */
#include "cli_rebuild.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_common.h"
#include "consumer.h"
#include "json.h"
#include "log.h"
#include "rebuild.h"
#include "store.h"
#include "upcast.h"

static const char usage[] =
        "usage: tide rebuild PROCESSOR [--keep] [--sql-role ROLE] [--database URL]\n"
        "\n"
        "Builds the projection PROCESSOR (its id, APP/NAME, as `tide status` shows it) again\n"
        "from the start of the log, with its script as the file is now, into fresh targets\n"
        "(its documents, and the tables it names with sql:table) while the current ones keep\n"
        "serving readers, and keep being updated by a daemon that runs it. Once the new build\n"
        "has caught up with the log, readers see it, in one transaction, and the old targets\n"
        "are dropped. A daemon running PROCESSOR goes on from the new build by itself.\n"
        "Progress goes to stderr: a bar on a terminal, else a log line every 10 s. Prints\n"
        "{\"processor\",\"version\",\"old_version\",\"events\",\"seconds\",\"targets\"} when\n"
        "done. Interrupted, a rebuild goes on from where it was when started again.\n"
        "A projection with reset() (fixed tables it clears itself) cannot be built beside\n"
        "itself: change its version and `tide run` rebuilds it in place.\n"
        "  --keep           keep the old targets (a table NAME becomes NAME__vOLD)\n"
        "  --sql-role ROLE  run the script's SQL as ROLE, as `tide run --sql-role` does\n";

struct run {
	struct cli cli;
	const char *id, *sql_role;
	bool keep, show, shown;
	char owner[128], builder_id[TIDE_MAX_NAME_BYTES + 16], suffix[48];
	char *script, *app, *name, *partition;
	struct tide_consumer *builder;
	struct tide_generation gen; /* loaded; moved to the builder */
	bool built;
	struct tide_progress progress;
	uint64_t started_ns;
	bool locked; /* the processor's row, in the transaction of the switch */
	cJSON *out;  /* what is printed once the switch commits */
};

static void finish(struct run *r, int status, const char *err)
{
	if (r->shown)
		fputs("\r\033[K", stderr);
	r->shown = false;
	if (status)
		tide_cli_fail(&r->cli, status, err);
	tide_cli_done(&r->cli);
}

/* --- the switch ---------------------------------------------------------------------------- *
 * Once the build has caught up, this process's own connection opens a transaction and takes
 * the processor's row FOR UPDATE: a daemon's batch of it (tide_processor_enter) and inline
 * appenders (FOR SHARE) wait from then on, so no event reaches the old targets any more. The
 * builder then takes what was appended meanwhile, stops, and the switch runs and commits in
 * that transaction: the new targets hold every event, and whatever waited goes on with them. */

static void on_committed(const struct tide_pg_reply *reply, void *arg)
{
	struct run *r = arg;
	char buf[600];
	if (reply->status) {
		finish(r, reply->status, tide_pg_explain(reply, buf, sizeof(buf)));
		return;
	}
	if (r->shown)
		fputc('\n', stderr); /* the last bar stays */
	r->shown = false;
	tide_cli_print_line(r->out);
	r->out = NULL;
	finish(r, 0, NULL);
}

static void on_ignored(const struct tide_pg_reply *reply, void *arg)
{
	(void)reply;
	(void)arg;
}

/* Ends the transaction of the switch with ROLLBACK and the run with err. */
static void abandon(struct run *r, int status, const char *err)
{
	if (r->cli.store && tide_pg_ready(r->cli.store->pg) &&
	    tide_pg_exec_sql(r->cli.store->pg, "ROLLBACK", 0, NULL, on_ignored, NULL) != 0)
		status = TIDE_ECONN;
	finish(r, status, err);
}

static void on_switched(const struct tide_pg_reply *reply, void *arg)
{
	struct run *r = arg;
	char buf[800], why[400];
	if (reply->status) {
		snprintf(buf, sizeof(buf),
		         "the build caught up, but switching readers to it failed: %s (run `tide "
		         "rebuild %s` again: it goes on from where it is)",
		         tide_pg_explain(reply, why, sizeof(why)), r->id);
		abandon(r, reply->status, buf);
		return;
	}
	double s = (double)(uv_hrtime() - r->started_ns) / 1e9;
	r->out = cJSON_CreateObject();
	cJSON_AddStringToObject(r->out, "processor", r->id);
	cJSON_AddNumberToObject(r->out, "version", r->gen.version);
	cJSON_AddRawToObject(r->out, "old_version", PQgetvalue(reply->res, 0, 0));
	tide_json_add_i64(r->out, "events", r->progress.done);
	cJSON_AddNumberToObject(r->out, "seconds", (double)(int64_t)(s * 1000) / 1000);
	cJSON_AddRawToObject(r->out, "targets", PQgetvalue(reply->res, 0, 2));
	if (tide_pg_exec_sql(r->cli.store->pg, "COMMIT", 0, NULL, on_committed, r) != 0)
		finish(r, TIDE_ECONN, tide_pg_error(r->cli.store->pg));
}

static void builder_stopped(void *arg)
{
	struct run *r = arg;
	tide_consumer_take_generation(r->builder, &r->gen);
	tide_consumer_free(r->builder);
	r->builder = NULL;
	if (!r->built) {
		abandon(r, TIDE_ECONN, "the build stopped before it caught up");
		return;
	}
	if (tide_rebuild_switch(r->cli.store->pg, r->id, r->builder_id, r->partition,
	                        r->gen.version, r->suffix, r->keep, on_switched, r) != 0)
		finish(r, TIDE_ECONN, tide_pg_error(r->cli.store->pg));
}

static void on_locked(const struct tide_pg_reply *reply, void *arg)
{
	struct run *r = arg;
	char buf[600];
	if (reply->status) {
		abandon(r, reply->status, tide_pg_explain(reply, buf, sizeof(buf)));
		return;
	}
	r->locked = true;
	tide_consumer_build_on(r->builder); /* what came before the lock */
}

static void builder_built(void *arg)
{
	struct run *r = arg;
	static const struct tide_pg_stmt lock = {
	        "tide_rebuild_lock",
	        "SELECT 1 FROM tide_processors WHERE processor_id = $1 FOR UPDATE", 1};
	if (r->locked) { /* caught up under the lock: done */
		r->built = true;
		tide_consumer_stop(r->builder);
		return;
	}
	const char *v[1] = {r->id};
	if (tide_pg_exec_sql(r->cli.store->pg, "BEGIN", 0, NULL, on_ignored, NULL) != 0 ||
	    tide_pg_exec(r->cli.store->pg, &lock, v, on_locked, r) != 0)
		finish(r, TIDE_ECONN, tide_pg_error(r->cli.store->pg));
}

static void draw(struct run *r, const struct tide_progress *p)
{
	char line[160], bar[32];
	int width = 24, full = p->total > 0 ? (int)(width * p->done / p->total) : width;
	for (int i = 0; i < width; i++)
		bar[i] = i < full ? '#' : '.';
	bar[width] = '\0';
	tide_progress_format(p, line, sizeof(line));
	fprintf(stderr, "\r[%s] %s\033[K", bar, line);
	fflush(stderr);
	r->shown = true;
}

static void on_progress(const struct tide_progress *p, void *arg)
{
	struct run *r = arg;
	r->progress = *p;
	if (r->show)
		draw(r, p);
}

/* --- the processor and its script ------------------------------------------------------------ */

static void on_loaded(struct tide_load_result *res, void *arg)
{
	struct run *r = arg;
	char msg[1200];
	if (res->outcome == TIDE_LOAD_FAILED) {
		snprintf(msg, sizeof(msg), "%s does not load: %s", r->script, res->err);
		finish(r, TIDE_EINVAL, msg);
		return;
	}
	if (res->outcome != TIDE_LOAD_OK || strcmp(res->gen.kind, "projection") != 0) {
		snprintf(msg, sizeof(msg),
		         "%s is no longer a projection: only projections are rebuilt (`tide forget "
		         "%s` removes a processor that is gone)",
		         r->script, r->id);
		finish(r, TIDE_EINVAL, msg);
		return;
	}
	if (res->gen.shards > 1) {
		snprintf(msg, sizeof(msg),
		         "%s is sharded (shards = %d): it is not built beside itself; change its "
		         "version (or shards) and `tide run` rebuilds it in place",
		         r->id, res->gen.shards);
		finish(r, TIDE_EINVAL, msg);
		return;
	}
	if (!res->gen.blue_green) {
		snprintf(msg, sizeof(msg),
		         "%s has reset(): it writes fixed tables it clears itself, so it cannot be "
		         "built beside itself; change its version and `tide run` rebuilds it in "
		         "place (or name its tables with sql:table and drop reset)",
		         r->id);
		finish(r, TIDE_EINVAL, msg);
		return;
	}
	r->gen = res->gen;
	memset(&res->gen, 0, sizeof(res->gen));
	/* Another suffix than the current one, even when the version is the same. */
	char current[sizeof(r->suffix)];
	memcpy(current, r->suffix, sizeof(current));
	tide_rebuild_suffix(r->gen.version, current, r->suffix, sizeof(r->suffix));
	free(r->partition);
	r->partition = strdup(r->gen.partition);
	char name[TIDE_MAX_NAME_BYTES + 16];
	snprintf(name, sizeof(name), "%s" TIDE_REBUILD_TAG, r->name);
	struct tide_consumer_opts co = {
	        .loop = &r->cli.loop,
	        .url = r->cli.url,
	        .owner = r->owner,
	        .id = r->builder_id,
	        .app = r->app,
	        .name = name,
	        .script = r->script,
	        .given = r->script,
	        .sql_role = r->sql_role,
	        .batch_size = 1000,
	        .poll_ms = 1000,
	        .lease_ms = 10000,
	        .on_stopped = builder_stopped,
	        .rebuild_of = r->id,
	        .target_suffix = r->suffix,
	        .on_built = builder_built,
	        .on_progress = on_progress,
	        .arg = r,
	};
	r->builder = r->partition ? tide_consumer_new(&co) : NULL;
	if (!r->builder) {
		finish(r, TIDE_ENOMEM, "out of memory");
		return;
	}
	r->started_ns = uv_hrtime();
	struct tide_generation g = r->gen;
	memset(&r->gen, 0, sizeof(r->gen));
	tide_consumer_set_generation(r->builder, &g);
}

static void on_processor(const struct tide_pg_reply *reply, void *arg)
{
	struct run *r = arg;
	char msg[1200];
	if (reply->status) {
		finish(r, reply->status, tide_pg_explain(reply, msg, sizeof(msg)));
		return;
	}
	PGresult *res = reply->res;
	if (PQntuples(res) == 0) {
		snprintf(msg, sizeof(msg),
		         "no processor %s (`tide status` lists them; `tide run` builds a new "
		         "projection from the start by itself)",
		         r->id);
		finish(r, TIDE_EINVAL, msg);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 1), "projection") != 0) {
		snprintf(msg, sizeof(msg),
		         "%s is a %s: only projections are rebuilt (a reactor would act on every "
		         "event again)",
		         r->id, PQgetvalue(res, 0, 1));
		finish(r, TIDE_EINVAL, msg);
		return;
	}
	if (!PQgetisnull(res, 0, 5)) {
		snprintf(msg, sizeof(msg),
		         "a rebuild of %s is under way already (by %s): wait for it to finish",
		         r->id, PQgetvalue(res, 0, 5));
		finish(r, TIDE_EINVAL, msg);
		return;
	}
	r->script = strdup(PQgetvalue(res, 0, 0));
	r->app = strdup(PQgetvalue(res, 0, 4));
	const char *slash = strrchr(r->id, '/');
	r->name = strdup(slash ? slash + 1 : r->id);
	if (!r->script || !r->app || !r->name) {
		finish(r, TIDE_ENOMEM, "out of memory");
		return;
	}
	if (!r->script[0]) {
		snprintf(msg, sizeof(msg),
		         "%s has no script on record: run it with `tide run` first", r->id);
		finish(r, TIDE_EINVAL, msg);
		return;
	}
	snprintf(r->suffix, sizeof(r->suffix), "%s", PQgetvalue(res, 0, 3)); /* the current one */
	/* The upcasters beside the script, as `tide run` has them for it. */
	char dir[4096];
	const char *end = strrchr(r->script, '/');
	snprintf(dir, sizeof(dir), "%.*s", end ? (int)(end - r->script) : 1, end ? r->script : ".");
	const char *dirs[1] = {dir};
	struct tide_vm_opts vo = {0};
	struct tide_upcasters up;
	if (tide_upcasters_find(dirs, 1, &vo, &up) != 0) {
		finish(r, TIDE_ENOMEM, "out of memory");
		return;
	}
	struct tide_load_request req = {.path = r->script,
	                                .id = r->id,
	                                .force = true,
	                                .upcasters = up.paths,
	                                .upcasters_error = up.error};
	int rc = tide_load(&r->cli.loop, &req, on_loaded, r);
	tide_upcasters_free(&up);
	if (rc != 0)
		finish(r, TIDE_ENOMEM, "out of memory");
}

static void on_open(struct tide_store *store, int status, const char *err, void *arg)
{
	(void)store;
	struct run *r = arg;
	static const struct tide_pg_stmt stmt = {
	        "tide_rebuild_processor",
	        "SELECT coalesce(p.script, ''), p.kind, p.version, p.target_suffix,"
	        " coalesce(p.app, ''), b.owner"
	        " FROM tide_processors p LEFT JOIN tide_processors b"
	        "  ON b.processor_id = p.processor_id || '" TIDE_REBUILD_TAG "'"
	        "  AND b.owner IS NOT NULL AND b.lease_until > now()"
	        " WHERE p.processor_id = $1",
	        1};
	char msg[800];
	if (status) {
		snprintf(msg, sizeof(msg), "cannot connect to the database: %s", err);
		finish(r, status, msg);
		return;
	}
	const char *v[1] = {r->id};
	if (tide_pg_exec(r->cli.store->pg, &stmt, v, on_processor, r) != 0)
		finish(r, TIDE_ECONN, tide_pg_error(r->cli.store->pg));
}

int tide_cli_rebuild_main(int argc, char **argv)
{
	static const struct option opts[] = {
	        {"keep", no_argument, NULL, 'k'},
	        {"sql-role", required_argument, NULL, 'r'},
	        {"database", required_argument, NULL, 'd'},
	        {"help", no_argument, NULL, 'h'},
	        {NULL, 0, NULL, 0},
	};
	struct run r = {.cli = {.cmd = "rebuild"}};
	const char *url = NULL;
	opterr = 0;
	optind = 1;
	int o;
	while ((o = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		switch (o) {
		case 'k': r.keep = true; break;
		case 'r': r.sql_role = optarg; break;
		case 'd': url = optarg; break;
		case 'h': fputs(usage, stdout); return 0;
		case ':':
			return tide_cli_usage("rebuild", "option '%s' needs a value",
			                      argv[optind - 1]);
		default: return tide_cli_usage("rebuild", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (argc - optind < 1)
		return tide_cli_usage("rebuild", "missing argument: PROCESSOR (its id, APP/NAME)");
	if (argc - optind > 1)
		return tide_cli_usage("rebuild", "unexpected argument '%s'", argv[optind + 1]);
	r.id = argv[optind];
	char err[200];
	if (tide_check_name("processor id", r.id, strlen(r.id), TIDE_MAX_NAME_BYTES, err,
	                    sizeof(err)))
		return tide_cli_usage("rebuild", "%s", err);
	if (!tide_rebuild_builder_id(r.id, r.builder_id, sizeof(r.builder_id)))
		return tide_cli_usage("rebuild", "the processor id is too long");
	r.cli.url = tide_cli_database_url(url);
	if (!r.cli.url)
		return tide_cli_usage("rebuild", "no database given: pass --database URL or set "
		                                 "TIDE_DATABASE_URL");
	char host[64] = "host";
	gethostname(host, sizeof(host) - 1);
	snprintf(r.owner, sizeof(r.owner), "tide:%s:%d:%08x", host, (int)getpid(),
	         (unsigned)(uv_hrtime() & 0xffffffffu));
	r.show = isatty(2);
	if (r.show && !tide_log_enabled("debug"))
		tide_log_set_level("warn"); /* the bar says what the info lines would */
	tide_set_application_name("tide rebuild");
	uv_loop_init(&r.cli.loop);
	if (tide_store_open(&r.cli.loop, r.cli.url, on_open, &r, &r.cli.store) != 0) {
		fprintf(stderr, "tide rebuild: out of memory\n");
		r.cli.exit_code = 1;
	}
	uv_run(&r.cli.loop, UV_RUN_DEFAULT);
	uv_loop_close(&r.cli.loop);
	tide_generation_free(&r.gen);
	cJSON_Delete(r.out);
	free(r.script);
	free(r.app);
	free(r.name);
	free(r.partition);
	return r.cli.exit_code;
}
