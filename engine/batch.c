/* batch.c — where a batch reaches Lua. The events become Lua tables once, the script
 * runs in a coroutine (tide.processor.run_batch), sql:exec statements are pipelined
 * without waiting, sql:query yields until its rows arrive, and the checkpoint moves in
 * the same transaction as the script's effects (see checkpoint SQL in
 * sql/0003_tide_processors.sql). */
#include "batch.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "lua_json.h"
#include "lua_store.h"

#define SQL_MT     "tide.sql"
#define MAX_PARAMS 64

struct tide_batch {
	struct tide_vm *vm;
	lua_State *co;
	int co_ref;
	int handle_ref; /* keeps the sql handle alive until the batch is over */
	struct tide_pg *pg;
	tide_batch_cb cb;
	void *arg;
	const char *commit[TIDE_BATCH_COMMIT_ARGS];
	char commit_buf[TIDE_BATCH_COMMIT_ARGS][256];
	int inflight;   /* exec statements whose replies are still out */
	bool finishing; /* COMMIT or ROLLBACK sent */
	bool failed;    /* an exec failed: the transaction is aborted */
	bool query_out; /* the coroutine waits for a query */
	bool conn_lost; /* a reply said the connection is gone */
	char err[2048];
	char sqlstate[6];
	struct sql_handle *handle;
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
		snprintf(b->sqlstate, sizeof(b->sqlstate), "%s", sqlstate ? sqlstate : "");
	}
	b->failed = true;
}

static void finish(struct tide_batch *b, int status)
{
	lua_State *L = tide_vm_state(b->vm);
	b->handle->batch = NULL;
	luaL_unref(L, LUA_REGISTRYINDEX, b->handle_ref);
	luaL_unref(L, LUA_REGISTRYINDEX, b->co_ref);
	b->cb(status, status ? b->err : NULL, b->sqlstate, b->arg);
	free(b);
}

static void on_end(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_batch *b = arg;
	note_reply(b, reply);
	finish(b, b->conn_lost ? TIDE_ECONN : b->failed ? TIDE_EDB : 0);
}

static void end_transaction(struct tide_batch *b)
{
	b->finishing = true;
	int rc;
	if (b->failed) {
		rc = tide_pg_exec_sql(b->pg, "ROLLBACK", 0, NULL, on_end, b);
	} else {
		rc = tide_pg_exec_sql(
		        b->pg,
		        "SELECT tide_processor_commit($1, $2::int, $3, $4::int, $5::xid8,"
		        " $6::bigint, $7::xid8, $8::bigint, $9)",
		        TIDE_BATCH_COMMIT_ARGS, b->commit, on_exec, b);
		b->inflight += rc == 0;
		rc = rc ? rc : tide_pg_exec_sql(b->pg, "COMMIT", 0, NULL, on_end, b);
	}
	if (rc) {
		fail_batch(b, tide_pg_error(b->pg), NULL);
		finish(b, rc);
	}
}

static void resume(struct tide_batch *b, int nargs)
{
	char err[2048];
	int rc = tide_vm_resume(b->vm, b->co, nargs, err, sizeof(err));
	if (rc == LUA_YIELD)
		return; /* a query is out; its reply resumes us */
	if (rc != 0)
		fail_batch(b, err, NULL);
	/* Replies of pipelined execs arrive before COMMIT's: end now, in order. */
	end_transaction(b);
}

static void on_exec(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_batch *b = arg;
	b->inflight--;
	note_reply(b, reply);
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
				lua_pushstring(L, v);
			break;
		default: lua_pushlstring(L, v, (size_t)PQgetlength(res, r, c)); break;
		}
		lua_setfield(L, -2, PQfname(res, c));
	}
}

static void on_query(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_batch *b = arg;
	b->query_out = false;
	lua_State *co = b->co;
	if (reply->status) {
		note_reply(b, reply);
		lua_pushnil(co);
		lua_pushstring(co, reply->err);
		resume(b, 2);
		return;
	}
	int rows = PQntuples(reply->res);
	lua_createtable(co, rows, 0);
	for (int r = 0; r < rows; r++) {
		push_row(co, reply->res, r);
		lua_rawseti(co, -2, r + 1);
	}
	resume(b, 1);
}

/* Converts arguments 3.. of a sql call into text parameters; strings point into the Lua
 * stack or into bufs (freed by the caller). Returns the count or -1 (message pushed). */
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
		case LUA_TSTRING: values[i] = lua_tostring(L, idx); break;
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

