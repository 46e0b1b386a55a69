/* test_pattern.c — lua_pattern.c against LuaJIT's own string functions in the same state:
 * hand-written and random differential cases (results and error messages), runaway
 * patterns stopped by the tick, and a speed report. One named test per process, as ctest
 * passes it; no database. */
#include <lauxlib.h>
#include <luajit.h>
#include <lualib.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lua_pattern.h"

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

/* Compares the two implementations. outcome(impl, name, in_lua, ...) runs impl[name](...)
 * under pcall, directly (in_lua false) or from a Lua function, so that error messages carry
 * a position; gmatch's iterator is then driven to the end, going on after errors. The
 * outcome is one string: every return value, every error, and what the replacement
 * functions and __index saw. */
static const char prelude[] =
        "local select, type, pcall, tostring, format = select, type, pcall, tostring, "
        "string.format\n"
        "local concat, unpack = table.concat, unpack\n"
        "LOG = {}\n"
        "local function ser1(v)\n"
        "  local t = type(v)\n"
        "  if t == 'string' then\n"
        "    return (format('%q', v):gsub('[\\128-\\255]', function(c) return '\\\\' .. "
        "c:byte() end))\n"
        "  end\n"
        "  if t == 'number' then return format('%.17g', v) end\n"
        "  if t == 'function' or t == 'table' then return t end\n"
        "  return tostring(v)\n"
        "end\n"
        "function ser(...)\n"
        "  local out = {}\n"
        "  for i = 1, select('#', ...) do out[i] = ser1((select(i, ...))) end\n"
        "  return '(' .. concat(out, ',') .. ')'\n"
        "end\n"
        "local function pack(...) return {n = select('#', ...), ...} end\n"
        "local function via_lua(f, ...)\n"
        "  local r = pack(f(...))\n"
        "  return unpack(r, 1, r.n)\n"
        "end\n"
        "local function for_loop(f, ...)\n"
        "  local out = {}\n"
        "  for a, b, c in f(...) do\n"
        "    out[#out + 1] = ser(a, b, c)\n"
        "    if #out > 100 then break end\n"
        "  end\n"
        "  return concat(out)\n"
        "end\n"
        "local function drain(it)\n"
        "  local out, errors = {}, 0\n"
        "  for i = 1, 100 do\n"
        "    local r = pack(pcall(it))\n"
        "    out[#out + 1] = ser(unpack(r, 1, r.n))\n"
        "    if r[1] and r[2] == nil then break end\n"
        "    if not r[1] then\n"
        "      errors = errors + 1\n"
        "      if errors == 3 then break end\n"
        "    end\n"
        "  end\n"
        "  return concat(out)\n"
        "end\n"
        "local function outcome(impl, name, in_lua, ...)\n"
        "  LOG = {}\n"
        "  local f, res = impl[name]\n"
        "  if name == 'gmatch' and in_lua then\n"
        "    res = ser(pcall(for_loop, f, ...))\n"
        "  elseif name == 'gmatch' then\n"
        "    local r = pack(pcall(f, ...))\n"
        "    if r[1] and type(r[2]) == 'function' then res = 'iter' .. drain(r[2])\n"
        "    else res = ser(unpack(r, 1, r.n)) end\n"
        "  elseif in_lua then\n"
        "    res = ser(pcall(via_lua, f, ...))\n"
        "  else\n"
        "    res = ser(pcall(f, ...))\n"
        "  end\n"
        "  return res .. ' saw ' .. concat(LOG, ' ')\n"
        "end\n"
        "STATS = {errors = 0, nomatch = 0, results = 0}\n"
        "function compare(name, in_lua, ...)\n"
        "  local want = outcome(string, name, in_lua, ...)\n"
        "  local kind = want:find('false', 2, true) == 2 and 'errors'\n"
        "    or want:find('(true,nil)', 1, true) == 1 and 'nomatch' or 'results'\n"
        "  STATS[kind] = STATS[kind] + 1\n"
        "  local got = outcome(P, name, in_lua, ...)\n"
        "  if want == got then return nil end\n"
        "  return format('%s%s%s\\n  LuaJIT: %s\\n  ours:   %s', name, in_lua and ' (from Lua) ' "
        "or ' ', ser(...), want, got)\n"
        "end\n"
        /* Replacements for gsub. */
        "function REPL_FN(...)\n"
        "  LOG[#LOG + 1] = ser(...)\n"
        "  local k = #LOG % 6\n"
        "  if k == 0 then return nil elseif k == 1 then return false\n"
        "  elseif k == 2 then return '<' .. tostring((...)) .. '>'\n"
        "  elseif k == 3 then return #LOG * 1.5 elseif k == 4 then return (...) end\n"
        "  return ''\n"
        "end\n"
        "function REPL_BAD(...)\n"
        "  LOG[#LOG + 1] = ser(...)\n"
        "  if #LOG == 2 then return {} elseif #LOG == 3 then return true end\n"
        "  return 'x'\n"
        "end\n"
        "REPL_TAB = {a = 'A', b = false, ab = 'AB', [''] = '<empty>', ['('] = 1.5,\n"
        "            [1] = 'one', [2] = true, [3] = {}, c = 7, ['1'] = 'digit'}\n"
        "REPL_META = setmetatable({a = 'A'}, {__index = function(t, k)\n"
        "  LOG[#LOG + 1] = ser(k)\n"
        "  if k == 'b' then return nil end\n"
        "  return '[' .. tostring(k) .. ']'\n"
        "end})\n"
        "ALL = {}\n"
        "for i = 0, 255 do ALL[#ALL + 1] = string.char(i) end\n"
        "ALL = concat(ALL)\n";

static int tick_calls, tick_limit;

static void counting_tick(lua_State *L)
{
	tick_calls++;
	if (tick_limit && tick_calls >= tick_limit)
		luaL_error(L, "stopped by the tick after %d ticks", tick_calls);
}

/* A plain state with LuaJIT's string library, ours in the global P, and the prelude. */
static lua_State *new_state(tide_pattern_tick_cb tick)
{
	lua_State *L = luaL_newstate();
	CHECK(L);
	luaL_openlibs(L);
	lua_newtable(L);
	tide_lua_pattern_register(L, -1, tick);
	CHECK(lua_gettop(L) == 1);
	lua_setglobal(L, "P");
	if (luaL_loadbuffer(L, prelude, sizeof(prelude) - 1, "=prelude") || lua_pcall(L, 0, 0, 0)) {
		fprintf(stderr, "prelude: %s\n", lua_tostring(L, -1));
		exit(1);
	}
	tick_calls = tick_limit = 0;
	return L;
}

