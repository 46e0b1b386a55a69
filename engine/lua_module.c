/* lua_module.c — entry point of the `tide.core` shared module for LuaJIT hosts:
 * `require "tide"` (lua/tide/init.lua) loads it on first use of tide.connect. */
#include "lua_store.h"
#include "tide.h"

#if defined(__GNUC__)
#define TIDE_EXPORT __attribute__((visibility("default")))
#else
#define TIDE_EXPORT
#endif

TIDE_EXPORT int luaopen_tide_core(lua_State *L);

int luaopen_tide_core(lua_State *L)
{
	tide_lua_store_allow_projections(tide_store_set_projections);
	return tide_lua_open_core(L);
}