/* raw_exec(handle, sql, ...) → true | nil, err;  raw_query(...) yields → rows | nil, err */
static int sql_call(lua_State *L, bool query)
{
	struct sql_handle *h = luaL_checkudata(L, 1, SQL_MT);
	const char *sql = luaL_checkstring(L, 2);
	struct tide_batch *b = h->batch;
	if (!b)
		return luaL_error(L, "this sql handle belongs to a batch that is over");
	if (b->query_out)
		return luaL_error(L, "another query is still running");
	const char *values[MAX_PARAMS];
	char *owned[MAX_PARAMS];
	char nums[MAX_PARAMS][32];
	char err[512] = "";
	int count = params(L, values, owned, nums, err, sizeof(err));
	if (count < 0)
		return luaL_error(L, "%s", err);
	int rc = tide_pg_exec_sql(b->pg, sql, count, values, query ? on_query : on_exec, b);
	for (int i = 0; i < count; i++)
		free(owned[i]);
	if (rc) {
		lua_pushnil(L);
		lua_pushstring(L, tide_pg_error(b->pg));
		return 2;
	}
	if (!query) {
		b->inflight++;
		lua_pushboolean(L, 1);
		return 1;
	}
	b->query_out = true;
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
}

struct build {
	const struct tide_read_result *read;
	int ref;
};

static int build_events(lua_State *L)
{
	struct build *b = lua_touserdata(L, 1);
	size_t n = b->read ? b->read->count : 0;
	lua_createtable(L, (int)n, 0);
	for (size_t i = 0; i < n; i++) {
		tide_lua_push_message(L, &b->read->messages[i], false);
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
		return TIDE_ENOMEM;
	}
	*ref = b.ref;
	return 0;
}

void tide_batch_events_free(struct tide_vm *vm, int ref)
{
	luaL_unref(tide_vm_state(vm), LUA_REGISTRYINDEX, ref);
}

int tide_batch_run(const struct tide_batch_spec *spec, tide_batch_cb cb, void *arg)
{
	struct tide_batch *b = calloc(1, sizeof(*b));
	if (!b) {
		tide_batch_events_free(spec->vm, spec->events_ref);
		return TIDE_ENOMEM;
	}
	b->vm = spec->vm;
	b->pg = spec->pg;
	b->cb = cb;
	b->arg = arg;
	for (int i = 0; i < TIDE_BATCH_COMMIT_ARGS; i++) {
		snprintf(b->commit_buf[i], sizeof(b->commit_buf[i]), "%s", spec->commit[i]);
		b->commit[i] = b->commit_buf[i];
	}
	lua_State *L = tide_vm_state(spec->vm);
	b->co = lua_newthread(L);
	b->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_State *co = b->co;

	/* tide.processor.run(p, events, sql, log, setup, reset) */
	lua_getfield(co, LUA_REGISTRYINDEX, "tide.runtime");
	lua_getfield(co, -1, "processor_run");
	lua_remove(co, -2);
	lua_rawgeti(co, LUA_REGISTRYINDEX, spec->processor_ref);
	lua_rawgeti(co, LUA_REGISTRYINDEX, spec->events_ref);
	luaL_unref(L, LUA_REGISTRYINDEX, spec->events_ref);
	b->handle = lua_newuserdata(co, sizeof(*b->handle));
	b->handle->batch = b;
	luaL_getmetatable(co, SQL_MT);
	lua_setmetatable(co, -2);
	/* A finished coroutine no longer holds it, and Lua may collect before finish(). */
	lua_pushvalue(co, -1);
	b->handle_ref = luaL_ref(co, LUA_REGISTRYINDEX);
	lua_pushcfunction(co, l_sql_query);
	lua_pushcfunction(co, l_sql_exec);
	lua_pushcfunction(co, l_log);
	lua_pushboolean(co, spec->setup);
	lua_pushboolean(co, spec->reset);

	int rc = tide_pg_exec_sql(b->pg, "BEGIN", 0, NULL, on_exec, b);
	if (rc) {
		b->handle->batch = NULL;
		luaL_unref(L, LUA_REGISTRYINDEX, b->handle_ref);
		luaL_unref(L, LUA_REGISTRYINDEX, b->co_ref);
		free(b);
		return rc;
	}
	b->inflight++;
	resume(b, 8);
	return 0;
}
