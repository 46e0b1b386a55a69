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
 * pushes the processor table it returned. On failure pushes nothing and err says
 * "file:line: what". */
TIDE_MUST_CHECK int tide_vm_load(struct tide_vm *vm, const char *path, const char *source,
                                 size_t len, char *err, size_t n);

/* Like tide_vm_load for files that return any table (the daemon's configuration). */
TIDE_MUST_CHECK int tide_vm_load_table(struct tide_vm *vm, const char *path, const char *source,
                                       size_t len, char *err, size_t n);

/* Resumes coroutine co (a thread of this VM) under the CPU guard. Returns 0 when it
 * finished, LUA_YIELD when it yielded, -1 on error with err = message and traceback. */
int tide_vm_resume(struct tide_vm *vm, lua_State *co, int nargs, char *err, size_t n);

size_t tide_vm_memory(const struct tide_vm *vm);

#endif
