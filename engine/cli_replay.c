/* cli_replay.c — `tide replay SCRIPT STREAM`: the runtime (lua/tide/replay.lua) folds one
 * stream through a decider or a document projection and hands over each event with the
 * state after it; this prints them as they come: JSON lines for programs, or on a terminal a
 * coloured view with what changed since the state before marked. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_common.h"
#include "command.h"
#include "json.h"
#include "lua_json.h"
#include "lua_vm.h"

struct replay {
	struct cli *cli;
	int ref;
	bool view;    /* the terminal view, else JSON lines */
	bool colour;  /* the view in colour (not under NO_COLOR) */
	cJSON *shown; /* the view: the last state shown per document id ("" for a decider's) */
	int status;   /* 0, or the TIDE_E* status of the failure */
	char message[1024];
	char *traceback; /* a script error's stack (malloc) */
	char what[32];   /* what folded: "decider", "document projection", ... */
	double events, folded;
};

#define BOLD   "\033[1m"
#define DIM    "\033[2m"
#define TYPE   "\033[1;36m"
#define ADDED  "\033[32m"
#define CHANGE "\033[33m"
#define GONE   "\033[31m"
#define RESET  "\033[0m"

static const char *paint(const struct replay *r, const char *code)
{
	return r->colour ? code : "";
}

/* The raw field key of the table at idx (a script may have put a metatable on an event). */
static void raw_field(lua_State *L, int idx, const char *key)
{
	lua_pushstring(L, key);
	lua_rawget(L, idx);
}

/* --- the terminal view ------------------------------------------------------------------ */

static void put_string(const char *s)
{
	putchar('"');
	for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
		if (*c == '"' || *c == '\\')
			printf("\\%c", *c);
		else if (*c < 0x20)
			printf("\\u%04x", *c);
		else
			putchar(*c);
	}
	putchar('"');
}

/* One line of a state: its mark (' ', '+' added, '~' changed, '-' removed), indented. */
static void state_line(const struct replay *r, char mark, int depth, const char *key,
                       const char *text, bool comma)
{
	const char *c = mark == '+' ? ADDED : mark == '~' ? CHANGE : mark == '-' ? GONE : NULL;
	printf("  %s%c %*s", c ? paint(r, c) : "", mark, 2 * depth, "");
	if (key) {
		put_string(key);
		fputs(": ", stdout);
	}
	printf("%s%s%s\n", text, comma ? "," : "", c ? paint(r, RESET) : "");
}

static void compact_line(const struct replay *r, char mark, int depth, const char *key,
                         const cJSON *v, bool comma)
{
	char *text = cJSON_PrintUnformatted(v);
	state_line(r, mark, depth, key, text ? text : "(out of memory)", comma);
	free(text);
}

static bool same_kind(const cJSON *a, const cJSON *b)
{
	return (cJSON_IsObject(a) && cJSON_IsObject(b)) || (cJSON_IsArray(a) && cJSON_IsArray(b));
}

/* v as indented JSON, each line marked against prev (the value at the same place in the state
 * shown before; NULL: there was none). marks false: no marks at all. */
static void show_value(const struct replay *r, const char *key, const cJSON *v, const cJSON *prev,
                       bool marks, int depth, bool comma)
{
	char mark = !marks ? ' ' : !prev ? '+' : cJSON_Compare(v, prev, true) ? ' ' : '~';
	bool container = cJSON_IsObject(v) || cJSON_IsArray(v);
	if (!container || !v->child) {
		compact_line(r, mark, depth, key, v, comma);
		return;
	}
	bool object = cJSON_IsObject(v);
	const cJSON *before = prev && same_kind(v, prev) ? prev : NULL;
	char open = marks && prev && !before ? '~' : mark == '~' ? ' ' : mark;
	state_line(r, open, depth, key, object ? "{" : "[", false);
	int i = 0;
	for (const cJSON *c = v->child; c; c = c->next, i++) {
		const cJSON *p = !before  ? NULL
		                 : object ? cJSON_GetObjectItemCaseSensitive(before, c->string)
		                          : cJSON_GetArrayItem(before, i);
		show_value(r, object ? c->string : NULL, c, p, marks, depth + 1, c->next != NULL);
	}
	i = 0;
	for (const cJSON *p = before ? before->child : NULL; p; p = p->next, i++) {
		bool gone = object ? !cJSON_GetObjectItemCaseSensitive(v, p->string)
		                   : i >= cJSON_GetArraySize(v);
		if (gone)
			compact_line(r, '-', depth + 1, object ? p->string : NULL, p, false);
	}
	state_line(r, open, depth, NULL, object ? "}" : "]", comma);
}

static void show_json(const struct replay *r, const char *label, const cJSON *v)
{
	char *text = cJSON_PrintUnformatted(v);
	printf("  %s%-9s%s %s\n", paint(r, DIM), label, paint(r, RESET), text ? text : "?");
	free(text);
}

