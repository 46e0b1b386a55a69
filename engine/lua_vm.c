/* lua_vm.c — one sandboxed LuaJIT state per script: allow-listed globals, the tide
 * runtime preloaded from the binary, a memory cap (allocator) and a CPU guard.
 *
 * CPU guard: Debian's LuaJIT is built without LUAJIT_ENABLE_CHECKHOOK, so a hook never
 * fires inside a compiled trace and `while true do end` could run forever once compiled.
 * Script VMs therefore run with the JIT compiler off. Each call into script code gets a
 * deadline; the watchdog thread (watchdog.c) sets a count hook once it passes, and the
 * hook raises. The script's own pcall, xpcall and coroutine.resume re-raise that error,
 * so a runaway handler cannot swallow it. Until the deadline there is no hook at all: a
 * hook that checks the clock as the script goes costs it 35-75 % of its speed. A hook
 * never fires inside a C function, so string.find, match, gmatch and gsub (exponential on
 * patterns like ".-.-.-.-b") are tide's own (lua_pattern.c), which look at the deadline
 * every 4096 steps: about 1.1x LuaJIT's speed with the JIT off (`test_pattern speed`). */
#include "lua_vm.h"

#include <luajit.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "file.h"
#include "lua_pattern.h"
#include "lua_store.h"
#include "watchdog.h"

#define HOOK_EVERY 1000 /* instructions between deadline checks, without a watchdog */

extern const struct {
	const char *name;
	const char *source;
} tide_lua_embedded[];
extern const size_t tide_lua_embedded_count;

struct tide_vm {
	lua_State *L;
	size_t used, limit;
	unsigned cpu_ms;
	uint64_t deadline_ns; /* 0: no guarded call running */
	bool timed_out;
	struct tide_watch watch;
	int env_ref;
	char *dir; /* of the script loaded last: where require finds its siblings */
};

static uint64_t now_ns(void)
{
	return tide_watchdog_now_ns();
}

static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct tide_vm *vm = ud;
	if (nsize == 0) {
		vm->used -= osize;
		free(ptr);
		return NULL;
	}
	if (nsize > osize && vm->limit && vm->used - osize + nsize > vm->limit)
		return NULL; /* Lua raises "not enough memory" */
	void *p = realloc(ptr, nsize);
	if (p)
		vm->used = vm->used - osize + nsize;
	return p;
}

static struct tide_vm *vm_of(lua_State *L)
{
	void *ud;
	lua_getallocf(L, &ud);
	return ud;
}

static void timeout_hook(lua_State *L, lua_Debug *ar)
{
	(void)ar;
	struct tide_vm *vm = vm_of(L);
	if (vm->timed_out || (vm->deadline_ns && now_ns() > vm->deadline_ns)) {
		vm->timed_out = true;
		luaL_error(L, "script exceeded its CPU time limit of %u ms", vm->cpu_ms);
	}
}

/* The matcher of string.find & co. calls this as it goes: a C function runs no Lua
 * instructions, so the hook alone could not stop a runaway pattern. */
static void pattern_tick(lua_State *L)
{
	timeout_hook(L, NULL);
}

/* The CPU guard of one call into script code (see the top of this file). */
static void guard_arm(struct tide_vm *vm)
{
	vm->timed_out = false;
	vm->deadline_ns = now_ns() + (uint64_t)vm->cpu_ms * 1000000u;
	if (tide_watchdog_arm(&vm->watch, vm->L, timeout_hook, vm->deadline_ns) != 0)
		lua_sethook(vm->L, timeout_hook, LUA_MASKCOUNT, HOOK_EVERY); /* no thread */
}

/* Ends the guard; true when the call ran out of time. */
static bool guard_disarm(struct tide_vm *vm)
{
	tide_watchdog_disarm(&vm->watch);
	lua_sethook(vm->L, NULL, 0, 0);
	vm->deadline_ns = 0;
	bool timed_out = vm->timed_out;
	vm->timed_out = false;
	return timed_out;
}

/* Registry key of tide.model's rejection_mt: a value raised by tide.reject carries it. */
static const char KEY_REJECTION[] = "tide.rejection_mt";

