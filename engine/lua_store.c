/* lua_store.c — the store as a Lua object (tide.core.connect): each store runs a private
 * libuv loop until its request completes, so a Lua host gets plain blocking calls and
 * never has to run a loop itself. Runtime failures return nil, err (err.kind says which:
 * "conflict", "connection", "database", "invalid" — the last for content the store
 * refuses: a bad name, data it cannot carry —, "archived" for a read of an archived stream); misuse
 * (a wrong Lua type) raises. Strings are taken with their length: one with a NUL byte is refused,
 * never cut short. */
#include "lua_store.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "lua_json.h"
#include "lua_vm.h"
#include "snapshot.h"
#include "store.h"
#include "tide.h"
#include "upcast.h"

#define STORE_MT "tide.store"

struct lstore {
	uv_loop_t *loop; /* own, or the lender's */
	uv_loop_t own;
	struct tide_store *store;
	bool borrowed; /* tide_lua_store_push_borrowed: not ours to close */
};

struct wait {
	bool done;
	int status;
	char err[700];
	lua_State *L;
	int nret; /* values pushed by the callback on success */
	bool with_cursor;
	int64_t next; /* a read's next.global_position */
};

static struct lstore *check_store(lua_State *L)
{
	struct lstore *s = luaL_checkudata(L, 1, STORE_MT);
	if (!s->store)
		luaL_error(L, "the store is closed");
	return s;
}

static void run_until(struct lstore *s, const bool *done)
{
	while (!*done)
		uv_run(s->loop, UV_RUN_ONCE);
}

static const char *kind_of(int status)
{
	return tide_strerror(status);
}

static void on_open(struct tide_store *st, int status, const char *err, void *arg);
static void on_end(int status, const char *err, void *arg);

/* After a lost connection the next call connects again; 0, or nil, err pushed (2). */
static int ensure_connected(lua_State *L, struct lstore *s)
{
	if (tide_store_connected(s->store))
		return 0;
	uv_run(s->loop, UV_RUN_NOWAIT); /* lets the lost connection's requests fail */
	if (tide_store_in_transaction(s->store)) {
		/* The transaction went with the connection: a call on a new one would run
		 * outside it. Fail this call; the transaction is forgotten, the next connects. */
		struct wait w = {0};
		if (tide_store_rollback(s->store, on_end, &w) == 0)
			run_until(s, &w.done);
		return tide_lua_push_error(L, "connection",
		                           "the connection was lost, and the open transaction with "
		                           "it (nothing in it was committed)");
	}
	struct wait w = {0};
	if (tide_store_reconnect(s->store, on_open, &w) != 0)
		return tide_lua_push_error(L, "connection", tide_store_error(s->store));
	run_until(s, &w.done);
	if (w.status) {
		char msg[760];
		snprintf(msg, sizeof(msg), "cannot connect to the database again: %s", w.err);
		return tide_lua_push_error(L, "connection", msg);
	}
	return 0;
}

/* Pushes nil, err where err = { kind, message } with __tostring = message. */
int tide_lua_push_error(lua_State *L, const char *kind, const char *message)
{
	lua_pushnil(L);
	lua_createtable(L, 0, 4);
	lua_pushstring(L, kind);
	lua_setfield(L, -2, "kind");
	lua_pushstring(L, message);
	lua_setfield(L, -2, "message");
	luaL_getmetatable(L, TIDE_LUA_ERROR_MT);
	lua_setmetatable(L, -2);
	return 2;
}

static int error_tostring(lua_State *L)
{
	lua_getfield(L, 1, "message");
	return 1;
}

static void on_open(struct tide_store *st, int status, const char *err, void *arg)
{
	(void)st;
	struct wait *w = arg;
	w->done = true;
	w->status = status;
	if (err)
		snprintf(w->err, sizeof(w->err), "%s", err);
}

static void close_store(struct lstore *s)
{
	if (s->store && !s->borrowed) {
		tide_store_close(s->store);
		uv_run(s->loop, UV_RUN_DEFAULT);
		uv_loop_close(s->loop);
	}
	s->store = NULL;
}

static int l_store_gc(lua_State *L)
{
	close_store(luaL_checkudata(L, 1, STORE_MT));
	return 0;
}

/* What connect's projections option calls: tide_store_set_projections, handed over by the
 * program (cli.c, lua_module.c). Not called directly: what runs inline projections runs Lua
 * states that have this module, and a module that reached up to it would close a circle. */
static int (*set_projections)(struct tide_store *store, const char *dir);

void tide_lua_store_allow_projections(int (*set)(struct tide_store *store, const char *dir))
{
	set_projections = set;
}

/* connect(url [, partition [, projections]]) → store | nil, err. projections: a directory
 * whose inline projections every append runs (tide_store_set_projections). */
static int l_connect(lua_State *L)
{
	size_t url_len, part_len = 0;
	const char *url = luaL_checklstring(L, 1, &url_len);
	const char *partition = luaL_optlstring(L, 2, TIDE_DEFAULT_PARTITION, &part_len);
	const char *projections = luaL_optstring(L, 3, NULL);
	if (projections && !set_projections)
		return tide_lua_push_error(L, "invalid",
		                           "inline projections are not available in this program");
	if (strlen(url) != url_len)
		return tide_lua_push_error(L, "invalid", "the database URL contains a NUL byte");
	if (strlen(partition) != part_len) {
		char err[200];
		tide_check_name("partition name", partition, part_len, TIDE_MAX_PARTITION_BYTES,
		                err, sizeof(err));
		return tide_lua_push_error(L, "invalid", err);
	}
	struct lstore *s = lua_newuserdata(L, sizeof(*s));
	memset(s, 0, sizeof(*s));
	s->loop = &s->own;
	uv_loop_init(s->loop);
	luaL_getmetatable(L, STORE_MT);
	lua_setmetatable(L, -2);
	struct wait w = {0};
	if (tide_store_open(s->loop, url, on_open, &w, &s->store))
		return luaL_error(L, "out of memory");
	int rc = tide_store_set_partition(s->store, partition);
	if (!rc && projections)
		rc = set_projections(s->store, projections);
	if (rc)
		snprintf(w.err, sizeof(w.err), "%s", tide_store_error(s->store));
	else
		run_until(s, &w.done);
	if (rc || w.status) {
		close_store(s); /* the userdata stays, inert, until collected */
		/* The message is the connection's own ("connection to server ... failed: ...",
		 * "invalid database URL: ..."); callers add what they were doing. */
		return tide_lua_push_error(L, kind_of(rc ? rc : w.status), w.err);
	}
	return 1;
}

void tide_lua_store_push_borrowed(lua_State *L, uv_loop_t *loop, struct tide_store *store)
{
	struct lstore *s = lua_newuserdata(L, sizeof(*s));
	memset(s, 0, sizeof(*s));
	s->loop = loop;
	s->store = store;
	s->borrowed = true;
	luaL_getmetatable(L, STORE_MT);
	lua_setmetatable(L, -2);
}

/* The values a run of events shares, at ms->base + these. */
enum {
	F_MAKE,        /* the event constructor (EVENT_SOURCE) */
	F_LAST_STREAM, /* the last stream id pushed */
	F_LAST_TYPE,   /* the last type pushed */
	F_LAST_PART,   /* the last partition pushed */
	F_MARKERS,     /* tide_lua_json_markers: three values */
};

/* Event tables are made by a Lua table constructor: it copies a template that already
 * holds the keys, where the C API would insert each key anew (lua_rawset of a new key): a
 * 10,000-event read took 83M instructions in the client that way, 73M this way. Compiled
 * once per state (tide_lua_open_core). */
