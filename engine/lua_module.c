/* lua_module.c — entry point of the `tide.core` shared module for LuaJIT hosts:
 * `require "tide"` (lua/tide/init.lua) loads it on first use of tide.connect. */
#include "lua_store.h"

#if defined(__GNUC__)
#define TIDE_EXPORT __attribute__((visibility("default")))
#else
#define TIDE_EXPORT
#endif

TIDE_EXPORT int luaopen_tide_core(lua_State *L);

int luaopen_tide_core(lua_State *L)
{
	return tide_lua_open_core(L);
}
