/* command.c — a command (or a fold) through a decider's VM, driven by the runtime's
 * tide.command inside one protected call: every allocation (the store's rows, the JSON of
 * the result) is protected, and script code runs through the runtime's own guarded calls,
 * each with the VM's CPU deadline. */
#include "command.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "lua_json.h"

int tide_command_error_status(const char *kind)
{
	if (!kind)
		return TIDE_EDB;
	if (strcmp(kind, "conflict") == 0)
		return TIDE_ECONFLICT;
	if (strcmp(kind, "invalid") == 0)
		return TIDE_EINVAL;
	if (strcmp(kind, "connection") == 0)
		return TIDE_ECONN;
	if (strcmp(kind, "unknown") == 0)
		return TIDE_EUNKNOWN;
	return TIDE_EDB;
}

struct run {
	const struct tide_command *cmd;
	struct tide_command_result *r;
};

/* Adds field key of the table at idx to o, encoded (keys of objects inside sorted); nothing
 * when it is nil. False with the message in r when it cannot be JSON. */
static bool add_field(lua_State *L, int idx, cJSON *o, const char *key,
                      struct tide_command_result *r)
{
	lua_pushstring(L, key);
	lua_rawget(L, idx);
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		return true;
	}
	cJSON *v = tide_lua_to_json(L, lua_gettop(L), key, r->message, sizeof(r->message));
	lua_pop(L, 1);
	if (!v)
		return false;
	cJSON_AddItemToObject(o, key, v);
	return true;
}

/* The fields of the table at idx as one object with its keys in the order given. */
static cJSON *ordered(lua_State *L, int idx, const char *const *keys, struct tide_command_result *r)
{
	cJSON *o = cJSON_CreateObject();
	for (const char *const *k = keys; o && *k; k++)
		if (!add_field(L, idx, o, *k, r)) {
			cJSON_Delete(o);
			return NULL;
		}
	return o;
}

/* handle's result: {"events":[{"type","data","metadata","id"}...],"next_expected_version",
 * "global_positions","attempts","locked"[,"position": a consistency boundary's]}, in that order
 * whatever order the Lua table has. */
static cJSON *handle_json(lua_State *L, int res, struct tide_command_result *r)
{
	static const char *const event_keys[] = {"type", "data", "metadata", "id", NULL};
	static const char *const rest[] = {"next_expected_version",
	                                   "global_positions",
	                                   "attempts",
	                                   "locked",
	                                   "position",
	                                   NULL};
	cJSON *o = cJSON_CreateObject();
	cJSON *events = o ? cJSON_AddArrayToObject(o, "events") : NULL;
	if (!events)
		goto fail;
	lua_pushliteral(L, "events");
	lua_rawget(L, res);
	int list = lua_gettop(L);
	for (int i = 1;; i++) {
		lua_rawgeti(L, list, i);
		if (lua_type(L, -1) != LUA_TTABLE) {
			lua_pop(L, 1);
			break;
		}
		cJSON *e = ordered(L, lua_gettop(L), event_keys, r);
		lua_pop(L, 1);
		if (!e)
			goto fail;
		cJSON_AddItemToArray(events, e);
	}
	lua_pop(L, 1);
	for (const char *const *k = rest; *k; k++)
		if (!add_field(L, res, o, *k, r))
			goto fail;
	return o;
fail:
	cJSON_Delete(o);
	return NULL;
}

/* The runtime's error table at err as {"error":{"kind","message",...}}: a rejection's
 * details, a conflict's versions (or an append_if's found and after), a failing inline projection's
 * id. */
static cJSON *error_json(lua_State *L, int err, struct tide_command_result *r)
{
	static const char *const keys[] = {"kind",  "message", "details",   "expected", "actual",
	                                   "found", "after",   "processor", NULL};
	cJSON *inner = ordered(L, err, keys, r);
	cJSON *o = inner ? cJSON_CreateObject() : NULL;
	if (!o) {
		cJSON_Delete(inner);
		return NULL;
	}
	cJSON_AddItemToObject(o, "error", inner);
	return o;
}

/* The stats of aggregate or handle (the table at idx): a snapshot that could not be read or
 * saved becomes the warning; when asked for (o not NULL) they go into the output as "stats". */
static bool add_stats(lua_State *L, int idx, cJSON *o, struct tide_command_result *r)
{
	static const char *const keys[] = {"events_read",
	                                   "snapshot_position",
	                                   "snapshot_upgraded_from",
	                                   "snapshot_ignored",
	                                   "snapshot_saved",
	                                   "snapshot_error",
	                                   NULL};
	if (lua_type(L, idx) != LUA_TTABLE)
		return true;
	lua_getfield(L, idx, "snapshot_error");
	if (lua_isstring(L, -1))
		snprintf(r->warning, sizeof(r->warning), "%s", lua_tostring(L, -1));
	lua_pop(L, 1);
	if (!o)
		return true;
	cJSON *stats = ordered(L, idx, keys, r);
	if (!stats)
		return false;
	cJSON_AddItemToObject(o, "stats", stats);
	return true;
}