static const char EVENT_SOURCE[] =
        "local function event(type, data, metadata, stream_id, stream_position,\n"
        "                     global_position, message_id, created, partition,\n"
        "                     schema_version)\n"
        "  return { type = type, data = data, metadata = metadata, stream_id = stream_id,\n"
        "           stream_position = stream_position, global_position = global_position,\n"
        "           message_id = message_id, created = created, partition = partition,\n"
        "           schema_version = schema_version }\n"
        "end\n"
        "local function event_at(type, data, metadata, stream_id, stream_position,\n"
        "                        global_position, message_id, created, partition,\n"
        "                        schema_version, cursor)\n"
        "  return { type = type, data = data, metadata = metadata, stream_id = stream_id,\n"
        "           stream_position = stream_position, global_position = global_position,\n"
        "           message_id = message_id, created = created, partition = partition,\n"
        "           schema_version = schema_version, cursor = cursor }\n"
        "end\n"
        "return event, event_at\n";
static const char KEY_EVENT[] = "tide.lua_store.event";
static const char KEY_EVENT_AT[] = "tide.lua_store.event_at";

void tide_lua_messages_begin(lua_State *L, struct tide_lua_messages *ms, bool with_cursor)
{
	luaL_checkstack(L, F_MARKERS + 3 + 12, "too many values on the stack");
	ms->base = lua_gettop(L) + 1;
	ms->with_cursor = with_cursor;
	ms->stream = ms->type = ms->partition = NULL;
	ms->stream_len = ms->type_len = ms->partition_len = 0;
	lua_getfield(L, LUA_REGISTRYINDEX, with_cursor ? KEY_EVENT_AT : KEY_EVENT);
	lua_pushnil(L);
	lua_pushnil(L);
	lua_pushnil(L);
	tide_lua_json_markers(L);
}

/* Pushes s, the same Lua string as last time when it has not changed: most events of a
 * read share their stream, many their type; comparing is cheaper than interning. */
static void push_repeated(lua_State *L, int slot, const char **last, size_t *last_len,
                          const char *s)
{
	size_t len = strlen(s);
	if (*last && *last_len == len && memcmp(*last, s, len) == 0) {
		lua_pushvalue(L, slot);
		return;
	}
	lua_pushlstring(L, s, len);
	lua_pushvalue(L, -1);
	lua_replace(L, slot);
	*last = lua_tostring(L, slot);
	*last_len = len;
}

/* message_schema_version is text: a whole number (what tide and Emmett write) becomes a
 * Lua number, anything else stays a string. */
static void push_schema_version(lua_State *L, const char *v)
{
	if (!v || !*v) {
		lua_pushnil(L);
		return;
	}
	long n = 0;
	size_t i = 0;
	for (; i < 10 && v[i] >= '0' && v[i] <= '9'; i++)
		n = n * 10 + (v[i] - '0');
	if (!v[i] && i < 10)
		lua_pushnumber(L, (lua_Number)n);
	else
		lua_pushstring(L, v);
}

bool tide_lua_messages_push(lua_State *L, struct tide_lua_messages *ms,
                            const struct tide_message *m)
{
	int k = ms->base;
	bool ok = true;
	lua_pushvalue(L, k + F_MAKE);
	push_repeated(L, k + F_LAST_TYPE, &ms->type, &ms->type_len, m->type);
	const char *json[2] = {m->data, m->metadata};
	for (int i = 0; i < 2; i++) {
		if (tide_lua_decode(L, k + F_MARKERS, json[i], strlen(json[i])) != 0) {
			lua_pushnil(L); /* the event goes without it */
			ok = false;
		}
	}
	push_repeated(L, k + F_LAST_STREAM, &ms->stream, &ms->stream_len, m->stream_id);
	lua_pushnumber(L, (lua_Number)m->stream_position);
	lua_pushnumber(L, (lua_Number)m->global_position);
	lua_pushstring(L, m->message_id);
	lua_pushstring(L, m->created);
	if (m->partition)
		push_repeated(L, k + F_LAST_PART, &ms->partition, &ms->partition_len, m->partition);
	else
		lua_pushnil(L);
	push_schema_version(L, m->schema_version);
	if (ms->with_cursor) {
		char c[48];
		struct tide_cursor cur = {m->transaction_id, m->global_position};
		tide_cursor_format(&cur, c);
		lua_pushstring(L, c);
	}
	lua_call(L, ms->with_cursor ? 11 : 10, 1);
	return ok;
}

/* A stored event deeper than a Lua state takes: only another writer (Emmett, SQL by hand)
 * can have stored it, since the store refuses such data on the way in. */
static void cannot_decode(struct wait *w, const struct tide_message *m)
{
	char stream[160];
	tide_snippet(stream, sizeof(stream), m->stream_id, strlen(m->stream_id), 100);
	w->status = TIDE_EINVAL;
	snprintf(w->err, sizeof(w->err),
	         "the event at global position %" PRId64 " (stream %s, position %" PRId64
	         ") cannot be read into Lua: its data or metadata is nested more than %d levels "
	         "deep",
	         m->global_position, stream, m->stream_position, TIDE_MAX_JSON_DEPTH);
}

/* The events of a read as a Lua table (and the next cursor), anchored in the registry. Run
 * under lua_cpcall from the read's callback: a memory error there must not unwind through
 * the loop that delivers the callback. */
struct read_build {
	const struct tide_read_result *r;
	bool with_cursor;
	int events_ref, cursor_ref;
	const struct tide_message *undecodable;
};

static int build_read(lua_State *L)
{
	struct read_build *b = lua_touserdata(L, 1);
	struct tide_lua_messages ms;
	tide_lua_messages_begin(L, &ms, b->with_cursor);
	lua_createtable(L, (int)b->r->count, 0);
	for (size_t i = 0; i < b->r->count; i++) {
		if (!tide_lua_messages_push(L, &ms, &b->r->messages[i])) {
			b->undecodable = &b->r->messages[i];
			return 0;
		}
		lua_rawseti(L, -2, (int)i + 1);
	}
	b->events_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	if (b->with_cursor) {
		char c[48];
		tide_cursor_format(&b->r->next, c);
		lua_pushstring(L, c);
		b->cursor_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	}
	return 0;
}

static void on_read(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	struct wait *w = arg;
	w->done = true;
	w->status = status;
	if (status) {
		snprintf(w->err, sizeof(w->err), "%s", err);
		return;
	}
	lua_State *L = w->L;
	w->next = r->next.global_position;
	struct read_build b = {r, w->with_cursor, LUA_NOREF, LUA_NOREF, NULL};
	if (lua_cpcall(L, build_read, &b) != 0) {
		w->status = TIDE_ENOMEM;
		snprintf(w->err, sizeof(w->err), "cannot read the events into Lua: %s",
		         lua_tostring(L, -1));
		lua_pop(L, 1);
		luaL_unref(L, LUA_REGISTRYINDEX, b.events_ref);
		return;
	}
	if (b.undecodable) {
		cannot_decode(w, b.undecodable);
		return;
	}
	lua_rawgeti(L, LUA_REGISTRYINDEX, b.events_ref);
	luaL_unref(L, LUA_REGISTRYINDEX, b.events_ref);
	w->nret = 1;
	if (w->with_cursor) {
		lua_rawgeti(L, LUA_REGISTRYINDEX, b.cursor_ref);
		luaL_unref(L, LUA_REGISTRYINDEX, b.cursor_ref);
		w->nret = 2;
	}
}

static int64_t opt_int(lua_State *L, int t, const char *key)
{
	lua_getfield(L, t, key);
	int64_t v = 0;
	if (!lua_isnil(L, -1)) {
		if (!lua_isnumber(L, -1) || lua_tonumber(L, -1) < 0)
			luaL_error(L, "option '%s' must be a non-negative number", key);
		v = (int64_t)lua_tonumber(L, -1);
	}
	lua_pop(L, 1);
	return v;
}

static int finish(lua_State *L, struct wait *w)
{
	if (w->status)
		return tide_lua_push_error(L, kind_of(w->status), w->err);
	return w->nret;
}

/* nil, err for a stream name with a NUL byte (C would see it cut short). */
static int stream_with_nul(lua_State *L, const char *stream, size_t len)
{
	char err[200];
	tide_check_name("stream name", stream, len, TIDE_MAX_NAME_BYTES, err, sizeof(err));
	return tide_lua_push_error(L, "invalid", err);
}