static void run_lua(lua_State *L, const char *code)
{
	if (luaL_loadstring(L, code) || lua_pcall(L, 0, 0, 0)) {
		fprintf(stderr, "%s\n-> %s\n", code, lua_tostring(L, -1));
		exit(1);
	}
}

/* Compares name(args...) with the nargs values on top of the stack (which it pops), both
 * directly and from Lua. Returns 1 on a mismatch, after printing it. */
static int compare_top(lua_State *L, const char *name, int nargs, bool both)
{
	int failed = 0;
	for (int in_lua = 0; in_lua <= (both ? 1 : 0); in_lua++) {
		int base = lua_gettop(L) - nargs;
		lua_getglobal(L, "compare");
		lua_pushstring(L, name);
		lua_pushboolean(L, in_lua);
		for (int i = 1; i <= nargs; i++)
			lua_pushvalue(L, base + i);
		if (lua_pcall(L, nargs + 2, 1, 0) != 0) {
			fprintf(stderr, "compare raised: %s\n", lua_tostring(L, -1));
			exit(1);
		}
		if (!lua_isnil(L, -1)) {
			fprintf(stderr, "MISMATCH %s\n", lua_tostring(L, -1));
			failed = 1;
		}
		lua_pop(L, 1);
	}
	lua_pop(L, nargs);
	return failed;
}

/* Compares name(<args>), args being Lua source. */
static int compare_src(lua_State *L, const char *name, const char *args)
{
	char chunk[4096];
	snprintf(chunk, sizeof(chunk), "return %s", args);
	int top = lua_gettop(L);
	if (luaL_loadstring(L, chunk) || lua_pcall(L, 0, LUA_MULTRET, 0)) {
		fprintf(stderr, "bad case %s(%s): %s\n", name, args, lua_tostring(L, -1));
		exit(1);
	}
	return compare_top(L, name, lua_gettop(L) - top, true);
}

struct pattern_case {
	const char *fn, *args;
};

