/* lua_store.h — the store and JSON as the Lua module tide.core. */
#ifndef TIDE_LUA_STORE_H
#define TIDE_LUA_STORE_H

#include <lauxlib.h>
#include <lua.h>
#include <stdbool.h>

/* Pushes the tide.core table (connect, json_encode, json_decode). Needs `require` to
 * find tide.model. */
int tide_lua_open_core(lua_State *L);

/* Pushes nil and an error table { kind, message } (tostring gives the message). */
int tide_lua_push_error(lua_State *L, const char *kind, const char *message);

struct tide_message;
/* Pushes one stored message as an event table (type, data, metadata, stream_id, ...;
 * with_cursor adds "cursor" = "XID:POS"). false when data or metadata could not be
 * decoded (nested deeper than TIDE_MAX_JSON_DEPTH: written by another client); the table
 * is pushed all the same, without that field. */
bool tide_lua_push_message(lua_State *L, const struct tide_message *m, bool with_cursor);

#endif
