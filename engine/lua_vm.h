/* lua_vm.h — a sandboxed LuaJIT state for one script, with memory and CPU limits. */
#ifndef TIDE_LUA_VM_H
#define TIDE_LUA_VM_H

#include <lauxlib.h>
#include <lua.h>
#include <stdbool.h>
#include <stddef.h>

#include "tide.h"

#define TIDE_VM_DEFAULT_MEMORY (64u << 20) /* bytes a script may allocate */
#define TIDE_VM_DEFAULT_CPU_MS 1000u       /* per call into script code */
/* The registry key of the metatable of tide's own error tables ({ kind, message, ... }):
 * a script that raises one is reported by its message. */
#define TIDE_LUA_ERROR_MT "tide.error"

struct tide_vm_opts {
	size_t memory_limit; /* 0: default */
	unsigned cpu_ms;     /* 0: default */
};

struct tide_vm;

TIDE_MUST_CHECK int tide_vm_open(const struct tide_vm_opts *opts, struct tide_vm **out, char *err,
                                 size_t n);
void tide_vm_close(struct tide_vm *vm);
lua_State *tide_vm_state(struct tide_vm *vm);

/* Runs a script's source (chunk named after path) in the sandbox under the CPU guard and
 * anchors the processor table it returned in the registry (*ref). On failure err says
 * "file:line: what"; TIDE_VM_NOT_PROCESSOR when the script ran cleanly but returned no
 * processor (nothing, a value that is not a table, a table without a kind: a module of
 * helpers, say), which `tide run` and `tide check DIR` skip. */
#define TIDE_VM_NOT_PROCESSOR (-100)

/* err past the "path: " it starts with, for a caller that names the file already. */
const char *tide_vm_unprefixed(const char *err, const char *path);
TIDE_MUST_CHECK int tide_vm_load(struct tide_vm *vm, const char *path, const char *source,
                                 size_t len, int *ref, char *err, size_t n);

/* Like tide_vm_load for files that return any table (the daemon's configuration). */
TIDE_MUST_CHECK int tide_vm_load_table(struct tide_vm *vm, const char *path, const char *source,
                                       size_t len, int *ref, char *err, size_t n);

/* A script's failure: kind is "error", "timeout" or "memory"; message is one line;
 * traceback names the script's file and line ("" when there is none). */
struct tide_vm_error {
	char kind[16];
	char message[1024];
	char traceback[4096];
};

/* Resumes coroutine co (a thread of this VM) under the CPU guard. Returns 0 when it
 * finished, LUA_YIELD when it yielded, -1 on error (described in *e). */
int tide_vm_resume(struct tide_vm *vm, lua_State *co, int nargs, struct tide_vm_error *e);

/* Runs f(L) with ud as its light userdata argument under lua_cpcall and the CPU guard:
 * what C does with a script's values (reading its settings, converting results) is
 * protected from memory errors and from script code run by metamethods. Returns 0, or -1
 * with *e filled. */
int tide_vm_protected(struct tide_vm *vm, lua_CFunction f, void *ud, struct tide_vm_error *e);

/* The same without the CPU guard, for C that drives script code through the runtime's
 * own guarded calls and waits on the database in between (`tide handle`). */
int tide_vm_cpcall(struct tide_vm *vm, lua_CFunction f, void *ud, struct tide_vm_error *e);

size_t tide_vm_memory(const struct tide_vm *vm);

/* Of a script error's traceback, "stack traceback:\n" and the frames of the script (and of
 * the C functions it called), one a line, down to its last; not the runtime's own frames,
 * nor those below. malloc'd; NULL when there is no such frame (or no memory). */
char *tide_vm_script_frames(const char *traceback);

#endif
