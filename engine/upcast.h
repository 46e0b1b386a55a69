/* upcast.h — upcasters among the scripts: the files that return tide.upcaster { ... } (or
 * tide.upcasters { ... }), found by running the scripts of directories in a scratch sandbox,
 * and loaded into a script's VM beside the script, where the runtime (lua/tide/upcast.lua)
 * upcasts every event its readers get and stamps the versions its appends write. */
#ifndef TIDE_UPCAST_H
#define TIDE_UPCAST_H

#include <stddef.h>
#include <stdint.h>

#include "lua_vm.h"

struct tide_upcasters {
	char *paths;        /* the upcaster files, "\n"-joined (malloc'd; "" for none) */
	char *error;        /* why they cannot be used (malloc'd), or NULL */
	size_t count;       /* files */
	uint64_t signature; /* of the files' paths and contents: changes when any does */
};

/* Finds the upcasters among the scripts of dirs (blocking: it reads and runs each *.lua
 * file but specs, in one scratch sandbox with opts' limits) and checks their chain in a
 * fresh VM. A file that does not load but mentions "upcaster" is taken for a broken one:
 * u->error names it, as it does a chain with a missing step. An unreadable directory has
 * none. 0, or TIDE_ENOMEM; release u with tide_upcasters_free. */
TIDE_MUST_CHECK int tide_upcasters_find(const char *const *dirs, int n,
                                        const struct tide_vm_opts *opts, struct tide_upcasters *u);
void tide_upcasters_free(struct tide_upcasters *u);

/* Loads the upcaster files (paths "\n"-joined; NULL or "": none) into vm and gives them to
 * its runtime (tide.use_upcasters): load them before the script, whose directory `require`
 * then finds its siblings in. TIDE_ESCRIPT with err naming the file when one does not load
 * or returns no upcaster, or the chain has a gap; TIDE_ENOMEM. */
TIDE_MUST_CHECK int tide_upcasters_load(struct tide_vm *vm, const char *paths, char *err, size_t n);

/* The upcasters of the directory of the script at path, loaded into vm (`tide handle`,
 * `tide aggregate`): tide_upcasters_find, then tide_upcasters_load; err says why not. */
TIDE_MUST_CHECK int tide_upcasters_load_beside(struct tide_vm *vm, const char *path,
                                               const struct tide_vm_opts *opts, char *err,
                                               size_t n);

/* A read's messages upcast (`tide read`, the HTTP API): a copy of the messages, where those
 * an upcaster changed point to their new data, metadata and schema version (texts owned
 * here; the others' strings are the read's). */
struct tide_upcast_result {
	struct tide_message *messages;
	char **texts; /* three per message: data, metadata, schema version; NULL: unchanged */
	size_t n;
};

/* Upcasts in through the chain loaded in vm (tide_upcasters_load), under its CPU guard.
 * 0, or TIDE_ESCRIPT (an upcaster raised, or returned something else than a table) /
 * TIDE_ENOMEM with err saying so; release out with tide_upcast_result_free either way. */
TIDE_MUST_CHECK int tide_upcast_messages(struct tide_vm *vm, const struct tide_message *in,
                                         size_t n, struct tide_upcast_result *out, char *err,
                                         size_t errn);
void tide_upcast_result_free(struct tide_upcast_result *r);

/* tide.core.upcaster_files(dir) → { path, ... } | nil, err (kind "script" when one does not
 * load or the chain is broken): the Lua module's tide.connect { upcasters = DIR }. */
int tide_lua_upcaster_files(lua_State *L);

#endif
