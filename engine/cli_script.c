/* cli_script.c — `tide handle`, `tide aggregate` and `tide check`: a decider or processor
 * script loaded in a sandboxed VM, driven through the Lua runtime (lua/tide/command.lua);
 * `tide replay` (cli_replay.c) loads its script and reports its errors the same way. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli_common.h"
#include "file.h"
#include "json.h"
#include "lua_json.h"
#include "lua_vm.h"
#include "pg.h"

int tide_cli_connect_vm(struct lua_State *L, struct cli *cli, int *status, char *msg, size_t n)
{
	lua_getfield(L, LUA_REGISTRYINDEX, "tide.runtime");
	lua_getfield(L, -1, "connect");
	lua_remove(L, -2);
	lua_pushstring(L, cli->url);
	lua_createtable(L, 0, 2);
	if (cli->partition) {
		lua_pushstring(L, cli->partition);
		lua_setfield(L, -2, "partition");
	}
	if (cli->projections) {
		lua_pushstring(L, cli->projections);
		lua_setfield(L, -2, "projections");
	}
	lua_call(L, 2, 2);
	if (lua_isnil(L, -2)) {
		/* Connected, but the inline projections did not load: their own error. */
		lua_getfield(L, -1, "kind");
		const char *kind = lua_tostring(L, -1);
		bool loading = kind && strcmp(kind, "connection") != 0;
		lua_getfield(L, -2, "message");
		*status = loading ? tide_cli_error_status(kind) : TIDE_ECONN;
		snprintf(msg, n, "%s%s",
		         loading ? "" : "cannot connect to the database: ", lua_tostring(L, -1));
		return 0;
	}
	lua_pop(L, 1);
	return lua_gettop(L);
}

int tide_cli_error_status(const char *kind)
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

int tide_cli_load_script(struct cli *cli, const char *path, struct tide_vm **out, int *ref,
                         char *err, size_t n)
{
	*out = NULL;
	size_t len;
	char *src = tide_file_read(path, &len, err, n);
	if (!src)
		return TIDE_EINVAL;
	struct tide_vm_opts opts = {.cpu_ms = cli->cpu_ms};
	struct tide_vm *vm = NULL;
	int rc = tide_vm_open(&opts, &vm, err, n);
	if (rc == 0)
		rc = tide_vm_load(vm, path, src, len, ref, err, n);
	free(src);
	if (rc) {
		tide_vm_close(vm);
		return rc;
	}
	*out = vm;
	return 0;
}

/* The processor at ref, checked as `tide run` checks it (tide.model.settings, under the CPU
 * guard: a metatable on what the script returned may run its code); its kind. */
struct kind_read {
	int ref;
	char kind[32];
};