/* A stream read built into Lua as its rows arrive, while the server sends the rest. Each
 * event is pushed by a closure run under lua_pcall (a memory error must not unwind through
 * the loop that delivers the rows) whose upvalues are what the events share
 * (tide_lua_messages_begin's values, at 1 + F_*) and, last, the events table. */
enum { EVENTS_UPVALUE = F_MARKERS + 3 + 1 };

struct read_into {
	struct wait w;
	int closure; /* its stack index in l_read */
	struct tide_lua_messages ms;
	const struct tide_message *m; /* the one to push */
	int count;
	bool undecodable;
};

static int push_arriving(lua_State *L)
{
	struct read_into *ri = lua_touserdata(L, 1);
	luaL_checkstack(L, EVENTS_UPVALUE + 12, "too many values on the stack");
	for (int i = 1; i < EVENTS_UPVALUE; i++)
		lua_pushvalue(L, lua_upvalueindex(i));
	ri->ms.base = 2;
	ri->undecodable = !tide_lua_messages_push(L, &ri->ms, ri->m);
	lua_rawseti(L, lua_upvalueindex(EVENTS_UPVALUE), ++ri->count);
	/* the strings push_repeated may have replaced stay for the next event */
	for (int f = F_LAST_STREAM; f <= F_LAST_PART; f++) {
		lua_pushvalue(L, ri->ms.base + f);
		lua_replace(L, lua_upvalueindex(1 + f));
	}
	return 0;
}

static void on_arrived(const struct tide_message *m, void *arg)
{
	struct read_into *ri = arg;
	lua_State *L = ri->w.L;
	if (ri->w.status)
		return; /* failed already: the rest is dropped */
	ri->m = m;
	lua_pushvalue(L, ri->closure);
	lua_pushlightuserdata(L, ri);
	if (lua_pcall(L, 1, 0, 0) != 0) {
		ri->w.status = TIDE_ENOMEM;
		snprintf(ri->w.err, sizeof(ri->w.err), "cannot read the events into Lua: %s",
		         lua_tostring(L, -1));
		lua_pop(L, 1);
	} else if (ri->undecodable) {
		cannot_decode(&ri->w, m);
	}
}

static void on_read_end(int status, const char *err, const struct tide_read_result *r, void *arg)
{
	(void)r;
	struct wait *w = arg;
	w->done = true;
	if (!w->status && status) {
		w->status = status;
		snprintf(w->err, sizeof(w->err), "%s", err);
	}
}

/* store:read(stream, { from, to, max, backward }) → events | nil, err */
static int l_read(lua_State *L)
{
	struct lstore *s = check_store(L);
	int lost = ensure_connected(L, s);
	if (lost)
		return lost;
	size_t stream_len;
	const char *stream = luaL_checklstring(L, 2, &stream_len);
	struct tide_read_opts o = {0};
	if (!lua_isnoneornil(L, 3)) {
		luaL_checktype(L, 3, LUA_TTABLE);
		o.from = opt_int(L, 3, "from");
		o.to = opt_int(L, 3, "to");
		o.max = opt_int(L, 3, "max");
		lua_getfield(L, 3, "backward");
		o.backward = lua_toboolean(L, -1);
		lua_pop(L, 1);
	}
	if (strlen(stream) != stream_len)
		return stream_with_nul(L, stream, stream_len);
	struct read_into ri = {.w = {.L = L}};
	tide_lua_messages_begin(L, &ri.ms, false);
	lua_newtable(L);
	lua_pushcclosure(L, push_arriving, EVENTS_UPVALUE);
	ri.closure = lua_gettop(L);
	luaL_checkstack(L, 8, "too many values on the stack");
	int rc = tide_store_read_stream_each(s->store, stream, &o, on_arrived, on_read_end, &ri);
	if (rc)
		return tide_lua_push_error(L, kind_of(rc), tide_store_error(s->store));
	run_until(s, &ri.w.done);
	if (ri.w.status)
		return tide_lua_push_error(L, kind_of(ri.w.status), ri.w.err);
	lua_getupvalue(L, ri.closure, EVENTS_UPVALUE);
	return 1;
}

static void on_end(int status, const char *err, void *arg);

static void on_archive(int status, const char *err, const struct tide_archive_result *r, void *arg)
{
	(void)r;
	on_end(status, err, arg);
}

/* store:archive(stream) → true | nil, err (kind "invalid": no such stream; "archived":
 * archived already, or archived once and begun again) */
static int l_archive(lua_State *L)
{
	struct lstore *s = check_store(L);
	int lost = ensure_connected(L, s);
	if (lost)
		return lost;
	size_t stream_len;
	const char *stream = luaL_checklstring(L, 2, &stream_len);
	if (strlen(stream) != stream_len)
		return stream_with_nul(L, stream, stream_len);
	struct wait w = {.L = L};
	int rc = tide_store_archive(s->store, stream, on_archive, &w);
	if (rc)
		return tide_lua_push_error(L, kind_of(rc), tide_store_error(s->store));
	run_until(s, &w.done);
	if (w.status)
		return tide_lua_push_error(L, kind_of(w.status), w.err);
	lua_pushboolean(L, 1);
	return 1;
}

/* store:read_all(cursor?, max?) → events, next_cursor | nil, err */
static int l_read_all(lua_State *L)
{
	struct lstore *s = check_store(L);
	int lost = ensure_connected(L, s);
	if (lost)
		return lost;
	struct tide_cursor after = {0, 0};
	if (!lua_isnoneornil(L, 2) && tide_cursor_parse(luaL_checkstring(L, 2), &after))
		return luaL_error(L, "bad cursor '%s' (want \"XID:POS\")", lua_tostring(L, 2));
	lua_Integer max = luaL_optinteger(L, 3, 1000);
	if (max < 0)
		return luaL_error(L, "max must not be negative");
	struct wait w = {.L = L, .with_cursor = true};
	int rc = tide_store_read_all(s->store, &after, max, on_read, &w);
	if (rc)
		return tide_lua_push_error(L, kind_of(rc), tide_store_error(s->store));
	run_until(s, &w.done);
	return finish(L, &w);
}

/* --- documents ------------------------------------------------------------------------ */

/* The documents of a reply as a Lua list of { id, doc, last_stream_id, last_stream_position,
 * last_global_position, updated_at }, anchored in the registry. Run under lua_cpcall from the
 * reply's callback, as build_read. */
struct docs_build {
	const struct tide_docs_result *r;
	int ref;
	const char *undecodable; /* the id of a document nested too deeply for Lua */
};

