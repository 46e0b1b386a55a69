/* lua_json.c — JSON ⇄ Lua values through cJSON: objects ⇄ tables, arrays ⇄ sequences
 * (marked with tide.model.array_mt so that empty ones stay arrays), null ⇄ tide.null.
 * Encoding checks what JSON cannot hold (NaN, infinities, invalid UTF-8, NUL bytes,
 * functions, sparse or mixed tables, nesting beyond TIDE_MAX_JSON_DEPTH, cycles) and says
 * where: "data.items[2]: ...". Both directions stop at TIDE_MAX_JSON_DEPTH, the depth the
 * store accepts, so whatever was appended can be read back into Lua. */
#include "lua_json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "tide.h"

/* Registry keys for the marker values, taken from tide.model at init. */
static const char KEY_NULL[] = "tide.json.null";
static const char KEY_ARRAY[] = "tide.json.array_mt";
static const char KEY_OBJECT[] = "tide.json.object_mt";

int tide_lua_json_init(lua_State *L)
{
	lua_getglobal(L, "require");
	lua_pushliteral(L, "tide.model");
	if (lua_pcall(L, 1, 1, 0) != 0)
		return -1;
	lua_getfield(L, -1, "null");
	lua_setfield(L, LUA_REGISTRYINDEX, KEY_NULL);
	lua_getfield(L, -1, "array_mt");
	lua_setfield(L, LUA_REGISTRYINDEX, KEY_ARRAY);
	lua_getfield(L, -1, "object_mt");
	lua_setfield(L, LUA_REGISTRYINDEX, KEY_OBJECT);
	lua_pop(L, 1);
	return 0;
}

/* Pushes v; false (with the stack as it was, partly built tables dropped by the caller)
 * when it is nested deeper than TIDE_MAX_JSON_DEPTH. */
static bool push_value(lua_State *L, const cJSON *v, int depth)
{
	if ((cJSON_IsObject(v) || cJSON_IsArray(v)) && depth >= TIDE_MAX_JSON_DEPTH)
		return false;
	luaL_checkstack(L, 4, "JSON too deeply nested");
	if (cJSON_IsObject(v)) {
		lua_createtable(L, 0, 4);
		const cJSON *c = v->child;
		if (!c) {
			lua_getfield(L, LUA_REGISTRYINDEX, KEY_OBJECT);
			lua_setmetatable(L, -2);
		}
		for (; c; c = c->next) {
			lua_pushstring(L, c->string);
			if (!push_value(L, c, depth + 1))
				return false;
			lua_rawset(L, -3);
		}
	} else if (cJSON_IsArray(v)) {
		int n = cJSON_GetArraySize(v);
		lua_createtable(L, n, 0);
		int i = 1;
		for (const cJSON *c = v->child; c; c = c->next) {
			if (!push_value(L, c, depth + 1))
				return false;
			lua_rawseti(L, -2, i++);
		}
		lua_getfield(L, LUA_REGISTRYINDEX, KEY_ARRAY);
		lua_setmetatable(L, -2);
	} else if (cJSON_IsString(v)) {
		lua_pushstring(L, v->valuestring);
	} else if (cJSON_IsNumber(v)) {
		lua_pushnumber(L, v->valuedouble);
	} else if (cJSON_IsBool(v)) {
		lua_pushboolean(L, cJSON_IsTrue(v));
	} else {
		lua_getfield(L, LUA_REGISTRYINDEX, KEY_NULL);
	}
	return true;
}

int tide_lua_push_json(lua_State *L, const cJSON *v)
{
	int top = lua_gettop(L);
	if (!push_value(L, v, 0)) {
		lua_settop(L, top);
		return TIDE_LUA_JSON_TOO_DEEP;
	}
	return 0;
}

struct tree {
	const cJSON *v;
	int ref; /* the value built, anchored in the registry */
	int rc;
};

static int push_tree(lua_State *L)
{
	struct tree *t = lua_touserdata(L, 1);
	t->rc = tide_lua_push_json(L, t->v);
	if (t->rc == 0)
		t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

/* Whether text opens more than TIDE_MAX_JSON_DEPTH objects and arrays at once: why a text
 * that cJSON refused (it stops at 1000 levels) failed, when it did for that. */
static bool nested_too_deeply(const char *text, size_t len)
{
	int depth = 0;
	bool in_string = false;
	for (size_t i = 0; i < len; i++) {
		char c = text[i];
		if (in_string) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
		} else if (c == '"') {
			in_string = true;
		} else if (c == '{' || c == '[') {
			if (++depth > TIDE_MAX_JSON_DEPTH)
				return true;
		} else if (c == '}' || c == ']') {
			depth--;
		}
	}
	return false;
}

