/* batch.c — where a batch reaches Lua. The events become Lua tables once, the script
 * runs in a coroutine (tide.processor_run), sql:exec statements are pipelined without
 * waiting, sql:query yields until its rows arrive, and the closing statement (the
 * checkpoint, see sql/) runs in the same transaction as the script's effects.
 *
 * Every allocation on the VM happens inside a protected call: the set-up runs under
 * lua_cpcall, and a query's rows are built on the VM's main state under lua_cpcall and
 * handed to the coroutine through the registry (sql_result), never pushed onto the
 * suspended coroutine from C, where a memory error would have no handler. */
#include "batch.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "lua_json.h"
#include "lua_store.h"
#include "metrics.h"
#include "store.h"

#define SQL_MT     "tide.sql"
#define MAX_PARAMS 64

struct tide_batch {
	struct tide_vm *vm;
	lua_State *co;
	int co_ref;
	int handle_ref; /* keeps the sql handle alive until the batch is over */
	int result_ref; /* the rows of the last query, until the script takes them */
	struct tide_pg *pg;
	uv_loop_t *loop;
	uv_timer_t *defer; /* set when the batch ends inside tide_batch_run */
	tide_batch_cb cb;
	void *arg;
	const struct tide_batch_spec *spec; /* only during tide_batch_run */
	char *role;
	char *close_sql;
	int close_nargs;
	char *close_args[TIDE_BATCH_MAX_ARGS];
	int outstanding; /* requests whose replies are still out */
	bool starting;   /* inside tide_batch_run */
	bool started;    /* the coroutine has been resumed once */
	bool over;       /* COMMIT's or ROLLBACK's reply came, or could not be sent */
	bool failed;     /* something failed: the transaction is rolled back */
	bool script;     /* ... and it was the script */
	bool query_out;  /* the coroutine waits for a query */
	bool conn_lost;  /* a reply said the connection is gone */
	int status;
	char err[1024];
	char result_err[1024];
	char sqlstate[6];
	char traceback[4096];
	struct sql_handle *handle;
	/* Where each sql:exec in flight came from, in the order of their replies: an error
	 * arriving later (the statement is pipelined) names the script line and the SQL. */
	struct exec_site *sites;
	size_t nsites, cap_sites, exec_replies;
	bool trace_sql;
	const char *query_sql; /* the query out (alive on the waiting coroutine's stack) */
	bool query_failed;     /* a query failed: its error is raised in the script */
	bool result_is_error;  /* result_ref holds an error table (a ctx.append conflict) */
	bool appended;         /* a ctx.append succeeded: wake consumers after the commit */
	bool nested;           /* in a transaction of the caller's (spec->nested) */
	bool close_sent;       /* nested: close_sql went out */
	struct tide_wake *wake;
	char *append_stream; /* the stream of the ctx.append out */
	uint64_t append_sent_ns;
	size_t appended_events; /* by ctx.append: counted on /metrics once committed */
	char query_err[1024];   /* ... and the batch fails with it even if the script goes on */
};

#define SITE_SQL_BYTES 160
struct exec_site {
	const char *source; /* the script's chunk name ("@path"), alive with its function */
	int line;
	char sql[SITE_SQL_BYTES];
};

struct sql_handle {
	struct tide_batch *batch; /* NULL once the batch is over */
};

static void on_exec(const struct tide_pg_reply *reply, void *arg);

static void note_reply(struct tide_batch *b, const struct tide_pg_reply *reply);

static void fail_batch(struct tide_batch *b, const char *err, const char *sqlstate)
{
	if (!b->err[0]) {
		snprintf(b->err, sizeof(b->err), "%s", err);
		if (sqlstate || !b->query_failed)
			snprintf(b->sqlstate, sizeof(b->sqlstate), "%s", sqlstate ? sqlstate : "");
	}
	b->failed = true;
}

static void fail_script(struct tide_batch *b, const char *err, const char *traceback)
{
	if (!b->err[0]) {
		/* An error a failed query raised in the script is the query's (its SQLSTATE
		 * says whether it was the script's doing), told with the script's line. */
		b->script = !b->query_failed;
		snprintf(b->traceback, sizeof(b->traceback), "%s", traceback ? traceback : "");
	}
	fail_batch(b, err, NULL);
}

