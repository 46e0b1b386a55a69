/* upcast.c — upcasters among the scripts (see upcast.h): which files are upcasters, and
 * their chain loaded into a script's VM. A file is an upcaster by what it returns, so
 * finding them runs every script of the directories once, in one scratch VM: a few
 * milliseconds for a directory of scripts, at start and when files change. */
#include "upcast.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "file.h"
#include "lua_json.h"
#include "lua_store.h"

/* A growing text. */
struct text {
	char *s;
	size_t len, cap;
	bool failed;
};

static void put(struct text *t, const char *s)
{
	size_t n = strlen(s);
	if (t->failed)
		return;
	if (t->len + n + 1 > t->cap) {
		size_t cap = (t->len + n + 1) * 2;
		char *more = realloc(t->s, cap);
		if (!more) {
			t->failed = true;
			return;
		}
		t->s = more;
		t->cap = cap;
	}
	memcpy(t->s + t->len, s, n + 1);
	t->len += n;
}

struct classify {
	int ref;
	bool upcaster;
};

/* Under tide_vm_protected: whether the value at ref is upcasters (raw: no metamethod). */
static int classify(lua_State *L)
{
	struct classify *c = lua_touserdata(L, 1);
	lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
	if (lua_istable(L, -1)) {
		lua_pushliteral(L, "kind");
		lua_rawget(L, -2);
		const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
		c->upcaster = strcmp(k, "upcaster") == 0 || strcmp(k, "upcasters") == 0;
	}
	luaL_unref(L, LUA_REGISTRYINDEX, c->ref);
	return 0;
}

/* Whether the script at path is upcasters; false with *broken set (and err) when it does
 * not load but means to be one. */
static bool is_upcaster(struct tide_vm *vm, const char *path, uint64_t *hash, bool *broken,
                        char *err, size_t n)
{
	size_t len;
	char *src = tide_file_read(path, &len, err, n);
	if (!src)
		return false;
	*hash = tide_hash(src, len);
	struct classify c = {LUA_NOREF, false};
	int rc = tide_vm_load_table(vm, path, src, len, &c.ref, err, n);
	struct tide_vm_error e;
	if (rc == 0 && tide_vm_protected(vm, classify, &c, &e) != 0) {
		snprintf(err, n, "%.400s: %.600s", path, e.message);
		rc = -1;
	}
	*broken = rc != 0 && strstr(src, "upcaster") != NULL;
	free(src);
	return rc == 0 && c.upcaster;
}

int tide_upcasters_find(const char *const *dirs, int n, const struct tide_vm_opts *opts,
                        struct tide_upcasters *u)
{
	memset(u, 0, sizeof(*u));
	struct text paths = {0};
	put(&paths, "");
	char err[2048];
	struct tide_vm *vm = NULL;
	uint64_t sig = 1469598103934665603ull;
	for (int d = 0; d < n && !u->error; d++) {
		char **files;
		size_t nfiles;
		if (tide_file_list_lua(dirs[d], &files, &nfiles, err, sizeof(err)) != 0)
			continue; /* its processors say so */
		for (size_t i = 0; i < nfiles && !u->error; i++) {
			if (tide_file_is_spec(files[i]))
				continue;
			if (!vm && tide_vm_open(opts, &vm, err, sizeof(err)) != 0) {
				u->error = strdup(err);
				break;
			}
			uint64_t hash = 0;
			bool broken = false;
			if (is_upcaster(vm, files[i], &hash, &broken, err, sizeof(err))) {
				put(&paths, u->count++ ? "\n" : "");
				put(&paths, files[i]);
				sig = (sig ^ tide_hash(files[i], strlen(files[i]))) *
				      1099511628211ull;
				sig = (sig ^ hash) * 1099511628211ull;
			} else if (broken) {
				char msg[2200];
				snprintf(msg, sizeof(msg), "an upcaster does not load: %s", err);
				u->error = strdup(msg);
			}
			/* Each script's leftovers go before the next one runs. */
			lua_gc(tide_vm_state(vm), LUA_GCCOLLECT, 0);
		}
		tide_file_list_free(files, nfiles);
	}
	tide_vm_close(vm);
	vm = NULL;
	u->paths = paths.s;
	u->signature = sig;
	if (paths.failed)
		goto nomem;
	if (!u->error && u->count > 0) {
		/* The chain, checked where it will be used: in a VM of its own. */
		int rc = tide_vm_open(opts, &vm, err, sizeof(err));
		if (rc == 0)
			rc = tide_upcasters_load(vm, u->paths, err, sizeof(err));
		tide_vm_close(vm);
		if (rc == TIDE_ENOMEM)
			goto nomem;
		if (rc != 0)
			u->error = strdup(err);
	}
	if (u->error)
		u->signature ^= tide_hash(u->error, strlen(u->error));
	return 0;
nomem:
	tide_upcasters_free(u);
	return TIDE_ENOMEM;
}