static int build_docs(lua_State *L)
{
	struct docs_build *b = lua_touserdata(L, 1);
	int markers = tide_lua_json_markers(L);
	lua_createtable(L, (int)b->r->count, 0);
	for (size_t i = 0; i < b->r->count; i++) {
		const struct tide_document *d = &b->r->documents[i];
		lua_createtable(L, 0, 6);
		lua_pushstring(L, d->id);
		lua_setfield(L, -2, "id");
		if (tide_lua_decode(L, markers, d->doc, strlen(d->doc)) != 0) {
			b->undecodable = d->id;
			return 0;
		}
		lua_setfield(L, -2, "doc");
		if (d->last_stream_id) {
			lua_pushstring(L, d->last_stream_id);
			lua_setfield(L, -2, "last_stream_id");
			lua_pushnumber(L, (lua_Number)d->last_stream_position);
			lua_setfield(L, -2, "last_stream_position");
			lua_pushnumber(L, (lua_Number)d->last_global_position);
			lua_setfield(L, -2, "last_global_position");
		}
		lua_pushstring(L, d->updated_at);
		lua_setfield(L, -2, "updated_at");
		lua_rawseti(L, -2, (int)i + 1);
	}
	b->ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

static void on_docs(int status, const char *err, const struct tide_docs_result *r, void *arg)
{
	struct wait *w = arg;
	w->done = true;
	w->status = status;
	if (status) {
		snprintf(w->err, sizeof(w->err), "%s", err);
		return;
	}
	struct docs_build b = {r, LUA_NOREF, NULL};
	if (lua_cpcall(w->L, build_docs, &b) != 0) {
		w->status = TIDE_ENOMEM;
		snprintf(w->err, sizeof(w->err), "cannot read the documents into Lua: %s",
		         lua_tostring(w->L, -1));
		lua_pop(w->L, 1);
		return;
	}
	if (b.undecodable) {
		char id[160];
		tide_snippet(id, sizeof(id), b.undecodable, strlen(b.undecodable), 100);
		w->status = TIDE_EINVAL;
		snprintf(w->err, sizeof(w->err),
		         "document %s cannot be read into Lua: it is nested more than %d levels "
		         "deep",
		         id, TIDE_MAX_JSON_DEPTH);
		return;
	}
	lua_rawgeti(w->L, LUA_REGISTRYINDEX, b.ref);
	luaL_unref(w->L, LUA_REGISTRYINDEX, b.ref);
	w->nret = 1;
}

/* A string argument (a number is taken as its text, as tostring gives it, which is how a
 * document projection makes an id); raises for other types. NULL (and *invalid set) for a
 * string with a NUL byte: the store cannot look it up. */
static const char *doc_text(lua_State *L, int idx, const char *fn, const char *what, char *invalid,
                            size_t n)
{
	int t = lua_type(L, idx);
	if (t != LUA_TSTRING && t != LUA_TNUMBER)
		luaL_error(L, "%s: %s must be a string, got %s", fn, what, lua_typename(L, t));
	size_t len;
	const char *s = lua_tolstring(L, idx, &len);
	if (strlen(s) != len) {
		tide_check_name(what, s, len, TIDE_MAX_NAME_BYTES, invalid, n);
		return NULL;
	}
	return s;
}

/* store:doc(collection, id) → doc, info | nil (no such document) | nil, err.
 * info = { id, last_stream_id, last_stream_position, last_global_position, updated_at }. */
static int l_doc(lua_State *L)
{
	struct lstore *s = check_store(L);
	char invalid[200] = "";
	const char *collection = doc_text(L, 2, "doc", "collection name", invalid, sizeof(invalid));
	const char *id =
	        collection ? doc_text(L, 3, "doc", "document id", invalid, sizeof(invalid)) : NULL;
	if (!id)
		return tide_lua_push_error(L, "invalid", invalid);
	int lost = ensure_connected(L, s);
	if (lost)
		return lost;
	struct wait w = {.L = L};
	int rc = tide_store_doc(s->store, collection, id, on_docs, &w);
	if (rc)
		return tide_lua_push_error(L, kind_of(rc), tide_store_error(s->store));
	run_until(s, &w.done);
	if (w.status)
		return tide_lua_push_error(L, kind_of(w.status), w.err);
	lua_rawgeti(L, -1, 1);
	if (lua_isnil(L, -1))
		return 1;
	lua_getfield(L, -1, "doc");
	lua_insert(L, -2);
	lua_pushnil(L);
	lua_setfield(L, -2, "doc");
	return 2;
}

/* store:docs(collection [, { where = { key = value, ... }, limit = N, after = id }])
 *   → list of { id, doc, last_stream_id, last_stream_position, last_global_position,
 *   updated_at } in id order | nil, err */
static int l_docs(lua_State *L)
{
	struct lstore *s = check_store(L);
	char invalid[400] = "";
	const char *collection =
	        doc_text(L, 2, "docs", "collection name", invalid, sizeof(invalid));
	struct tide_docs_opts o = {0};
	char *where = NULL;
	if (collection && !lua_isnoneornil(L, 3)) {
		if (!lua_istable(L, 3))
			return luaL_error(L, "docs: options must be a table, got %s",
			                  luaL_typename(L, 3));
		lua_pushnil(L);
		while (lua_next(L, 3)) {
			lua_pop(L, 1);
			const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
			if (!k || (strcmp(k, "where") && strcmp(k, "limit") && strcmp(k, "after")))
				return luaL_error(L,
				                  "docs: unknown option %s%s%s (the options are "
				                  "where, limit and after)",
				                  k ? "'" : "", k ? k : luaL_typename(L, -1),
				                  k ? "'" : "");
		}
		lua_getfield(L, 3, "limit");
		if (!lua_isnil(L, -1)) {
			lua_Number n = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : -1;
			if (n < 1 || n > TIDE_DOCS_MAX_LIMIT || n != (lua_Number)(int64_t)n)
				return luaL_error(L,
				                  "docs: limit must be a whole number from 1 to %d "
				                  "(default %d); read further pages with after",
				                  TIDE_DOCS_MAX_LIMIT, TIDE_DOCS_DEFAULT_LIMIT);
			o.limit = (int64_t)n;
		}
		lua_getfield(L, 3, "after");
		if (!lua_isnil(L, -1))
			o.after = doc_text(L, -1, "docs", "after", invalid, sizeof(invalid));
		lua_getfield(L, 3, "where");
		if (!lua_isnil(L, -1) && !invalid[0]) {
			if (!lua_istable(L, -1))
				return luaL_error(
				        L, "docs: where must be a table of key = value, got %s",
				        luaL_typename(L, -1));
			char err[300];
			where = tide_lua_to_json_text(L, -1, "where", err, sizeof(err));
			if (!where)
				return luaL_error(L, "docs: %s", err);
			if (where[0] != '{') {
				cJSON_free(where);
				return luaL_error(L,
				                  "docs: where must be a table of key = value, not "
				                  "a list");
			}
			o.where = where;
		}
	}
	if (invalid[0]) {
		cJSON_free(where);
		return tide_lua_push_error(L, "invalid", invalid);
	}
	int lost = ensure_connected(L, s);
	if (lost) {
		cJSON_free(where);
		return lost;
	}
	struct wait w = {.L = L};
	int rc = tide_store_docs(s->store, collection, &o, on_docs, &w);
	cJSON_free(where);
	if (rc)
		return tide_lua_push_error(L, kind_of(rc), tide_store_error(s->store));
	run_until(s, &w.done);
	return finish(L, &w);
}

struct append_wait {
	struct wait w;
	struct tide_append_result r;
	int64_t *positions;
	char *processor, *traceback; /* an inline projection's failure */
};

static void on_append(int status, const char *err, const struct tide_append_result *r, void *arg)
{
	struct append_wait *a = arg;
	a->w.done = true;
	a->w.status = status;
	if (err)
		snprintf(a->w.err, sizeof(a->w.err), "%s", err);
	if (r) {
		a->r = *r;
		a->r.processor = a->r.traceback = NULL; /* valid only during the callback */
		a->positions = malloc((r->count ? r->count : 1) * sizeof(int64_t));
		if (a->positions && r->count)
			memcpy(a->positions, r->global_positions, r->count * sizeof(int64_t));
		if (r->processor)
			a->processor = strdup(r->processor);
		if (r->traceback && r->traceback[0])
			a->traceback = strdup(r->traceback);
	}
}

int64_t tide_lua_expected(lua_State *L, int t)
{
	lua_getfield(L, t, "expected");
	int64_t v = TIDE_EXPECT_ANY;
	if (lua_type(L, -1) == LUA_TNUMBER) {
		lua_Number n = lua_tonumber(L, -1);
		if (n < 0 || n != (lua_Number)(int64_t)n)
			luaL_error(L, "expected version must be a whole number >= 0");
		v = (int64_t)n;
	} else if (lua_type(L, -1) == LUA_TSTRING) {
		const char *x = lua_tostring(L, -1);
		if (strcmp(x, "any") == 0)
			v = TIDE_EXPECT_ANY;
		else if (strcmp(x, "no_stream") == 0)
			v = TIDE_EXPECT_NO_STREAM;
		else if (strcmp(x, "stream_exists") == 0)
			v = TIDE_EXPECT_STREAM_EXISTS;
		else
			luaL_error(
			        L,
			        "expected must be \"any\", \"no_stream\", \"stream_exists\" or a "
			        "number, got \"%s\"",
			        x);
	} else if (!lua_isnil(L, -1)) {
		luaL_error(L, "expected must be a string or a number");
	}
	lua_pop(L, 1);
	return v;
}

/* Encodes event i's data or metadata (the table on top) within what is left of the event's
 * size limit. NULL with either `invalid` (content the store refuses) or `misuse` set. */
static char *encode_field(lua_State *L, size_t i, const char *field, size_t *left, char *invalid,
                          char *misuse, size_t n)
{
	char path[48], err[400];
	snprintf(path, sizeof(path), "event %zu %s", i, field);
	if (!lua_istable(L, -1)) {
		snprintf(misuse, n, "%s must be a table", path);
		return NULL;
	}
	/* The limit counts escapes only once the text is printed; 1 when nothing is left
	 * (0 would mean no limit). */
	int why = 0;
	char *text = tide_lua_encode(L, -1, path, *left ? *left : 1, &why, err, sizeof(err));
	size_t len = text ? strlen(text) : 0;
	if (text && len <= *left) {
		*left -= len;
		return text;
	}
	if (text) {
		cJSON_free(text);
		why = TIDE_LUA_JSON_TOO_LARGE;
	}
	if (why == TIDE_LUA_JSON_TOO_LARGE)
		snprintf(invalid, n,
		         "event %zu is too large: its data and metadata are more than %u bytes of "
		         "JSON; at most %u (%u MiB) are allowed",
		         i, TIDE_MAX_EVENT_BYTES, TIDE_MAX_EVENT_BYTES, TIDE_MAX_EVENT_BYTES >> 20);
	else
		snprintf(why == TIDE_LUA_JSON_INVALID ? invalid : misuse, n, "%s", err);
	return NULL;
}

/* A string field of event i (the table at t) as a name: NULL when absent; a name with a
 * NUL byte sets `invalid`, a value that is not a string sets `misuse`. */
static const char *event_string(lua_State *L, int t, size_t i, const char *field, const char *what,
                                bool required, char *invalid, char *misuse, size_t n)
{
	lua_getfield(L, t, field);
	int type = lua_type(L, -1);
	size_t len = 0;
	const char *v = type == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
	lua_pop(L, 1); /* the string stays alive: the event table refers to it */
	if (type == LUA_TNIL && !required)
		return NULL;
	if (type == LUA_TNIL)
		snprintf(misuse, n, "event %zu has no %s", i, field);
	else if (type != LUA_TSTRING)
		snprintf(misuse, n, "event %zu: %s must be a string, got a %s", i, field,
		         lua_typename(L, type));
	else if (strlen(v) != len)
		snprintf(invalid, n, "the %s of event %zu contains a NUL byte (at byte %zu)", what,
		         i, strlen(v) + 1);
	else
		return v;
	return NULL;
}

void tide_lua_events_free(struct tide_lua_events *e)
{
	for (size_t i = 0; e->texts && i < e->n * 2; i++)
		free(e->texts[i]);
	free(e->texts);
	free(e->events);
	free(e->versions);
	e->texts = NULL;
	e->events = NULL;
	e->versions = NULL;
}

/* An event's schema_version (optional): a whole number, or its text; into buf. */
static const char *event_version(lua_State *L, int t, size_t i, char buf[16], char *invalid,
                                 char *misuse, size_t n)
{
	lua_getfield(L, t, "schema_version");
	int type = lua_type(L, -1);
	const char *v = NULL;
	if (type == LUA_TNUMBER) {
		lua_Number x = lua_tonumber(L, -1);
		if (x >= 1 && x <= 999999999 && x == (lua_Number)(long)x) {
			snprintf(buf, 16, "%ld", (long)x);
			v = buf;
		}
	} else if (type == LUA_TSTRING && lua_objlen(L, -1) < 16) {
		snprintf(buf, 16, "%s", lua_tostring(L, -1));
		v = tide_schema_version_valid(buf) ? buf : NULL;
	} else if (type != LUA_TNIL && type != LUA_TSTRING) {
		snprintf(misuse, n, "event %zu: schema_version must be a number, got a %s", i,
		         lua_typename(L, type));
	}
	if (!v && type != LUA_TNIL && !misuse[0])
		snprintf(invalid, n,
		         "the schema version of event %zu must be a whole number from 1 to "
		         "999999999",
		         i);
	lua_pop(L, 1);
	return v;
}

int tide_lua_events(lua_State *L, int idx, struct tide_lua_events *out, char *invalid, char *misuse,
                    size_t errn)
{
	size_t n = lua_objlen(L, idx);
	out->n = n;
	out->events = calloc(n ? n : 1, sizeof(*out->events));
	out->texts = calloc(n ? n * 2 : 1, sizeof(char *));
	out->versions = calloc(n ? n : 1, sizeof(*out->versions));
	if (!out->events || !out->texts || !out->versions) {
		snprintf(misuse, errn, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		struct tide_event *ev = &out->events[i];
		lua_rawgeti(L, idx, (int)i + 1);
		if (!lua_istable(L, -1)) {
			snprintf(misuse, errn, "event %zu is not a table", i + 1);
			lua_pop(L, 1);
			goto fail;
		}
		int t = lua_gettop(L);
		ev->type = event_string(L, t, i + 1, "type", "type", true, invalid, misuse, errn);
		if (!ev->type) {
			lua_pop(L, 1);
			goto fail;
		}
		size_t left = TIDE_MAX_EVENT_BYTES;
		const char *fields[2] = {"data", "metadata"};
		for (int k = 0; k < 2; k++) {
			lua_getfield(L, t, fields[k]);
			if (lua_isnil(L, -1) && k == 0) {
				lua_pop(L, 1);
				lua_newtable(L);
			}
			if (!lua_isnil(L, -1)) {
				out->texts[i * 2 + k] = encode_field(L, i + 1, fields[k], &left,
				                                     invalid, misuse, errn);
				if (!out->texts[i * 2 + k]) {
					lua_pop(L, 2);
					goto fail;
				}
			}
			lua_pop(L, 1);
		}
		ev->data = out->texts[i * 2];
		ev->metadata = out->texts[i * 2 + 1];
		ev->message_id =
		        event_string(L, t, i + 1, "id", "message id", false, invalid, misuse, errn);
		if (!misuse[0] && !invalid[0])
			ev->schema_version =
			        event_version(L, t, i + 1, out->versions[i], invalid, misuse, errn);
		lua_pop(L, 1);
		if (misuse[0] || invalid[0])
			goto fail;
	}
	return 0;
fail:
	tide_lua_events_free(out);
	return -1;
}

void tide_lua_push_append_result(lua_State *L, const struct tide_append_result *r)
{
	lua_createtable(L, 0, 2);
	lua_pushnumber(L, (lua_Number)r->next_expected_version);
	lua_setfield(L, -2, "next_expected_version");
	lua_createtable(L, (int)r->count, 0);
	for (size_t i = 0; i < r->count && r->global_positions; i++) {
		lua_pushnumber(L, (lua_Number)r->global_positions[i]);
		lua_rawseti(L, -2, (int)i + 1);
	}
	lua_setfield(L, -2, "global_positions");
}

void tide_lua_push_conflict(lua_State *L, const char *message, const struct tide_append_result *r)
{
	tide_lua_push_error(L, "conflict", message);
	lua_remove(L, -2); /* the nil */
	if (r->actual >= 0)
		lua_pushnumber(L, (lua_Number)r->actual);
	else
		lua_pushliteral(L, "no_stream");
	lua_setfield(L, -2, "actual");
	char exp[32];
	tide_expected_format(r->expected, exp, sizeof(exp));
	if (r->expected >= 0)
		lua_pushnumber(L, (lua_Number)r->expected);
	else
		lua_pushstring(L, exp);
	lua_setfield(L, -2, "expected");
	if (r->archived) {
		lua_pushboolean(L, 1);
		lua_setfield(L, -2, "archived");
	}
}

/* A query table { types = { name, ... }, data = { field = value, ... } } as a tide_query (see
 * tide.h). A bad shape raises, naming fn; content the store refuses (a NUL byte in a type)
 * is left in invalid. What the query points to is left on the Lua stack (the type list, a
 * userdata for the array, the data's JSON as a string): nothing to free, also when a later
 * argument raises. */
struct lua_query {
	struct tide_query q;
	char invalid[400];
};

static void check_query(lua_State *L, int idx, const char *fn, struct lua_query *lq)
{
	memset(lq, 0, sizeof(*lq));
	if (!lua_istable(L, idx))
		luaL_error(
		        L,
		        "%s: the query must be a table { types = { ... }, data = { field = value "
		        "} }, got %s",
		        fn, luaL_typename(L, idx));
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
		if (!k || (strcmp(k, "types") && strcmp(k, "data")))
			luaL_error(L,
			           "%s: the query has an unknown key %s (it takes types and data)",
			           fn, k ? k : luaL_typename(L, -1));
	}
	lua_getfield(L, idx, "types");
	int types = lua_gettop(L);
	if (!lua_isnil(L, types)) {
		size_t n = lua_istable(L, types) ? lua_objlen(L, types) : 0;
		if (n == 0)
			luaL_error(L, "%s: the query's types must be a list of event type names",
			           fn);
		if (n > TIDE_MAX_QUERY_TYPES)
			luaL_error(L, "%s: the query has %d types; at most %d are allowed", fn,
			           (int)n, TIDE_MAX_QUERY_TYPES);
		const char **list = lua_newuserdata(L, n * sizeof(*list));
		for (size_t i = 0; i < n; i++) {
			lua_rawgeti(L, types, (int)i + 1);
			size_t len = 0;
			const char *t =
			        lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
			if (!t)
				luaL_error(L, "%s: type %d of the query must be a string, got %s",
				           fn, (int)i + 1, luaL_typename(L, -1));
			if (strlen(t) != len && !lq->invalid[0]) {
				char what[40];
				snprintf(what, sizeof(what), "type %zu of the query", i + 1);
				tide_check_name(what, t, len, TIDE_MAX_NAME_BYTES, lq->invalid,
				                sizeof(lq->invalid));
			}
			list[i] = t; /* the list keeps it alive */
			lua_pop(L, 1);
		}
		lq->q.types = list;
		lq->q.ntypes = n;
	}
	lua_getfield(L, idx, "data");
	int data = lua_gettop(L);
	if (lua_isnil(L, data)) {
		if (!lq->q.ntypes)
			luaL_error(L,
			           "%s: the query needs types, data or both (it would match every "
			           "event)",
			           fn);
		return;
	}
	if (!lua_istable(L, data))
		luaL_error(L, "%s: the query's data must be a table of field = value, got %s", fn,
		           luaL_typename(L, data));
	int fields = 0;
	lua_pushnil(L);
	while (lua_next(L, data)) {
		int vt = lua_type(L, -1);
		fields++;
		if (lua_type(L, -2) != LUA_TSTRING)
			luaL_error(L,
			           "%s: the query's data must be a table of field = value with "
			           "string keys",
			           fn);
		if (vt != LUA_TSTRING && vt != LUA_TNUMBER && vt != LUA_TBOOLEAN)
			luaL_error(
			        L,
			        "%s: the query's data field '%s' must be a string, a number or a "
			        "boolean, got %s",
			        fn, lua_tostring(L, -2), lua_typename(L, vt));
		lua_pop(L, 1);
	}
	if (fields == 0)
		luaL_error(L,
		           "%s: the query's data has no fields: give at least one field = value, "
		           "or leave data out",
		           fn);
	char err[300];
	char *text = tide_lua_to_json_text(L, data, "the query's data", err, sizeof(err));
	if (!text) {
		if (!lq->invalid[0])
			snprintf(lq->invalid, sizeof(lq->invalid), "%s", err);
		return;
	}
	lua_pushstring(L, text);
	cJSON_free(text);
	lq->q.data = lua_tostring(L, -1);
}

/* A whole number >= 0 (argument i): a global position. */
static int64_t position_arg(lua_State *L, int i, const char *fn, const char *what)
{
	if (lua_type(L, i) != LUA_TNUMBER)
		luaL_error(L, "%s: %s must be a global position (a whole number >= 0), got %s", fn,
		           what, luaL_typename(L, i));
	lua_Number n = lua_tonumber(L, i);
	if (n < 0 || n != (lua_Number)(int64_t)n)
		luaL_error(L, "%s: %s must be a whole number >= 0", fn, what);
	return (int64_t)n;
}

/* The conflict of an append_if whose query matched: { kind = "conflict", message, found,
 * after, expected }. found: the global position of the first matching event. */
static void push_query_conflict(lua_State *L, const char *message, int64_t after,
                                const struct tide_append_result *r)
{
	tide_lua_push_error(L, "conflict", message);
	lua_remove(L, -2); /* the nil */
	lua_pushnumber(L, (lua_Number)r->found_position);
	lua_setfield(L, -2, "found");
	lua_pushnumber(L, (lua_Number)after);
	lua_setfield(L, -2, "after");
	char exp[32];
	tide_expected_format(r->expected, exp, sizeof(exp));
	if (r->expected >= 0)
		lua_pushnumber(L, (lua_Number)r->expected);
	else
		lua_pushstring(L, exp);
	lua_setfield(L, -2, "expected");
}

/* The arguments from `first` on: stream, events [, { expected }]; then the append,
 * conditional when lq is not NULL. What store:append and store:append_if return. */
static int append(lua_State *L, struct lstore *s, int first, struct lua_query *lq, int64_t after)
{
	const char *fn = lq ? "append_if" : "append";
	size_t stream_len;
	const char *stream = luaL_checklstring(L, first, &stream_len);
	luaL_checktype(L, first + 1, LUA_TTABLE);
	int64_t expected = TIDE_EXPECT_ANY;
	if (!lua_isnoneornil(L, first + 2)) {
		luaL_checktype(L, first + 2, LUA_TTABLE);
		expected = tide_lua_expected(L, first + 2);
	}
	if (lua_objlen(L, first + 1) == 0)
		return luaL_error(L, "%s: no events given", fn);
	char misuse[700] = "", invalid[700] = "";
	if (strlen(stream) != stream_len)
		return stream_with_nul(L, stream, stream_len);
	if (lq && lq->invalid[0])
		return tide_lua_push_error(L, "invalid", lq->invalid);
	struct tide_lua_events e = {0};
	if (tide_lua_events(L, first + 1, &e, invalid, misuse, sizeof(invalid)) != 0) {
		if (misuse[0])
			return luaL_error(L, "%s: %s", fn, misuse);
		return tide_lua_push_error(L, "invalid", invalid);
	}
	struct append_wait a = {.w = {.L = L}};
	int rc = lq ? tide_store_append_if(s->store, &lq->q, after, stream, e.events, e.n, expected,
	                                   on_append, &a)
	            : tide_store_append(s->store, stream, e.events, e.n, expected, on_append, &a);
	tide_lua_events_free(&e);
	if (rc)
		return tide_lua_push_error(L, kind_of(rc), tide_store_error(s->store));
	run_until(s, &a.w.done);
	int nret = 1;
	if (a.w.status == TIDE_ECONFLICT) {
		lua_pushnil(L);
		if (a.r.found_position)
			push_query_conflict(L, a.w.err, after, &a.r);
		else
			tide_lua_push_conflict(L, a.w.err, &a.r);
		nret = 2;
	} else if (a.w.status) {
		/* An inline projection's failure: its id and stack too. */
		nret = tide_lua_push_error(L, kind_of(a.w.status), a.w.err);
		if (a.processor) {
			lua_pushstring(L, a.processor);
			lua_setfield(L, -2, "processor");
		}
		if (a.traceback) {
			lua_pushstring(L, a.traceback);
			lua_setfield(L, -2, "traceback");
		}
	} else {
		a.r.global_positions = a.positions;
		tide_lua_push_append_result(L, &a.r);
	}
	free(a.positions);
	free(a.processor);
	free(a.traceback);
	return nret;
}

/* store:append(stream, events, { expected }) → { next_expected_version, global_positions }
 * | nil, err. An event is { type, data, metadata?, id? }; data/metadata are tables. */
static int l_append(lua_State *L)
{
	struct lstore *s = check_store(L);
	int lost = ensure_connected(L, s);
	if (lost)
		return lost;
	return append(L, s, 2, NULL, 0);
}

/* store:append_if(query, after, stream, events [, { expected }]) → as store:append, or
 * nil, err with err.kind "conflict" and err.found (the global position of the first event
 * matching query after `after`) when one was appended since: tide_store_append_if. */
static int l_append_if(lua_State *L)
{
	struct lstore *s = check_store(L);
	int64_t after = position_arg(L, 3, "append_if", "after");
	struct lua_query lq;
	check_query(L, 2, "append_if", &lq);
	int lost = ensure_connected(L, s);
	return lost ? lost : append(L, s, 4, &lq, after);
}

/* store:read_query(query [, { after = N, max = N }]) → events, position | nil, err: the events
 * matching query after global position `after` (default 0), in global order, and the position
 * to give store:append_if (tide_store_read_query). */
static int l_read_query(lua_State *L)
{
	struct lstore *s = check_store(L);
	int64_t after = 0, max = 0;
	if (!lua_isnoneornil(L, 3)) {
		luaL_checktype(L, 3, LUA_TTABLE);
		after = opt_int(L, 3, "after");
		max = opt_int(L, 3, "max");
	}
	struct lua_query lq;
	check_query(L, 2, "read_query", &lq);
	int lost = lq.invalid[0] ? tide_lua_push_error(L, "invalid", lq.invalid)
	                         : ensure_connected(L, s);
	if (lost)
		return lost;
	struct wait w = {.L = L};
	int rc = tide_store_read_query(s->store, &lq.q, after, max, on_read, &w);
	if (rc)
		return tide_lua_push_error(L, kind_of(rc), tide_store_error(s->store));
	run_until(s, &w.done);
	if (w.status)
		return finish(L, &w);
	lua_pushnumber(L, (lua_Number)w.next);
	return 2;
}

/* store:sleep(ms): the backoff between a decider's retries. Nothing of this store is in
 * flight then, and the host is blocked in the call anyway, so this simply sleeps. (Waiting
 * on a loop timer instead hung about one spec run in twenty, with libuv 1.44 blocked in
 * epoll_wait without a timeout although the timer had been started; cause not found.) */
static int l_sleep(lua_State *L)
{
	check_store(L);
	lua_Number ms = luaL_checknumber(L, 2);
	if (ms > 0)
		uv_sleep(ms < 1 ? 1 : (unsigned)(ms + 0.5));
	return 0;
}

struct txn_wait {
	struct wait w;
	int64_t version;
};

static void on_begin(int status, const char *err, int64_t version, void *arg)
{
	struct txn_wait *t = arg;
	t->w.done = true;
	t->w.status = status;
	t->version = version;
	if (err)
		snprintf(t->w.err, sizeof(t->w.err), "%s", err);
}

static void on_end(int status, const char *err, void *arg)
{
	struct wait *w = arg;
	w->done = true;
	w->status = status;
	if (err)
		snprintf(w->err, sizeof(w->err), "%s", err);
}

/* store:begin([stream]) → version | "no_stream" | nil, err: a transaction on the store's
 * connection with the stream's row locked (see tide_store_begin); every call on the store
 * runs inside it until store:commit() or store:rollback(). What it returns is the expected
 * version an append inside wants. Without a stream: true. Beginning twice raises. */
static int l_begin(lua_State *L)
{
	struct lstore *s = check_store(L);
	size_t len = 0;
	const char *stream = luaL_optlstring(L, 2, NULL, &len);
	int lost = ensure_connected(L, s);
	if (lost)
		return lost;
	if (tide_store_in_transaction(s->store))
		return luaL_error(L, "begin: a transaction is already open on this store");
	char err[200];
	if (stream && strlen(stream) != len) {
		tide_check_name("stream name", stream, len, TIDE_MAX_NAME_BYTES, err, sizeof(err));
		return tide_lua_push_error(L, "invalid", err);
	}
	struct txn_wait t = {.version = -1};
	int rc = tide_store_begin(s->store, stream, on_begin, &t);
	if (rc)
		return tide_lua_push_error(L, kind_of(rc), tide_store_error(s->store));
	run_until(s, &t.w.done);
	if (t.w.status)
		return tide_lua_push_error(L, kind_of(t.w.status), t.w.err);
	if (!stream)
		lua_pushboolean(L, 1);
	else if (t.version < 0)
		lua_pushliteral(L, "no_stream");
	else
		lua_pushnumber(L, (lua_Number)t.version);
	return 1;
}

/* store:commit() / store:rollback() → true | nil, err. Without an open transaction: raises.
 * After a lost connection: nil, err (kind "connection"; for commit "unknown" when COMMIT
 * had been sent), and the transaction is over either way. */
static int end_transaction(lua_State *L, bool commit)
{
	struct lstore *s = check_store(L);
	if (!tide_store_in_transaction(s->store))
		return luaL_error(L, "%s: no transaction is open on this store",
		                  commit ? "commit" : "rollback");
	struct wait w = {0};
	int rc = commit ? tide_store_commit(s->store, on_end, &w)
	                : tide_store_rollback(s->store, on_end, &w);
	if (rc)
		return tide_lua_push_error(L, kind_of(rc), tide_store_error(s->store));
	run_until(s, &w.done);
	if (w.status)
		return tide_lua_push_error(L, kind_of(w.status), w.err);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_commit(lua_State *L)
{
	return end_transaction(L, true);
}

static int l_rollback(lua_State *L)
{
	return end_transaction(L, false);
}

/* A stream and a decider name (arguments 2 and 3) without NUL bytes; NULL with nil, err
 * pushed (2 values) when one has. */
static const char *snapshot_names(lua_State *L, const char **decider)
{
	size_t stream_len, decider_len;
	const char *stream = luaL_checklstring(L, 2, &stream_len);
	*decider = luaL_checklstring(L, 3, &decider_len);
	char err[200];
	if (strlen(stream) != stream_len || strlen(*decider) != decider_len) {
		bool bad_stream = strlen(stream) != stream_len;
		tide_check_name(bad_stream ? "stream name" : "decider name",
		                bad_stream ? stream : *decider,
		                bad_stream ? stream_len : decider_len, TIDE_MAX_NAME_BYTES, err,
		                sizeof(err));
		tide_lua_push_error(L, "invalid", err);
		return NULL;
	}
	return stream;
}

struct snapshot_wait {
	struct wait w;
	bool found, current;
	int version;
	int64_t position, global;
	const char *text; /* the state's JSON, while the callback runs */
	int state_ref;    /* then as a Lua string, anchored */
};

static int anchor_state(lua_State *L)
{
	struct snapshot_wait *sw = lua_touserdata(L, 1);
	lua_pushstring(L, sw->text);
	sw->state_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

static void on_snapshot(int status, const char *err, const struct tide_snapshot *s, void *arg)
{
	struct snapshot_wait *sw = arg;
	sw->w.done = true;
	sw->w.status = status;
	if (status) {
		snprintf(sw->w.err, sizeof(sw->w.err), "%s", err);
		return;
	}
	if (!s)
		return;
	sw->found = true;
	sw->current = s->current;
	sw->version = s->version;
	sw->position = s->stream_position;
	sw->global = s->global_position;
	sw->text = s->state;
	/* Under lua_cpcall: a memory error must not unwind through the loop. */
	if (lua_cpcall(sw->w.L, anchor_state, sw) != 0) {
		sw->w.status = TIDE_ENOMEM;
		snprintf(sw->w.err, sizeof(sw->w.err), "cannot read the snapshot into Lua: %s",
		         lua_tostring(sw->w.L, -1));
		lua_pop(sw->w.L, 1);
	}
	sw->text = NULL;
}

/* store:snapshot_load(stream, decider) → { version, position, global_position, state,
 * current } | false (none) | nil, err. `current` is false when the stream's active event at
 * `position` is no longer the one the snapshot was taken at (see engine/snapshot.h). */
static int l_snapshot_load(lua_State *L)
{
	struct lstore *s = check_store(L);
	const char *decider;
	const char *stream = snapshot_names(L, &decider);
	if (!stream)
		return 2;
	int lost = ensure_connected(L, s);
	if (lost)
		return lost;
	struct snapshot_wait sw = {.w = {.L = L}, .state_ref = LUA_NOREF};
	int rc = tide_snapshot_load(s->store, stream, decider, on_snapshot, &sw);
	if (rc)
		return tide_lua_push_error(L, kind_of(rc), tide_store_error(s->store));
	run_until(s, &sw.w.done);
	if (sw.w.status) {
		luaL_unref(L, LUA_REGISTRYINDEX, sw.state_ref);
		return finish(L, &sw.w);
	}
	if (!sw.found) {
		lua_pushboolean(L, 0);
		return 1;
	}
	lua_rawgeti(L, LUA_REGISTRYINDEX, sw.state_ref);
	luaL_unref(L, LUA_REGISTRYINDEX, sw.state_ref);
	int text = lua_gettop(L);
	size_t len;
	const char *json = lua_tolstring(L, text, &len);
	if (tide_lua_push_json_text(L, json, len) != 0)
		return tide_lua_push_error(L, "invalid",
		                           "the snapshot's state is not JSON tide can read");
	lua_createtable(L, 0, 5);
	lua_pushnumber(L, sw.version);
	lua_setfield(L, -2, "version");
	lua_pushnumber(L, (lua_Number)sw.position);
	lua_setfield(L, -2, "position");
	lua_pushnumber(L, (lua_Number)sw.global);
	lua_setfield(L, -2, "global_position");
	lua_pushvalue(L, -2);
	lua_setfield(L, -2, "state");
	lua_pushboolean(L, sw.current);
	lua_setfield(L, -2, "current");
	return 1;
}

static int64_t whole_arg(lua_State *L, int i, const char *what, int64_t min)
{
	lua_Number n = luaL_checknumber(L, i);
	if (n < (lua_Number)min || n != (lua_Number)(int64_t)n)
		luaL_error(L, "snapshot_save: %s must be a whole number >= %d", what, (int)min);
	return (int64_t)n;
}

/* store:snapshot_save(stream, decider, version, position, global_position, state) → true |
 * nil, err: the state folded up to stream position `position` (whose event has
 * global_position) as the snapshot of (stream, decider), taken with the decider's snapshot
 * version. A state that cannot be JSON (a function in it, a list with holes, more than
 * TIDE_MAX_SNAPSHOT_BYTES) is nil, err with kind "invalid" and a message that says where. */
static int l_snapshot_save(lua_State *L)
{
	struct lstore *s = check_store(L);
	const char *decider;
	const char *stream = snapshot_names(L, &decider);
	if (!stream)
		return 2;
	int64_t version = whole_arg(L, 4, "version", 1);
	if (version > INT32_MAX)
		return luaL_error(L, "snapshot_save: version must be at most %d", INT32_MAX);
	struct tide_snapshot snap = {
	        .version = (int)version,
	        .stream_position = whole_arg(L, 5, "position", 1),
	        .global_position = whole_arg(L, 6, "global_position", 0),
	};
	luaL_checkany(L, 7);
	int lost = ensure_connected(L, s);
	if (lost)
		return lost;
	char err[400];
	int why = 0;
	char *text =
	        tide_lua_encode(L, 7, "state", TIDE_MAX_SNAPSHOT_BYTES, &why, err, sizeof(err));
	if (!text) {
		char msg[480];
		snprintf(msg, sizeof(msg), "the state cannot be stored as JSON: %s", err);
		return tide_lua_push_error(
		        L, why == TIDE_LUA_JSON_NOMEM ? kind_of(TIDE_ENOMEM) : "invalid", msg);
	}
	snap.state = text;
	struct wait w = {.L = L};
	int rc = tide_snapshot_save(s->store, stream, decider, &snap, on_end, &w);
	cJSON_free(text);
	if (rc)
		return tide_lua_push_error(L, kind_of(rc), tide_store_error(s->store));
	run_until(s, &w.done);
	if (w.status)
		return finish(L, &w);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_close(lua_State *L)
{
	luaL_checkudata(L, 1, STORE_MT);
	return l_store_gc(L);
}

/* json.encode(value) → text | nil, err;  json.decode(text) → value | nil, err */
static int l_json_encode(lua_State *L)
{
	luaL_checkany(L, 1);
	char err[400] = "";
	char *s = tide_lua_to_json_text(L, 1, "", err, sizeof(err));
	if (!s)
		return tide_lua_push_error(L, "invalid", err);
	lua_pushstring(L, s);
	cJSON_free(s);
	return 1;
}

static int l_json_decode(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	int rc = tide_lua_push_json_text(L, s, len);
	if (rc == TIDE_LUA_JSON_TOO_DEEP) {
		char msg[120];
		snprintf(msg, sizeof(msg),
		         "the JSON is nested too deeply: more than %d levels of objects and arrays",
		         TIDE_MAX_JSON_DEPTH);
		return tide_lua_push_error(L, "invalid", msg);
	}
	if (rc != 0)
		return tide_lua_push_error(L, "invalid", "not valid JSON");
	return 1;
}

void tide_lua_error_init(lua_State *L)
{
	if (luaL_newmetatable(L, TIDE_LUA_ERROR_MT)) {
		lua_pushcfunction(L, error_tostring);
		lua_setfield(L, -2, "__tostring");
	}
	lua_pop(L, 1);
}

int tide_lua_open_core(lua_State *L)
{
	if (tide_lua_json_init(L) != 0)
		return lua_error(L);
	if (luaL_loadbuffer(L, EVENT_SOURCE, sizeof(EVENT_SOURCE) - 1, "=tide.event") != 0)
		return lua_error(L);
	lua_call(L, 0, 2);
	lua_setfield(L, LUA_REGISTRYINDEX, KEY_EVENT_AT);
	lua_setfield(L, LUA_REGISTRYINDEX, KEY_EVENT);
	tide_lua_error_init(L);
	if (luaL_newmetatable(L, STORE_MT)) {
		static const luaL_Reg methods[] = {
		        {"append", l_append},
		        {"append_if", l_append_if},
		        {"read_query", l_read_query},
		        {"read", l_read},
		        {"archive", l_archive},
		        {"read_all", l_read_all},
		        {"begin", l_begin},
		        {"commit", l_commit},
		        {"rollback", l_rollback},
		        {"sleep", l_sleep},
		        {"close", l_close},
		        {"snapshot_load", l_snapshot_load},
		        {"snapshot_save", l_snapshot_save},
		        {"doc", l_doc},
		        {"docs", l_docs},
		        {NULL, NULL},
		};
		lua_newtable(L);
		luaL_register(L, NULL, methods);
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, l_store_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_pop(L, 1);
	static const luaL_Reg fns[] = {
	        {"connect", l_connect},
	        {"json_encode", l_json_encode},
	        {"json_decode", l_json_decode},
	        {"upcaster_files", tide_lua_upcaster_files},
	        {NULL, NULL},
	};
	lua_newtable(L);
	luaL_register(L, NULL, fns);
	return 1;
}