/* Whether the value at idx is a rejection; raw: no metamethod runs. */
static bool is_rejection(lua_State *L, int idx)
{
	if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx))
		return false;
	lua_getfield(L, LUA_REGISTRYINDEX, KEY_REJECTION);
	bool same = lua_rawequal(L, -1, -2);
	lua_pop(L, 2);
	return same;
}

/* The message of an error value: a string or number as it is; one of tide's own error
 * tables (a ctx.append conflict) by its message; anything else described (its __tostring
 * would be the script's code, run outside the guard). */
static const char *error_text(lua_State *L, int idx, char *buf, size_t n)
{
	int t = lua_type(L, idx);
	if (t == LUA_TSTRING || t == LUA_TNUMBER)
		return lua_tostring(L, idx);
	if (t == LUA_TTABLE && lua_getmetatable(L, idx)) {
		luaL_getmetatable(L, TIDE_LUA_ERROR_MT);
		bool ours = lua_rawequal(L, -1, -2);
		lua_pop(L, 2);
		if (ours) {
			lua_pushliteral(L, "message");
			lua_rawget(L, idx < 0 ? idx - 1 : idx);
			if (lua_type(L, -1) == LUA_TSTRING) {
				snprintf(buf, n, "%s", lua_tostring(L, -1));
				lua_pop(L, 1);
				return buf;
			}
			lua_pop(L, 1);
		}
	}
	snprintf(buf, n, "the script raised a %s value, not a message", lua_typename(L, t));
	return buf;
}

/* The guarded call's message handler: a traceback for a bug; a rejection (tide.reject)
 * passes as it is, so that the runtime can tell it from one. */
static int traceback(lua_State *L)
{
	if (is_rejection(L, 1))
		return 1;
	char buf[640];
	luaL_traceback(L, L, error_text(L, 1, buf, sizeof(buf)), 1);
	return 1;
}

/* call(f, ...) → true, results... | false, message, kind, traceback
 * kind: "error", "timeout", "memory", or "rejected" (the script called tide.reject: then
 * message is the rejection itself and traceback ""). The runtime wraps every call into
 * script code with this. */
static int l_guarded_call(lua_State *L)
{
	struct tide_vm *vm = vm_of(L);
	luaL_checktype(L, 1, LUA_TFUNCTION);
	bool outer = vm->deadline_ns == 0;
	if (outer)
		guard_arm(vm);
	int nargs = lua_gettop(L) - 1;
	lua_pushcfunction(L, traceback);
	lua_insert(L, 1);
	/* Keep the raw error next to the traceback: the handler only sees the message. */
	int rc = lua_pcall(L, nargs, LUA_MULTRET, 1);
	bool timed_out = outer ? guard_disarm(vm) : vm->timed_out;
	if (rc == 0) {
		lua_pushboolean(L, 1);
		lua_replace(L, 1);
		return lua_gettop(L);
	}
	if (rc == LUA_ERRMEM) {
		/* The garbage of the failed call still counts against the cap: collect it, so
		 * that reporting the error does not fail in turn. */
		lua_settop(L, 0);
		size_t limit = vm->limit;
		vm->limit = 0;
		lua_gc(L, LUA_GCCOLLECT, 0);
		vm->limit = limit;
		lua_pushnil(L);
	}
	if (rc == LUA_ERRRUN && !timed_out && is_rejection(L, -1)) {
		lua_pushboolean(L, 0);
		lua_insert(L, -2);
		lua_pushliteral(L, "rejected");
		lua_pushliteral(L, "");
		return 4;
	}
	const char *kind = timed_out ? "timeout" : rc == LUA_ERRMEM ? "memory" : "error";
	const char *tb = lua_tostring(L, -1);
	lua_pushboolean(L, 0);
	if (rc == LUA_ERRMEM)
		lua_pushfstring(L, "script ran out of memory (limit %d KiB)",
		                (int)(vm->limit / 1024));
	else if (timed_out)
		lua_pushfstring(L, "script exceeded its CPU time limit of %d ms", (int)vm->cpu_ms);
	else {
		/* First line of the traceback = the message itself. */
		const char *nl = tb ? strstr(tb, "\nstack traceback:") : NULL;
		if (nl)
			lua_pushlstring(L, tb, (size_t)(nl - tb));
		else
			lua_pushstring(L, tb ? tb : "error");
	}
	lua_pushstring(L, kind);
	lua_pushstring(L, tb ? tb : "");
	return 4;
}