/* Every feature and every error, as find/match/gmatch/gsub(args). */
static const struct pattern_case cases[] = {
        /* find: plain and its fast path, init */
        {"find", "'hello world', 'o w'"},
        {"find", "'hello', 'l'"},
        {"find", "'hello', 'xyz'"},
        {"find", "'hello', ''"},
        {"find", "'', ''"},
        {"find", "'', 'a'"},
        {"find", "'hello', 'l', 4"},
        {"find", "'hello', 'l', -1"},
        {"find", "'hello', 'l', -2"},
        {"find", "'hello', 'l', -100"},
        {"find", "'hello', 'l', 0"},
        {"find", "'hello', 'o', 5"},
        {"find", "'hello', '', 5"},
        {"find", "'hello', '', 6"},
        {"find", "'hello', '', 7"},
        {"find", "'hello', '', 100"},
        {"find", "'hello', 'h', 1e10"},
        {"find", "'hello', 'h', -1e10"},
        {"find", "'abcabc', 'a', 2^32 + 2"},
        {"find", "'abcabc', 'a', 2^31"},
        {"find", "'abcabc', 'a', 2^31 - 1"},
        {"find", "'abcabc', 'a', -2^31"},
        {"find", "'abcabc', 'a', 1/0"},
        {"find", "'abcabc', 'a', -1/0"},
        {"find", "'abc', 'b', 0/0"},
        {"find", "'abc', 'b', 1.9"},
        {"find", "'abc', 'b', 2.9"},
        {"find", "'abc', 'b', -1.5"},
        {"find", "'abc', 'b', -2.5"},
        {"find", "'abc', 'b', '2'"},
        {"find", "'abc', 'b', '0x2'"},
        {"find", "'abc', 'b', ' 2 '"},
        {"find", "'abc', 'b', '2e0'"},
        {"find", "'abc', 'b', 'inf'"},
        {"find", "'abc', 'b', 'x'"},
        {"find", "'abc', 'b', {}"},
        {"find", "'abc', 'b', true"},
        {"find", "'abc', 'b', nil, true"},
        {"find", "'a.c', '.', 1, true"},
        {"find", "'a.c', '.', 1, false"},
        {"find", "'a.c', '.', 1, nil"},
        {"find", "'a.c', '.', 1, 0"},
        {"find", "'a.c', '.', 2, 'yes'"},
        {"find", "'a.c', '.', 1, true, 'extra'"},
        {"find", "'a+b', '+', 1, true"},
        {"find", "'a+b', 'a+b'"},
        {"find", "'a+b', 'a+b', 1, true"},
        {"find", "'aab', 'a+b'"},
        {"find", "'a]b', ']'"},
        {"find", "'a)b', ')'"},
        {"find", "'a\\0]b', '\\0]'"},
        {"find", "'a\\0)b', '\\0)'"},
        {"find", "'a)b', ')', 1, false"},
        {"find", "'a(b', '(', 1, true"},
        {"find", "'a[b', '[', 1, true"},
        {"find", "'a%b', '%', 1, true"},
        {"find", "'a\\0b', '\\0b'"},
        {"find", "'a\\0b', '%z'"},
        {"find", "'a\\0b', '\\0b*'"},
        {"find", "'a\\0b', 'b*\\0b'"},
        {"find", "'a\\0b', '[\\0]'"},
        {"find", "'a\\0b', '[%z]'"},
        {"find", "'a\\0b', '.\\0', 1, true"},
        {"find", "'x%\\0', '%\\0'"},
        {"find", "12345, 34"},
        {"find", "12.5, '.', 1, true"},
        {"find", "12.5, '.'"},
        {"find", "1e100, 'e'"},
        {"find", "'x5', 5"},
        {"find", "2^53, '9'"},
        {"find", "'abc'"},
        {"find", ""},
        {"find", "nil, 'a'"},
        {"find", "'a', nil"},
        {"find", "{}, 'a'"},
        {"find", "'a', {}"},
        {"find", "'a', true"},
        {"find", "print, 'a'"},
        {"find", "'hello world', 'o', 1, true"},
        {"find", "'hello world', 'world', -5, true"},
        {"find", "'hello world', 'world', -4, true"},
        {"find", "'aaa', 'aa', 2, true"},
        /* anchors */
        {"find", "'hello', '^h'"},
        {"find", "'hello', '^e'"},
        {"find", "'hello', '^e', 2"},
        {"find", "'hello', '^l', -2"},
        {"find", "'hello', 'o$'"},
        {"find", "'hello', 'l$'"},
        {"find", "'', '^$'"},
        {"find", "'abc', '$'"},
        {"find", "'abc', '^'"},
        {"find", "'abc', '^', 10"},
        {"find", "'abc', '$', 10"},
        {"find", "'a$b', 'a$b'"},
        {"find", "'a$b', '%$'"},
        {"find", "'a$', 'a$$'"},
        {"find", "'^a', '^^a'"},
        {"find", "'a^', 'a^'"},
        {"find", "'abc', '^abc$'"},
        {"find", "'abc', 'b$', 1"},
        {"match", "'^a', '^^'"},
        {"match", "'a$', '$$'"},
        {"match", "'a', '$'"},
        {"match", "'', '$'"},
        /* single items and repetitions */
        {"find", "'hello', '.'"},
        {"find", "'', '.'"},
        {"find", "'hello', '.-'"},
        {"find", "'hello', '.*'"},
        {"find", "'hello', 'l*'"},
        {"find", "'hello', 'l+'"},
        {"find", "'hello', 'l-'"},
        {"find", "'hello', 'l-o'"},
        {"find", "'hello', 'l?'"},
        {"find", "'hello', 'el?l'"},
        {"find", "'hello', 'ex?l'"},
        {"find", "'aaab', 'a-b'"},
        {"find", "'aaab', 'a*b'"},
        {"find", "'aaab', 'a+b'"},
        {"find", "'b', 'a+b'"},
        {"find", "'aaa', 'a*a*a*a'"},
        {"find", "'aaa', 'a-a-a-$'"},
        {"find", "'*x', '*x'"},
        {"find", "'+x', '+'"},
        {"find", "'-x', '-'"},
        {"find", "'?x', '?'"},
        {"find", "'a*', 'a**'"},
        {"find", "'aa', 'a?+'"},
        {"find", "'ab', '[ab]*-'"},
        {"match", "'  trim me  ', '^%s*(.-)%s*$'"},
        {"match", "'key = value', '^(%w+)%s*=%s*(%w+)$'"},
        {"match", "'2024-01-02', '(%d+)-(%d+)-(%d+)'"},
        {"match", "'order-1234', '^(%w+)-(%d+)$'"},
        {"match", "'GET /index.html HTTP/1.1', '^(%u+)%s+(%S+)%s+HTTP/([%d%.]+)$'"},
        {"match", "'hello', 'l+'"},
        {"match", "'hello', 'x'"},
        {"match", "'hello', '(h)(e)(l)(l)(o)'"},
        {"match", "'hello', '()ll()'"},
        {"match", "'hello', '()'"},
        {"match", "'hello', '()', 6"},
        {"match", "'hello', '()', 100"},
        {"match", "'hello', '(h)(e)', 2"},
        {"match", "'hello', '(l)(l)', -3"},
        {"match", "'hello', 'e', '2'"},
        {"match", "'hello', 'e', 'two'"},
        {"match", "'hello'"},
        {"match", "nil, 'x'"},
        {"match", "123, '%d'"},
        {"match", "'x', 1"},
        /* classes */
        {"match", "'Hello World 123!', '%a+'"},
        {"match", "'Hello World 123!', '%A+'"},
        {"match", "'Hello World 123!', '%d+'"},
        {"match", "'Hello World 123!', '%D+'"},
        {"match", "'Hello World 123!', '%l+'"},
        {"match", "'Hello World 123!', '%L+'"},
        {"match", "'Hello World 123!', '%u+'"},
        {"match", "'Hello World 123!', '%U+'"},
        {"match", "'Hello World 123!', '%p+'"},
        {"match", "'Hello World 123!', '%P+'"},
        {"match", "'Hello World 123!', '%s+'"},
        {"match", "'Hello World 123!', '%S+'"},
        {"match", "'Hello World 123!', '%w+'"},
        {"match", "'Hello World 123!', '%W+'"},
        {"match", "'Hello World 123!', '%x+'"},
        {"match", "'Hello World 123!', '%X+'"},
        {"match", "'Hello World 123!', '%g+'"},
        {"match", "'Hello World 123!', '%G+'"},
        {"match", "'a\\tb\\1c', '%c+'"},
        {"match", "'a\\tb\\1c', '%C+'"},
        {"match", "'a\\0b', '%z'"},
        {"match", "'a\\0b', '%Z+'"},
        {"match", "'a.b', '%.'"},
        {"match", "'a%b', '%%'"},
        {"match", "'aqb', '%q'"},
        {"match", "'a]b', '%]'"},
        {"match", "'a\\233b', '%\\233'"},
        {"match", "'\\233\\200', '%a'"},
        {"match", "'\\233\\200', '%W+'"},
        /* sets */
        {"match", "'hello', '[aeiou]+'"},
        {"match", "'hello', '[^aeiou]+'"},
        {"match", "'hello', '[a-h]+'"},
        {"match", "'hello', '[h-a]+'"},
        {"match", "'_id9 x', '[%a_][%w_]*'"},
        {"match", "'a]b', '[]]'"},
        {"match", "'a]b', '[]a]+'"},
        {"match", "'a]b', '[^]]+'"},
        {"match", "'a-b', '[a-]+'"},
        {"match", "'a-b', '[-a]+'"},
        {"match", "'a-b', '[%-]'"},
        {"match", "'a-z', '[a%-z]+'"},
        {"match", "'a]b', '[%]]'"},
        {"match", "'a]b', '[^%]]+'"},
        {"match", "'a^b', '[b^]+'"},
        {"match", "'a^b', '[%^]'"},
        {"match", "'a1-b', '[a-%d]+'"},
        {"match", "'x1-b', '[%a-z]+'"},
        {"match", "'abcde', '[a-c-e]+'"},
        {"match", "'a[b', '[[]'"},
        {"match", "'a[b', '[%[]'"},
        {"match", "'a\\0b', '[%z]'"},
        {"match", "'ab', '[a]*b'"},
        {"match", "'a', '['"},
        {"match", "'a', '[a'"},
        {"match", "'a', '[^'"},
        {"match", "'a', '[]'"},
        {"match", "'a', '[^]'"},
        {"match", "'a', '[%'"},
        {"match", "'a', '[a%'"},
        {"match", "'a', '[a%]'"},
        {"match", "'b', 'a['"},
        {"match", "'ab', 'a['"},
        {"match", "'ab', 'b*['"},
        /* '%' at the end */
        {"match", "'a', '%'"},
        {"match", "'a', 'a%'"},
        {"match", "'b', 'a%'"},
        {"find", "'a%', 'a%'"},
        {"gsub", "'a', '%', 'x'"},
        /* captures */
        {"match", "'abc', '(a(b)c)'"},
        {"match", "'abc', '((a)(b))'"},
        {"match", "'abc', '(a'"},
        {"match", "'abc', 'x(a'"},
        {"find", "'abc', '(a'"},
        {"find", "'abc', '(b)'"},
        {"find", "'abc', '()b()'"},
        {"match", "'abc', 'a)'"},
        {"match", "'abc', 'x)'"},
        {"match", "'abc', ')'"},
        {"match", "'abc', '(()'"},
        {"match", "'abc', '(a)())'"},
        {"match", "'abc', '%1'"},
        {"match", "'aa', '(a)%1'"},
        {"match", "'ab', '(a)%1'"},
        {"match", "'aa', '(a)%2'"},
        {"match", "'aa', '(a)%0'"},
        {"match", "'aa', '(a)%9'"},
        {"match", "'abab', '(a*)(b)%1%2'"},
        {"match", "'aXYaXY', '(a(XY))%1'"},
        {"match", "'aXYaXY', '(a(XY))%2'"},
        {"match", "'aa', '(()a)%1'"},
        {"match", "'aa', '(()a)%2'"},
        {"match", "'aa', '(a%1)'"},
        {"match", "'hello hello', '(%w+) %1'"},
        {"match", "'hello world', '(%w+) %1'"},
        {"match", "'xx', '(x)(%1)'"},
        {"match", "('a'):rep(32), ('(a)'):rep(32)"},
        {"match", "('a'):rep(33), ('(a)'):rep(33)"},
        {"match", "('a'):rep(40), ('()'):rep(32)"},
        {"match", "('a'):rep(40), ('()'):rep(33)"},
        {"match", "'b', ('()'):rep(33) .. 'a'"},
        {"match", "'b', 'a' .. ('()'):rep(33)"},
        {"gsub", "('a'):rep(5), ('(a)'):rep(5), '%5%4%3%2%1'"},
        /* nesting depth */
        {"find", "('a'):rep(300), ('a?'):rep(198)"},
        {"find", "('a'):rep(300), ('a?'):rep(199)"},
        {"find", "('a'):rep(300), ('a?'):rep(200)"},
        {"find", "('a'):rep(300), ('a?'):rep(201)"},
        {"find", "('b'):rep(300), ('a?'):rep(250)"},
        {"find", "'', ('a*'):rep(199)"},
        {"find", "'', ('a*'):rep(200)"},
        {"find", "'', ('a-'):rep(200)"},
        {"find", "'', ('a-'):rep(199)"},
        {"find", "('a'):rep(30), ('(a*)'):rep(30)"},
        {"match", "('a'):rep(300), ('.?'):rep(201) .. 'b'"},
        /* %b */
        {"match", "'f(a(b)c) d', '%b()'"},
        {"match", "'f(a(b c) d', '%b()'"},
        {"match", "'f(a(b)c) d', 'f%b()'"},
        {"match", "'x)y(', '%b)('"},
        {"match", "'aXbXc', '%bXX'"},
        {"match", "'((a)', '%b()'"},
        {"match", "'', '%b()'"},
        {"match", "'a', '%b'"},
        {"match", "'a', '%b('"},
        {"match", "'', '%b('"},
        {"match", "'(a)', '%b()$'"},
        {"match", "'(a)b', '%b()b'"},
        {"match", "'(a)b', '(%b())(b)'"},
        {"match", "'x[a]', '%b[]'"},
        {"gsub", "'f(a) g(b(c))', '%b()', '<>'"},
        /* %f */
        {"match", "'THE (quick) fox', '%f[%a]%a+'"},
        {"gsub", "'THE (quick) fox', '%f[%a]%a+', '<%0>'"},
        {"gsub", "'THE (quick) fox', '%f[%A]', '|'"},
        {"gsub", "'hello world', '%f[%w]%w+%f[%W]', 'X'"},
        {"find", "'abc', '%f[%z]'"},
        {"find", "'abc', '%f[^%z]'"},
        {"find", "'', '%f[%z]'"},
        {"find", "'', '%f[^%z]'"},
        {"find", "'a\\0b', '%f[%z]'"},
        {"find", "'a\\0b', '%f[^%z]', 2"},
        {"find", "'a]b', '%f[]]'"},
        {"find", "'abc', '%f'"},
        {"find", "'abc', '%fa'"},
        {"find", "'abc', '%f['"},
        {"find", "'abc', '%f[a'"},
        {"find", "'abc', '%f[a]*'"},
        {"find", "'abc', 'x%fa'"},
        /* NUL ends the pattern */
        {"find", "'abc', 'x\\0['"},
        {"find", "'abc', 'b\\0x'"},
        {"match", "'abc', '(b\\0)'"},
        {"match", "'abc', '[b\\0]'"},
        {"match", "'a\\0', 'a%z'"},
        {"gsub", "'a\\0b', '\\0', 'x'"},
        /* gmatch */
        {"gmatch", "'hello world from lua', '%a+'"},
        {"gmatch", "'k1=v1, k2=v2', '(%w+)=(%w+)'"},
        {"gmatch", "'abc', ''"},
        {"gmatch", "'', ''"},
        {"gmatch", "'abc', 'x*'"},
        {"gmatch", "'abc', 'b*'"},
        {"gmatch", "'abc', '.-'"},
        {"gmatch", "'^a^a', '^a'"},
        {"gmatch", "'aaa', '^a'"},
        {"gmatch", "'abc', '()'"},
        {"gmatch", "'abc', '()(.)()'"},
        {"gmatch", "'aaa', 'a-'"},
        {"gmatch", "'abc', '('"},
        {"gmatch", "'abc', 'b('"},
        {"gmatch", "'abc', '['"},
        {"gmatch", "'xaxb', 'x['"},
        {"gmatch", "'abc', '$'"},
        {"gmatch", "'abc', 'c$'"},
        {"gmatch", "123123, 2"},
        {"gmatch", "'abc', '%b'"},
        {"gmatch", "'abc', 'a', 2"},
        {"gmatch", "'a'"},
        {"gmatch", "nil, 'a'"},
        {"gmatch", "'a', {}"},
        {"gmatch", "'(a)(b)', '%b()'"},
        {"gmatch", "'the end', '%f[%w]%w+'"},
        {"gmatch", "('a'):rep(300), ('a?'):rep(201)"},
        /* gsub: string replacements */
        {"gsub", "'hello world', 'o', '0'"},
        {"gsub", "'hello', '', '-'"},
        {"gsub", "'', '', '-'"},
        {"gsub", "'hello', 'l+', '%0%0'"},
        {"gsub", "'hello world', '(%w+)', '<%1>'"},
        {"gsub", "'hello world', '(%w+) (%w+)', '%2 %1'"},
        {"gsub", "'abc', '%w', '%%'"},
        {"gsub", "'abc', '%w', '%a'"},
        {"gsub", "'abc', '%w', '%.%'"},
        {"gsub", "'abc', 'b', '%'"},
        {"gsub", "'abc', 'b', 'x%'"},
        {"gsub", "'abc', 'b', '%1'"},
        {"gsub", "'abc', 'b', '%2'"},
        {"gsub", "'abc', 'b', '%9'"},
        {"gsub", "'abc', '(b)', '%2'"},
        {"gsub", "'abc', '(b)', '%1%0%1'"},
        {"gsub", "'abc', '()b', '%1'"},
        {"gsub", "'abc', '()b()', '%2-%1'"},
        {"gsub", "'abc', 'b', 42"},
        {"gsub", "'abc', 'b', 1.5"},
        {"gsub", "'abc', 'b', 1e100"},
        {"gsub", "'a\\0c', 'a', 'x\\0y'"},
        {"gsub", "'abc', 'b', 'x\\0%'"},
        {"gsub", "'abc', '(a', 'x'"},
        {"gsub", "'abc', '(a', '%0'"},
        {"gsub", "'abc', '(a', '%1'"},
        {"gsub", "'abc', 'a)', 'x'"},
        {"gsub", "'abc', 'x(', 'y'"},
        {"gsub", "'abc', '[', 'y'"},
        {"gsub", "'xyz', 'a[', 'y'"},
        /* gsub: argument checks and the count */
        {"gsub", "'abc', 'b', true"},
        {"gsub", "'abc', 'b'"},
        {"gsub", "'abc', 'b', nil"},
        {"gsub", "'abc', 'b', nil, 'x'"},
        {"gsub", "'abc', 'b', true, 'x'"},
        {"gsub", "'abc', 'b', type"},
        {"gsub", "'abc'"},
        {"gsub", "nil, 'a', 'b'"},
        {"gsub", "'a', nil, 'b'"},
        {"gsub", "'aaa', 'a', 'x', 0"},
        {"gsub", "'aaa', 'a', 'x', -1"},
        {"gsub", "'aaa', 'a', 'x', 1"},
        {"gsub", "'aaa', 'a', 'x', 2.9"},
        {"gsub", "'aaa', 'a', 'x', '2'"},
        {"gsub", "'aaa', 'a', 'x', 'x'"},
        {"gsub", "'aaa', 'a', 'x', {}"},
        {"gsub", "'aaa', 'a', 'x', 2^32 + 1"},
        {"gsub", "'aaa', 'a', 'x', 2^32"},
        {"gsub", "'aaa', 'a', 'x', 2^31"},
        {"gsub", "'aaa', 'a', 'x', -2^31 - 1"},
        {"gsub", "'aaa', 'a', 'x', 2^63"},
        {"gsub", "'aaa', 'a', 'x', 0/0"},
        {"gsub", "'aaa', 'a', 'x', 1e300"},
        {"gsub", "'aaa', 'a', 'x', 1/0"},
        {"gsub", "'aaa', '', 'x', 2"},
        {"gsub", "'aaa', '', 'x', 10"},
        {"gsub", "'abc', '^a', 'x'"},
        {"gsub", "'aaa', '^a', 'x'"},
        {"gsub", "'abc', '^', '>'"},
        {"gsub", "'abc', '$', '<'"},
        {"gsub", "'abc', '^$', 'x'"},
        {"gsub", "'', '^$', 'x'"},
        {"gsub", "'', '^', 'x'"},
        {"gsub", "'abc', '^x', 'y'"},
        {"gsub", "'abc', '^x*', 'y'"},
        {"gsub", "'abc', '^x*', 'y', 0"},
        {"gsub", "'abc', 'x*', '-'"},
        {"gsub", "'abc', 'b*', '-'"},
        {"gsub", "'abc', '.-', '-'"},
        {"gsub", "'abc', '()', '%1'"},
        {"gsub", "'hello world', '%w+', '%0 %0', 1"},
        {"gsub", "12321, 2, 9"},
        {"gsub", "'abc', '^^a', 'x'"},
        {"gsub", "'^abc', '^^a', 'x'"},
        /* gsub: tables and functions */
        {"gsub", "'a b c ab', '%w+', REPL_TAB"},
        {"gsub", "'a(b', '%(', REPL_TAB"},
        {"gsub", "'xyz', '', REPL_TAB"},
        {"gsub", "'abc', '()b', REPL_TAB"},
        {"gsub", "'abcd', '()c', REPL_TAB"},
        {"gsub", "'abcde', '()d', REPL_TAB"},
        {"gsub", "'abc', 'c', REPL_TAB"},
        {"gsub", "'a1', '%d', REPL_TAB"},
        {"gsub", "'abc', '(a', REPL_TAB"},
        {"gsub", "'abc', '(%w)(%w)', REPL_TAB"},
        {"gsub", "'a b c', '%w', REPL_META"},
        {"gsub", "'a b c', '%w', REPL_META, 2"},
        {"gsub", "'hello world', '%w+', REPL_FN"},
        {"gsub", "'hello world', '(%w)(%w*)', REPL_FN"},
        {"gsub", "'a,b,,c,d,e,f,g,h', '[^,]*', REPL_FN"},
        {"gsub", "'abc', '()', REPL_FN"},
        {"gsub", "'abc', '(a', REPL_FN"},
        {"gsub", "'abc', '%w', REPL_BAD"},
        {"gsub", "'abc', '%w', REPL_BAD, 2"},
        {"gsub", "'abc', '%w', function() return true end"},
        {"gsub", "'abc', '%w', function() return {} end"},
        {"gsub", "'abc', '%w', function() return print end"},
        {"gsub", "'abc', '%w', function() return 12 end"},
        {"gsub", "'abc', '%w', function() end"},
        {"gsub", "'abc', '%w', function() error('boom') end"},
        {"gsub", "'abc', '%w', function() error({}) end"},
        {"gsub", "'abc', '%w', coroutine.yield"},
        {"gsub",
         "'abc', '%w', coroutine.wrap(function(...) while true do coroutine.yield('y') end end)"},
        {"gsub", "'abc', '%w', function(c) return P.gsub(c, '.', '%0%0') end"},
        {"gsub", "'abc', '%w', setmetatable({}, {__index = function() error('idx') end})"},
        {"gsub", "'abc', '%w', setmetatable({}, {__call = function() return 'x' end})"},
};