int tide_lua_push_json_text(lua_State *L, const char *text, size_t len)
{
	if (len == 2 && text[0] == '{' && text[1] == '}') {
		/* Most metadata is empty: skip the parser. */
		lua_createtable(L, 0, 0);
		lua_getfield(L, LUA_REGISTRYINDEX, KEY_OBJECT);
		lua_setmetatable(L, -2);
		return 0;
	}
	/* cJSON stops at its own nesting limit (1000), so a deeper text cannot exhaust the
	 * C stack; what it leaves after the value must be whitespace. */
	const char *end = NULL;
	cJSON *v = memchr(text, '\0', len) ? NULL : cJSON_ParseWithLengthOpts(text, len, &end, 0);
	if (!v)
		return nested_too_deeply(text, len) ? TIDE_LUA_JSON_TOO_DEEP : TIDE_LUA_JSON_BAD;
	while (end < text + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
		end++;
	if (end != text + len) {
		cJSON_Delete(v);
		return TIDE_LUA_JSON_BAD;
	}
	/* Building the tables may raise (the VM's memory cap): build them in a protected call,
	 * free the tree whatever happens, then raise on. */
	struct tree t = {v, LUA_NOREF, 0};
	int status = lua_cpcall(L, push_tree, &t);
	cJSON_Delete(v);
	if (status != 0)
		return lua_error(L); /* the error cpcall left on the stack */
	if (t.rc == 0) {
		lua_rawgeti(L, LUA_REGISTRYINDEX, t.ref);
		luaL_unref(L, LUA_REGISTRYINDEX, t.ref);
	}
	return t.rc;
}

/* An object's key while it is encoded; SMALL_KEYS of them per level need no allocation. */
#define SMALL_KEYS 16
struct key {
	const char *text;
	size_t len;
};

static int key_cmp(const void *a, const void *b)
{
	const struct key *x = a, *y = b;
	int c = memcmp(x->text, y->text, x->len < y->len ? x->len : y->len);
	return c ? c : (x->len > y->len) - (x->len < y->len);
}

struct enc {
	lua_State *L;
	char *err;
	size_t errlen;
	int why;          /* TIDE_LUA_JSON_* of the failure */
	size_t bytes;     /* a lower bound of the text's length so far */
	size_t max_bytes; /* 0: no limit */
	size_t root;      /* the length of the caller's path ("event 1 data") */
	bool sorted;      /* objects' keys in bytewise order */
	char path[256];
};

static cJSON *enc_fail(struct enc *e, int why, const char *what)
{
	e->why = why;
	snprintf(e->err, e->errlen, "%s: %s", e->path[0] ? e->path : "value", what);
	return NULL;
}

/* Counts n more bytes of output; false once the limit is passed, before anything of that
 * size is copied (a 100 MB string is refused without a second 100 MB). */
static bool enc_grow(struct enc *e, size_t n)
{
	e->bytes += n;
	if (e->max_bytes && e->bytes > e->max_bytes) {
		e->why = TIDE_LUA_JSON_TOO_LARGE;
		snprintf(e->err, e->errlen, "%s: more than %zu bytes of JSON",
		         e->path[0] ? e->path : "value", e->max_bytes);
		return false;
	}
	return true;
}

/* Strings and keys: valid UTF-8 without NUL bytes, as the store wants them. */
static const char *check_text(const char *s, size_t len)
{
	if (memchr(s, '\0', len))
		return "string contains a NUL byte";
	if (tide_utf8_check(s, len) < len)
		return "string is not valid UTF-8";
	return NULL;
}

static cJSON *encode(struct enc *e, int idx, int depth);

static bool is_marker(lua_State *L, int idx, const char *key)
{
	lua_getfield(L, LUA_REGISTRYINDEX, key);
	bool same = lua_rawequal(L, idx < 0 ? idx - 1 : idx, -1);
	lua_pop(L, 1);
	return same;
}

static bool has_metatable(lua_State *L, int idx, const char *key)
{
	if (!lua_getmetatable(L, idx))
		return false;
	lua_getfield(L, LUA_REGISTRYINDEX, key);
	bool same = lua_rawequal(L, -1, -2);
	lua_pop(L, 2);
	return same;
}

/* Adds the value on top of the stack to obj as member key (checked), and pops it. */
static bool add_member(struct enc *e, cJSON *obj, const char *key, size_t klen, size_t plen,
                       int depth)
{
	lua_State *L = e->L;
	const char *invalid = check_text(key, klen);
	if (invalid || !enc_grow(e, klen + 4)) {
		lua_pop(L, 1);
		if (invalid) {
			char what[64];
			snprintf(what, sizeof(what), "a key: %s", invalid);
			enc_fail(e, TIDE_LUA_JSON_INVALID, what);
		}
		return false;
	}
	snprintf(e->path + plen, sizeof(e->path) - plen, "%s%s", plen ? "." : "", key);
	cJSON *item = encode(e, lua_gettop(L), depth + 1);
	lua_pop(L, 1);
	if (!item || !cJSON_AddItemToObject(obj, key, item)) {
		cJSON_Delete(item);
		return false;
	}
	return true;
}

/* The table at idx (n keys, none of them 1..n) as an object. Sorted: its keys in bytewise
 * order, so that one table always gives one text (lua_next's order changes with the
 * table's history); a key stays alive in the table, so its text may be held meanwhile. */
static cJSON *encode_object(struct enc *e, int idx, size_t n, int depth, size_t plen)
{
	static const char not_string[] = "object keys must be strings";
	lua_State *L = e->L;
	cJSON *obj = cJSON_CreateObject();
	if (!obj)
		return NULL;
	if (!e->sorted) {
		lua_pushnil(L);
		while (lua_next(L, idx)) {
			size_t klen;
			const char *key =
			        lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &klen) : NULL;
			if (!key || !add_member(e, obj, key, klen, plen, depth)) {
				lua_pop(L, key ? 1 : 2);
				cJSON_Delete(obj);
				return key ? NULL : enc_fail(e, TIDE_LUA_JSON_MISUSE, not_string);
			}
		}
		e->path[plen] = '\0';
		return obj;
	}
	struct key small[SMALL_KEYS];
	struct key *keys = n <= SMALL_KEYS ? small : malloc(n * sizeof(*keys));
	size_t nk = 0;
	bool ok = keys != NULL;
	if (ok)
		lua_pushnil(L);
	while (ok && lua_next(L, idx)) {
		lua_pop(L, 1);
		if (lua_type(L, -1) != LUA_TSTRING) {
			lua_pop(L, 1);
			enc_fail(e, TIDE_LUA_JSON_MISUSE, not_string);
			ok = false;
			break;
		}
		keys[nk].text = lua_tolstring(L, -1, &keys[nk].len);
		nk++;
	}
	if (ok)
		qsort(keys, nk, sizeof(*keys), key_cmp);
	for (size_t i = 0; ok && i < nk; i++) {
		/* The key is there, so this is a raw read (no __index); unlike pushing the key
		 * with lua_pushlstring it cannot run a GC step, whose finalizers may raise. A
		 * key with a NUL byte would be cut here, but check_text refuses it first. */
		lua_getfield(L, idx, keys[i].text);
		ok = add_member(e, obj, keys[i].text, keys[i].len, plen, depth);
	}
	if (keys != small)
		free(keys);
	if (!ok) {
		cJSON_Delete(obj);
		return NULL;
	}
	e->path[plen] = '\0';
	return obj;
}

