/* lua_json.h — JSON ⇄ Lua values: a direct decoder from JSON text, cJSON for encoding. */
#ifndef TIDE_LUA_JSON_H
#define TIDE_LUA_JSON_H

#include <cJSON.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdbool.h>

/* Fetches tide.null and the array/object markers from tide.model (require'd).
 * Returns 0, or -1 with the error on the stack. */
int tide_lua_json_init(lua_State *L);

/* Why a conversion failed: the content is invalid (NaN, infinity, invalid UTF-8, a NUL
 * byte, nesting deeper than TIDE_MAX_JSON_DEPTH), it is too large, the Lua value has a
 * shape JSON cannot take (a function, a list with holes, non-string keys: misuse), or
 * memory ran out; in decoding, the text is not JSON or is nested too deeply. */
enum {
	TIDE_LUA_JSON_INVALID = 1,
	TIDE_LUA_JSON_TOO_LARGE,
	TIDE_LUA_JSON_MISUSE,
	TIDE_LUA_JSON_NOMEM,
	TIDE_LUA_JSON_BAD = -1,
	TIDE_LUA_JSON_TOO_DEEP = -2,
};

/* Parses text (exactly one JSON value, whitespace around it) and pushes the value; 0, or
 * TIDE_LUA_JSON_BAD / TIDE_LUA_JSON_TOO_DEEP with nothing pushed. The text need not end
 * with a NUL byte; one inside it is not JSON. May raise a memory error (nothing else): call
 * it where that is handled, a lua_CFunction or a protected call. */
int tide_lua_push_json_text(lua_State *L, const char *text, size_t len);

/* For many texts in a row: pushes tide.null and the array and object markers once and
 * returns the index of the first; tide_lua_decode then works as tide_lua_push_json_text
 * without looking them up for every text. */
int tide_lua_json_markers(lua_State *L);
int tide_lua_decode(lua_State *L, int markers, const char *text, size_t len);

/* Encodes the value at idx; NULL with a message naming the place ("path.to[2]: ...")
 * when it cannot be JSON. path names the value in messages ("data"). The keys of every
 * object come in bytewise order: one table, one text. */
cJSON *tide_lua_to_json(lua_State *L, int idx, const char *path, char *err, size_t errlen);
char *tide_lua_to_json_text(lua_State *L, int idx, const char *path, char *err, size_t errlen);

/* The same as text for the store, refusing (TIDE_LUA_JSON_TOO_LARGE) as soon as the text
 * would pass max_bytes (0: no limit) — before copying what makes it too large. Keys come in
 * lua_next's order (jsonb keeps an order of its own). *why (may be NULL) is 0 or the
 * TIDE_LUA_JSON_* of the failure. The text is freed with cJSON_free. */
char *tide_lua_encode(lua_State *L, int idx, const char *path, size_t max_bytes, int *why,
                      char *err, size_t errlen);

#endif