static void differential_cases(void)
{
	lua_State *L = new_state(counting_tick);
	int failed = 0, n = 0;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++, n += 2)
		failed += compare_src(L, cases[i].fn, cases[i].args);
	/* Every byte as a class letter, inside and outside a set, and the classes over every
	 * byte. */
	for (int c = 0; c < 256; c++) {
		char pat[8];
		const char *shapes[] = {"%%%c", "[%%%c]+", "[^%%%c]", "%%%c-$", "[%c]"};
		for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++, n++) {
			int len = snprintf(pat, sizeof(pat), shapes[k], c);
			lua_getglobal(L, "ALL");
			lua_pushlstring(L, pat, (size_t)len);
			lua_pushliteral(L, "");
			failed += compare_top(L, "gsub", 3, false);
		}
	}
	/* Ranges with any ends, ']', '%', '^' and '-' included. */
	uint32_t x = 12345;
	for (int k = 0; k < 3000; k++, n++) {
		char pat[8];
		x = x * 1103515245u + 12345u;
		int lo = (int)(x >> 8) & 0xff, hi = (int)(x >> 16) & 0xff;
		int len = snprintf(pat, sizeof(pat), "[%s%c-%c]", (x >> 24) & 1 ? "^" : "", lo, hi);
		lua_getglobal(L, "ALL");
		lua_pushlstring(L, pat, (size_t)len);
		lua_pushliteral(L, "");
		failed += compare_top(L, "gsub", 3, false);
	}
	printf("%d cases compared, %d mismatches, %d ticks\n", n, failed, tick_calls);
	CHECK(lua_gettop(L) == 0);
	lua_close(L);
	CHECK(failed == 0);
}