/* The view of one event: its position and type, data and metadata, then the state after
 * it, marked against the one shown before for the same id. Takes state. */
static void view_event(struct replay *r, lua_State *L, int e, const char *id, cJSON *state)
{
	raw_field(L, e, "stream_position");
	raw_field(L, e, "type");
	raw_field(L, e, "global_position");
	printf("%s#%.0f%s %s%s%s", paint(r, BOLD), lua_tonumber(L, -3), paint(r, RESET),
	       paint(r, TYPE), lua_tostring(L, -2) ? lua_tostring(L, -2) : "?", paint(r, RESET));
	printf("  %sglobal %.0f%s\n", paint(r, DIM), lua_tonumber(L, -1), paint(r, RESET));
	lua_pop(L, 3);
	static const char *const fields[] = {"data", "metadata"};
	for (int i = 0; i < 2; i++) {
		raw_field(L, e, fields[i]);
		char err[256];
		cJSON *v = lua_istable(L, -1) ? tide_lua_to_json(L, -1, fields[i], err, sizeof(err))
		                              : NULL;
		lua_pop(L, 1);
		if (v && (i == 0 || v->child))
			show_json(r, fields[i], v);
		cJSON_Delete(v);
	}
	const char *key = id ? id : "";
	const cJSON *prev = cJSON_GetObjectItemCaseSensitive(r->shown, key);
	printf("  %s%s%s", paint(r, DIM), id ? "document " : "state", paint(r, RESET));
	if (id)
		put_string(id);
	putchar('\n');
	show_value(r, NULL, state, prev, true, 0, false);
	putchar('\n');
	cJSON_DeleteItemFromObjectCaseSensitive(r->shown, key);
	cJSON_AddItemToObject(r->shown, key, state);
}

/* The state initial() gave, before the first event folds onto it: a decider's is shown, a
 * document's is only what the first event's changes are marked against. Takes state. */
static void view_initial(struct replay *r, const char *id, cJSON *state)
{
	const char *key = id ? id : "";
	if (!id) {
		printf("%sinitial state%s\n", paint(r, BOLD), paint(r, RESET));
		show_value(r, NULL, state, NULL, false, 0, false);
		putchar('\n');
	}
	cJSON_DeleteItemFromObjectCaseSensitive(r->shown, key);
	cJSON_AddItemToObject(r->shown, key, state);
}

/* --- JSON lines ---------------------------------------------------------------------------- */

/* {"stream_position","global_position","type","data","metadata"?,"id"?,"state"}: metadata
 * when the event has some, id for a document projection's events. Takes state. */