static cJSON *encode_table(struct enc *e, int idx, int depth)
{
	lua_State *L = e->L;
	if (depth >= TIDE_MAX_JSON_DEPTH) {
		char what[96];
		snprintf(
		        what, sizeof(what),
		        "nested too deeply: more than %d levels of objects and arrays (or a cycle)",
		        TIDE_MAX_JSON_DEPTH);
		e->path[e->root] = '\0'; /* a path 128 keys long says less than its start */
		return enc_fail(e, TIDE_LUA_JSON_INVALID, what);
	}
	if (!enc_grow(e, 2))
		return NULL;
	/* Count keys: a table is an array when its keys are exactly 1..n. */
	size_t n = 0, max = 0;
	bool other = false;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		n++;
		if (lua_type(L, -1) == LUA_TNUMBER) {
			lua_Number k = lua_tonumber(L, -1);
			if (k >= 1 && k == floor(k) && k < 1e15)
				max = (size_t)k > max ? (size_t)k : max;
			else
				other = true;
		} else {
			other = true;
		}
	}
	bool array = n > 0 ? !other : has_metatable(L, idx, KEY_ARRAY);
	if (array && max != n)
		return enc_fail(e, TIDE_LUA_JSON_MISUSE,
		                "a list with holes cannot be encoded as JSON (use tide.null)");
	if (!array && n > 0 && max > 0)
		return enc_fail(e, TIDE_LUA_JSON_MISUSE,
		                "a table with both list items and named keys cannot be encoded");
	size_t plen = strlen(e->path);
	if (array) {
		cJSON *arr = cJSON_CreateArray();
		for (size_t i = 1; arr && i <= n; i++) {
			snprintf(e->path + plen, sizeof(e->path) - plen, "[%zu]", i);
			lua_rawgeti(L, idx, (int)i);
			cJSON *item = encode(e, lua_gettop(L), depth + 1);
			lua_pop(L, 1);
			if (!item || !cJSON_AddItemToArray(arr, item)) {
				cJSON_Delete(item);
				cJSON_Delete(arr);
				return NULL;
			}
		}
		e->path[plen] = '\0';
		return arr;
	}
	return encode_object(e, idx, n, depth, plen);
}