/* The runtime's nil, err at first, first + 1: into r. */
static void failed(lua_State *L, int err, struct tide_command_result *r)
{
	lua_getfield(L, err, "kind");
	const char *kind = lua_tostring(L, -1);
	snprintf(r->kind, sizeof(r->kind), "%s", kind ? kind : "error");
	r->status = tide_command_error_status(kind);
	r->rejected = kind && strcmp(kind, "rejected") == 0;
	lua_getfield(L, err, "message");
	snprintf(r->message, sizeof(r->message), "%s",
	         lua_tostring(L, -1) ? lua_tostring(L, -1) : "failed");
	lua_getfield(L, err, "traceback");
	const char *tb = lua_tostring(L, -1);
	if (tb && tb[0])
		r->traceback = strdup(tb);
	char msg[sizeof(r->message)];
	memcpy(msg, r->message, sizeof(msg));
	r->out = error_json(L, err, r);
	if (r->rejected && !r->out) {
		/* Details that cannot be JSON: still a rejection; say what is wrong. */
		char why[sizeof(r->message)];
		memcpy(why, r->message, sizeof(why));
		snprintf(r->message, sizeof(r->message),
		         "%.480s (its details cannot be printed: %.480s)", msg, why);
	} else {
		memcpy(r->message, msg, sizeof(msg));
	}
}

static int run(lua_State *L)
{
	struct run *x = lua_touserdata(L, 1);
	const struct tide_command *cmd = x->cmd;
	struct tide_command_result *r = x->r;
	bool handle = cmd->command_json != NULL;
	lua_rawgeti(L, LUA_REGISTRYINDEX, cmd->ref);
	int decider = lua_gettop(L);
	lua_pushliteral(L, "kind");
	lua_rawget(L, decider);
	if (lua_type(L, -1) != LUA_TSTRING || strcmp(lua_tostring(L, -1), "decider") != 0) {
		r->status = TIDE_EINVAL;
		r->not_decider = true;
		snprintf(r->kind, sizeof(r->kind), "%s",
		         lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "");
		snprintf(r->message, sizeof(r->message),
		         "the script is not a decider (return tide.decider { ... })");
		return 0;
	}
	lua_pop(L, 1);

	lua_getfield(L, LUA_REGISTRYINDEX, "tide.runtime");
	int runtime = lua_gettop(L);
	lua_getfield(L, runtime, handle ? "handle" : "aggregate");
	int first = lua_gettop(L); /* the function's slot, then its results' */
	if (!cmd->push_store(L, cmd->arg, &r->status, r->message, sizeof(r->message)))
		return 0;
	lua_pushvalue(L, decider);
	lua_pushstring(L, cmd->stream);
	if (handle && tide_lua_push_json_text(L, cmd->command_json, cmd->command_len) != 0) {
		r->status = TIDE_EINVAL;
		snprintf(r->message, sizeof(r->message), "the command is not valid JSON");
		return 0;
	}
	/* opts: the stats always (a snapshot's failure is worth a warning), the file name as
	 * the name a decider's snapshots are kept under when it has none of its own. */
	lua_createtable(L, 0, 3);
	if (handle) {
		lua_pushnumber(L, (lua_Number)cmd->retries);
		lua_setfield(L, -2, "retries");
	}
	lua_pushboolean(L, 1);
	lua_setfield(L, -2, "stats");
	lua_pushstring(L, cmd->name);
	lua_setfield(L, -2, "name");
	/* handle(store, decider, stream, command, opts, call) and
	 * aggregate(store, decider, stream, call, opts): call is the VM's guard. */
	lua_getfield(L, runtime, "_guard");
	if (!handle)
		lua_insert(L, -2);
	lua_call(L, handle ? 6 : 5, handle ? 2 : 3);
	if (lua_isnil(L, first)) {
		failed(L, first + 1, r);
		return 0;
	}
	cJSON *out;
	int stats;
	if (!handle) { /* state, version → {"state":...,"version":N} */
		stats = first + 2;
		out = cJSON_CreateObject();
		cJSON *state =
		        out ? tide_lua_to_json(L, first, "state", r->message, sizeof(r->message))
		            : NULL;
		if (state) {
			cJSON_AddItemToObject(out, "state", state);
			tide_json_add_i64(out, "version", (int64_t)lua_tonumber(L, first + 1));
		} else {
			cJSON_Delete(out);
			out = NULL;
		}
	} else {
		lua_settop(L, first);
		out = handle_json(L, first, r);
		lua_getfield(L, first, "stats");
		stats = lua_gettop(L);
	}
	if (out && !add_stats(L, stats, cmd->stats ? out : NULL, r)) {
		cJSON_Delete(out);
		out = NULL;
	}
	r->out = out;
	if (!out) {
		r->status = TIDE_EDB;
		if (!r->message[0])
			snprintf(r->message, sizeof(r->message),
			         "out of memory printing the result");
	}
	return 0;
}

int tide_command_run(struct tide_vm *vm, const struct tide_command *cmd,
                     struct tide_command_result *r, struct tide_vm_error *e)
{
	memset(r, 0, sizeof(*r));
	struct run x = {cmd, r};
	return tide_vm_cpcall(vm, run, &x, e);
}

void tide_command_result_free(struct tide_command_result *r)
{
	free(r->traceback);
	cJSON_Delete(r->out);
	r->traceback = NULL;
	r->out = NULL;
}
