/* lua_pattern.c — string.find, match, gmatch and gsub for script states: Lua 5.1 patterns
 * with the results and error messages of LuaJIT 2.1, matched by a backtracking matcher that
 * counts its steps and calls the host's tick every TIDE_PATTERN_TICK_STEPS of them.
 *
 * Why: the CPU guard's count hook only fires between VM instructions, and LuaJIT's own
 * matcher is one C call, so ("a"):rep(200):find(".-.-.-.-b") ran for 22 s under a 100 ms
 * limit. The tick lets the host raise from inside the matcher instead.
 *
 * LuaJIT reports a malformed pattern only when its matcher reaches the bad item (find("b",
 * "a[") is nil, not an error) and limits the nesting of its matcher calls, not the pattern.
 * To give the same answers this matcher reads the pattern in the same order and recurses at
 * the same places: capture open and close, '?', and each attempt of '*', '+' and '-'. The
 * pattern ends at its first NUL, as LuaJIT's does.
 *
 * Cost (test_pattern speed, JIT off as in script VMs): everyday matches and gsubs take
 * 0.9-1.15x LuaJIT's time, 1.1x over the whole workload; a plain find, ~35 ns in LuaJIT,
 * pays ~20 ns more of C API calls. A tick comes every 20-200 us of matching. */
#include "lua_pattern.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PM_MAX_CAPTURES 32   /* LUA_MAXCAPTURES */
#define PM_MAX_DEPTH    200  /* LuaJIT's LJ_MAX_XLEVEL: nested matcher calls */
#define PM_CAP_OPEN     (-1) /* the length of a capture whose ')' is not reached yet */
#define PM_CAP_POSITION (-2) /* the length of a "()" capture */
#define PM_SET_BYTES    4    /* bytes of a set scanned per step, beyond the first 16 */
#define PM_COPY_BYTES   64   /* bytes compared or copied (memcmp, memcpy) per step */

/* The state of one registration: the host's tick and the steps left until it is due. */
struct pm_guard {
	tide_pattern_tick_cb tick;
	long budget;
};

/* One call of find, match, gsub or of a gmatch iterator. */
struct pm_state {
	const char *subject, *end; /* *end is the subject's terminating NUL */
	lua_State *L;
	struct pm_guard *guard;
	long budget; /* the guard's, while the call runs */
	int depth;   /* nested pm_match calls */
	int ncap;    /* captures opened, closed or not */
	struct {
		const char *at;
		ptrdiff_t len; /* or PM_CAP_OPEN, PM_CAP_POSITION */
	} cap[PM_MAX_CAPTURES];
};

/* The characters that make find search for a pattern rather than for the string itself. */
static const bool pm_special[256] = {
        ['^'] = true, ['$'] = true, ['*'] = true, ['+'] = true, ['?'] = true,
        ['.'] = true, ['('] = true, ['['] = true, ['%'] = true, ['-'] = true,
};

static _Noreturn void pm_fail(lua_State *L, const char *msg)
{
	luaL_error(L, "%s", msg);
	abort(); /* not reached: luaL_error does not return */
}

static void pm_begin(struct pm_state *ms, lua_State *L, struct pm_guard *guard, const char *s,
                     size_t len)
{
	ms->subject = s;
	ms->end = s + len;
	ms->L = L;
	ms->guard = guard;
	ms->budget = guard->budget;
	ms->depth = 0;
	ms->ncap = 0;
}

static void pm_finish(struct pm_state *ms)
{
	ms->guard->budget = ms->budget;
}

static __attribute__((noinline, cold)) void pm_tick(struct pm_state *ms)
{
	ms->budget = TIDE_PATTERN_TICK_STEPS;
	ms->guard->budget = TIDE_PATTERN_TICK_STEPS;
	if (ms->guard->tick)
		ms->guard->tick(ms->L);
}

static inline void pm_charge(struct pm_state *ms, long steps)
{
	ms->budget -= steps;
	if (ms->budget <= 0)
		pm_tick(ms);
}

static inline bool pm_is_alpha(unsigned c)
{
	return (c | 0x20) - 'a' < 26;
}

static inline bool pm_is_digit(unsigned c)
{
	return c - '0' < 10;
}

