/* lua_pattern.h — string.find, match, gmatch and gsub for script states, with a matcher
 * that reports its progress, so that a runaway pattern can be stopped like runaway Lua
 * code. */
#ifndef TIDE_LUA_PATTERN_H
#define TIDE_LUA_PATTERN_H

#include <lua.h>

/* The tick comes at least this often, in steps. A step is one pattern item tried at one
 * place, one character taken by a repetition or scanned by %b, or one gmatch call; long
 * sets, back-references and replacement strings count by their length. The count carries
 * over from one call to the next, so a loop of short matches ticks too. */
#define TIDE_PATTERN_TICK_STEPS 4096

/* Called on the state (thread) running the match. It may raise a Lua error, which unwinds
 * out of the matcher: the matcher holds no memory of its own and the state stays usable. */
typedef void (*tide_pattern_tick_cb)(lua_State *L);

/* Sets find, match, gmatch and gsub of the table at idx to versions that give exactly what
 * LuaJIT 2.1's give (results and error messages) and call tick (may be NULL) every
 * TIDE_PATTERN_TICK_STEPS steps of matching. */
void tide_lua_pattern_register(lua_State *L, int idx, tide_pattern_tick_cb tick);

#endif
