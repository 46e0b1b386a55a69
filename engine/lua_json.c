/* lua_json.c — JSON ⇄ Lua values: objects ⇄ tables, arrays ⇄ sequences (marked with
 * tide.model.array_mt so that empty ones stay arrays), null ⇄ tide.null. Decoding reads the
 * text once and pushes Lua values as it goes (every event of every read comes through here:
 * no tree in between); encoding builds a cJSON tree. Encoding checks what JSON cannot hold
 * (NaN, infinities, invalid UTF-8, NUL bytes, functions, sparse or mixed tables, nesting
 * beyond TIDE_MAX_JSON_DEPTH, cycles) and says where: "data.items[2]: ...". Both directions
 * stop at TIDE_MAX_JSON_DEPTH, the depth the store accepts, so whatever was appended can be
 * read back into Lua. */
#include "lua_json.h"

#include <locale.h>
#include <math.h>
#include <stdint.h>
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

/* Decoding: one pass over the text, each value pushed as soon as it is read, no tree in
 * between. Nothing in the text is trusted: every byte is checked, nesting stops at
 * TIDE_MAX_JSON_DEPTH (so recursion is bounded), and the only way out other than a return
 * is a Lua memory error, while no C memory is held. Numbers round as strtod rounds: a fast
 * path where one multiplication or division of exact doubles gives the same result, strtod
 * for the rest. */

/* Up to this many members (objects) or items (arrays) wait on the stack until their table
 * is made, so that a small table is made at its size; a longer one grows from there. At
 * 128 levels that is at most 128 × 20 stack slots, well inside LuaJIT's 8,000. */
#define PENDING_PAIRS 8
#define PENDING_ITEMS 16

struct dec {
	lua_State *L;
	const char *p, *end;
	int null, array_mt, object_mt; /* stack indices of the markers */
};

/* The bytes that end a run of plain string content. */
static const unsigned char string_stop[256] = {[0] = 1, ['"'] = 1, ['\\'] = 1};

static const double exact_pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static int dec_value(struct dec *d, int depth);

static inline void skip_space(struct dec *d)
{
	while (d->p < d->end && (*d->p == ' ' || *d->p == '\n' || *d->p == '\r' || *d->p == '\t'))
		d->p++;
}

static int hex4(const char *s)
{
	int v = 0;
	for (int i = 0; i < 4; i++) {
		char c = s[i];
		int x = c >= '0' && c <= '9'   ? c - '0'
		        : c >= 'a' && c <= 'f' ? c - 'a' + 10
		        : c >= 'A' && c <= 'F' ? c - 'A' + 10
		                               : -1;
		if (x < 0)
			return -1;
		v = v << 4 | x;
	}
	return v;
}

/* A \u escape at s (past the "\u"), a surrogate pair taking two: its UTF-8 in out; the
 * bytes of the text used, or 0 when it is not a valid escape (lone surrogates included). */
static size_t unicode_escape(const char *s, const char *end, char out[4], size_t *outlen)
{
	if (end - s < 4)
		return 0;
	int cp = hex4(s);
	size_t used = 4;
	if (cp < 0 || (cp >= 0xdc00 && cp <= 0xdfff))
		return 0;
	if (cp >= 0xd800 && cp <= 0xdbff) {
		if (end - s < 10 || s[4] != '\\' || s[5] != 'u')
			return 0;
		int lo = hex4(s + 6);
		if (lo < 0xdc00 || lo > 0xdfff)
			return 0;
		cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
		used = 10;
	}
	if (cp < 0x80) {
		out[0] = (char)cp;
		*outlen = 1;
	} else if (cp < 0x800) {
		out[0] = (char)(0xc0 | cp >> 6);
		out[1] = (char)(0x80 | (cp & 0x3f));
		*outlen = 2;
	} else if (cp < 0x10000) {
		out[0] = (char)(0xe0 | cp >> 12);
		out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		out[2] = (char)(0x80 | (cp & 0x3f));
		*outlen = 3;
	} else {
		out[0] = (char)(0xf0 | cp >> 18);
		out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
		out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
		out[3] = (char)(0x80 | (cp & 0x3f));
		*outlen = 4;
	}
	return used;
}

