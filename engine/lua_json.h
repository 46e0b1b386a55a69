/* lua_json.h — JSON ⇄ Lua values (cJSON on the C side). */
#ifndef TIDE_LUA_JSON_H
#define TIDE_LUA_JSON_H

#include <cJSON.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdbool.h>

/* Fetches tide.null and the array/object markers from tide.model (require'd).
 * Returns 0, or -1 with the error on the stack. */
int tide_lua_json_init(lua_State *L);

void tide_lua_push_json(lua_State *L, const cJSON *v);

/* Parses text and pushes the value; -1 (nothing pushed) when text is not JSON. */
int tide_lua_push_json_text(lua_State *L, const char *text, size_t len);

/* Encodes the value at idx; NULL with a message naming the place ("path.to[2]: ...")
 * when it cannot be JSON. path names the value in messages ("data"). */
cJSON *tide_lua_to_json(lua_State *L, int idx, const char *path, char *err, size_t errlen);
char *tide_lua_to_json_text(lua_State *L, int idx, const char *path, char *err, size_t errlen);

#endif