/* xorshift64*, seeded from TIDE_PATTERN_SEED so that a failure can be replayed. */
static uint64_t rng_state;

static uint32_t rnd(uint32_t n)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (uint32_t)((rng_state * 2685821657736338717ull) >> 33) % n;
}

static const char *pick(const char *const *list, size_t n)
{
	return list[rnd((uint32_t)n)];
}

#define PICK(list) pick(list, sizeof(list) / sizeof(list[0]))

static size_t random_subject(char *out)
{
	static const char alphabet[] = "aaaabbbc  1.%-()[]^$\0\xe9";
	size_t len = rnd(13);
	for (size_t i = 0; i < len; i++)
		out[i] = alphabet[rnd(sizeof(alphabet) - 1)];
	return len;
}

static size_t random_pattern(char *out)
{
	static const char *const tokens[] = {
	        "a",    "a",     "b",      "b",     "c",      " ",      "1",    ".",     ".",
	        "%a",   "%d",    "%s",     "%w",    "%p",     "%l",     "%u",   "%x",    "%c",
	        "%z",   "%g",    "%A",     "%S",    "%W",     "%.",     "%%",   "%(",    "%]",
	        "%-",   "%q",    "[ab]",   "[^a]",  "[a-c]",  "[%d ]",  "[]a]", "[^]a]", "[a-]",
	        "[%]]", "[",     "]",      "(",     "(",      ")",      ")",    "()",    "%b()",
	        "%bab", "%b",    "%b(",    "%f[a]", "%f[%w]", "%f[^a]", "%f",   "%fa",   "%1",
	        "%1",   "%2",    "%0",     "*",     "*",      "+",      "+",    "-",     "-",
	        "?",    "?",     "^",      "^",     "$",      "$",      "%",    "\xe9",  "(a*)",
	        "(.-)", "[%a_]", "%f[%z]", "[%z]",  "a-",     ".*",     "%s*",  "(%w+)",
	};
	size_t len = 0, n = rnd(8);
	for (size_t i = 0; i < n; i++) {
		const char *t = PICK(tokens);
		memcpy(out + len, t, strlen(t));
		len += strlen(t);
	}
	if (rnd(40) == 0)
		out[len++] = '\0'; /* a NUL ends the pattern */
	if (rnd(40) == 0)
		out[len++] = 'a';
	return len;
}