/* At the opening quote. A string without escapes is pushed straight from the text. */
static int dec_string(struct dec *d)
{
	const char *s = d->p + 1, *q = s, *end = d->end;
	while (q < end && !string_stop[(unsigned char)*q])
		q++;
	if (q < end && *q == '"') {
		lua_pushlstring(d->L, s, (size_t)(q - s));
		d->p = q + 1;
		return 0;
	}
	luaL_Buffer b;
	luaL_buffinit(d->L, &b);
	luaL_addlstring(&b, s, (size_t)(q - s));
	while (q < end && *q == '\\') {
		if (end - q < 2)
			return TIDE_LUA_JSON_BAD;
		char c = q[1], u[4];
		size_t ulen = 0;
		q += 2;
		switch (c) {
		case '"':
		case '\\':
		case '/': luaL_addchar(&b, c); break;
		case 'b': luaL_addchar(&b, '\b'); break;
		case 'f': luaL_addchar(&b, '\f'); break;
		case 'n': luaL_addchar(&b, '\n'); break;
		case 'r': luaL_addchar(&b, '\r'); break;
		case 't': luaL_addchar(&b, '\t'); break;
		case 'u': {
			size_t used = unicode_escape(q, end, u, &ulen);
			if (!used)
				return TIDE_LUA_JSON_BAD;
			luaL_addlstring(&b, u, ulen);
			q += used;
			break;
		}
		default: return TIDE_LUA_JSON_BAD;
		}
		const char *run = q;
		while (q < end && !string_stop[(unsigned char)*q])
			q++;
		luaL_addlstring(&b, run, (size_t)(q - run));
	}
	if (q == end || *q != '"')
		return TIDE_LUA_JSON_BAD; /* unterminated, or a NUL byte */
	luaL_pushresult(&b);
	d->p = q + 1;
	return 0;
}

/* strtod on a copy of the number (the text need not end after it), with the locale's
 * decimal point as strtod wants it. */
static double slow_number(lua_State *L, const char *s, size_t len)
{
	char small[64], *buf = small;
	if (len >= sizeof(small)) {
		buf = lua_newuserdata(L, len + 1); /* collected; no C memory held if we unwind */
	}
	memcpy(buf, s, len);
	buf[len] = '\0';
	char point = localeconv()->decimal_point[0];
	if (point != '.') {
		char *dot = memchr(buf, '.', len);
		if (dot)
			*dot = point;
	}
	double v = strtod(buf, NULL);
	if (buf != small)
		lua_pop(L, 1);
	return v;
}

static inline bool is_digit(char c)
{
	return (unsigned char)(c - '0') < 10;
}

/* At '-' or a digit: JSON's grammar exactly (no '+', no leading zeros, no bare '.'). */
static int dec_number(struct dec *d)
{
	const char *s = d->p, *q = s, *end = d->end;
	bool neg = q < end && *q == '-';
	if (neg)
		q++;
	if (q == end || !is_digit(*q))
		return TIDE_LUA_JSON_BAD;
	uint64_t m = 0;     /* the first 19 significant digits */
	int sig = 0, e = 0; /* their count; the power of ten that scales m */
	bool more = false;  /* digits beyond those */
	if (*q == '0') {
		q++;
	} else {
		for (; q < end && is_digit(*q); q++) {
			if (sig < 19) {
				m = m * 10 + (uint64_t)(*q - '0');
				sig++;
			} else {
				more = true;
			}
		}
	}
	if (q < end && *q == '.') {
		q++;
		if (q == end || !is_digit(*q))
			return TIDE_LUA_JSON_BAD;
		for (; q < end && is_digit(*q); q++) {
			if (sig < 19) {
				m = m * 10 + (uint64_t)(*q - '0');
				sig += m != 0;
				e--;
			} else {
				more = true;
			}
		}
	}
	if (q < end && (*q == 'e' || *q == 'E')) {
		q++;
		bool eneg = q < end && *q == '-';
		if (q < end && (*q == '-' || *q == '+'))
			q++;
		if (q == end || !is_digit(*q))
			return TIDE_LUA_JSON_BAD;
		int x = 0;
		for (; q < end && is_digit(*q); q++)
			if (x < 100000)
				x = x * 10 + (*q - '0');
		e += eneg ? -x : x;
	}
	d->p = q;
	double v;
	if (!more && m <= (UINT64_C(1) << 53) && e >= -22 && e <= 22) {
		v = (double)m;
		v = e < 0 ? v / exact_pow10[-e] : v * exact_pow10[e];
		if (neg)
			v = -v;
	} else {
		v = slow_number(d->L, s, (size_t)(q - s));
	}
	lua_pushnumber(d->L, v);
	return 0;
}

/* Makes the table for the n values (or key/value pairs) on top of the stack, moves them in
 * and leaves the table on top; its index. */
static int settle(lua_State *L, int n, bool pairs, int hint)
{
	int width = pairs ? 2 * n : n;
	if (pairs)
		lua_createtable(L, 0, hint);
	else
		lua_createtable(L, hint, 0);
	lua_insert(L, -(width + 1));
	int t = lua_gettop(L) - width;
	if (pairs) {
		/* In order: of two equal keys the last one wins. */
		for (int i = 1; i < width; i += 2) {
			lua_pushvalue(L, t + i);
			lua_pushvalue(L, t + i + 1);
			lua_rawset(L, t);
		}
		lua_settop(L, t);
	} else {
		for (int i = n; i >= 1; i--)
			lua_rawseti(L, t, i);
	}
	return t;
}