/* Whether c is in the class %cl, in ASCII as in the C locale whatever the process locale:
 * bytes from 128 are in no class. A letter naming no class, and any other byte, stands
 * for itself; an upper-case class letter means the complement. */
static inline bool pm_class_has(int cl, int c)
{
	unsigned u = (unsigned)c;
	bool in;
	switch (cl | 0x20) { /* only letters fold onto letters */
	case 'a': in = pm_is_alpha(u); break;
	case 'c': in = u < 32 || u == 127; break;
	case 'd': in = pm_is_digit(u); break;
	case 'g': in = u - 33 < 94; break;
	case 'l': in = u - 'a' < 26; break;
	case 'p': in = u - 33 < 94 && !pm_is_alpha(u) && !pm_is_digit(u); break;
	case 's': in = u == ' ' || u - 9 < 5; break;
	case 'u': in = u - 'A' < 26; break;
	case 'w': in = pm_is_alpha(u) || pm_is_digit(u); break;
	case 'x': in = pm_is_digit(u) || (u | 0x20) - 'a' < 6; break;
	case 'z': in = u == 0; break;
	default: return cl == c;
	}
	return (cl & 0x20) ? in : !in;
}

/* Whether c is in the set that opens at set ('[') and closes at close (its ']'). */
static bool pm_set_has(int c, const char *set, const char *close)
{
	bool in = true;
	const char *q = set + 1;
	if (*q == '^') {
		in = false;
		q++;
	}
	for (; q < close; q++) {
		int first = (unsigned char)q[0];
		if (first == '%') {
			q++;
			if (pm_class_has((unsigned char)*q, c))
				return in;
		} else if (q[1] == '-' && q + 2 < close) {
			int last = (unsigned char)q[2];
			if (first <= c && c <= last)
				return in;
			q += 2;
		} else if (first == c) {
			return in;
		}
	}
	return !in;
}

/* The end of the one-character item at p: a character, '.', %x or a set. */
static const char *pm_item_end(struct pm_state *ms, const char *p)
{
	if (*p == '%') {
		if (p[1] == '\0')
			pm_fail(ms->L, "malformed pattern (ends with '%')");
		return p + 2;
	}
	if (*p != '[')
		return p + 1;
	const char *q = p + 1;
	if (*q == '^')
		q++;
	/* The first character belongs to the set even when it is ']'; %x escapes x. */
	for (;;) {
		if (*q == '\0')
			pm_fail(ms->L, "malformed pattern (missing ']')");
		q += (*q == '%' && q[1] != '\0') ? 2 : 1;
		if (*q == ']')
			break;
	}
	if (q - p > 16)
		pm_charge(ms, (q - p) / PM_SET_BYTES);
	return q + 1;
}

/* Whether the subject character c matches the item from p to item_end. */
static inline bool pm_single(struct pm_state *ms, int c, const char *p, const char *item_end)
{
	switch (*p) {
	case '.': return true;
	case '%': return pm_class_has((unsigned char)p[1], c);
	case '[':
		if (item_end - p > 16)
			pm_charge(ms, (item_end - p) / PM_SET_BYTES);
		return pm_set_has(c, p, item_end - 1);
	default: return (unsigned char)*p == c;
	}
}

static const char *pm_match(struct pm_state *ms, const char *s, const char *p);

/* %bxy at s, with p at x: the end of the balanced run, or NULL. */
static const char *pm_balance(struct pm_state *ms, const char *s, const char *p)
{
	if (p[0] == '\0' || p[1] == '\0')
		pm_fail(ms->L, "unbalanced pattern");
	if (s == ms->end || *s != p[0])
		return NULL;
	char open = p[0], close = p[1];
	int nesting = 1;
	while (++s < ms->end) {
		pm_charge(ms, 1);
		if (*s == close) {
			if (--nesting == 0)
				return s + 1;
		} else if (*s == open) {
			nesting++;
		}
	}
	return NULL;
}

