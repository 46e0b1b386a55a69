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
/* Pushing the messages of a read as event tables (type, data, metadata, stream_id,
 * stream_position, global_position, message_id, created; with_cursor adds "cursor" =
 * "XID:POS"). tide_lua_messages_begin pushes what every event shares (the event constructor,
 * the JSON markers, the last stream id and type) once; leave those values where they are
 * while pushing, and drop them after (settop) or let a protected call's end drop them. Both
 * may raise a memory error: call them inside a protected call. */
struct tide_lua_messages {
	int base;
	bool with_cursor;
	const char *stream, *type; /* the last ones pushed (their Lua copies, on the stack) */
	size_t stream_len, type_len;
};
void tide_lua_messages_begin(lua_State *L, struct tide_lua_messages *ms, bool with_cursor);

/* Pushes m as an event table. false when its data or metadata could not be decoded (nested
 * deeper than TIDE_MAX_JSON_DEPTH: written by another client); the table is pushed all the
 * same, without that field. */
bool tide_lua_messages_push(lua_State *L, struct tide_lua_messages *ms,
                            const struct tide_message *m);

#endif
