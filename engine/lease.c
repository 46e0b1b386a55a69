/* lease.c — the statements of a processor's rows: claim and release of the lease,
 * status, attempts, the checkpoint's move and dead letters (see lease.h). */
#include "lease.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static void fmt_int(char *buf, size_t n, int64_t v)
{
	snprintf(buf, n, "%" PRId64, v);
}

static void fmt_cursor(char *buf, size_t n, struct tide_cursor c)
{
	snprintf(buf, n, "%" PRIu64 ":%" PRId64, c.transaction_id, c.global_position);
}

static void on_logged(const struct tide_pg_reply *reply, void *arg)
{
	const char *what = arg;
	if (reply->status && reply->status != TIDE_ECLOSED && reply->status != TIDE_ECONN)
		tide_log("warn", what, "error", reply->err, (char *)NULL);
}

int tide_lease_claim(const struct tide_lease *l, tide_pg_reply_cb cb, void *arg)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_claim",
	        "SELECT acquired, transaction_id, global_position, rebuilt, attempt_at,"
	        " attempt_events, attempts, attempt_error, attempt_script, retries, refused,"
	        " (SELECT target_suffix FROM tide_processors WHERE processor_id = $1),"
	        " (SELECT owner FROM tide_processors WHERE processor_id = $1)"
	        " FROM tide_processor_claim($1, $2, $3::int, $4, $5::int, $6, $7, $8, $9, $10,"
	        "  $11::boolean)",
	        11,
	};
	char version[16], ttl[16];
	fmt_int(version, sizeof(version), l->version);
	fmt_int(ttl, sizeof(ttl), l->ttl_ms);
	const char *v[11] = {l->id,
	                     l->kind,
	                     version,
	                     l->owner,
	                     ttl,
	                     l->partition,
	                     l->app,
	                     l->name,
	                     l->script,
	                     l->given,
	                     l->takeover ? "true" : "false"};
	return tide_pg_exec(l->pg, &stmt, v, cb, arg);
}

void tide_lease_parse_claim(PGresult *res, struct tide_claim *out)
{
	memset(out, 0, sizeof(*out));
	out->error = out->script = out->suffix = "";
	if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 10))
		out->refused = PQgetvalue(res, 0, 10);
	if (PQntuples(res) != 1 || PQgetvalue(res, 0, 0)[0] != 't')
		return;
	out->acquired = true;
	out->checkpoint.transaction_id = strtoull(PQgetvalue(res, 0, 1), NULL, 10);
	out->checkpoint.global_position = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	out->rebuilt = PQgetvalue(res, 0, 3)[0] == 't';
	out->has_attempt =
	        !PQgetisnull(res, 0, 4) && tide_cursor_parse(PQgetvalue(res, 0, 4), &out->at) == 0;
	out->events = atoi(PQgetvalue(res, 0, 5));
	out->attempts = atoi(PQgetvalue(res, 0, 6));
	out->error = PQgetvalue(res, 0, 7);
	out->script = PQgetvalue(res, 0, 8);
	out->retries = strtoll(PQgetvalue(res, 0, 9), NULL, 10);
	out->suffix = PQgetvalue(res, 0, 11); /* "" for NULL: a row this claim made */
	out->previous_owner = PQgetisnull(res, 0, 12) ? NULL : PQgetvalue(res, 0, 12);
}

int tide_lease_layout(const struct tide_lease *l, const char *base, int shards, tide_pg_reply_cb cb,
                      void *arg)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_shard_layout", "SELECT tide_shard_layout($1, $2, $3::int, $4::int, $5)", 5};
	char n[16], version[16];
	fmt_int(n, sizeof(n), shards);
	fmt_int(version, sizeof(version), l->version);
	const char *v[5] = {base, l->id, n, version, l->partition};
	return tide_pg_exec(l->pg, &stmt, v, cb, arg);
}

int tide_lease_release(const struct tide_lease *l, tide_pg_reply_cb cb, void *arg)
{
	static const struct tide_pg_stmt stmt = {"tide_release",
	                                         "SELECT tide_processor_release($1, $2)", 2};
	const char *v[2] = {l->id, l->owner};
	return tide_pg_exec(l->pg, &stmt, v, cb, arg);
}