/* %1..%9 at s (digit is the character after '%'; %0 is an error too). */
static const char *pm_backref(struct pm_state *ms, const char *s, int digit)
{
	int i = digit - '1';
	if (i < 0 || i >= ms->ncap || ms->cap[i].len == PM_CAP_OPEN)
		pm_fail(ms->L, "invalid capture index");
	/* A position capture's length, cast, is too long to ever match: so is it in LuaJIT. */
	size_t len = (size_t)ms->cap[i].len;
	if ((size_t)(ms->end - s) < len)
		return NULL;
	if (len > PM_COPY_BYTES)
		pm_charge(ms, (long)(len / PM_COPY_BYTES));
	return memcmp(ms->cap[i].at, s, len) == 0 ? s + len : NULL;
}

/* item* from s: as many as possible, then one fewer at a time. */
static const char *pm_greedy(struct pm_state *ms, const char *s, const char *p,
                             const char *item_end)
{
	const char *t = s;
	if (*p == '.') {
		t = ms->end;
		pm_charge(ms, 1 + (t - s) / PM_COPY_BYTES);
	} else {
		while (t < ms->end && pm_single(ms, (unsigned char)*t, p, item_end)) {
			t++;
			pm_charge(ms, 1);
		}
	}
	for (;;) {
		const char *r = pm_match(ms, t, item_end + 1);
		if (r || t == s)
			return r;
		t--;
	}
}

/* item- from s: as few as possible, then one more at a time. */
static const char *pm_lazy(struct pm_state *ms, const char *s, const char *p, const char *item_end)
{
	for (;;) {
		const char *r = pm_match(ms, s, item_end + 1);
		if (r)
			return r;
		if (s == ms->end || !pm_single(ms, (unsigned char)*s, p, item_end))
			return NULL;
		s++;
	}
}

static const char *pm_open_capture(struct pm_state *ms, const char *s, const char *p,
                                   ptrdiff_t kind)
{
	int i = ms->ncap;
	if (i >= PM_MAX_CAPTURES)
		pm_fail(ms->L, "too many captures");
	ms->cap[i].at = s;
	ms->cap[i].len = kind;
	ms->ncap = i + 1;
	const char *r = pm_match(ms, s, p);
	if (!r)
		ms->ncap = i;
	return r;
}

static const char *pm_close_capture(struct pm_state *ms, const char *s, const char *p)
{
	int i = ms->ncap - 1;
	while (i >= 0 && ms->cap[i].len != PM_CAP_OPEN)
		i--;
	if (i < 0)
		pm_fail(ms->L, "invalid pattern capture");
	ms->cap[i].len = s - ms->cap[i].at;
	const char *r = pm_match(ms, s, p);
	if (!r)
		ms->cap[i].len = PM_CAP_OPEN;
	return r;
}

/* The rest of the pattern, from p, against the subject from s: where the match ends, or
 * NULL. Items that cannot backtrack loop here; the others recurse through pm_match. */
static inline const char *pm_items(struct pm_state *ms, const char *s, const char *p)
{
	for (;;) {
		pm_charge(ms, 1);
		switch (*p) {
		case '\0': return s;
		case '(':
			if (p[1] == ')')
				return pm_open_capture(ms, s, p + 2, PM_CAP_POSITION);
			return pm_open_capture(ms, s, p + 1, PM_CAP_OPEN);
		case ')': return pm_close_capture(ms, s, p + 1);
		case '$':
			if (p[1] == '\0')
				return s == ms->end ? s : NULL;
			break; /* elsewhere '$' is an ordinary character */
		case '%':
			if (p[1] == 'b') {
				s = pm_balance(ms, s, p + 2);
				if (!s)
					return NULL;
				p += 4;
				continue;
			}
			if (p[1] == 'f') {
				p += 2;
				if (*p != '[')
					pm_fail(ms->L, "missing '[' after '%f' in pattern");
				const char *next = pm_item_end(ms, p);
				/* Outside the subject is NUL, on both sides. */
				int before = s == ms->subject ? 0 : (unsigned char)s[-1];
				int after = s == ms->end ? 0 : (unsigned char)*s;
				if (pm_set_has(before, p, next - 1) ||
				    !pm_set_has(after, p, next - 1))
					return NULL;
				p = next;
				continue;
			}
			if (p[1] >= '0' && p[1] <= '9') {
				s = pm_backref(ms, s, p[1]);
				if (!s)
					return NULL;
				p += 2;
				continue;
			}
			break; /* a class or an escaped character */
		}
		const char *item_end = pm_item_end(ms, p);
		bool hit = s < ms->end && pm_single(ms, (unsigned char)*s, p, item_end);
		switch (*item_end) {
		case '?':
			if (hit) {
				const char *r = pm_match(ms, s + 1, item_end + 1);
				if (r)
					return r;
			}
			p = item_end + 1;
			continue;
		case '*': return pm_greedy(ms, s, p, item_end);
		case '+': return hit ? pm_greedy(ms, s + 1, p, item_end) : NULL;
		case '-': return pm_lazy(ms, s, p, item_end);
		default:
			if (!hit)
				return NULL;
			s++;
			p = item_end;
		}
	}
}