static cJSON *encode(struct enc *e, int idx, int depth)
{
	lua_State *L = e->L;
	switch (lua_type(L, idx)) {
	case LUA_TNIL: return enc_grow(e, 4) ? cJSON_CreateNull() : NULL;
	case LUA_TBOOLEAN: return enc_grow(e, 5) ? cJSON_CreateBool(lua_toboolean(L, idx)) : NULL;
	case LUA_TNUMBER: {
		lua_Number x = lua_tonumber(L, idx);
		if (isnan(x))
			return enc_fail(e, TIDE_LUA_JSON_INVALID, "NaN cannot be encoded as JSON");
		if (isinf(x))
			return enc_fail(e, TIDE_LUA_JSON_INVALID,
			                "infinity cannot be encoded as JSON");
		/* cJSON prints 15 significant digits when they compare "close enough", which
		 * loses integers near 2^53: print exactly, as an integer when it is one. */
		char buf[32];
		if (x == floor(x) && fabs(x) <= 9007199254740992.0)
			snprintf(buf, sizeof(buf), "%.0f", x);
		else
			snprintf(buf, sizeof(buf), "%.17g", x);
		return enc_grow(e, strlen(buf) + 1) ? cJSON_CreateRaw(buf) : NULL;
	}
	case LUA_TSTRING: {
		size_t len;
		const char *s = lua_tolstring(L, idx, &len);
		if (!enc_grow(e, len + 3))
			return NULL;
		const char *bad = check_text(s, len);
		if (bad)
			return enc_fail(e, TIDE_LUA_JSON_INVALID, bad);
		return cJSON_CreateString(s);
	}
	case LUA_TTABLE:
		if (is_marker(L, idx, KEY_NULL))
			return enc_grow(e, 4) ? cJSON_CreateNull() : NULL;
		return encode_table(e, idx, depth);
	default: {
		char what[64];
		snprintf(what, sizeof(what), "a %s cannot be encoded as JSON",
		         lua_typename(L, lua_type(L, idx)));
		return enc_fail(e, TIDE_LUA_JSON_MISUSE, what);
	}
	}
}

static cJSON *to_json(lua_State *L, int idx, const char *path, size_t max_bytes, bool sorted,
                      int *why, char *err, size_t errlen)
{
	struct enc e = {
	        .L = L, .err = err, .errlen = errlen, .max_bytes = max_bytes, .sorted = sorted};
	err[0] = '\0';
	snprintf(e.path, sizeof(e.path), "%s", path ? path : "");
	e.root = strlen(e.path);
	luaL_checkstack(L, TIDE_MAX_JSON_DEPTH * 2 + 8, "JSON too deeply nested");
	if (idx < 0)
		idx = lua_gettop(L) + idx + 1;
	cJSON *v = encode(&e, idx, 0);
	if (!v && !err[0]) {
		e.why = TIDE_LUA_JSON_NOMEM;
		snprintf(err, errlen, "out of memory encoding JSON");
	}
	if (why)
		*why = v ? 0 : e.why;
	return v;
}

cJSON *tide_lua_to_json(lua_State *L, int idx, const char *path, char *err, size_t errlen)
{
	return to_json(L, idx, path, 0, true, NULL, err, errlen);
}

static char *to_text(lua_State *L, int idx, const char *path, size_t max_bytes, bool sorted,
                     int *why, char *err, size_t errlen)
{
	cJSON *v = to_json(L, idx, path, max_bytes, sorted, why, err, errlen);
	if (!v)
		return NULL;
	char *s = cJSON_PrintUnformatted(v);
	cJSON_Delete(v);
	if (!s) {
		if (why)
			*why = TIDE_LUA_JSON_NOMEM;
		snprintf(err, errlen, "out of memory encoding JSON");
	}
	return s;
}

char *tide_lua_encode(lua_State *L, int idx, const char *path, size_t max_bytes, int *why,
                      char *err, size_t errlen)
{
	/* For the store: jsonb keeps keys in an order of its own, so sorting them is wasted. */
	return to_text(L, idx, path, max_bytes, false, why, err, errlen);
}

char *tide_lua_to_json_text(lua_State *L, int idx, const char *path, char *err, size_t errlen)
{
	return to_text(L, idx, path, 0, true, NULL, err, errlen);
}