void tide_upcasters_free(struct tide_upcasters *u)
{
	free(u->paths);
	free(u->error);
	memset(u, 0, sizeof(*u));
}

struct use {
	const char *paths; /* "\n"-joined */
	const int *refs;
	size_t n;
};

/* Under tide_vm_protected: runtime.use_upcasters({ { value, file }, ... }). */
static int use(lua_State *L)
{
	struct use *x = lua_touserdata(L, 1);
	lua_getfield(L, LUA_REGISTRYINDEX, "tide.runtime");
	lua_getfield(L, -1, "use_upcasters");
	lua_createtable(L, (int)x->n, 0);
	const char *p = x->paths;
	for (size_t i = 0; i < x->n; i++) {
		const char *end = strchr(p, '\n');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		lua_createtable(L, 0, 2);
		lua_rawgeti(L, LUA_REGISTRYINDEX, x->refs[i]);
		lua_setfield(L, -2, "value");
		lua_pushlstring(L, p, len);
		lua_setfield(L, -2, "file");
		lua_rawseti(L, -2, (int)i + 1);
		p = end ? end + 1 : p + len;
	}
	lua_call(L, 1, 0);
	return 0;
}

int tide_upcasters_load(struct tide_vm *vm, const char *paths, char *err, size_t n)
{
	if (!paths || !*paths)
		return 0;
	size_t count = 1;
	for (const char *p = paths; *p; p++)
		count += *p == '\n';
	int *refs = calloc(count, sizeof(*refs));
	if (!refs) {
		snprintf(err, n, "out of memory");
		return TIDE_ENOMEM;
	}
	lua_State *L = tide_vm_state(vm);
	int rc = 0;
	size_t loaded = 0;
	for (const char *p = paths; loaded < count && rc == 0; loaded++) {
		const char *end = strchr(p, '\n');
		size_t plen = end ? (size_t)(end - p) : strlen(p);
		char path[4096];
		snprintf(path, sizeof(path), "%.*s", (int)plen, p);
		p = end ? end + 1 : p + plen;
		size_t len;
		char *src = tide_file_read(path, &len, err, n);
		if (!src) {
			rc = TIDE_ESCRIPT;
			break;
		}
		rc = tide_vm_load_table(vm, path, src, len, &refs[loaded], err, n);
		free(src);
		if (rc != 0) {
			rc = rc == TIDE_ENOMEM ? rc : TIDE_ESCRIPT;
			break;
		}
	}
	if (rc == 0) {
		struct use x = {paths, refs, count};
		struct tide_vm_error e;
		if (tide_vm_protected(vm, use, &x, &e) != 0) {
			snprintf(err, n, "%s", e.message);
			rc = strcmp(e.kind, "memory") == 0 ? TIDE_ENOMEM : TIDE_ESCRIPT;
		}
	}
	for (size_t i = 0; i < loaded; i++)
		if (refs[i] != LUA_NOREF && refs[i] != 0)
			luaL_unref(L, LUA_REGISTRYINDEX, refs[i]);
	free(refs);
	return rc;
}

int tide_upcasters_load_beside(struct tide_vm *vm, const char *path,
                               const struct tide_vm_opts *opts, char *err, size_t n)
{
	char dir[4096];
	const char *slash = strrchr(path, '/');
	snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash == path ? 1 : slash - path) : 1,
	         slash ? path : ".");
	const char *dirs[1] = {dir};
	struct tide_upcasters u;
	if (tide_upcasters_find(dirs, 1, opts, &u) != 0) {
		snprintf(err, n, "out of memory");
		return TIDE_ENOMEM;
	}
	int rc = 0;
	if (u.error) {
		snprintf(err, n, "%s", u.error);
		rc = TIDE_ESCRIPT;
	} else {
		rc = tide_upcasters_load(vm, u.paths, err, n);
	}
	tide_upcasters_free(&u);
	return rc;
}