/* timed_out() → the timeout message while a guarded call is being stopped, else nil. */
static int l_timed_out(lua_State *L)
{
	struct tide_vm *vm = vm_of(L);
	if (!vm->timed_out)
		return 0;
	lua_pushfstring(L, "script exceeded its CPU time limit of %d ms", (int)vm->cpu_ms);
	return 1;
}

/* The sandbox's pcall, xpcall and coroutine.resume: the originals, except that a CPU
 * timeout keeps propagating. Written in Lua so that handlers may yield through them.
 * xpcall's message handler runs after the failed call has unwound, as an ordinary
 * (guarded) call: run as a real error handler, a handler that loops would be re-entered
 * by every timeout error raised inside it and never stop. Scripts have no debug library,
 * so running it later hides nothing from them. */
static const char safe_calls[] =
        "local pcall, resume, timed_out, error, select = ...\n"
        "local function check(...)\n"
        "  local m = timed_out()\n"
        "  if m then error(m, 0) end\n"
        "  return ...\n"
        "end\n"
        "local function handled(h, ok, ...)\n"
        "  if ok then return true, ... end\n"
        "  local m = timed_out()\n"
        "  if m then error(m, 0) end\n"
        "  return false, select(2, check(pcall(h, (...))))\n"
        "end\n"
        "return function(f, ...) return check(pcall(f, ...)) end,\n"
        "       function(f, h, ...) return handled(h, pcall(f, ...)) end,\n"
        "       function(co, ...) return check(resume(co, ...)) end\n";

static int l_undefined_global(lua_State *L)
{
	return luaL_error(L, "undefined global '%s'", lua_tostring(L, 2));
}

/* Registry keys: the modules a script required (name → what the file returned, or
 * LOADING while it runs), and the sentinel. */
static const char KEY_MODULES[] = "tide.script_modules";
static const char KEY_LOADING[] = "tide.script_module_loading";

/* A sibling's name: a file name without a path, so that a script reaches no file but the
 * ones beside it; not the name of one of LuaJIT's own libraries, which stay out of reach
 * (a script beside that asks for "ffi" gets an error, not a file of that name). */
static bool module_name_ok(const char *name, size_t len)
{
	static const char *const builtin[] = {"ffi",       "jit",    "debug", "os",   "io",
	                                      "package",   "string", "table", "math", "bit",
	                                      "coroutine", "_G",     NULL};
	if (len == 0 || len > 200)
		return false;
	for (const char *const *b = builtin; *b; b++)
		if (strcmp(name, *b) == 0)
			return false;
	for (size_t i = 0; i < len; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_'))
			return false;
	}
	return true;
}

/* Loads DIR/name.lua (DIR: the script's own directory) into the sandbox's environment and
 * runs it; its value stays in the modules table (true for nil, as Lua's require). */
static int require_sibling(lua_State *L, const char *name)
{
	struct tide_vm *vm = vm_of(L);
	lua_getfield(L, LUA_REGISTRYINDEX, KEY_MODULES);
	int modules = lua_gettop(L);
	lua_getfield(L, modules, name);
	lua_getfield(L, LUA_REGISTRYINDEX, KEY_LOADING);
	if (lua_rawequal(L, -1, -2))
		return luaL_error(L,
		                  "require \"%s\": %s.lua is still loading: a require loop "
		                  "(it requires itself through the modules it requires)",
		                  name, name);
	lua_pop(L, 1);
	if (!lua_isnil(L, -1))
		return 1;
	lua_pop(L, 1);
	char path[4200], err[4400];
	snprintf(path, sizeof(path), "%s/%s.lua", vm->dir ? vm->dir : ".", name);
	size_t len;
	char *src = tide_file_read(path, &len, err, sizeof(err));
	if (!src)
		return luaL_error(L,
		                  "require \"%s\": %s (a script may require \"tide\" and the "
		                  "scripts beside it)",
		                  name, err);
	int rc = LUA_ERRSYNTAX;
	char chunk[4300];
	snprintf(chunk, sizeof(chunk), "@%s", path);
	if (len > 0 && src[0] == '\x1b')
		lua_pushfstring(L, "%s: precompiled bytecode is not accepted; give the Lua source",
		                path);
	else
		rc = luaL_loadbuffer(L, src, len, chunk);
	free(src);
	if (rc != 0)
		return lua_error(L); /* the message names the file and line */
	lua_rawgeti(L, LUA_REGISTRYINDEX, vm->env_ref);
	lua_setfenv(L, -2);
	lua_getfield(L, LUA_REGISTRYINDEX, KEY_LOADING);
	lua_setfield(L, modules, name);
	if (lua_pcall(L, 0, 1, 0) != 0) {
		/* Forgotten, so that another require tries again rather than see a loop. */
		lua_pushnil(L);
		lua_setfield(L, modules, name);
		return lua_error(L);
	}
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		lua_pushboolean(L, 1);
	}
	lua_pushvalue(L, -1);
	lua_setfield(L, modules, name);
	return 1;
}