static const char *pm_match(struct pm_state *ms, const char *s, const char *p)
{
	if (++ms->depth > PM_MAX_DEPTH)
		pm_fail(ms->L, "pattern too complex");
	s = pm_items(ms, s, p);
	ms->depth--;
	return s;
}

/* Pushes capture i of the match from s to e; with no captures at all, "capture 0" is the
 * whole match. */
static void pm_push_capture(struct pm_state *ms, int i, const char *s, const char *e)
{
	if (i >= ms->ncap) {
		if (i != 0)
			pm_fail(ms->L, "invalid capture index");
		lua_pushlstring(ms->L, s, (size_t)(e - s));
		return;
	}
	ptrdiff_t len = ms->cap[i].len;
	if (len == PM_CAP_OPEN)
		pm_fail(ms->L, "unfinished capture");
	if (len == PM_CAP_POSITION)
		lua_pushinteger(ms->L, (lua_Integer)(ms->cap[i].at - ms->subject + 1));
	else
		lua_pushlstring(ms->L, ms->cap[i].at, (size_t)len);
}

/* Pushes the captures, or the whole match when there are none and s is not NULL. */
static int pm_push_captures(struct pm_state *ms, const char *s, const char *e)
{
	int n = ms->ncap == 0 && s ? 1 : ms->ncap;
	luaL_checkstack(ms->L, n, "too many captures");
	for (int i = 0; i < n; i++)
		pm_push_capture(ms, i, s, e);
	return n;
}

/* Integer arguments as LuaJIT reads them. x86-64 turns NaN and out-of-range numbers into
 * INT32_MIN or INT64_MIN; find's init goes through int32_t, gsub's count through int64_t
 * then int (so 2^32 + 1 is 1). */
static int32_t pm_opt_int32(lua_State *L, int idx, int32_t def)
{
	if (lua_isnoneornil(L, idx))
		return def;
	lua_Number n = luaL_checknumber(L, idx);
	return n >= -2147483648.0 && n < 2147483648.0 ? (int32_t)n : INT32_MIN;
}

static int pm_opt_int_wrapping(lua_State *L, int idx, int def)
{
	if (lua_isnoneornil(L, idx))
		return def;
	lua_Number n = luaL_checknumber(L, idx);
	int64_t wide =
	        n >= -9223372036854775808.0 && n < 9223372036854775808.0 ? (int64_t)n : INT64_MIN;
	uint32_t low = (uint32_t)(uint64_t)wide;
	int32_t r;
	memcpy(&r, &low, sizeof(r));
	return r;
}

static struct pm_guard *pm_guard_of(lua_State *L)
{
	return lua_touserdata(L, lua_upvalueindex(1));
}

/* The first p in s. memchr then memcmp at each candidate is the quickest on everyday
 * strings but quadratic on some ("aaa...b" in "aaa..."): past a budget of bytes compared,
 * memmem, linear but slower to start, takes over. So the search needs no ticks. */
static const char *pm_find_plain(const char *s, size_t slen, const char *p, size_t plen)
{
	if (plen == 0)
		return s;
	if (plen > slen)
		return NULL;
	const char *at = s, *last = s + (slen - plen);
	size_t budget = 2 * slen + 256;
	while (at <= last) {
		const char *q = memchr(at, p[0], (size_t)(last - at) + 1);
		if (!q)
			return NULL;
		if (memcmp(q + 1, p + 1, plen - 1) == 0)
			return q;
		if (budget < plen)
			return memmem(q + 1, (size_t)(s + slen - (q + 1)), p, plen);
		budget -= plen;
		at = q + 1;
	}
	return NULL;
}