int tide_lua_upcaster_files(lua_State *L)
{
	const char *dir = luaL_checkstring(L, 1);
	struct stat st;
	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
		char msg[600];
		snprintf(msg, sizeof(msg), "upcasters: %.500s is not a directory", dir);
		return tide_lua_push_error(L, "invalid", msg);
	}
	const char *dirs[1] = {dir};
	struct tide_vm_opts opts = {0};
	struct tide_upcasters u;
	if (tide_upcasters_find(dirs, 1, &opts, &u) != 0)
		return luaL_error(L, "out of memory");
	if (u.error) {
		/* kind "script": the file's own error (or the chain's), as an inline one's. */
		char msg[2400];
		snprintf(msg, sizeof(msg), "%s", u.error);
		tide_upcasters_free(&u);
		return tide_lua_push_error(L, "script", msg);
	}
	lua_createtable(L, (int)u.count, 0);
	const char *p = u.paths;
	for (size_t i = 0; i < u.count; i++) {
		const char *end = strchr(p, '\n');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		lua_pushlstring(L, p, len);
		lua_rawseti(L, -2, (int)i + 1);
		p = end ? end + 1 : p + len;
	}
	tide_upcasters_free(&u);
	return 1;
}

struct upcast_call {
	const struct tide_message *in;
	struct tide_upcast_result *out;
	char *err;
	size_t errn;
};

/* A copy of the Lua string at the top as malloc'd text; NULL when out of memory. */
static char *json_of(lua_State *L, int idx, const char *what, struct upcast_call *x, bool *ok)
{
	char *json = tide_lua_to_json_text(L, idx, what, x->err, x->errn);
	char *copy = json ? strdup(json) : NULL;
	cJSON_free(json);
	*ok = *ok && copy;
	return copy;
}

/* Under tide_vm_protected: the messages as event tables, runtime.upcast_events(events),
 * and those whose schema version moved back into texts. */
static int upcast_call(lua_State *L)
{
	struct upcast_call *x = lua_touserdata(L, 1);
	struct tide_upcast_result *out = x->out;
	lua_getfield(L, LUA_REGISTRYINDEX, "tide.runtime");
	lua_getfield(L, -1, "upcast_events");
	int fn = lua_gettop(L);
	struct tide_lua_messages ms;
	tide_lua_messages_begin(L, &ms, false);
	lua_createtable(L, (int)out->n, 0);
	int list = lua_gettop(L);
	for (size_t i = 0; i < out->n; i++) {
		tide_lua_messages_push(L, &ms, &x->in[i]);
		lua_rawseti(L, list, (int)i + 1);
	}
	lua_pushvalue(L, fn);
	lua_pushvalue(L, list);
	lua_call(L, 1, 0);
	for (size_t i = 0; i < out->n; i++) {
		lua_rawgeti(L, list, (int)i + 1);
		int e = lua_gettop(L);
		lua_getfield(L, e, "schema_version");
		char v[32] = "";
		if (lua_type(L, -1) == LUA_TNUMBER)
			snprintf(v, sizeof(v), "%.0f", lua_tonumber(L, -1));
		else if (lua_type(L, -1) == LUA_TSTRING)
			snprintf(v, sizeof(v), "%s", lua_tostring(L, -1));
		const char *was = x->in[i].schema_version ? x->in[i].schema_version : "";
		if (strcmp(v, was) != 0) {
			bool ok = true;
			char **t = &out->texts[i * 3];
			lua_getfield(L, e, "data");
			t[0] = json_of(L, lua_gettop(L), "data", x, &ok);
			lua_getfield(L, e, "metadata");
			t[1] = json_of(L, lua_gettop(L), "metadata", x, &ok);
			t[2] = strdup(v);
			if (!ok || !t[2])
				return luaL_error(L, "%s", x->err[0] ? x->err : "out of memory");
			out->messages[i].data = t[0];
			out->messages[i].metadata = t[1];
			out->messages[i].schema_version = t[2];
		}
		lua_settop(L, list);
	}
	return 0;
}

int tide_upcast_messages(struct tide_vm *vm, const struct tide_message *in, size_t n,
                         struct tide_upcast_result *out, char *err, size_t errn)
{
	memset(out, 0, sizeof(*out));
	out->messages = malloc((n ? n : 1) * sizeof(*out->messages));
	out->texts = calloc(n ? n * 3 : 1, sizeof(*out->texts));
	if (!out->messages || !out->texts) {
		snprintf(err, errn, "out of memory");
		return TIDE_ENOMEM;
	}
	memcpy(out->messages, in, n * sizeof(*in));
	out->n = n;
	err[0] = '\0';
	struct upcast_call x = {in, out, err, errn};
	struct tide_vm_error e;
	if (tide_vm_protected(vm, upcast_call, &x, &e) != 0) {
		snprintf(err, errn, "upcasting the events read: %s", e.message);
		return strcmp(e.kind, "memory") == 0 ? TIDE_ENOMEM : TIDE_ESCRIPT;
	}
	return 0;
}

void tide_upcast_result_free(struct tide_upcast_result *r)
{
	for (size_t i = 0; r->texts && i < r->n * 3; i++)
		free(r->texts[i]);
	free(r->texts);
	free(r->messages);
	memset(r, 0, sizeof(*r));
}
