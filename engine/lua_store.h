/* lua_store.h — the store and JSON as the Lua module tide.core. */
#ifndef TIDE_LUA_STORE_H
#define TIDE_LUA_STORE_H

#include <lauxlib.h>
#include <lua.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* Pushes the tide.core table (connect, json_encode, json_decode). Needs `require` to
 * find tide.model. */
int tide_lua_open_core(lua_State *L);

struct tide_store;
/* Lets connect take the projections option (tide_store_set_projections): the program's
 * entry gives it (cli.c, lua_module.c). */
void tide_lua_store_allow_projections(int (*set)(struct tide_store *store, const char *dir));

/* Pushes a store object (as connect's) for store, whose requests it runs on loop until they
 * complete (nothing else may be in flight on that loop meanwhile). The caller keeps owning
 * store, and closes it only once L can no longer use the object: closing the object, or
 * collecting it, leaves store alone. May raise a memory error. */
void tide_lua_store_push_borrowed(lua_State *L, uv_loop_t *loop, struct tide_store *store);

/* Registers the metatable of tide's error tables (TIDE_LUA_ERROR_MT, lua_vm.h): its
 * __tostring gives the message. */
void tide_lua_error_init(lua_State *L);

/* Pushes nil and an error table { kind, message } (tostring gives the message). */
int tide_lua_push_error(lua_State *L, const char *kind, const char *message);

struct tide_append_result;
/* Pushes { next_expected_version, global_positions }. */
void tide_lua_push_append_result(lua_State *L, const struct tide_append_result *r);
/* Pushes the error table of a conflict: { kind = "conflict", message, expected, actual }
 * (actual "no_stream" when there is none). */
void tide_lua_push_conflict(lua_State *L, const char *message, const struct tide_append_result *r);

/* The `expected` field of the options table at t as tide_store_append takes it (absent:
 * any); a value that is none of any, no_stream, stream_exists or a whole number raises. */
int64_t tide_lua_expected(lua_State *L, int t);

struct tide_event;
/* An events list from Lua ({ type, data?, metadata?, id? }...) as tide_events for an
 * append; the strings live in the Lua tables or in texts (freed with _free). */
struct tide_lua_events {
	struct tide_event *events;
	char **texts;
	char (*versions)[16]; /* each event's schema_version as text (events point here) */
	size_t n;
};
/* 0, or -1 with either `invalid` (content the store refuses: nil, err for the caller) or
 * `misuse` (a wrong Lua type: the caller raises) set. Frees what it built on failure. */
int tide_lua_events(lua_State *L, int idx, struct tide_lua_events *out, char *invalid, char *misuse,
                    size_t errn);
void tide_lua_events_free(struct tide_lua_events *e);

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
	/* the last ones pushed (their Lua copies, on the stack) */
	const char *stream, *type, *partition;
	size_t stream_len, type_len, partition_len;
};
void tide_lua_messages_begin(lua_State *L, struct tide_lua_messages *ms, bool with_cursor);

/* Pushes m as an event table. false when its data or metadata could not be decoded (nested
 * deeper than TIDE_MAX_JSON_DEPTH: written by another client); the table is pushed all the
 * same, without that field. */
bool tide_lua_messages_push(lua_State *L, struct tide_lua_messages *ms,
                            const struct tide_message *m);

#endif