void tide_lease_report(const struct tide_lease *l, const char *status, const char *error,
                       int generation)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_report",
	        "INSERT INTO tide_processors (processor_id, kind, version, partition, status,"
	        " generation, last_error, script, seen_until, app)"
	        " VALUES ($1, $2, $3::int, $9, $4, $5::int, $6, $7,"
	        "  now() + make_interval(secs => $10::int / 1000.0), $11)"
	        " ON CONFLICT (processor_id) DO UPDATE SET status = excluded.status,"
	        " generation = excluded.generation, last_error = excluded.last_error,"
	        " seen_until = excluded.seen_until, updated_at = now()"
	        " WHERE (tide_processors.owner IS NULL OR tide_processors.owner = $8"
	        "  OR tide_processors.lease_until < now())"
	        " AND (tide_processors.script IS NULL OR tide_processors.script = $7)",
	        11,
	};
	if (!l->pg || !tide_pg_ready(l->pg))
		return;
	char version[16], gen[16], ttl[16];
	fmt_int(version, sizeof(version), l->version ? l->version : 1);
	fmt_int(gen, sizeof(gen), generation);
	fmt_int(ttl, sizeof(ttl), l->ttl_ms);
	const char *v[11] = {l->id,
	                     l->kind[0] ? l->kind : "unknown",
	                     version,
	                     status,
	                     gen,
	                     error && error[0] ? error : NULL,
	                     l->script,
	                     l->owner,
	                     l->partition[0] ? l->partition : TIDE_DEFAULT_PARTITION,
	                     ttl,
	                     l->app};
	if (tide_pg_exec(l->pg, &stmt, v, on_logged, "status.failed") != 0)
		tide_log("warn", "status.failed", "processor", l->id, (char *)NULL);
}

int tide_lease_attempt(const struct tide_lease *l, struct tide_cursor at, int events, bool replace,
                       const char *script, tide_pg_reply_cb cb, void *arg)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_attempt",
	        "SELECT tide_processor_attempt($1, $2, $3, $4::int, $5::boolean, $6)", 6};
	char at_text[48], n[16];
	fmt_cursor(at_text, sizeof(at_text), at);
	fmt_int(n, sizeof(n), events);
	const char *v[6] = {l->id, l->owner, at_text, n, replace ? "true" : "false", script};
	return tide_pg_exec(l->pg, &stmt, v, cb, arg);
}

void tide_lease_attempt_failed(const struct tide_lease *l, struct tide_cursor at, const char *error,
                               const char *traceback)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_attempt_failed", "SELECT tide_processor_attempt_failed($1, $2, $3, $4, $5)",
	        5};
	char at_text[48];
	fmt_cursor(at_text, sizeof(at_text), at);
	const char *v[5] = {l->id, l->owner, at_text, error,
	                    traceback && traceback[0] ? traceback : NULL};
	if (tide_pg_exec(l->pg, &stmt, v, on_logged, "attempt.record_failed") != 0)
		tide_log("warn", "attempt.record_failed", "processor", l->id, (char *)NULL);
}

/* The nine arguments of tide_processor_commit and tide_processor_park, in order. */
static void checkpoint_args(const struct tide_lease *l, struct tide_cursor from,
                            struct tide_cursor to, char (*text)[32], const char **v)
{
	fmt_int(text[0], 32, l->version);
	fmt_int(text[1], 32, l->ttl_ms);
	snprintf(text[2], 32, "%" PRIu64, from.transaction_id);
	fmt_int(text[3], 32, from.global_position);
	snprintf(text[4], 32, "%" PRIu64, to.transaction_id);
	fmt_int(text[5], 32, to.global_position);
	v[0] = l->id;
	v[1] = text[0];
	v[2] = l->owner;
	v[3] = text[1];
	v[4] = text[2];
	v[5] = text[3];
	v[6] = text[4];
	v[7] = text[5];
	v[8] = l->partition;
}

void tide_lease_commit(const struct tide_lease *l, struct tide_cursor from, struct tide_cursor to,
                       struct tide_batch_spec *spec)
{
	spec->close_sql = "SELECT tide_processor_commit($1, $2::int, $3, $4::int, $5::xid8,"
	                  " $6::bigint, $7::xid8, $8::bigint, $9)";
	spec->close_nargs = 9;
	checkpoint_args(l, from, to, spec->close_text, spec->close_args);
}

