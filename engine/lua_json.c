/* lua_json.c — JSON ⇄ Lua values through cJSON: objects ⇄ tables, arrays ⇄ sequences
 * (marked with tide.model.array_mt so that empty ones stay arrays), null ⇄ tide.null.
 * Encoding checks what JSON cannot hold (NaN, infinities, invalid UTF-8, functions,
 * sparse or mixed tables, cycles) and says where: "data.items[2]: ...". */
#include "lua_json.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define MAX_DEPTH 128

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

static void push_value(lua_State *L, const cJSON *v)
{
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
			push_value(L, c);
			lua_rawset(L, -3);
		}
	} else if (cJSON_IsArray(v)) {
		int n = cJSON_GetArraySize(v);
		lua_createtable(L, n, 0);
		int i = 1;
		for (const cJSON *c = v->child; c; c = c->next) {
			push_value(L, c);
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
}

void tide_lua_push_json(lua_State *L, const cJSON *v)
{
	push_value(L, v);
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
	cJSON *v = cJSON_ParseWithLength(text, len);
	if (!v)
		return -1;
	push_value(L, v);
	cJSON_Delete(v);
	return 0;
}

struct enc {
	lua_State *L;
	char *err;
	size_t errlen;
	char path[256];
};

static bool utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = s[i];
		size_t len = c < 0x80         ? 1
		             : (c >> 5) == 6  ? 2
		             : (c >> 4) == 14 ? 3
		             : (c >> 3) == 30 ? 4
		                              : 0;
		if (!len || i + len > n)
			return false;
		unsigned cp = len == 1 ? c : c & (0x7f >> len);
		for (size_t k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
		    (len == 4 && cp < 0x10000) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += len;
	}
	return true;
}

static cJSON *enc_fail(struct enc *e, const char *what)
{
	snprintf(e->err, e->errlen, "%s: %s", e->path[0] ? e->path : "value", what);
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

static cJSON *encode_table(struct enc *e, int idx, int depth)
{
	lua_State *L = e->L;
	if (depth > MAX_DEPTH)
		return enc_fail(e, "nested too deeply (or a cycle)");
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
		return enc_fail(e, "a list with holes cannot be encoded as JSON (use tide.null)");
	if (!array && n > 0 && max > 0)
		return enc_fail(e, "a table with both list items and named keys cannot be encoded");
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
	cJSON *obj = cJSON_CreateObject();
	lua_pushnil(L);
	while (obj && lua_next(L, idx)) {
		if (lua_type(L, -2) != LUA_TSTRING) {
			lua_pop(L, 2);
			cJSON_Delete(obj);
			return enc_fail(e, "object keys must be strings");
		}
		const char *key = lua_tostring(L, -2);
		snprintf(e->path + plen, sizeof(e->path) - plen, "%s%s", plen ? "." : "", key);
		cJSON *item = encode(e, lua_gettop(L), depth + 1);
		lua_pop(L, 1);
		if (!item || !cJSON_AddItemToObject(obj, key, item)) {
			cJSON_Delete(item);
			cJSON_Delete(obj);
			lua_pop(L, 1);
			return NULL;
		}
	}
	e->path[plen] = '\0';
	return obj;
}

static cJSON *encode(struct enc *e, int idx, int depth)
{
	lua_State *L = e->L;
	switch (lua_type(L, idx)) {
	case LUA_TNIL: return cJSON_CreateNull();
	case LUA_TBOOLEAN: return cJSON_CreateBool(lua_toboolean(L, idx));
	case LUA_TNUMBER: {
		lua_Number x = lua_tonumber(L, idx);
		if (isnan(x))
			return enc_fail(e, "NaN cannot be encoded as JSON");
		if (isinf(x))
			return enc_fail(e, "infinity cannot be encoded as JSON");
		/* cJSON prints 15 significant digits when they compare "close enough", which
		 * loses integers near 2^53: print exactly, as an integer when it is one. */
		char buf[32];
		if (x == floor(x) && fabs(x) <= 9007199254740992.0)
			snprintf(buf, sizeof(buf), "%.0f", x);
		else
			snprintf(buf, sizeof(buf), "%.17g", x);
		return cJSON_CreateRaw(buf);
	}
	case LUA_TSTRING: {
		size_t len;
		const char *s = lua_tolstring(L, idx, &len);
		if (!utf8_valid((const unsigned char *)s, len))
			return enc_fail(e, "string is not valid UTF-8");
		if (memchr(s, '\0', len))
			return enc_fail(e, "string contains a NUL byte");
		return cJSON_CreateString(s);
	}
	case LUA_TTABLE:
		if (is_marker(L, idx, KEY_NULL))
			return cJSON_CreateNull();
		return encode_table(e, idx, depth);
	default: {
		char what[64];
		snprintf(what, sizeof(what), "a %s cannot be encoded as JSON",
		         lua_typename(L, lua_type(L, idx)));
		return enc_fail(e, what);
	}
	}
}

cJSON *tide_lua_to_json(lua_State *L, int idx, const char *path, char *err, size_t errlen)
{
	struct enc e = {.L = L, .err = err, .errlen = errlen};
	snprintf(e.path, sizeof(e.path), "%s", path ? path : "");
	luaL_checkstack(L, MAX_DEPTH * 2 + 8, "JSON too deeply nested");
	if (idx < 0)
		idx = lua_gettop(L) + idx + 1;
	cJSON *v = encode(&e, idx, 0);
	if (!v && !err[0])
		snprintf(err, errlen, "out of memory encoding JSON");
	return v;
}

char *tide_lua_to_json_text(lua_State *L, int idx, const char *path, char *err, size_t errlen)
{
	err[0] = '\0';
	cJSON *v = tide_lua_to_json(L, idx, path, err, errlen);
	if (!v)
		return NULL;
	char *s = cJSON_PrintUnformatted(v);
	cJSON_Delete(v);
	if (!s)
		snprintf(err, errlen, "out of memory encoding JSON");
	return s;
}