static int read_kind(lua_State *L)
{
	struct kind_read *k = lua_touserdata(L, 1);
	lua_getfield(L, LUA_REGISTRYINDEX, "tide.runtime");
	lua_getfield(L, -1, "processor_settings");
	lua_rawgeti(L, LUA_REGISTRYINDEX, k->ref);
	lua_call(L, 1, 1);
	lua_pushliteral(L, "kind");
	lua_rawget(L, -2);
	snprintf(k->kind, sizeof(k->kind), "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
	return 0;
}

/* Loads one script as `tide run` or `tide handle` would; false when it does not load. */
static bool check_script(struct cli *cli, const char *path)
{
	char err[2048];
	struct kind_read k = {0};
	struct tide_vm_error e;
	struct tide_vm *vm;
	if (tide_cli_load_script(cli, path, &vm, &k.ref, err, sizeof(err)) ==
	    TIDE_VM_NOT_PROCESSOR) {
		/* As `tide run` has it: a module beside the scripts, not a broken script. */
		fprintf(stderr, "tide check: skipping %s (%s; `tide run` leaves it alone)\n", path,
		        tide_vm_unprefixed(err, path));
		return true;
	}
	if (vm && tide_vm_protected(vm, read_kind, &k, &e) != 0) {
		snprintf(err, sizeof(err), "%.900s: %s", path, e.message);
		tide_vm_close(vm);
		vm = NULL;
	}
	if (!vm) {
		/* An error raised by `return tide.reactor { ... }` (a tail call) has no file:line
		 * of the script: name the file anyway. */
		bool named = strstr(err, path) != NULL;
		char line[sizeof(err)];
		tide_pg_redact(NULL, err, line, sizeof(line)); /* one line, as every error */
		fprintf(stderr, "tide check: %s%s%s\n", named ? "" : path, named ? "" : ": ", line);
		return false;
	}
	printf("ok %s (%s)\n", path, k.kind);
	tide_vm_close(vm);
	return true;
}

/* Specs are busted's, not scripts: say so once and leave them alone. */
static bool skip_spec(const char *path)
{
	if (!tide_file_is_spec(path))
		return false;
	fprintf(stderr, "tide check: skipping %s (a spec)\n", path);
	return true;
}

/* A directory: every *.lua file in it but its specs (as `tide run DIR` takes them). */
static int check_directory(struct cli *cli, const char *dir)
{
	char err[1024];
	char **paths;
	size_t n;
	if (tide_file_list_lua(dir, &paths, &n, err, sizeof(err)) != 0) {
		fprintf(stderr, "tide check: %s\n", err);
		return 1;
	}
	int code = 0;
	size_t scripts = 0;
	for (size_t i = 0; i < n; i++) {
		if (skip_spec(paths[i]))
			continue;
		scripts++;
		if (!check_script(cli, paths[i]))
			code = 1;
	}
	if (scripts == 0) {
		fprintf(stderr, "tide check: no scripts in %s (no *.lua file that is not a spec)\n",
		        dir);
		code = 1;
	}
	tide_file_list_free(paths, n);
	return code;
}

int tide_cli_run_check(struct cli *cli)
{
	int code = 0;
	for (int i = 0; i < cli->nscripts; i++) {
		const char *path = cli->scripts[i];
		struct stat st;
		if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
			if (check_directory(cli, path) != 0)
				code = 1;
		} else if (!skip_spec(path) && !check_script(cli, path)) {
			code = 1;
		}
	}
	return code;
}

/* handle or aggregate, run inside a protected call on the script's VM: every allocation
 * (the store's rows, the JSON of the result) is protected, and script code runs through
 * the runtime's own guarded calls. */
struct script_run {
	struct cli *cli;
	int ref;
	int status;    /* 0, or the TIDE_E* status of the failure */
	bool rejected; /* the decider refused the command (tide.reject) */
	char message[1024];
	char warning[1024]; /* a snapshot that could not be read or saved: said on stderr */
	char *traceback;    /* a script error's stack (malloc), printed after its message */
	char *json;         /* the output line (cJSON allocator) */
};

/* Adds field key of the table at idx to o, encoded (keys of objects inside sorted); nothing
 * when it is nil. False with the message in s when it cannot be JSON. */
static bool add_field(lua_State *L, int idx, cJSON *o, const char *key, struct script_run *s)
{
	lua_pushstring(L, key);
	lua_rawget(L, idx);
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		return true;
	}
	cJSON *v = tide_lua_to_json(L, lua_gettop(L), key, s->message, sizeof(s->message));
	lua_pop(L, 1);
	if (!v)
		return false;
	cJSON_AddItemToObject(o, key, v);
	return true;
}

/* The fields of the table at idx as one object with its keys in the order given. */
static cJSON *ordered(lua_State *L, int idx, const char *const *keys, struct script_run *s)
{
	cJSON *o = cJSON_CreateObject();
	for (const char *const *k = keys; o && *k; k++)
		if (!add_field(L, idx, o, *k, s)) {
			cJSON_Delete(o);
			return NULL;
		}
	return o;
}

/* handle's result: {"events":[{"type","data","metadata","id"}...],"next_expected_version",
 * "global_positions","attempts","locked"}, in that order whatever order the Lua table has. */
