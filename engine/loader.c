/* loader.c — loads a processor script into a fresh VM on libuv's thread pool (or at once,
 * for the inline projections an appender runs: inline.c): reads the file, skips content that is
 * already running (or known to fail), runs the script in the sandbox, and reads its settings
 * through the runtime (tide.model.settings), under the CPU guard and inside a protected call, so
 * that a hostile script can neither hang the loader nor crash it. A script that returns no
 * projection or reactor (a decider, a module of helpers) is inert: nothing to run. */
#include "loader.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "file.h"
#include "upcast.h"

struct load_job {
	uv_work_t req;
	char *path, *id, *upcasters, *upcasters_error;
	struct tide_load_request r;
	tide_load_cb cb;
	void *arg;
	struct tide_load_result result;
	char err[1024];
};

/* What read_settings needs. */
struct settings_read {
	struct tide_generation *g;
	const char *id;
};

const char *tide_on_error_name(enum tide_on_error e)
{
	switch (e) {
	case TIDE_ON_ERROR_SKIP: return "skip";
	case TIDE_ON_ERROR_STOP: return "stop";
	case TIDE_ON_ERROR_RETRY: return "retry";
	default: return "dead_letter";
	}
}

void tide_generation_free(struct tide_generation *g)
{
	tide_vm_close(g->vm);
	for (size_t i = 0; i < g->ntypes; i++)
		free(g->types[i]);
	free(g->types);
	free(g->url);
	for (size_t i = 0; i < g->nheaders; i++)
		free(g->headers[i]);
	free(g->headers);
	memset(g, 0, sizeof(*g));
}

static const char *raw_string(lua_State *L, int t, const char *key)
{
	lua_pushstring(L, key);
	lua_rawget(L, t);
	const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
	lua_pop(L, 1); /* the string stays alive: the table holds it */
	return s;
}

static lua_Number raw_number(lua_State *L, int t, const char *key)
{
	lua_pushstring(L, key);
	lua_rawget(L, t);
	lua_Number x = lua_tonumber(L, -1);
	lua_pop(L, 1);
	return x;
}

/* A publisher's url, headers and timeout, from its settings at t (checked by tide.model). */
static int read_publisher(lua_State *L, int t, struct tide_generation *g)
{
	const char *url = raw_string(L, t, "url");
	g->url = strdup(url ? url : "");
	g->timeout_ms = (unsigned)raw_number(L, t, "timeout_ms");
	if (!g->url)
		return TIDE_ENOMEM;
	lua_pushliteral(L, "headers");
	lua_rawget(L, t);
	size_t n = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
	g->headers = calloc(n ? n : 1, sizeof(char *));
	if (!g->headers)
		return TIDE_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		lua_rawgeti(L, -1, (int)i + 1);
		const char *line = lua_tostring(L, -1);
		if (line) {
			g->headers[g->nheaders] = strdup(line);
			if (!g->headers[g->nheaders])
				return TIDE_ENOMEM;
			g->nheaders++;
		}
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
	return 0;
}

/* Under tide_vm_protected: settings = runtime.processor_settings(processor). */
static int read_settings(lua_State *L)
{
	struct settings_read *sr = lua_touserdata(L, 1);
	struct tide_generation *g = sr->g;
	lua_getfield(L, LUA_REGISTRYINDEX, "tide.runtime");
	lua_getfield(L, -1, "processor_settings");
	lua_rawgeti(L, LUA_REGISTRYINDEX, g->ref);
	lua_call(L, 1, 1);
	int t = lua_gettop(L);
	snprintf(g->kind, sizeof(g->kind), "%s", raw_string(L, t, "kind"));
	if (strcmp(g->kind, "decider") == 0 || strncmp(g->kind, "upcaster", 8) == 0)
		return 0;
	g->version = (int)raw_number(L, t, "version");
	const char *partition = raw_string(L, t, "partition");
	if (strlen(partition) > TIDE_MAX_PARTITION_BYTES)
		return luaL_error(L, "partition must be at most %d bytes, got %d",
		                  TIDE_MAX_PARTITION_BYTES, (int)strlen(partition));
	snprintf(g->partition, sizeof(g->partition), "%s", partition);
	const char *on_error = raw_string(L, t, "on_error");
	g->on_error = strcmp(on_error, "skip") == 0    ? TIDE_ON_ERROR_SKIP
	              : strcmp(on_error, "stop") == 0  ? TIDE_ON_ERROR_STOP
	              : strcmp(on_error, "retry") == 0 ? TIDE_ON_ERROR_RETRY
	                                               : TIDE_ON_ERROR_DEAD_LETTER;
	g->max_attempts = (int)raw_number(L, t, "max_attempts");
	g->backoff_ms = (unsigned)raw_number(L, t, "backoff_ms");
	g->shards = (int)raw_number(L, t, "shards");
	if (g->shards < 1)
		g->shards = 1;
	lua_pushliteral(L, "blue_green");
	lua_rawget(L, t);
	g->blue_green = lua_toboolean(L, -1);
	lua_pop(L, 1);
	lua_pushliteral(L, "inline");
	lua_rawget(L, t);
	g->is_inline = lua_toboolean(L, -1);
	lua_pop(L, 1);
	lua_pushliteral(L, "types");
	lua_rawget(L, t);
	if (lua_istable(L, -1)) {
		size_t n = lua_objlen(L, -1);
		g->types = calloc(n ? n : 1, sizeof(char *));
		if (!g->types)
			return luaL_error(L, "out of memory");
		for (size_t i = 0; i < n; i++) {
			lua_rawgeti(L, -1, (int)i + 1);
			size_t len;
			const char *type = lua_tolstring(L, -1, &len);
			if (!type || !len || len > TIDE_MAX_NAME_BYTES || strlen(type) != len)
				return luaL_error(L,
				                  "events: type %d is not a valid event type name",
				                  (int)i + 1);
			g->types[g->ntypes] = strdup(type);
			if (!g->types[g->ntypes])
				return luaL_error(L, "out of memory");
			g->ntypes++;
			lua_pop(L, 1);
		}
	}
	if (strcmp(g->kind, "publisher") == 0 && read_publisher(L, t, g) != 0)
		return luaL_error(L, "out of memory");
	lua_pushstring(L, sr->id);
	lua_setfield(L, LUA_REGISTRYINDEX, "tide.processor_id");
	tide_batch_init_vm(g->vm);
	return 0;
}