static size_t random_template(char *out)
{
	static const char *const tokens[] = {"x",  "%0", "%1", "%2", "%3", "%9",
	                                     "%%", "%a", "%",  "-",  "%.", "\0"};
	size_t len = 0, n = rnd(5);
	for (size_t i = 0; i < n; i++) {
		const char *t = PICK(tokens);
		size_t tl = t[0] ? strlen(t) : 1;
		memcpy(out + len, t, tl);
		len += tl;
	}
	return len;
}

static void push_random_number(lua_State *L)
{
	static const double specials[] = {0,
	                                  -1,
	                                  1,
	                                  2,
	                                  3,
	                                  -2,
	                                  -3,
	                                  100,
	                                  -100,
	                                  1.5,
	                                  -0.5,
	                                  4294967298.0,
	                                  2147483648.0,
	                                  -2147483649.0,
	                                  1e300};
	if (rnd(3) == 0)
		lua_pushnumber(L, specials[rnd(sizeof(specials) / sizeof(specials[0]))]);
	else
		lua_pushnumber(L, (double)rnd(30) - 15);
}

/* Pushes random arguments for fn; returns how many. */
static int push_random_args(lua_State *L, const char *fn)
{
	char buf[256];
	size_t len = random_subject(buf);
	if (rnd(50) == 0)
		lua_pushnumber(L, rnd(1000));
	else
		lua_pushlstring(L, buf, len);
	len = random_pattern(buf);
	if (rnd(80) == 0)
		lua_pushnumber(L, rnd(10));
	else
		lua_pushlstring(L, buf, len);
	if (strcmp(fn, "gmatch") == 0)
		return 2;
	if (strcmp(fn, "find") == 0 || strcmp(fn, "match") == 0) {
		int form = (int)rnd(4);
		if (form == 0)
			return 2;
		if (rnd(4) == 0)
			lua_pushnil(L);
		else
			push_random_number(L);
		if (form == 1 || strcmp(fn, "match") == 0)
			return 3;
		static const char *const flags[] = {"t", "f", "n", "1"};
		const char *f = PICK(flags);
		if (*f == 't')
			lua_pushboolean(L, 1);
		else if (*f == 'f')
			lua_pushboolean(L, 0);
		else if (*f == 'n')
			lua_pushnil(L);
		else
			lua_pushnumber(L, 1);
		return 4;
	}
	/* gsub */
	static const char *const repls[] = {"s",         "s",       "s",       "s",
	                                    "REPL_TAB",  "REPL_FN", "REPL_FN", "REPL_BAD",
	                                    "REPL_META", "n",       "bad"};
	const char *r = PICK(repls);
	if (*r == 's') {
		len = random_template(buf);
		lua_pushlstring(L, buf, len);
	} else if (*r == 'n') {
		lua_pushnumber(L, 7);
	} else if (*r == 'b') {
		lua_pushboolean(L, 1);
	} else {
		lua_getglobal(L, r);
	}
	if (rnd(3) != 0)
		return 3;
	push_random_number(L);
	return 4;
}