static void batch_free(struct tide_batch *b)
{
	free(b->append_stream);
	free(b->sites);
	free(b->role);
	free(b->close_sql);
	for (int i = 0; i < b->close_nargs; i++)
		free(b->close_args[i]);
	free(b);
}

static void report(struct tide_batch *b)
{
	struct tide_batch_outcome o = {
	        .status = b->status,
	        .script = b->status && b->script,
	        .err = b->status ? b->err : NULL,
	        .sqlstate = b->sqlstate,
	        .traceback = b->traceback,
	        .closed = b->close_sent,
	};
	b->cb(&o, b->arg);
}

static void defer_closed(uv_handle_t *h)
{
	struct tide_batch *b = h->data;
	free(h);
	batch_free(b);
}

static void on_deferred(uv_timer_t *t)
{
	struct tide_batch *b = t->data;
	report(b);
	uv_close((uv_handle_t *)t, defer_closed);
}

static void finish(struct tide_batch *b, int status)
{
	if (b->vm) {
		lua_State *L = tide_vm_state(b->vm);
		if (b->handle)
			b->handle->batch = NULL;
		luaL_unref(L, LUA_REGISTRYINDEX, b->handle_ref);
		luaL_unref(L, LUA_REGISTRYINDEX, b->co_ref);
		luaL_unref(L, LUA_REGISTRYINDEX, b->result_ref);
	}
	b->status = status;
	if (status == 0 && !b->nested && b->appended_events)
		tide_metrics_appended(TIDE_METRICS_REACTOR, b->appended_events);
	if (!b->starting) {
		report(b);
		batch_free(b);
		return;
	}
	/* Ended inside tide_batch_run: the caller hears of it on the next loop turn. */
	b->defer = malloc(sizeof(*b->defer));
	if (!b->defer || uv_timer_init(b->loop, b->defer) != 0) {
		/* Cannot defer without memory: better late than never, but never inside. */
		free(b->defer);
		b->defer = NULL;
		tide_log("error", "batch.lost", "error", "out of memory ending a batch",
		         (char *)NULL);
		abort();
	}
	b->defer->data = b;
	uv_timer_start(b->defer, on_deferred, 0, 0);
}

/* The batch ends once it is over and every reply it waits for has come (a connection
 * that fails answers all of them, later). */
static void try_finish(struct tide_batch *b)
{
	if (b->over && b->outstanding == 0)
		finish(b, b->conn_lost ? TIDE_ECONN : b->failed ? TIDE_EDB : 0);
}

static void on_end(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_batch *b = arg;
	b->outstanding--;
	note_reply(b, reply);
	b->over = true;
	try_finish(b);
}

/* Sends one statement of the batch's transaction; false when the connection is gone. */
static bool send_stmt(struct tide_batch *b, const char *sql, int n, const char *const *v,
                      tide_pg_reply_cb cb)
{
	if (tide_pg_exec_sql(b->pg, sql, n, v, cb, b) != 0) {
		fail_batch(b, tide_pg_error(b->pg), NULL);
		b->conn_lost = true;
		return false;
	}
	b->outstanding++;
	return true;
}

/* A nested batch's closing statement: a COMMIT that found its transaction failed ends it
 * all the same, and says so with the status ROLLBACK. */
static void on_close(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_batch *b = arg;
	if (!reply->status && strcmp(PQcmdStatus(reply->res), "ROLLBACK") == 0)
		fail_batch(b,
		           "the transaction was rolled back, not committed: a statement in it had "
		           "failed",
		           NULL);
	on_exec(reply, arg);
}

/* Nested: the caller ends the transaction; the batch sends close_sql after a script that
 * succeeded, and reports once the replies are in. */
static void end_nested(struct tide_batch *b)
{
	if (!b->failed && b->close_sql) {
		b->close_sent = send_stmt(b, b->close_sql, b->close_nargs,
		                          (const char *const *)b->close_args, on_close);
		if (b->close_sent && b->wake)
			tide_wake(b->pg, b->wake);
	}
	b->over = true;
	try_finish(b);
}