/* require "tide" (the script API), or require "name": name.lua beside the script. */
static int l_sandbox_require(lua_State *L)
{
	size_t len;
	const char *name = luaL_checklstring(L, 1, &len);
	if (strcmp(name, "tide") == 0) {
		lua_getfield(L, LUA_REGISTRYINDEX, "tide.script_api");
		return 1;
	}
	if (!module_name_ok(name, len))
		return luaL_error(L,
		                  "module '%s' is not available to scripts: require \"tide\", or a "
		                  "script beside this one by its name (letters, digits and _, no "
		                  "path or .lua)",
		                  name);
	lua_settop(L, 1);
	return require_sibling(L, name);
}

static void copy_fields(lua_State *L, const char *lib, const char *const *names, int dst)
{
	lua_getglobal(L, lib);
	lua_newtable(L);
	for (const char *const *n = names; *n; n++) {
		lua_getfield(L, -2, *n);
		lua_setfield(L, -2, *n);
	}
	lua_setfield(L, dst, lib);
	lua_pop(L, 1);
}

static int preload_embedded(lua_State *L)
{
	const char *name = lua_tostring(L, 1);
	for (size_t i = 0; i < tide_lua_embedded_count; i++) {
		if (strcmp(tide_lua_embedded[i].name, name) == 0) {
			char chunk[128];
			snprintf(chunk, sizeof(chunk), "=[tide runtime %s]", name);
			const char *src = tide_lua_embedded[i].source;
			if (luaL_loadbuffer(L, src, strlen(src), chunk) != 0)
				return lua_error(L);
			lua_pushstring(L, name);
			lua_call(L, 1, 1);
			return 1;
		}
	}
	return luaL_error(L, "no embedded module %s", name);
}