static void differential_random(void)
{
	const char *seed_env = getenv("TIDE_PATTERN_SEED");
	const char *count_env = getenv("TIDE_PATTERN_CASES");
	uint64_t seed = seed_env ? strtoull(seed_env, NULL, 10) : 20240611;
	long count = count_env ? strtol(count_env, NULL, 10) : 200000;
	rng_state = seed ? seed : 1;
	lua_State *L = new_state(counting_tick);
	static const char *const fns[] = {"find",   "find", "match", "match",
	                                  "gmatch", "gsub", "gsub"};
	int failed = 0;
	for (long i = 0; i < count && failed < 20; i++) {
		const char *fn = PICK(fns);
		int nargs = push_random_args(L, fn);
		failed += compare_top(L, fn, nargs, rnd(8) == 0);
		if (i % 1000 == 0)
			lua_gc(L, LUA_GCCOLLECT, 0);
	}
	printf("seed %llu: %ld random cases compared, %d mismatches, %d ticks\n",
	       (unsigned long long)seed, count, failed, tick_calls);
	run_lua(L, "print(string.format('LuaJIT gave %d errors, %d nil (no match), %d results', "
	           "STATS.errors, STATS.nomatch, STATS.results))");
	CHECK(lua_gettop(L) == 0);
	lua_close(L);
	CHECK(failed == 0);
}

/* Runs code, which must be stopped by the tick's error at its 20th call: 20 ticks, so
 * 20 * TIDE_PATTERN_TICK_STEPS steps; then the Lua check after, if any. The state must then
 * go on matching correctly. */
static void stops_then(const char *code, const char *after)
{
	lua_State *L = new_state(counting_tick);
	tick_limit = 20;
	int rc = luaL_loadstring(L, code);
	CHECK(rc == 0);
	clock_t t0 = clock();
	rc = lua_pcall(L, 0, 0, 0);
	double ms = (double)(clock() - t0) * 1000.0 / CLOCKS_PER_SEC;
	const char *msg = lua_tostring(L, -1);
	printf("%s\n  -> %s\n  (%d ticks, about %d steps, in %.1f ms of CPU)\n", code,
	       rc ? msg : "(finished)", tick_calls, tick_calls * TIDE_PATTERN_TICK_STEPS, ms);
	CHECK(rc == LUA_ERRRUN);
	CHECK(strstr(msg, "stopped by the tick after 20 ticks") != NULL);
	CHECK(tick_calls == 20);
	lua_pop(L, 1);
	CHECK(lua_gettop(L) == 0);
	if (after)
		run_lua(L, after);

	/* The state is still usable, and the same runaway can be stopped again. */
	tick_limit = 0;
	int failed = 0;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		failed += compare_src(L, cases[i].fn, cases[i].args);
	CHECK(failed == 0);
	lua_gc(L, LUA_GCCOLLECT, 0);
	tick_calls = 0;
	tick_limit = 3;
	CHECK(luaL_loadstring(L, code) == 0);
	CHECK(lua_pcall(L, 0, 0, 0) == LUA_ERRRUN);
	CHECK(strstr(lua_tostring(L, -1), "stopped by the tick after 3 ticks") != NULL);
	CHECK(tick_calls == 3);
	lua_pop(L, 1);
	run_lua(L, "assert(P.find('hello', 'l+') == 3)\n"
	           "assert(select(2, P.gsub('a b c', '%w', '%0%0')) == 3)\n"
	           "for w in P.gmatch('one two', '%a+') do assert(#w == 3) end");
	CHECK(lua_gettop(L) == 0);
	lua_close(L);
}

static void stops(const char *code)
{
	stops_then(code, NULL);
}

static void stop_find_lazy(void)
{
	stops("P.find(('a'):rep(200), '.-.-.-.-b')");
}

static void stop_match(void)
{
	stops("P.match(('a'):rep(200), '.-.-.-.-b')");
}

static void stop_gmatch(void)
{
	stops("for m in P.gmatch(('a'):rep(200), '.-.-.-.-b') do end");
}

static void stop_gsub(void)
{
	stops("P.gsub(('a'):rep(200), '.-.-.-.-b', 'x')");
}

static void stop_gsub_function(void)
{
	/* Ten matches go through the function before the runaway. */
	stops_then("CALLS = 0\n"
	           "P.gsub(('ab'):rep(10) .. ('a'):rep(200), '(a)(.-).-.-.-b', function(a)\n"
	           "  CALLS = CALLS + 1\n"
	           "  return a\n"
	           "end)",
	           "assert(CALLS == 10, CALLS)");
}

static void stop_greedy(void)
{
	stops("P.find(('a'):rep(3000), '.*.*.*b')");
	stops("P.find(('a'):rep(3000), 'a*a*a*b')");
}