static void end_transaction(struct tide_batch *b)
{
	if (b->nested) {
		end_nested(b);
		return;
	}
	bool sent;
	if (b->failed) {
		sent = send_stmt(b, "ROLLBACK", 0, NULL, on_end);
	} else {
		const char *v[1] = {b->role};
		sent = (!b->role || send_stmt(b, "SELECT tide_role_end($1)", 1, v, on_exec)) &&
		       (!b->close_sql || send_stmt(b, b->close_sql, b->close_nargs,
		                                   (const char *const *)b->close_args, on_exec)) &&
		       send_stmt(b, "COMMIT", 0, NULL, on_end);
		if (sent && b->appended && b->wake)
			tide_wake(b->pg, b->wake);
	}
	if (!sent) {
		b->over = true;
		try_finish(b);
	}
}

static void resume(struct tide_batch *b)
{
	struct tide_vm_error e;
	/* The first resume starts tide.processor_run with its arguments (set_up). */
	int rc = tide_vm_resume(b->vm, b->co, b->started ? 0 : 13, &e);
	b->started = true;
	if (rc == LUA_YIELD && b->query_out)
		return; /* a query is out; its reply resumes us */
	if (rc == LUA_YIELD)
		fail_script(b,
		            "the handler called coroutine.yield outside a coroutine it created; "
		            "a handler may only yield inside its own coroutines",
		            "");
	else if (rc != 0)
		fail_script(b, e.message, e.traceback);
	if (b->failed && !b->err[0]) /* the script caught its query's error */
		fail_batch(b, b->query_err, NULL);
	/* Replies of pipelined execs arrive before COMMIT's: end now, in order. */
	end_transaction(b);
}

static void on_exec(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_batch *b = arg;
	b->outstanding--;
	note_reply(b, reply);
	try_finish(b);
}

/* The statement, on one line and cut at n - 1 bytes (with "..." when cut). */
static void statement_shown(const char *sql, size_t len, char *out, size_t n)
{
	size_t j = 0;
	for (size_t i = 0; i < len && j + 1 < n; i++)
		out[j++] = sql[i] == '\n' || sql[i] == '\t' || sql[i] == '\r' ? ' ' : sql[i];
	out[j] = '\0';
	if (len >= n && n > 4)
		memcpy(out + n - 4, "...", 4);
}

/* The reply to one of the script's sql:exec: an error names where it came from. */
static void on_script_exec(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_batch *b = arg;
	size_t i = b->exec_replies++;
	if (reply->status && reply->status != TIDE_ECONN && reply->status != TIDE_ECLOSED &&
	    i < b->nsites && !b->err[0]) {
		const struct exec_site *site = &b->sites[i];
		char err[sizeof(b->err)];
		if (site->source)
			snprintf(err, sizeof(err), "%s:%d: sql:exec failed: %s (statement: %s)",
			         site->source[0] == '@' ? site->source + 1 : site->source,
			         site->line, reply->err, site->sql);
		else
			snprintf(err, sizeof(err), "%s (statement: %s)", reply->err, site->sql);
		struct tide_pg_reply named = *reply;
		named.err = err;
		on_exec(&named, arg);
		return;
	}
	on_exec(reply, arg);
}

/* Records where an sql:exec comes from: the innermost frame of the script itself (not of
 * tide's runtime, whose chunks are named "=[tide ...]"). */
static bool note_site(lua_State *L, struct tide_batch *b, const char *sql, size_t len)
{
	if (b->nsites == b->cap_sites) {
		size_t cap = b->cap_sites ? b->cap_sites * 2 : 64;
		struct exec_site *s = realloc(b->sites, cap * sizeof(*s));
		if (!s)
			return false;
		b->sites = s;
		b->cap_sites = cap;
	}
	struct exec_site *site = &b->sites[b->nsites++];
	site->source = NULL;
	site->line = 0;
	lua_Debug ar;
	/* Level 1 is tide's sql:exec wrapper. */
	for (int level = 2; lua_getstack(L, level, &ar); level++) {
		if (!lua_getinfo(L, "Sl", &ar) || ar.source[0] != '@' || ar.currentline <= 0)
			continue;
		site->source = ar.source;
		site->line = ar.currentline;
		break;
	}
	statement_shown(sql, len, site->sql, sizeof(site->sql));
	return true;
}