void tide_lease_enter(const struct tide_lease *l, const char *suffix, struct tide_batch_spec *spec)
{
	spec->open_sql = "SELECT tide_processor_enter($1, $2)";
	spec->open_nargs = 2;
	spec->open_args[0] = l->id;
	spec->open_args[1] = suffix;
}

void tide_lease_enter_reset(const struct tide_lease *l, const char *suffix, const char *base,
                            struct tide_batch_spec *spec)
{
	spec->open_sql = "SELECT tide_shard_enter($1, $2, $3)";
	spec->open_nargs = 3;
	spec->open_args[0] = l->id;
	spec->open_args[1] = suffix;
	spec->open_args[2] = base;
}

int tide_lease_park(const struct tide_lease *l, struct tide_cursor from, struct tide_cursor to,
                    bool park, int attempts, const char *error, const char *traceback,
                    tide_pg_reply_cb cb, void *arg)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_park",
	        "SELECT tide_processor_park($1, $2::int, $3, $4::int, $5::xid8, $6::bigint,"
	        " $7::xid8, $8::bigint, $9, $10::boolean, $11::int, $12, $13)",
	        13,
	};
	char text[6][32], n[16];
	const char *v[13];
	checkpoint_args(l, from, to, text, v);
	fmt_int(n, sizeof(n), attempts);
	v[9] = park ? "true" : "false";
	v[10] = n;
	v[11] = error;
	v[12] = traceback && traceback[0] ? traceback : NULL;
	return tide_pg_exec(l->pg, &stmt, v, cb, arg);
}

int tide_lease_dead_letter_next(const struct tide_lease *l, tide_pg_reply_cb cb, void *arg)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_dead_letter_next",
	        "SELECT id, stream_id, stream_position, global_position, transaction_id,"
	        " message_type, message_data, message_metadata, message_id, created, attempts,"
	        " message_partition,"
	        /* The shape the parked copy has (upcasters read it): the stored event's. */
	        " (SELECT m.message_schema_version FROM emt_messages m"
	        "   WHERE m.transaction_id = d.transaction_id"
	        "     AND m.global_position = d.global_position AND m.partition = "
	        "d.message_partition)"
	        " FROM tide_dead_letter_next($1, $2) d",
	        2,
	};
	const char *v[2] = {l->id, l->partition};
	return tide_pg_exec(l->pg, &stmt, v, cb, arg);
}

int64_t tide_lease_dead_letter_message(PGresult *res, struct tide_message *m)
{
	m->stream_id = PQgetvalue(res, 0, 1);
	m->stream_position = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	m->global_position = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
	m->transaction_id = strtoull(PQgetvalue(res, 0, 4), NULL, 10);
	m->type = PQgetvalue(res, 0, 5);
	m->data = PQgetvalue(res, 0, 6);
	m->metadata = PQgetvalue(res, 0, 7);
	m->message_id = PQgetvalue(res, 0, 8);
	m->created = PQgetvalue(res, 0, 9);
	m->partition = PQgetvalue(res, 0, 11);
	m->schema_version = PQgetisnull(res, 0, 12) ? NULL : PQgetvalue(res, 0, 12);
	return strtoll(PQgetvalue(res, 0, 0), NULL, 10);
}

void tide_lease_dead_letter_done(const struct tide_lease *l, int64_t dead_letter,
                                 struct tide_batch_spec *spec)
{
	spec->close_sql = "SELECT tide_dead_letter_done($1::bigint, $2, $3)";
	spec->close_nargs = 3;
	fmt_int(spec->close_text[0], 32, dead_letter);
	spec->close_args[0] = spec->close_text[0];
	spec->close_args[1] = l->id;
	spec->close_args[2] = l->owner;
}

void tide_lease_dead_letter_failed(const struct tide_lease *l, int64_t dead_letter,
                                   const char *error, const char *traceback)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_dead_letter_failed", "SELECT tide_dead_letter_failed($1::bigint, $2, $3)", 3};
	char id[24];
	fmt_int(id, sizeof(id), dead_letter);
	const char *v[3] = {id, error, traceback && traceback[0] ? traceback : NULL};
	if (tide_pg_exec(l->pg, &stmt, v, on_logged, "dead_letter.record_failed") != 0)
		tide_log("warn", "dead_letter.record_failed", "processor", l->id, (char *)NULL);
}