static void stop_optional(void)
{
	stops("P.find(('a'):rep(40), ('a?'):rep(40) .. ('a'):rep(40))");
}

static void stop_balance(void)
{
	stops("P.find(('('):rep(200000), '%b()')");
}

static void stop_frontier(void)
{
	stops("P.find((' a'):rep(100000), '.-%f[%d]')");
}

static void stop_backref(void)
{
	stops("P.find(('a'):rep(100000), '(.*)%1b')");
}

static void stop_long_set(void)
{
	stops("P.find(('a'):rep(100000), '[' .. ('b'):rep(100000) .. ']')");
}

static void stop_long_pattern(void)
{
	stops("P.match(('a'):rep(200000), ('a'):rep(100000) .. 'b')");
}

/* The tick comes at least every TIDE_PATTERN_TICK_STEPS steps, counting across calls, and
 * not much more often. */
static void tick_rate(void)
{
	lua_State *L = new_state(counting_tick);
	/* One start position is at least one step: 1e6 + 1 of them. */
	run_lua(L, "assert(P.match(('a'):rep(1000000), 'b') == nil)");
	printf("match 'b' in 1e6 'a': %d ticks\n", tick_calls);
	CHECK(tick_calls >= 1000001 / TIDE_PATTERN_TICK_STEPS);
	CHECK(tick_calls <= 3 * 1000001 / TIDE_PATTERN_TICK_STEPS);
	/* Short calls add up. */
	tick_calls = 0;
	run_lua(L, "for i = 1, 100000 do assert(P.match('abc', 'c') == 'c') end");
	printf("1e5 short matches: %d ticks\n", tick_calls);
	CHECK(tick_calls >= 100000 / TIDE_PATTERN_TICK_STEPS);
	/* find without specials is a linear search (memmem): no steps. */
	tick_calls = 0;
	run_lua(L, "assert(P.find(('a'):rep(1000000), ('a'):rep(500000) .. 'b', 1, true) == nil)");
	CHECK(tick_calls == 0);
	lua_close(L);

	/* No tick at all is allowed. */
	L = new_state(NULL);
	run_lua(L, "assert(P.find(('a'):rep(100000), 'b') == nil)\n"
	           "assert(P.gsub('abc', '%w', '%0.') == 'a.b.c.')");
	lua_close(L);
}

static double run_bench(lua_State *L, const char *impl, const char *body)
{
	char code[2048];
	snprintf(code, sizeof(code),
	         "local F = %s\n"
	         "local find, match, gsub, gmatch = F.find, F.match, F.gsub, F.gmatch\n"
	         "local clock = os.clock\n"
	         "local t0 = clock()\n"
	         "for i = 1, 1000000 do %s end\n"
	         "return clock() - t0",
	         impl, body);
	if (luaL_loadstring(L, code) || lua_pcall(L, 0, 1, 0)) {
		fprintf(stderr, "bench: %s\n", lua_tostring(L, -1));
		exit(1);
	}
	double t = lua_tonumber(L, -1);
	lua_pop(L, 1);
	return t;
}

static bool speed_with_jit; /* `test_pattern speed jit` */

/* Reports the time of everyday calls with LuaJIT's functions and with ours (asserts
 * nothing). Script VMs run with the JIT off, and so does this unless asked. With the JIT
 * on, LuaJIT compiles its own plain finds into traces, and a C function ends a trace. */
static void speed(void)
{
	static const char *const bodies[] = {
	        "match('order-1234', '^(%w+)-(%d+)$')",
	        "gsub('hello   world  again', '%s+', ' ')",
	        "find('the quick brown fox', 'brown', 1, true)",
	        "find('key=value; other=thing', 'other')",
	        "find('GET /index.html HTTP/1.1', '^(%u+)%s+(%S+)')",
	        "for w in gmatch('a,b,c', '[^,]+') do end",
	        "gsub('x = $x, y = $y', '%$(%w+)', {x = '1', y = '2'})",
	};
	for (int jit = 0; jit <= (speed_with_jit ? 1 : 0); jit++) {
		lua_State *L = new_state(counting_tick);
		luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | (jit ? LUAJIT_MODE_ON : LUAJIT_MODE_OFF));
		double total_theirs = 0, total_ours = 0;
		printf("JIT %s, 1e6 calls each, best of 3 (s):\n", jit ? "on" : "off");
		for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
			double theirs = 1e9, ours = 1e9;
			for (int round = 0; round < 3; round++) {
				double t = run_bench(L, "string", bodies[i]);
				theirs = t < theirs ? t : theirs;
				t = run_bench(L, "P", bodies[i]);
				ours = t < ours ? t : ours;
			}
			total_theirs += theirs;
			total_ours += ours;
			printf("  %-55s LuaJIT %.3f  ours %.3f  x%.2f\n", bodies[i], theirs, ours,
			       ours / theirs);
		}
		printf("  total: LuaJIT %.3f  ours %.3f  ratio x%.2f\n", total_theirs, total_ours,
		       total_ours / total_theirs);
		lua_close(L);
	}
}

struct named_test {
	const char *name;
	void (*fn)(void);
};

int main(int argc, char **argv)
{
	static const struct named_test tests[] = {
	        {"differential_cases", differential_cases},
	        {"differential_random", differential_random},
	        {"stop_find_lazy", stop_find_lazy},
	        {"stop_match", stop_match},
	        {"stop_gmatch", stop_gmatch},
	        {"stop_gsub", stop_gsub},
	        {"stop_gsub_function", stop_gsub_function},
	        {"stop_greedy", stop_greedy},
	        {"stop_optional", stop_optional},
	        {"stop_balance", stop_balance},
	        {"stop_frontier", stop_frontier},
	        {"stop_backref", stop_backref},
	        {"stop_long_set", stop_long_set},
	        {"stop_long_pattern", stop_long_pattern},
	        {"tick_rate", tick_rate},
	        {"speed", speed},
	};
	size_t n = sizeof(tests) / sizeof(tests[0]);
	speed_with_jit = argc > 2 && strcmp(argv[2], "jit") == 0;
	int ran = 0;
	for (size_t i = 0; i < n; i++) {
		if (argc < 2 || strcmp(argv[1], tests[i].name) == 0) {
			tests[i].fn();
			ran++;
		}
	}
	if (!ran) {
		fprintf(stderr, "no test named %s\n", argv[1]);
		return 1;
	}
	return 0;
}