static void note_reply(struct tide_batch *b, const struct tide_pg_reply *reply)
{
	if (!reply->status)
		return;
	if (reply->status == TIDE_ECONN || reply->status == TIDE_ECLOSED)
		b->conn_lost = true;
	fail_batch(b, reply->err, reply->sqlstate);
}

/* Pushes one row as a table keyed by column name, values converted by type. */
static void push_row(lua_State *L, PGresult *res, int r)
{
	int cols = PQnfields(res);
	lua_createtable(L, 0, cols);
	for (int c = 0; c < cols; c++) {
		if (PQgetisnull(res, r, c))
			continue;
		const char *v = PQgetvalue(res, r, c);
		switch (PQftype(res, c)) {
		case 16: lua_pushboolean(L, v[0] == 't'); break; /* bool */
		case 20:
		case 21:
		case 23:
		case 700:
		case 701:
		case 1700: /* numbers */ lua_pushnumber(L, strtod(v, NULL)); break;
		case 114:
		case 3802: /* json, jsonb */
			if (tide_lua_push_json_text(L, v, (size_t)PQgetlength(res, r, c)) != 0)
				luaL_error(L, "column %s: JSON nested more than %d levels deep",
				           PQfname(res, c), TIDE_MAX_JSON_DEPTH);
			break;
		default: lua_pushlstring(L, v, (size_t)PQgetlength(res, r, c)); break;
		}
		lua_setfield(L, -2, PQfname(res, c));
	}
}

struct rows_build {
	PGresult *res;
	int ref;
};