/* Pushes the environment scripts run in. */
static int build_sandbox(lua_State *L)
{
	/* The runtime: preloaded from the binary, loaded with full access. */
	lua_getglobal(L, "package");
	lua_getfield(L, -1, "preload");
	for (size_t i = 0; i < tide_lua_embedded_count; i++) {
		lua_pushcfunction(L, preload_embedded);
		lua_setfield(L, -2, tide_lua_embedded[i].name);
	}
	lua_pushcfunction(L, tide_lua_open_core);
	lua_setfield(L, -2, "tide.core");
	lua_pop(L, 2);

	lua_getglobal(L, "require");
	lua_pushliteral(L, "tide");
	lua_call(L, 1, 1);
	lua_pushcfunction(L, l_guarded_call);
	lua_setfield(L, -2, "_guard");
	lua_getfield(L, -1, "script_api");
	lua_setfield(L, LUA_REGISTRYINDEX, "tide.script_api");
	lua_getglobal(L, "require");
	lua_pushliteral(L, "tide.model");
	lua_call(L, 1, 1);
	lua_getfield(L, -1, "rejection_mt");
	lua_setfield(L, LUA_REGISTRYINDEX, KEY_REJECTION);
	lua_pop(L, 1);
	lua_setfield(L, LUA_REGISTRYINDEX, "tide.runtime");
	lua_getglobal(L, "require");
	lua_pushliteral(L, "tide.core");
	lua_call(L, 1, 0); /* JSON markers, error metatable */

	/* The environment scripts see. */
	lua_newtable(L);
	int env = lua_gettop(L);
	static const char *const base[] = {"assert", "error",        "ipairs",       "next",
	                                   "pairs",  "select",       "tonumber",     "tostring",
	                                   "type",   "unpack",       "rawequal",     "rawget",
	                                   "rawset", "setmetatable", "getmetatable", NULL};
	for (const char *const *n = base; *n; n++) {
		lua_getglobal(L, *n);
		lua_setfield(L, env, *n);
	}
	static const char *const string_fns[] = {"byte",    "char", "find",  "format", "gmatch",
	                                         "gsub",    "len",  "lower", "match",  "rep",
	                                         "reverse", "sub",  "upper", NULL};
	static const char *const table_fns[] = {"concat", "insert", "remove", "sort", "maxn", NULL};
	static const char *const math_fns[] = {
	        "abs",        "ceil", "floor", "fmod",  "huge",  "max",   "min",
	        "modf",       "pi",   "sqrt",  "exp",   "log",   "pow",   "random",
	        "randomseed", "sin",  "cos",   "tan",   "asin",  "acos",  "atan",
	        "atan2",      "deg",  "rad",   "ldexp", "frexp", "log10", NULL};
	static const char *const os_fns[] = {"time", "clock", "date", "difftime", NULL};
	static const char *const bit_fns[] = {"band",   "bor",     "bxor", "bnot", "lshift",
	                                      "rshift", "arshift", "rol",  "ror",  "tohex",
	                                      "tobit",  "bswap",   NULL};
	static const char *const co_fns[] = {"create", "running", "status", "yield", "wrap", NULL};
	lua_getglobal(L, "string");
	tide_lua_pattern_register(L, lua_gettop(L), pattern_tick);
	lua_pop(L, 1);
	copy_fields(L, "string", string_fns, env);
	copy_fields(L, "table", table_fns, env);
	copy_fields(L, "math", math_fns, env);
	copy_fields(L, "os", os_fns, env);
	copy_fields(L, "bit", bit_fns, env);
	copy_fields(L, "coroutine", co_fns, env);
	if (luaL_loadbuffer(L, safe_calls, sizeof(safe_calls) - 1, "=[tide sandbox]") != 0)
		return lua_error(L);
	lua_getglobal(L, "pcall");
	lua_getglobal(L, "coroutine");
	lua_getfield(L, -1, "resume");
	lua_remove(L, -2);
	lua_pushcfunction(L, l_timed_out);
	lua_getglobal(L, "error");
	lua_getglobal(L, "select");
	lua_call(L, 5, 3);
	lua_getfield(L, env, "coroutine");
	lua_insert(L, -2);
	lua_setfield(L, -2, "resume");
	lua_pop(L, 1);
	lua_setfield(L, env, "xpcall");
	lua_setfield(L, env, "pcall");
	lua_pushcfunction(L, l_sandbox_require);
	lua_setfield(L, env, "require");
	lua_newtable(L);
	lua_setfield(L, LUA_REGISTRYINDEX, KEY_MODULES);
	lua_newtable(L);
	lua_setfield(L, LUA_REGISTRYINDEX, KEY_LOADING);
	lua_getfield(L, LUA_REGISTRYINDEX, "tide.script_api");
	lua_setfield(L, env, "tide");
	lua_pushvalue(L, env);
	lua_setfield(L, env, "_G");

	/* Reading an undefined global is a bug worth a clear error. */
	lua_newtable(L);
	lua_pushcfunction(L, l_undefined_global);
	lua_setfield(L, -2, "__index");
	lua_setmetatable(L, env);

	/* ("").dump(f) reaches the real string table through the string metatable: the
	 * runtime does not need dump, so no code in this state gets it. */
	lua_getglobal(L, "string");
	lua_pushnil(L);
	lua_setfield(L, -2, "dump");
	lua_pop(L, 1);

	/* Strings share one metatable: hide it, so a script cannot rewire string methods
	 * (the runtime's included). */
	lua_pushliteral(L, "");
	lua_getmetatable(L, -1);
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 2);
	return 1;
}