void tide_load_now(const struct tide_load_request *req, struct tide_load_result *r, char *err,
                   size_t n)
{
	memset(r, 0, sizeof(*r));
	r->outcome = TIDE_LOAD_FAILED;
	r->err = err;
	size_t len;
	char *buf = tide_file_read(req->path, &len, err, n);
	if (!buf)
		return;
	r->hash = tide_hash(buf, len);
	if (!req->force && (r->hash == req->known_hash || r->hash == req->failed_hash)) {
		r->outcome = TIDE_LOAD_UNCHANGED;
		free(buf);
		return;
	}
	struct tide_generation *g = &r->gen;
	g->hash = r->hash;
	struct tide_vm_opts opts = {.cpu_ms = req->cpu_ms, .memory_limit = req->memory};
	if (tide_vm_open(&opts, &g->vm, err, n) != 0) {
		free(buf);
		return;
	}
	int rc = 0;
	if (req->upcasters_error) {
		snprintf(err, n, "%s", req->upcasters_error);
		rc = -1;
	} else if (req->upcasters) {
		rc = tide_upcasters_load(g->vm, req->upcasters, err, n);
	}
	if (rc == 0)
		rc = tide_vm_load(g->vm, req->path, buf, len, &g->ref, err, n);
	free(buf);
	struct tide_vm_error e;
	struct settings_read sr = {g, req->id};
	if (rc == 0 && tide_vm_protected(g->vm, read_settings, &sr, &e) != 0) {
		snprintf(err, n, "%.400s: %.600s", req->path, e.message);
		rc = -1;
	}
	if (rc == TIDE_VM_NOT_PROCESSOR) {
		/* A module beside the scripts: what it returned, without the path the log has. */
		r->outcome = TIDE_LOAD_INERT;
		r->err = tide_vm_unprefixed(err, req->path);
	}
	if (rc != 0) {
		tide_generation_free(g);
		return;
	}
	if (strcmp(g->kind, "decider") == 0) {
		tide_generation_free(g);
		snprintf(err, n, "a decider: it handles commands with `tide handle`");
		r->outcome = TIDE_LOAD_INERT;
		return;
	}
	if (strncmp(g->kind, "upcaster", 8) == 0) {
		tide_generation_free(g);
		snprintf(err, n, "upcasters: every processor reads through them");
		r->outcome = TIDE_LOAD_INERT;
		return;
	}
	r->outcome = TIDE_LOAD_OK;
}

static void load_work(uv_work_t *req)
{
	struct load_job *j = req->data;
	tide_load_now(&j->r, &j->result, j->err, sizeof(j->err));
}

static void load_done(uv_work_t *req, int status)
{
	(void)status;
	struct load_job *j = req->data;
	j->cb(&j->result, j->arg);
	if (j->result.outcome == TIDE_LOAD_OK && j->result.gen.vm)
		tide_generation_free(&j->result.gen); /* the callback did not take it */
	free(j->path);
	free(j->id);
	free(j->upcasters);
	free(j->upcasters_error);
	free(j);
}

int tide_load(uv_loop_t *loop, const struct tide_load_request *req, tide_load_cb cb, void *arg)
{
	struct load_job *j = calloc(1, sizeof(*j));
	if (!j)
		return TIDE_ENOMEM;
	j->req.data = j;
	j->r = *req;
	j->path = strdup(req->path);
	j->id = strdup(req->id);
	j->upcasters = req->upcasters ? strdup(req->upcasters) : NULL;
	j->upcasters_error = req->upcasters_error ? strdup(req->upcasters_error) : NULL;
	j->r.path = j->path;
	j->r.id = j->id;
	j->r.upcasters = j->upcasters;
	j->r.upcasters_error = j->upcasters_error;
	j->cb = cb;
	j->arg = arg;
	bool copied =
	        (!req->upcasters || j->upcasters) && (!req->upcasters_error || j->upcasters_error);
	if (!j->path || !j->id || !copied ||
	    uv_queue_work(loop, &j->req, load_work, load_done) != 0) {
		free(j->path);
		free(j->id);
		free(j->upcasters);
		free(j->upcasters_error);
		free(j);
		return TIDE_ENOMEM;
	}
	return 0;
}