static cJSON *handle_json(lua_State *L, int res, struct script_run *s)
{
	static const char *const event_keys[] = {"type", "data", "metadata", "id", NULL};
	static const char *const rest[] = {"next_expected_version", "global_positions", "attempts",
	                                   "locked", NULL};
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
		cJSON *e = ordered(L, lua_gettop(L), event_keys, s);
		lua_pop(L, 1);
		if (!e)
			goto fail;
		cJSON_AddItemToArray(events, e);
	}
	lua_pop(L, 1);
	for (const char *const *k = rest; *k; k++)
		if (!add_field(L, res, o, *k, s))
			goto fail;
	return o;
fail:
	cJSON_Delete(o);
	return NULL;
}

/* Prints the rejection as one JSON line on stdout, for programs:
 * {"error":{"kind":"rejected","message":"...","details":{...}}}. */
static char *rejection_json(lua_State *L, int err, struct script_run *s)
{
	static const char *const keys[] = {"kind", "message", "details", NULL};
	cJSON *inner = ordered(L, err, keys, s);
	cJSON *o = inner ? cJSON_CreateObject() : NULL;
	if (!o) {
		cJSON_Delete(inner);
		return NULL;
	}
	cJSON_AddItemToObject(o, "error", inner);
	char *text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return text;
}

/* Pushes the name of the script's file without its directory and ".lua". */
static void push_script_name(lua_State *L, const char *path)
{
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	size_t len = strlen(base);
	if (len > 4 && strcmp(base + len - 4, ".lua") == 0)
		len -= 4;
	lua_pushlstring(L, base, len);
}

/* The stats of aggregate or handle (the table at idx): a snapshot that could not be read or
 * saved becomes the warning; with --stats (o not NULL) they go into the output as "stats". */
static bool add_stats(lua_State *L, int idx, cJSON *o, struct script_run *s)
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
		snprintf(s->warning, sizeof(s->warning), "%s", lua_tostring(L, -1));
	lua_pop(L, 1);
	if (!o)
		return true;
	cJSON *stats = ordered(L, idx, keys, s);
	if (!stats)
		return false;
	cJSON_AddItemToObject(o, "stats", stats);
	return true;
}