static int l_build_sandbox(lua_State *L)
{
	struct tide_vm *vm = lua_touserdata(L, 1);
	build_sandbox(L);
	vm->env_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

int tide_vm_open(const struct tide_vm_opts *opts, struct tide_vm **out, char *err, size_t n)
{
	*out = NULL;
	struct tide_vm *vm = calloc(1, sizeof(*vm));
	if (!vm) {
		snprintf(err, n, "out of memory");
		return TIDE_ENOMEM;
	}
	vm->limit = opts && opts->memory_limit ? opts->memory_limit : TIDE_VM_DEFAULT_MEMORY;
	vm->cpu_ms = opts && opts->cpu_ms ? opts->cpu_ms : TIDE_VM_DEFAULT_CPU_MS;
	vm->L = lua_newstate(vm_alloc, vm);
	if (!vm->L) {
		free(vm);
		snprintf(err, n, "cannot create a Lua state");
		return TIDE_ENOMEM;
	}
	luaL_openlibs(vm->L);
	luaJIT_setmode(vm->L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
	/* The runtime itself loads within the cap too; give it room while it does. */
	size_t limit = vm->limit;
	vm->limit = 0;
	lua_pushcfunction(vm->L, l_build_sandbox);
	lua_pushlightuserdata(vm->L, vm);
	if (lua_pcall(vm->L, 1, 0, 0) != 0) {
		snprintf(err, n, "cannot set up the Lua runtime: %s", lua_tostring(vm->L, -1));
		tide_vm_close(vm);
		return TIDE_EINVAL;
	}
	vm->limit = vm->used + limit;
	*out = vm;
	return 0;
}

void tide_vm_close(struct tide_vm *vm)
{
	if (!vm)
		return;
	lua_close(vm->L);
	free(vm->dir);
	free(vm);
}

lua_State *tide_vm_state(struct tide_vm *vm)
{
	return vm->L;
}

struct load_args {
	struct tide_vm *vm;
	const char *path, *source;
	size_t len;
	bool processor;
	bool not_processor; /* it ran, and returned no processor */
	int ref;
	char *err;
	size_t n;
};

/* Runs under lua_cpcall: every allocation of loading is protected. */
static int do_load(lua_State *L)
{
	struct load_args *a = lua_touserdata(L, 1);
	char chunk[512];
	snprintf(chunk, sizeof(chunk), "@%s", a->path);
	lua_pushcfunction(L, l_guarded_call);
	if (luaL_loadbuffer(L, a->source, a->len, chunk) != 0) {
		snprintf(a->err, a->n, "%s", lua_tostring(L, -1));
		return 0;
	}
	lua_rawgeti(L, LUA_REGISTRYINDEX, a->vm->env_ref);
	lua_setfenv(L, -2);
	int base = lua_gettop(L) - 2;
	lua_call(L, 1, LUA_MULTRET);
	if (!lua_toboolean(L, base + 1)) {
		/* A script error names file:line already; the guard's limits do not. */
		const char *kind = lua_tostring(L, base + 3);
		bool located = kind && strcmp(kind, "error") == 0;
		snprintf(a->err, a->n, "%s%s%s", located ? "" : a->path, located ? "" : ": ",
		         lua_tostring(L, base + 2));
		return 0;
	}
	if (!lua_istable(L, base + 2)) {
		a->not_processor = a->processor;
		bool none = lua_isnoneornil(L, base + 2);
		if (a->processor)
			snprintf(
			        a->err, a->n,
			        "%s: the script returned %s%s, not a processor (a script ends with "
			        "`return tide.decider { ... }`, tide.projection or tide.reactor)",
			        a->path, none ? "nothing" : "a ",
			        none ? "" : lua_typename(L, lua_type(L, base + 2)));
		else
			snprintf(a->err, a->n, "%s: the file must return a table", a->path);
		return 0;
	}
	if (a->processor) {
		/* Raw: a metatable on what the script returned must not run its code here,
		 * outside the CPU guard. */
		lua_pushliteral(L, "kind");
		lua_rawget(L, base + 2);
		if (lua_type(L, -1) != LUA_TSTRING) {
			a->not_processor = true;
			snprintf(a->err, a->n,
			         "%s: the script returned a plain table, not a processor built "
			         "with tide.decider, tide.projection or tide.reactor",
			         a->path);
			return 0;
		}
		lua_pop(L, 1);
	}
	lua_pushvalue(L, base + 2);
	a->ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

static int load(struct tide_vm *vm, const char *path, const char *source, size_t len,
                bool processor, int *ref, char *err, size_t n)
{
	*ref = LUA_NOREF;
	if (len > 0 && source[0] == '\x1b') {
		snprintf(err, n, "%s: precompiled bytecode is not accepted; give the Lua source",
		         path);
		return TIDE_EINVAL;
	}
	err[0] = '\0';
	/* require finds the script's siblings in its directory. */
	const char *slash = strrchr(path, '/');
	free(vm->dir);
	vm->dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
	if (!vm->dir) {
		snprintf(err, n, "%s: out of memory", path);
		return TIDE_ENOMEM;
	}
	struct load_args a = {vm, path, source, len, processor, false, LUA_NOREF, err, n};
	if (lua_cpcall(vm->L, do_load, &a) != 0) {
		snprintf(err, n, "%s: %s", path,
		         lua_tostring(vm->L, -1) ? lua_tostring(vm->L, -1) : "error");
		lua_pop(vm->L, 1);
		lua_gc(vm->L, LUA_GCCOLLECT, 0);
		return TIDE_EINVAL;
	}
	if (a.ref == LUA_NOREF) {
		if (!err[0])
			snprintf(err, n, "%s: cannot load the script", path);
		return a.not_processor ? TIDE_VM_NOT_PROCESSOR : TIDE_EINVAL;
	}
	*ref = a.ref;
	return 0;
}

const char *tide_vm_unprefixed(const char *err, const char *path)
{
	size_t n = strlen(path);
	return strncmp(err, path, n) == 0 && strncmp(err + n, ": ", 2) == 0 ? err + n + 2 : err;
}

int tide_vm_load(struct tide_vm *vm, const char *path, const char *source, size_t len, int *ref,
                 char *err, size_t n)
{
	return load(vm, path, source, len, true, ref, err, n);
}

int tide_vm_load_table(struct tide_vm *vm, const char *path, const char *source, size_t len,
                       int *ref, char *err, size_t n)
{
	return load(vm, path, source, len, false, ref, err, n);
}

static int protected_call(struct tide_vm *vm, lua_CFunction f, void *ud, bool guard,
                          struct tide_vm_error *e)
{
	lua_State *L = vm->L;
	bool outer = guard && vm->deadline_ns == 0;
	if (outer)
		guard_arm(vm);
	int rc = lua_cpcall(L, f, ud);
	bool timed_out = outer ? guard_disarm(vm) : guard && vm->timed_out;
	if (rc == 0)
		return 0;
	memset(e, 0, sizeof(*e));
	if (rc == LUA_ERRMEM) {
		lua_pop(L, 1);
		lua_gc(L, LUA_GCCOLLECT, 0);
		snprintf(e->kind, sizeof(e->kind), "memory");
		snprintf(e->message, sizeof(e->message), "script ran out of memory (limit %d KiB)",
		         (int)(vm->limit / 1024));
		return -1;
	}
	snprintf(e->kind, sizeof(e->kind), timed_out ? "timeout" : "error");
	if (timed_out)
		snprintf(e->message, sizeof(e->message),
		         "script exceeded its CPU time limit of %u ms", vm->cpu_ms);
	else
		snprintf(e->message, sizeof(e->message), "%s",
		         lua_tostring(L, -1) ? lua_tostring(L, -1) : luaL_typename(L, -1));
	lua_pop(L, 1);
	return -1;
}

int tide_vm_protected(struct tide_vm *vm, lua_CFunction f, void *ud, struct tide_vm_error *e)
{
	return protected_call(vm, f, ud, true, e);
}

int tide_vm_cpcall(struct tide_vm *vm, lua_CFunction f, void *ud, struct tide_vm_error *e)
{
	return protected_call(vm, f, ud, false, e);
}

struct describe {
	lua_State *co;
	struct tide_vm_error *e;
};

static int describe_error(lua_State *L)
{
	struct describe *d = lua_touserdata(L, 1);
	/* Look at the error value here, on L: the dead coroutine's stack has no room to spare.
	 * Moving it over and back leaves the coroutine as it was. */
	lua_xmove(d->co, L, 1);
	lua_pushvalue(L, -1);
	lua_xmove(L, d->co, 1);
	int err = lua_gettop(L);
	char what[600];
	/* Not a string: say what it was, and run none of its metamethods. */
	const char *msg = error_text(L, err, what, sizeof(what));
	if (is_rejection(L, err)) {
		lua_pushliteral(L, "where"); /* file:line of the call */
		lua_rawget(L, err);
		lua_pushliteral(L, "message");
		lua_rawget(L, err);
		const char *where = lua_tostring(L, -2);
		snprintf(
		        what, sizeof(what),
		        "%.200s%stide.reject is for a decider's decide; it was called with: %.300s",
		        where ? where : "", where ? ": " : "",
		        lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
		lua_pop(L, 2);
		msg = what;
	}
	luaL_traceback(L, d->co, msg, 0);
	const char *tb = lua_tostring(L, -1);
	snprintf(d->e->traceback, sizeof(d->e->traceback), "%s", tb);
	const char *nl = strchr(msg, '\n');
	snprintf(d->e->message, sizeof(d->e->message), "%.*s",
	         nl ? (int)(nl - msg) : (int)strlen(msg), msg);
	return 0;
}

int tide_vm_resume(struct tide_vm *vm, lua_State *co, int nargs, struct tide_vm_error *e)
{
	guard_arm(vm);
	int rc = lua_resume(co, nargs);
	bool timed_out = guard_disarm(vm);
	if (rc == 0 || rc == LUA_YIELD)
		return rc;
	memset(e, 0, sizeof(*e));
	if (rc == LUA_ERRMEM) {
		snprintf(e->kind, sizeof(e->kind), "memory");
		snprintf(e->message, sizeof(e->message), "script ran out of memory (limit %d KiB)",
		         (int)(vm->limit / 1024));
		return -1;
	}
	snprintf(e->kind, sizeof(e->kind), timed_out ? "timeout" : "error");
	/* Describing the failure allocates: lift the cap for it (it is the runtime's own
	 * small allocation, no script code runs), and never unprotected. */
	size_t limit = vm->limit;
	vm->limit = 0;
	struct describe d = {co, e};
	if (lua_cpcall(vm->L, describe_error, &d) != 0) {
		snprintf(e->message, sizeof(e->message), "script failed (cannot describe it: %s)",
		         lua_tostring(vm->L, -1));
		lua_pop(vm->L, 1);
	}
	vm->limit = limit;
	if (timed_out)
		snprintf(e->message, sizeof(e->message),
		         "script exceeded its CPU time limit of %u ms", vm->cpu_ms);
	return -1;
}

size_t tide_vm_memory(const struct tide_vm *vm)
{
	return vm->used;
}

/* Whether a traceback line is a frame of the script's, or of a C function it called, as
 * opposed to the runtime's own (its chunks are "[tide runtime ...]"). */
static bool script_frame(const char *line, size_t len)
{
	return len > 0 && !memmem(line, len, "[tide runtime ", 14);
}

char *tide_vm_script_frames(const char *tb)
{
	const char *p = strstr(tb, "stack traceback:");
	if (!p || !(p = strchr(p, '\n')))
		return NULL;
	p++;
	const char *last = NULL; /* the end of the script's last Lua frame */
	for (const char *q = p; *q;) {
		const char *end = strchr(q, '\n');
		size_t len = end ? (size_t)(end - q) : strlen(q);
		if (script_frame(q, len) && !memmem(q, len, "[C]:", 4))
			last = q + len;
		q += len + (end != NULL);
	}
	if (!last)
		return NULL;
	char *out = malloc(strlen("stack traceback:\n") + (size_t)(last - p) + 2);
	if (!out)
		return NULL;
	char *o = out + sprintf(out, "stack traceback:\n");
	while (p < last) {
		const char *end = strchr(p, '\n');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (script_frame(p, len)) {
			memcpy(o, p, len);
			o += len;
			*o++ = '\n';
		}
		p += len + 1;
	}
	*o = '\0';
	return out;
}