static int dec_array(struct dec *d, int depth)
{
	lua_State *L = d->L;
	if (depth >= TIDE_MAX_JSON_DEPTH)
		return TIDE_LUA_JSON_TOO_DEEP;
	luaL_checkstack(L, PENDING_ITEMS + 4, "JSON too deeply nested");
	d->p++;
	skip_space(d);
	int n = 0, t = 0;
	if (d->p < d->end && *d->p == ']') {
		d->p++;
	} else {
		for (;;) {
			int rc = dec_value(d, depth + 1);
			if (rc)
				return rc;
			n++;
			if (t)
				lua_rawseti(L, t, n);
			else if (n == PENDING_ITEMS)
				t = settle(L, n, false, 2 * n);
			skip_space(d);
			if (d->p == d->end)
				return TIDE_LUA_JSON_BAD;
			char c = *d->p++;
			if (c == ']')
				break;
			if (c != ',')
				return TIDE_LUA_JSON_BAD;
			skip_space(d);
		}
	}
	if (!t)
		settle(L, n, false, n);
	lua_pushvalue(L, d->array_mt);
	lua_setmetatable(L, -2);
	return 0;
}

static int dec_object(struct dec *d, int depth)
{
	lua_State *L = d->L;
	if (depth >= TIDE_MAX_JSON_DEPTH)
		return TIDE_LUA_JSON_TOO_DEEP;
	luaL_checkstack(L, 2 * PENDING_PAIRS + 4, "JSON too deeply nested");
	d->p++;
	skip_space(d);
	if (d->p < d->end && *d->p == '}') {
		d->p++;
		lua_createtable(L, 0, 0);
		lua_pushvalue(L, d->object_mt);
		lua_setmetatable(L, -2);
		return 0;
	}
	int n = 0, t = 0;
	for (;;) {
		if (d->p == d->end || *d->p != '"')
			return TIDE_LUA_JSON_BAD;
		int rc = dec_string(d);
		if (rc)
			return rc;
		skip_space(d);
		if (d->p == d->end || *d->p != ':')
			return TIDE_LUA_JSON_BAD;
		d->p++;
		skip_space(d);
		rc = dec_value(d, depth + 1);
		if (rc)
			return rc;
		n++;
		if (t)
			lua_rawset(L, t);
		else if (n == PENDING_PAIRS)
			t = settle(L, n, true, 2 * n);
		skip_space(d);
		if (d->p == d->end)
			return TIDE_LUA_JSON_BAD;
		char c = *d->p++;
		if (c == '}')
			break;
		if (c != ',')
			return TIDE_LUA_JSON_BAD;
		skip_space(d);
	}
	if (!t)
		settle(L, n, true, n);
	return 0;
}

static bool literal(struct dec *d, const char *word, size_t len)
{
	if ((size_t)(d->end - d->p) < len || memcmp(d->p, word, len) != 0)
		return false;
	d->p += len;
	return true;
}

/* At the value's first byte (no space before it). */
static int dec_value(struct dec *d, int depth)
{
	if (d->p == d->end)
		return TIDE_LUA_JSON_BAD;
	switch (*d->p) {
	case '{': return dec_object(d, depth);
	case '[': return dec_array(d, depth);
	case '"': return dec_string(d);
	case 't':
		if (!literal(d, "true", 4))
			return TIDE_LUA_JSON_BAD;
		lua_pushboolean(d->L, 1);
		return 0;
	case 'f':
		if (!literal(d, "false", 5))
			return TIDE_LUA_JSON_BAD;
		lua_pushboolean(d->L, 0);
		return 0;
	case 'n':
		if (!literal(d, "null", 4))
			return TIDE_LUA_JSON_BAD;
		lua_pushvalue(d->L, d->null);
		return 0;
	default: return dec_number(d);
	}
}

/* Whether text opens more than TIDE_MAX_JSON_DEPTH objects and arrays at once: why a text
 * that did not parse failed, when it failed for that (also past the error: a text that is
 * both, is called too deep). */
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

int tide_lua_json_markers(lua_State *L)
{
	lua_getfield(L, LUA_REGISTRYINDEX, KEY_NULL);
	lua_getfield(L, LUA_REGISTRYINDEX, KEY_ARRAY);
	lua_getfield(L, LUA_REGISTRYINDEX, KEY_OBJECT);
	return lua_gettop(L) - 2;
}

int tide_lua_decode(lua_State *L, int markers, const char *text, size_t len)
{
	int top = lua_gettop(L);
	struct dec d = {L, text, text + len, markers, markers + 1, markers + 2};
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
		d.p += 3; /* a byte order mark, as cJSON allowed */
	skip_space(&d);
	int rc = dec_value(&d, 0);
	if (rc == 0) {
		skip_space(&d);
		if (d.p != d.end)
			rc = TIDE_LUA_JSON_BAD;
	}
	if (rc) {
		lua_settop(L, top);
		if (rc == TIDE_LUA_JSON_BAD && nested_too_deeply(text, len))
			rc = TIDE_LUA_JSON_TOO_DEEP;
	}
	return rc;
}

int tide_lua_push_json_text(lua_State *L, const char *text, size_t len)
{
	int markers = tide_lua_json_markers(L);
	int rc = tide_lua_decode(L, markers, text, len);
	if (rc == 0)
		lua_replace(L, markers);
	lua_settop(L, rc == 0 ? markers : markers - 1);
	return rc;
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
