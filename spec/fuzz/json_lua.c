/* json_lua.c — libFuzzer target for the JSON ⇄ Lua bridge (engine/lua_json.c), in one script
 * VM set up the way the engine sets one up (tide_vm_open: sandbox, runtime, memory cap).
 * Each input must leave the Lua stack as it found it, and when tide_lua_push_json_text parses
 * it, the value must round-trip: it encodes (unless JSON gave it something the encoder
 * refuses by design: nesting deeper than 128, a string that is not UTF-8 or holds a NUL
 * byte (\u0000), a number beyond a double), the encoding parses, and that value encodes to
 * the same JSON. Objects are compared with their keys sorted, as a Lua table keeps no order.
 * tide_json_check_object runs on the input too, and what it accepts the bridge must decode
 * to a table. */
#include <cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "lua_json.h"
#include "lua_vm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct trip {
	const char *text;
	size_t len;
	int parsed, is_table;
	char *first, *second; /* the two encodings (cJSON_free) */
	char err[512];
};

static struct tide_vm *vm;

static void die(const struct trip *t, const char *what)
{
	fprintf(stderr, "json_lua: %s\n  input (%zu bytes): ", what, t->len);
	for (size_t i = 0; i < t->len && i < 2000; i++) {
		unsigned char c = (unsigned char)t->text[i];
		fprintf(stderr, c >= 0x20 && c < 0x7f && c != '\\' ? "%c" : "\\x%02x", c);
	}
	fprintf(stderr, "\n  first: %s\n  second: %s\n", t->first ? t->first : "-",
	        t->second ? t->second : "-");
	if (t->err[0])
		fprintf(stderr, "  error: %s\n", t->err);
	abort();
}

/* What the encoder may refuse in a value that came from JSON. */
static int refusal_expected(const char *err)
{
	return strstr(err, "nested too deeply") || strstr(err, "not valid UTF-8") ||
	       strstr(err, "contains a NUL byte") || strstr(err, "infinity cannot be encoded");
}

/* Runs under lua_pcall: allocations on the state may raise, as they may in the engine. */
static int l_trip(lua_State *L)
{
	struct trip *t = lua_touserdata(L, 1);
	int top = lua_gettop(L);
	if (tide_lua_push_json_text(L, t->text, t->len) != 0) {
		if (lua_gettop(L) != top)
			die(t, "push_json_text failed and left values on the stack");
		return 0;
	}
	t->parsed = 1;
	if (lua_gettop(L) != top + 1)
		die(t, "push_json_text did not push exactly one value");
	t->is_table = lua_istable(L, -1);
	t->first = tide_lua_to_json_text(L, -1, "data", t->err, sizeof(t->err));
	if (lua_gettop(L) != top + 1)
		die(t, "to_json_text changed the stack");
	if (!t->first) {
		if (!refusal_expected(t->err))
			die(t, "a value decoded from JSON does not encode");
		return 0;
	}
	lua_pop(L, 1);
	if (tide_lua_push_json_text(L, t->first, strlen(t->first)) != 0)
		die(t, "the encoding does not parse");
	t->second = tide_lua_to_json_text(L, -1, "data", t->err, sizeof(t->err));
	if (!t->second)
		die(t, "the value decoded from the encoding does not encode");
	if (lua_gettop(L) != top + 1)
		die(t, "the second round changed the stack");
	return 0;
}

static int by_key(const void *a, const void *b)
{
	return strcmp((*(cJSON *const *)a)->string, (*(cJSON *const *)b)->string);
}

/* Sorts every object's members by key (cJSON: head->prev is the tail). */
static void sort_keys(cJSON *v)
{
	size_t n = 0;
	for (cJSON *c = v->child; c; c = c->next) {
		sort_keys(c);
		n++;
	}
	if (!cJSON_IsObject(v) || n < 2)
		return;
	cJSON **a = malloc(n * sizeof(*a));
	if (!a)
		abort();
	n = 0;
	for (cJSON *c = v->child; c; c = c->next)
		a[n++] = c;
	qsort(a, n, sizeof(*a), by_key);
	for (size_t i = 0; i < n; i++) {
		a[i]->prev = a[i ? i - 1 : n - 1];
		a[i]->next = i + 1 < n ? a[i + 1] : NULL;
	}
	v->child = a[0];
	free(a);
}

static char *canonical(const char *text)
{
	cJSON *v = cJSON_Parse(text);
	if (!v)
		return NULL;
	sort_keys(v);
	char *s = cJSON_PrintUnformatted(v);
	cJSON_Delete(v);
	return s;
}

static void same_json(const struct trip *t)
{
	if (strcmp(t->first, t->second) == 0)
		return;
	char *a = canonical(t->first), *b = canonical(t->second);
	int same = a && b && strcmp(a, b) == 0;
	cJSON_free(a);
	cJSON_free(b);
	if (!same)
		die(t, "the round trip changed the value");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256];
	if (!vm && tide_vm_open(NULL, &vm, err, sizeof(err)) != 0) {
		fprintf(stderr, "json_lua: %s\n", err);
		abort();
	}
	lua_State *L = tide_vm_state(vm);
	int base = lua_gettop(L);
	struct trip t = {.text = (const char *)data, .len = size};

	lua_pushcfunction(L, l_trip);
	lua_pushlightuserdata(L, &t);
	if (lua_pcall(L, 1, 0, 0) != 0) {
		snprintf(t.err, sizeof(t.err), "%s", lua_tostring(L, -1));
		die(&t, "the bridge raised an error");
	}
	if (lua_gettop(L) != base)
		die(&t, "the Lua stack is not balanced");
	if (t.second)
		same_json(&t);

	char *text = malloc(size + 1);
	if (!text)
		abort();
	memcpy(text, data, size);
	text[size] = '\0';
	/* What the store accepts, every path must carry: decoded to a table and encoded back. */
	if (tide_json_check_object(text, "data", err, sizeof(err)) == 0 && !memchr(data, 0, size) &&
	    !(t.parsed && t.is_table && t.second))
		die(&t, "tide_json_check_object accepts what the bridge does not carry back and "
		        "forth");
	free(text);
	cJSON_free(t.first);
	cJSON_free(t.second);
	return 0;
}