/* find and match: the first match at or after init. */
static int pm_search(lua_State *L, bool find)
{
	size_t slen, plen;
	const char *s = luaL_checklstring(L, 1, &slen);
	const char *p = luaL_checklstring(L, 2, &plen);
	int nargs = lua_gettop(L); /* to skip the calls for absent arguments: the API is slow */
	int64_t init = nargs >= 3 ? pm_opt_int32(L, 3, 1) : 1;
	int64_t from = init < 0 ? init + (int64_t)slen : init - 1;
	if (from < 0)
		from = 0;
	if (from > (int64_t)slen)
		from = (int64_t)slen;
	bool plain = find && nargs >= 4 && lua_toboolean(L, 4);
	if (find && !plain) {
		plain = true;
		for (size_t i = 0; i < plen && plain; i++)
			plain = !pm_special[(unsigned char)p[i]];
	}
	if (plain) {
		const char *q = pm_find_plain(s + from, slen - (size_t)from, p, plen);
		if (!q) {
			lua_pushnil(L);
			return 1;
		}
		lua_pushinteger(L, (lua_Integer)(q - s + 1));
		lua_pushinteger(L, (lua_Integer)(q - s + (ptrdiff_t)plen));
		return 2;
	}
	struct pm_state ms;
	pm_begin(&ms, L, pm_guard_of(L), s, slen);
	bool anchored = *p == '^';
	if (anchored)
		p++;
	for (const char *at = s + from;; at++) {
		ms.depth = 0;
		ms.ncap = 0;
		const char *e = pm_match(&ms, at, p);
		if (e) {
			pm_finish(&ms);
			if (!find)
				return pm_push_captures(&ms, at, e);
			lua_pushinteger(L, (lua_Integer)(at - s + 1));
			lua_pushinteger(L, (lua_Integer)(e - s));
			return 2 + pm_push_captures(&ms, NULL, NULL);
		}
		if (anchored || at == ms.end)
			break;
	}
	pm_finish(&ms);
	lua_pushnil(L);
	return 1;
}

static int l_pattern_find(lua_State *L)
{
	return pm_search(L, true);
}

static int l_pattern_match(lua_State *L)
{
	return pm_search(L, false);
}

/* What a gmatch iterator works on. Its closure's upvalues anchor the strings and the guard,
 * and the iterator reads them from here: upvalues are slow to reach through the API. */
struct pm_gmatch {
	const char *subject, *pattern;
	size_t len;
	size_t next; /* where to look next */
	struct pm_guard *guard;
};

/* The iterator gmatch returns. Unlike find, gmatch takes a leading '^' as an ordinary
 * character, as LuaJIT does. */
static int l_pattern_gmatch_next(lua_State *L)
{
	struct pm_gmatch *g = lua_touserdata(L, lua_upvalueindex(1));
	const char *s = g->subject;
	struct pm_state ms;
	pm_begin(&ms, L, g->guard, s, g->len);
	pm_charge(&ms, 1);
	for (size_t i = g->next; i <= g->len; i++) {
		const char *at = s + i;
		ms.depth = 0;
		ms.ncap = 0;
		const char *e = pm_match(&ms, at, g->pattern);
		if (e) {
			/* After an empty match, the next search starts one further. */
			g->next = (size_t)(e - s) + (e == at);
			pm_finish(&ms);
			return pm_push_captures(&ms, at, e);
		}
	}
	pm_finish(&ms);
	return 0;
}

static int l_pattern_gmatch(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	const char *p = luaL_checklstring(L, 2, NULL);
	struct pm_gmatch *g = lua_newuserdata(L, sizeof(*g));
	g->subject = s;
	g->pattern = p;
	g->len = len;
	g->next = 0;
	g->guard = pm_guard_of(L);
	lua_pushvalue(L, 1);
	lua_pushvalue(L, 2);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_pushcclosure(L, l_pattern_gmatch_next, 4);
	return 1;
}

/* Appends the replacement string tpl for the match from s to e: %0 is the match, %1..%9 its
 * captures, and '%' before anything else stands for that character (a '%' at the very end
 * for the NUL after it, as in LuaJIT). */