static bool json_event(lua_State *L, int e, const char *id, cJSON *state, char *err, size_t n)
{
	cJSON *o = cJSON_CreateObject();
	if (!o) {
		cJSON_Delete(state);
		snprintf(err, n, "out of memory");
		return false;
	}
	raw_field(L, e, "stream_position");
	tide_json_add_i64(o, "stream_position", (int64_t)lua_tonumber(L, -1));
	raw_field(L, e, "global_position");
	tide_json_add_i64(o, "global_position", (int64_t)lua_tonumber(L, -1));
	raw_field(L, e, "type");
	cJSON_AddStringToObject(o, "type", lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
	lua_pop(L, 3);
	static const char *const fields[] = {"data", "metadata"};
	for (int i = 0; i < 2; i++) {
		raw_field(L, e, fields[i]);
		bool table = lua_istable(L, -1);
		cJSON *v = table ? tide_lua_to_json(L, -1, fields[i], err, n) : NULL;
		lua_pop(L, 1);
		if (!v && table) {
			cJSON_Delete(o);
			cJSON_Delete(state);
			return false;
		}
		if (v && (i == 0 || v->child))
			cJSON_AddItemToObject(o, fields[i], v);
		else
			cJSON_Delete(v);
	}
	if (id)
		cJSON_AddStringToObject(o, "id", id);
	cJSON_AddItemToObject(o, "state", state);
	tide_cli_print_line(o);
	return true;
}

/* emit(event | nil, state, id | nil) → true | false, why: called by the runtime after each
 * event it folds, and with what initial() returned (no event). */
static int l_emit(lua_State *L)
{
	struct replay *r = lua_touserdata(L, lua_upvalueindex(1));
	char err[512];
	cJSON *state = tide_lua_to_json(L, 2, "state", err, sizeof(err));
	if (!state) {
		lua_pushboolean(L, 0);
		lua_pushstring(L, err);
		return 2;
	}
	const char *id = lua_tostring(L, 3);
	bool ok = true;
	if (lua_isnil(L, 1)) {
		if (r->view)
			view_initial(r, id, state);
		else
			cJSON_Delete(state);
	} else if (r->view) {
		view_event(r, L, 1, id, state);
	} else {
		ok = json_event(L, 1, id, state, err, sizeof(err));
	}
	lua_pushboolean(L, ok);
	if (ok)
		return 1;
	lua_pushstring(L, err);
	return 2;
}

/* --- the run ------------------------------------------------------------------------------- */

static void fail(struct replay *r, lua_State *L, int err)
{
	lua_getfield(L, err, "kind");
	r->status = tide_command_error_status(lua_tostring(L, -1));
	lua_getfield(L, err, "message");
	snprintf(r->message, sizeof(r->message), "%s",
	         lua_tostring(L, -1) ? lua_tostring(L, -1) : "failed");
	lua_getfield(L, err, "traceback");
	const char *tb = lua_tostring(L, -1);
	if (tb && tb[0])
		r->traceback = strdup(tb);
}

/* Under tide_vm_cpcall: whether the script folds at all (no database needed to say no),
 * then connect and replay. */
static int run_replay(lua_State *L)
{
	struct replay *r = lua_touserdata(L, 1);
	struct cli *cli = r->cli;
	lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
	int script = lua_gettop(L);
	lua_getglobal(L, "require");
	lua_pushliteral(L, "tide.replay");
	lua_call(L, 1, 1);
	lua_getfield(L, -1, "folder");
	lua_pushvalue(L, script);
	lua_call(L, 1, 2);
	if (lua_isnil(L, -2)) {
		r->status = TIDE_EINVAL;
		snprintf(r->message, sizeof(r->message),
		         "replay folds a decider (initial/evolve), a document projection "
		         "(collection, evolve) or a snapshot projection (snapshot = a decider); "
		         "%s is %s",
		         cli->script, lua_tostring(L, -1));
		return 0;
	}
	lua_getfield(L, -2, "what");
	snprintf(r->what, sizeof(r->what), "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "");

	lua_getfield(L, LUA_REGISTRYINDEX, "tide.runtime");
	int runtime = lua_gettop(L);
	int store = tide_cli_connect_vm(L, cli, &r->status, r->message, sizeof(r->message));
	if (!store)
		return 0;
	if (r->view)
		printf("%s%s%s through %s (%s)\n\n", paint(r, BOLD), cli->stream, paint(r, RESET),
		       cli->script, r->what);
	lua_getfield(L, runtime, "replay");
	lua_pushvalue(L, store);
	lua_pushvalue(L, script);
	lua_pushstring(L, cli->stream);
	lua_createtable(L, 0, 1);
	if (cli->read.to > 0) {
		lua_pushnumber(L, (lua_Number)cli->read.to);
		lua_setfield(L, -2, "to");
	}
	lua_pushlightuserdata(L, r);
	lua_pushcclosure(L, l_emit, 1);
	lua_call(L, 5, 2);
	if (lua_isnil(L, -2)) {
		fail(r, L, lua_gettop(L));
		return 0;
	}
	lua_getfield(L, -2, "events");
	r->events = lua_tonumber(L, -1);
	lua_getfield(L, -3, "folded");
	r->folded = lua_tonumber(L, -1);
	return 0;
}

int tide_cli_run_replay(struct cli *cli)
{
	char err[1024];
	const char *no_colour = getenv("NO_COLOR");
	struct replay r = {
	        .cli = cli,
	        .view = !cli->json && isatty(STDOUT_FILENO),
	        .colour = !(no_colour && no_colour[0]),
	        .shown = cJSON_CreateObject(),
	};
	struct tide_vm *vm = NULL;
	if (!r.shown || tide_cli_load_script(cli, cli->script, &vm, &r.ref, err, sizeof(err))) {
		cJSON_Delete(r.shown);
		tide_cli_fail(cli, TIDE_EDB, r.shown ? err : "out of memory");
		return 1;
	}
	struct tide_vm_error e;
	int code = 0;
	if (tide_vm_cpcall(vm, run_replay, &r, &e) != 0) {
		/* Misuse raises; a memory error is the script's VM running out. */
		fflush(stdout);
		tide_cli_fail(cli, strcmp(e.kind, "memory") == 0 ? TIDE_EDB : TIDE_EINVAL,
		              e.message);
		code = cli->exit_code;
	} else if (r.status) {
		fflush(stdout); /* the events before the failure come first */
		tide_cli_fail(cli, r.status, r.message);
		if (r.traceback)
			tide_cli_print_traceback(r.traceback);
		code = cli->exit_code;
	} else if (r.events == 0) {
		fprintf(stderr, "tide replay: stream %s has no events%s%s\n", cli->stream,
		        cli->partition ? " in partition " : "",
		        cli->partition ? cli->partition : "");
	} else if (r.view) {
		printf("%s%.0f event%s of %s", paint(&r, DIM), r.events, r.events == 1 ? "" : "s",
		       cli->stream);
		if (r.folded < r.events)
			printf(", %.0f folded (the others are not in the projection's events, or "
			       "id(event) returned false)",
			       r.folded);
		printf("%s\n", paint(&r, RESET));
	}
	free(r.traceback);
	cJSON_Delete(r.shown);
	tide_vm_close(vm);
	if (fflush(stdout) != 0 && code == 0)
		return 1;
	return code;
}