static int build_rows(lua_State *L)
{
	struct rows_build *rb = lua_touserdata(L, 1);
	int rows = PQntuples(rb->res);
	lua_createtable(L, rows, 0);
	for (int r = 0; r < rows; r++) {
		push_row(L, rb->res, r);
		lua_rawseti(L, -2, r + 1);
	}
	rb->ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

static void on_query(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_batch *b = arg;
	b->outstanding--;
	b->query_out = false;
	b->result_err[0] = '\0';
	if (reply->status) {
		/* Raised in the script, at its line; the batch fails with it in any case. */
		if (reply->status == TIDE_ECONN || reply->status == TIDE_ECLOSED)
			b->conn_lost = true;
		b->failed = true;
		if (!b->query_failed && !b->err[0])
			snprintf(b->sqlstate, sizeof(b->sqlstate), "%s",
			         reply->sqlstate ? reply->sqlstate : "");
		b->query_failed = true;
		char shown[SITE_SQL_BYTES];
		statement_shown(b->query_sql, strlen(b->query_sql), shown, sizeof(shown));
		snprintf(b->result_err, sizeof(b->result_err),
		         "sql:query failed: %s (statement: %s)", reply->err, shown);
		if (!b->query_err[0])
			snprintf(b->query_err, sizeof(b->query_err), "%s", b->result_err);
	} else {
		lua_State *L = tide_vm_state(b->vm);
		struct rows_build rb = {reply->res, LUA_NOREF};
		if (lua_cpcall(L, build_rows, &rb) != 0) {
			snprintf(b->result_err, sizeof(b->result_err),
			         "cannot hand the query's rows to the script: %s",
			         lua_tostring(L, -1));
			lua_pop(L, 1);
		}
		b->result_ref = rb.ref;
	}
	resume(b);
}

/* Converts arguments 3.. of a sql call into text parameters; strings point into the Lua
 * stack or into bufs (freed by the caller). Returns the count or -1 (message in err). */
static int params(lua_State *L, const char **values, char **owned, char (*nums)[32], char *err,
                  size_t n)
{
	int count = lua_gettop(L) - 2;
	if (count > MAX_PARAMS) {
		snprintf(err, n, "at most %d parameters", MAX_PARAMS);
		return -1;
	}
	lua_getfield(L, LUA_REGISTRYINDEX, "tide.json.null");
	int null = lua_gettop(L);
	for (int i = 0; i < count; i++) {
		int idx = i + 3;
		values[i] = NULL;
		owned[i] = NULL;
		switch (lua_type(L, idx)) {
		case LUA_TNIL: break;
		case LUA_TBOOLEAN: values[i] = lua_toboolean(L, idx) ? "true" : "false"; break;
		case LUA_TNUMBER: {
			lua_Number x = lua_tonumber(L, idx);
			if (x == floor(x) && fabs(x) < 9.2e18)
				snprintf(nums[i], 32, "%" PRId64, (int64_t)x);
			else
				snprintf(nums[i], 32, "%.17g", x);
			values[i] = nums[i];
			break;
		}
		case LUA_TSTRING: {
			size_t len;
			values[i] = lua_tolstring(L, idx, &len);
			if (strlen(values[i]) != len) {
				snprintf(err, n, "$%d: a SQL parameter cannot hold a NUL byte",
				         i + 1);
				lua_pop(L, 1);
				return -1;
			}
			break;
		}
		case LUA_TTABLE:
			if (lua_rawequal(L, idx, null))
				break;
			{
				char path[32];
				snprintf(path, sizeof(path), "$%d", i + 1);
				owned[i] = tide_lua_to_json_text(L, idx, path, err, n);
				if (!owned[i]) {
					lua_pop(L, 1);
					return -1;
				}
				values[i] = owned[i];
			}
			break;
		default:
			snprintf(err, n, "$%d: a %s cannot be a SQL parameter", i + 1,
			         luaL_typename(L, idx));
			lua_pop(L, 1);
			return -1;
		}
	}
	lua_pop(L, 1);
	return count;
}

/* raw_exec(handle, sql, ...) → true | nil, err
 * raw_query(handle, sql, ...) → nil, err when it cannot be sent; else it yields until the
 * rows are there and returns nothing: raw_result(handle) then gives rows | nil, err. */
static int sql_call(lua_State *L, bool query)
{
	struct sql_handle *h = luaL_checkudata(L, 1, SQL_MT);
	size_t len;
	const char *sql = luaL_checklstring(L, 2, &len);
	struct tide_batch *b = h->batch;
	if (!b)
		return luaL_error(L, "this sql handle belongs to a batch that is over");
	if (b->query_out)
		return luaL_error(L, "another query is still running");
	/* A query waits by yielding the batch's coroutine: from a coroutine of the script's
	 * own, the yield would land in the script instead, and the batch would end with the
	 * query still out. */
	if (query && L != b->co)
		return luaL_error(L, "sql:query cannot run inside a coroutine the handler created "
		                     "(sql:exec can)");
	if (strlen(sql) != len)
		return luaL_error(L, "the SQL text contains a NUL byte");
	const char *values[MAX_PARAMS];
	char *owned[MAX_PARAMS];
	char nums[MAX_PARAMS][32];
	char err[512] = "";
	int count = params(L, values, owned, nums, err, sizeof(err));
	if (count < 0)
		return luaL_error(L, "%s", err);
	if (!query && b->trace_sql && !note_site(L, b, sql, len)) {
		for (int i = 0; i < count; i++)
			cJSON_free(owned[i]);
		return luaL_error(L, "not enough memory");
	}
	int rc = tide_pg_exec_sql(b->pg, sql, count, values, query ? on_query : on_script_exec, b);
	for (int i = 0; i < count; i++)
		cJSON_free(owned[i]);
	if (rc) {
		if (!query && b->trace_sql)
			b->nsites--; /* no reply will come */
		lua_pushnil(L);
		lua_pushstring(L, tide_pg_error(b->pg));
		return 2;
	}
	b->outstanding++;
	if (!query) {
		lua_pushboolean(L, 1);
		return 1;
	}
	b->query_out = true;
	b->query_sql = sql;
	return lua_yield(L, 0);
}

static int l_sql_exec(lua_State *L)
{
	return sql_call(L, false);
}

static int l_sql_query(lua_State *L)
{
	return sql_call(L, true);
}

static int l_sql_result(lua_State *L)
{
	struct sql_handle *h = luaL_checkudata(L, 1, SQL_MT);
	struct tide_batch *b = h->batch;
	if (!b)
		return luaL_error(L, "this sql handle belongs to a batch that is over");
	if (b->result_err[0]) {
		lua_pushnil(L);
		lua_pushstring(L, b->result_err);
		b->result_err[0] = '\0';
		return 2;
	}
	if (b->result_is_error)
		lua_pushnil(L);
	lua_rawgeti(L, LUA_REGISTRYINDEX, b->result_ref);
	luaL_unref(L, LUA_REGISTRYINDEX, b->result_ref);
	b->result_ref = LUA_NOREF;
	return b->result_is_error ? 2 : 1;
}

/* The outcome of a ctx.append, built on the VM's main state under lua_cpcall. */
struct append_build {
	int status;
	const char *err;
	const struct tide_append_result *r;
	int ref;
};

static int build_append_result(lua_State *L)
{
	struct append_build *ab = lua_touserdata(L, 1);
	if (ab->status == 0)
		tide_lua_push_append_result(L, ab->r);
	else
		tide_lua_push_conflict(L, ab->err, ab->r);
	ab->ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

static void on_append(int status, const char *err, const struct tide_append_result *r, void *arg)
{
	struct tide_batch *b = arg;
	b->outstanding--;
	b->query_out = false;
	tide_metrics_append(TIDE_METRICS_REACTOR, status, 0, uv_hrtime() - b->append_sent_ns);
	if (status == 0 && r)
		b->appended_events += r->count;
	b->result_err[0] = '\0';
	b->result_is_error = false;
	char msg[sizeof(b->result_err)];
	snprintf(msg, sizeof(msg), "ctx.append to %s%s %s",
	         b->append_stream ? b->append_stream : "?", status ? ":" : "", err ? err : "");
	free(b->append_stream);
	b->append_stream = NULL;
	if (status == 0 || status == TIDE_ECONFLICT) {
		/* Nothing was written on a conflict: the script may catch it and go on. */
		lua_State *L = tide_vm_state(b->vm);
		struct append_build ab = {status, msg, r, LUA_NOREF};
		if (lua_cpcall(L, build_append_result, &ab) != 0) {
			snprintf(b->result_err, sizeof(b->result_err),
			         "cannot hand the append's outcome to the script: %s",
			         lua_tostring(L, -1));
			lua_pop(L, 1);
		}
		b->result_ref = ab.ref;
		b->result_is_error = status != 0;
		b->appended = b->appended || status == 0;
	} else {
		/* The transaction is aborted (or gone): the batch fails whatever the script does.
		 */
		if (status == TIDE_ECONN || status == TIDE_ECLOSED || status == TIDE_EUNKNOWN)
			b->conn_lost = true;
		b->failed = true;
		b->query_failed = true;
		snprintf(b->result_err, sizeof(b->result_err), "%s", msg);
		if (!b->query_err[0])
			snprintf(b->query_err, sizeof(b->query_err), "%s", msg);
	}
	resume(b);
}

static struct tide_batch_appender appender;

void tide_batch_set_appender(const struct tide_batch_appender *a)
{
	appender = a ? *a : (struct tide_batch_appender){0};
}

/* raw_append(handle, stream, events, opts, partition): sends the append (the statement of
 * engine/append.c, as every tide writer does) in the batch's transaction and yields until
 * it is done; raw_result(handle) then gives { next_expected_version, global_positions }
 * or nil and the conflict's error table. Content the store refuses raises. */
static int l_sql_append(lua_State *L)
{
	struct sql_handle *h = luaL_checkudata(L, 1, SQL_MT);
	struct tide_batch *b = h->batch;
	if (!b)
		return luaL_error(L, "this sql handle belongs to a batch that is over");
	if (b->query_out)
		return luaL_error(L, "another query is still running");
	if (L != b->co)
		return luaL_error(L,
		                  "ctx.append cannot run inside a coroutine the handler created");
	size_t stream_len, partition_len;
	const char *stream = luaL_checklstring(L, 2, &stream_len);
	luaL_checktype(L, 3, LUA_TTABLE);
	int64_t expected = lua_istable(L, 4) ? tide_lua_expected(L, 4) : TIDE_EXPECT_ANY;
	const char *partition = luaL_checklstring(L, 5, &partition_len);
	char invalid[700] = "", misuse[700] = "";
	if (tide_check_name("stream name", stream, stream_len, TIDE_MAX_NAME_BYTES, invalid,
	                    sizeof(invalid)) ||
	    tide_check_partition(partition, partition_len, invalid, sizeof(invalid)))
		return luaL_error(L, "ctx.append: %s", invalid);
	struct tide_lua_events e = {0};
	if (tide_lua_events(L, 3, &e, invalid, misuse, sizeof(invalid)) != 0)
		return luaL_error(L, "ctx.append: %s", misuse[0] ? misuse : invalid);
	struct tide_append *a = NULL;
	int rc = tide_append_build(stream, partition, e.events, e.n, expected,
	                           strcmp(partition, TIDE_DEFAULT_PARTITION) != 0, invalid,
	                           sizeof(invalid), &a);
	if (rc) {
		tide_lua_events_free(&e);
		return luaL_error(L, "ctx.append: %s", invalid);
	}
	free(b->append_stream);
	b->append_stream = strdup(stream);
	b->append_sent_ns = uv_hrtime();
	rc = appender.send ? appender.send(appender.ctx, b->loop, b->pg, a, stream, partition,
	                                   e.events, e.n, b->role, on_append, b)
	                   : tide_append_send(b->pg, a, NULL, on_append, b);
	tide_lua_events_free(&e);
	if (rc != 0) {
		lua_pushnil(L);
		lua_pushstring(L, tide_pg_error(b->pg));
		return 2;
	}
	b->outstanding++;
	b->query_out = true;
	b->query_sql = "ctx.append";
	return lua_yield(L, 0);
}

static int l_log(lua_State *L)
{
	/* ctx.log(message): forwarded to stderr as a log line by the daemon's log. */
	const char *msg = luaL_checkstring(L, 1);
	lua_getfield(L, LUA_REGISTRYINDEX, "tide.processor_id");
	const char *id = lua_tostring(L, -1);
	tide_log("info", "script.log", "processor", id ? id : "?", "message", msg, (char *)NULL);
	return 0;
}

void tide_batch_init_vm(struct tide_vm *vm)
{
	lua_State *L = tide_vm_state(vm);
	if (luaL_newmetatable(L, SQL_MT)) {
		lua_pushliteral(L, "tide.sql");
		lua_setfield(L, -2, "__metatable");
	}
	lua_pop(L, 1);
	tide_lua_error_init(L);
}

struct build {
	const struct tide_read_result *read;
	int ref;
};

static int build_events(lua_State *L)
{
	struct build *b = lua_touserdata(L, 1);
	size_t n = b->read ? b->read->count : 0;
	struct tide_lua_messages ms;
	tide_lua_messages_begin(L, &ms, false);
	lua_createtable(L, (int)n, 0);
	for (size_t i = 0; i < n; i++) {
		const struct tide_message *m = &b->read->messages[i];
		if (!tide_lua_messages_push(L, &ms, m))
			return luaL_error(L,
			                  "the event at global position %f (stream position %f) is "
			                  "nested more than %d levels deep",
			                  (double)m->global_position, (double)m->stream_position,
			                  TIDE_MAX_JSON_DEPTH);
		lua_rawseti(L, -2, (int)i + 1);
	}
	b->ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

int tide_batch_events(struct tide_vm *vm, const struct tide_read_result *read, int *ref, char *err,
                      size_t n)
{
	lua_State *L = tide_vm_state(vm);
	struct build b = {read, LUA_NOREF};
	/* Protected: the VM's memory cap may refuse the tables. */
	if (lua_cpcall(L, build_events, &b) != 0) {
		snprintf(err, n, "cannot hand the batch to the script: %s", lua_tostring(L, -1));
		lua_pop(L, 1);
		lua_gc(L, LUA_GCCOLLECT, 0);
		return TIDE_ENOMEM;
	}
	*ref = b.ref;
	return 0;
}

void tide_batch_events_free(struct tide_vm *vm, int ref)
{
	luaL_unref(tide_vm_state(vm), LUA_REGISTRYINDEX, ref);
}

/* The coroutine and its arguments: tide.processor_run(p, events, raw handle, query, exec,
 * result, append, log, setup, reset, target suffix, processor id, in an append), built on the
 * main state and moved over. */
static int set_up(lua_State *L)
{
	struct tide_batch *b = lua_touserdata(L, 1);
	const struct tide_batch_spec *spec = b->spec;
	b->co = lua_newthread(L);
	b->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_getfield(L, LUA_REGISTRYINDEX, "tide.runtime");
	lua_getfield(L, -1, "processor_run");
	lua_remove(L, -2);
	lua_rawgeti(L, LUA_REGISTRYINDEX, spec->processor_ref);
	lua_rawgeti(L, LUA_REGISTRYINDEX, spec->events_ref);
	b->handle = lua_newuserdata(L, sizeof(*b->handle));
	b->handle->batch = b;
	luaL_getmetatable(L, SQL_MT);
	lua_setmetatable(L, -2);
	/* A finished coroutine no longer holds it, and Lua may collect before finish(). */
	lua_pushvalue(L, -1);
	b->handle_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_pushcfunction(L, l_sql_query);
	lua_pushcfunction(L, l_sql_exec);
	lua_pushcfunction(L, l_sql_result);
	lua_pushcfunction(L, l_sql_append);
	lua_pushcfunction(L, l_log);
	lua_pushboolean(L, spec->setup);
	lua_pushboolean(L, spec->reset);
	lua_pushstring(L, spec->target_suffix ? spec->target_suffix : "");
	lua_getfield(L, LUA_REGISTRYINDEX, "tide.processor_id"); /* set by the loader */
	lua_pushboolean(L, spec->in_append);
	lua_xmove(L, b->co, 14); /* a new thread has room for this many (LUA_MINSTACK) */
	return 0;
}

static char *dup_or_null(const char *s, bool *ok)
{
	if (!s)
		return NULL;
	char *c = strdup(s);
	*ok = *ok && c;
	return c;
}

void tide_batch_run(const struct tide_batch_spec *spec, tide_batch_cb cb, void *arg)
{
	struct tide_batch *b = calloc(1, sizeof(*b));
	if (!b) {
		/* Not even memory to say so later: a broken process, not a script's doing. */
		tide_log("error", "batch.lost", "error", "out of memory starting a batch",
		         (char *)NULL);
		abort();
	}
	lua_State *L = tide_vm_state(spec->vm);
	b->vm = spec->vm;
	b->pg = spec->pg;
	b->wake = spec->wake;
	b->loop = spec->loop;
	b->cb = cb;
	b->arg = arg;
	b->co_ref = b->handle_ref = b->result_ref = LUA_NOREF;
	b->trace_sql = spec->trace_sql;
	b->nested = spec->nested;
	b->starting = true;
	bool ok = true;
	b->role = dup_or_null(spec->role, &ok);
	b->close_sql = dup_or_null(spec->close_sql, &ok);
	b->close_nargs = spec->close_nargs;
	for (int i = 0; i < spec->close_nargs; i++)
		b->close_args[i] = dup_or_null(spec->close_args[i], &ok);
	b->spec = spec;
	if (!ok) {
		fail_batch(b, "out of memory starting the batch", NULL);
	} else if (lua_cpcall(L, set_up, b) != 0) {
		fail_script(b, lua_tostring(L, -1), "");
		lua_pop(L, 1);
	}
	b->spec = NULL;
	luaL_unref(L, LUA_REGISTRYINDEX, spec->events_ref);
	if (b->failed) {
		b->over = true;
		try_finish(b);
		b->starting = false;
		return;
	}

	const char *v[1] = {b->role};
	if (b->nested) {
		resume(b);
	} else if (send_stmt(b, "BEGIN", 0, NULL, on_exec) &&
	           (!spec->open_sql ||
	            send_stmt(b, spec->open_sql, spec->open_nargs, spec->open_args, on_exec)) &&
	           (!b->role ||
	            send_stmt(b, "SELECT set_config('role', $1, true)", 1, v, on_exec))) {
		resume(b);
	} else {
		b->over = true;
		try_finish(b);
	}
	b->starting = false;
}