static void pm_add_template(struct pm_state *ms, luaL_Buffer *b, const char *tpl, size_t len,
                            const char *s, const char *e)
{
	const char *t = tpl, *end = tpl + len;
	pm_charge(ms, 1 + (long)(len / PM_COPY_BYTES));
	while (t < end) {
		const char *pct = memchr(t, '%', (size_t)(end - t));
		if (!pct) {
			luaL_addlstring(b, t, (size_t)(end - t));
			return;
		}
		luaL_addlstring(b, t, (size_t)(pct - t));
		char c = pct[1];
		t = pct + 2;
		if (c < '0' || c > '9') {
			luaL_addchar(b, c);
		} else if (c == '0') {
			luaL_addlstring(b, s, (size_t)(e - s));
		} else {
			pm_push_capture(ms, c - '1', s, e);
			luaL_addvalue(b);
		}
	}
}

/* Appends what replaces the match from s to e when the replacement (argument 3) is a
 * function or a table: its value, or the match itself for false and nil. */
static void pm_add_lookup(struct pm_state *ms, luaL_Buffer *b, int type, const char *s,
                          const char *e)
{
	lua_State *L = ms->L;
	if (type == LUA_TFUNCTION) {
		lua_pushvalue(L, 3);
		int n = pm_push_captures(ms, s, e);
		lua_call(L, n, 1);
	} else {
		pm_push_capture(ms, 0, s, e);
		lua_gettable(L, 3);
	}
	if (!lua_toboolean(L, -1)) {
		lua_pop(L, 1);
		lua_pushlstring(L, s, (size_t)(e - s));
	} else if (!lua_isstring(L, -1)) {
		luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
	}
	luaL_addvalue(b);
}

static int l_pattern_gsub(lua_State *L)
{
	size_t slen, tlen = 0;
	const char *s = luaL_checklstring(L, 1, &slen);
	const char *p = luaL_checklstring(L, 2, NULL);
	int type = lua_type(L, 3);
	int max = pm_opt_int_wrapping(L, 4, (int)(slen + 1));
	if (type != LUA_TNUMBER && type != LUA_TSTRING && type != LUA_TFUNCTION &&
	    type != LUA_TTABLE)
		return luaL_argerror(L, 3, "string/function/table expected");
	const char *tpl = NULL;
	if (type == LUA_TNUMBER || type == LUA_TSTRING)
		tpl = lua_tolstring(L, 3, &tlen);
	bool anchored = *p == '^';
	if (anchored)
		p++;
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	struct pm_state ms;
	pm_begin(&ms, L, pm_guard_of(L), s, slen);
	const char *at = s;
	int n = 0;
	while (n < max) {
		ms.depth = 0;
		ms.ncap = 0;
		const char *e = pm_match(&ms, at, p);
		if (e) {
			n++;
			if (tpl)
				pm_add_template(&ms, &b, tpl, tlen, at, e);
			else
				pm_add_lookup(&ms, &b, type, at, e);
		}
		if (e && e > at)
			at = e;
		else if (at < ms.end)
			luaL_addchar(&b, *at++);
		else
			break;
		if (anchored)
			break;
	}
	luaL_addlstring(&b, at, (size_t)(ms.end - at));
	pm_finish(&ms);
	luaL_pushresult(&b);
	lua_pushinteger(L, n);
	return 2;
}

void tide_lua_pattern_register(lua_State *L, int idx, tide_pattern_tick_cb tick)
{
	if (idx < 0 && idx > LUA_REGISTRYINDEX)
		idx = lua_gettop(L) + idx + 1;
	struct pm_guard *guard = lua_newuserdata(L, sizeof(*guard));
	guard->tick = tick;
	guard->budget = TIDE_PATTERN_TICK_STEPS;
	static const luaL_Reg fns[] = {{"find", l_pattern_find},
	                               {"match", l_pattern_match},
	                               {"gmatch", l_pattern_gmatch},
	                               {"gsub", l_pattern_gsub},
	                               {NULL, NULL}};
	for (const luaL_Reg *f = fns; f->name; f++) {
		lua_pushvalue(L, -1);
		lua_pushcclosure(L, f->func, 1);
		lua_setfield(L, idx, f->name);
	}
	lua_pop(L, 1);
}