static int run_script(lua_State *L)
{
	struct script_run *s = lua_touserdata(L, 1);
	struct cli *cli = s->cli;
	lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref);
	int decider = lua_gettop(L);
	lua_pushliteral(L, "kind");
	lua_rawget(L, decider);
	if (lua_type(L, -1) != LUA_TSTRING || strcmp(lua_tostring(L, -1), "decider") != 0) {
		s->status = TIDE_EINVAL;
		snprintf(s->message, sizeof(s->message),
		         "the script is not a decider (return tide.decider { ... })");
		return 0;
	}
	lua_pop(L, 1);

	int store = tide_cli_connect_vm(L, cli, &s->status, s->message, sizeof(s->message));
	if (!store) {
		return 0;
	}
	lua_getfield(L, store, cli->command_json ? "handle" : "aggregate");
	lua_pushvalue(L, store);
	lua_pushvalue(L, decider);
	lua_pushstring(L, cli->stream);
	if (cli->command_json &&
	    tide_lua_push_json_text(L, cli->command_json, strlen(cli->command_json)) != 0) {
		s->status = TIDE_EINVAL;
		snprintf(s->message, sizeof(s->message), "COMMAND_JSON is not valid JSON");
		return 0;
	}
	/* opts: the stats always (a snapshot's failure is worth a warning), the file name as
	 * the name a decider's snapshots are kept under when it has none of its own. */
	lua_createtable(L, 0, 3);
	if (cli->command_json) {
		lua_pushnumber(L, (lua_Number)cli->retries);
		lua_setfield(L, -2, "retries");
	}
	lua_pushboolean(L, 1);
	lua_setfield(L, -2, "stats");
	push_script_name(L, cli->script);
	lua_setfield(L, -2, "name");
	int first = lua_gettop(L) - (cli->command_json ? 5 : 4); /* the function's slot */
	lua_call(L, cli->command_json ? 5 : 4, cli->command_json ? 2 : 3);
	if (lua_isnil(L, first)) {
		int err = first + 1;
		lua_getfield(L, err, "kind");
		const char *kind = lua_tostring(L, -1);
		s->status = tide_cli_error_status(kind);
		s->rejected = kind && strcmp(kind, "rejected") == 0;
		lua_getfield(L, err, "message");
		snprintf(s->message, sizeof(s->message), "%s",
		         lua_tostring(L, -1) ? lua_tostring(L, -1) : "failed");
		lua_getfield(L, err, "traceback");
		const char *tb = lua_tostring(L, -1);
		if (tb && tb[0])
			s->traceback = strdup(tb);
		if (s->rejected) {
			char msg[sizeof(s->message)];
			memcpy(msg, s->message, sizeof(msg));
			s->json = rejection_json(L, err, s);
			char why[sizeof(s->message)];
			memcpy(why, s->message, sizeof(why));
			/* Details that cannot be JSON: still a rejection; say what is wrong. */
			snprintf(s->message, sizeof(s->message), "%.480s%s%.480s%s", msg,
			         s->json ? "" : " (its details cannot be printed: ",
			         s->json ? "" : why, s->json ? "" : ")");
		}
		return 0;
	}
	cJSON *out;
	int stats;
	if (!cli->command_json) { /* aggregate: state, version → {"state":...,"version":N} */
		stats = first + 2;
		out = cJSON_CreateObject();
		cJSON *state =
		        out ? tide_lua_to_json(L, first, "state", s->message, sizeof(s->message))
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
		out = handle_json(L, first, s);
		lua_getfield(L, first, "stats");
		stats = lua_gettop(L);
	}
	if (out && !add_stats(L, stats, cli->stats ? out : NULL, s)) {
		cJSON_Delete(out);
		out = NULL;
	}
	s->json = out ? cJSON_PrintUnformatted(out) : NULL;
	cJSON_Delete(out);
	if (!s->json) {
		s->status = TIDE_EDB;
		if (!s->message[0])
			snprintf(s->message, sizeof(s->message),
			         "out of memory printing the result");
	}
	return 0;
}

int tide_cli_run_script(struct cli *cli)
{
	char err[1024];
	struct script_run s = {.cli = cli};
	struct tide_vm *vm;
	if (tide_cli_load_script(cli, cli->script, &vm, &s.ref, err, sizeof(err)) != 0) {
		tide_cli_fail(cli, TIDE_EDB, err);
		return 1;
	}
	struct tide_vm_error e;
	if (tide_vm_cpcall(vm, run_script, &s, &e) != 0) {
		/* Misuse raises (bad arguments); a memory error is the script's VM running out. */
		tide_cli_fail(cli, strcmp(e.kind, "memory") == 0 ? TIDE_EDB : TIDE_EINVAL,
		              e.message);
		free(s.traceback);
		cJSON_free(s.json);
		tide_vm_close(vm);
		return cli->exit_code;
	}
	int code = 0;
	if (s.status) {
		tide_cli_fail(cli, s.status, s.message);
		if (s.traceback)
			tide_cli_print_traceback(s.traceback);
		if (s.rejected) {
			cli->exit_code = EXIT_REJECTED;
			if (s.json)
				puts(s.json);
		}
		code = cli->exit_code;
	} else {
		puts(s.json);
	}
	if (s.warning[0]) {
		char line[sizeof(s.warning)];
		tide_pg_redact(NULL, s.warning, line, sizeof(line));
		fprintf(stderr, "tide %s: warning: %s\n", cli->cmd, line);
	}
	free(s.traceback);
	cJSON_free(s.json);
	tide_vm_close(vm);
	if (fflush(stdout) != 0 && code == 0)
		return 1;
	return code;
}
