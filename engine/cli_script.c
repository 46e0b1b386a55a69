/* cli_script.c — `tide handle`, `tide aggregate` and `tide check`: a decider or processor
 * script loaded in a sandboxed VM, driven through the Lua runtime (lua/tide/command.lua). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_common.h"
#include "lua_json.h"
#include "lua_vm.h"

static char *read_file(const char *path, size_t *len, char *err, size_t n)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		snprintf(err, n, "cannot read %s: %s", path, strerror(errno));
		return NULL;
	}
	char *buf = NULL;
	size_t cap = 0;
	*len = 0;
	for (;;) {
		if (*len + 4096 > cap) {
			char *nb = realloc(buf, cap = cap * 2 + 8192);
			if (!nb)
				break;
			buf = nb;
		}
		size_t got = fread(buf + *len, 1, cap - *len, f);
		*len += got;
		if (got == 0)
			break;
	}
	bool bad = ferror(f) || !buf;
	fclose(f);
	if (bad) {
		snprintf(err, n, "cannot read %s", path);
		free(buf);
		return NULL;
	}
	return buf;
}

/* Prints the Lua error table at idx and returns the exit code for its kind. */
static int script_error(struct cli *cli, lua_State *L, int idx)
{
	lua_getfield(L, idx, "kind");
	const char *kind = lua_tostring(L, -1);
	lua_getfield(L, idx, "message");
	const char *msg = lua_tostring(L, -1);
	if (!msg) {
		lua_pop(L, 1);
		msg = lua_tostring(L, idx);
	}
	int status = !kind                           ? TIDE_EDB
	             : strcmp(kind, "conflict") == 0 ? TIDE_ECONFLICT
	             : strcmp(kind, "invalid") == 0  ? TIDE_EINVAL
	                                             : TIDE_EDB;
	tide_cli_fail(cli, status, msg ? msg : "failed");
	if (kind && strcmp(kind, "rejected") == 0)
		cli->exit_code = EXIT_REJECTED;
	return cli->exit_code;
}

/* A fresh sandboxed VM with the script's processor table on top; NULL (with err) when
 * the file cannot be read or the script does not load. */
static struct tide_vm *load_script(struct cli *cli, const char *path, char *err, size_t n)
{
	size_t len;
	char *src = read_file(path, &len, err, n);
	if (!src)
		return NULL;
	struct tide_vm_opts opts = {.cpu_ms = cli->cpu_ms};
	struct tide_vm *vm = NULL;
	int rc = tide_vm_open(&opts, &vm, err, n);
	if (rc == 0)
		rc = tide_vm_load(vm, path, src, len, err, n);
	free(src);
	if (rc) {
		tide_vm_close(vm);
		return NULL;
	}
	return vm;
}

int tide_cli_run_check(struct cli *cli)
{
	int code = 0;
	for (int i = 0; i < cli->nscripts; i++) {
		char err[1024];
		struct tide_vm *vm = load_script(cli, cli->scripts[i], err, sizeof(err));
		if (!vm) {
			fprintf(stderr, "tide check: %s\n", err);
			code = 1;
			continue;
		}
		lua_State *L = tide_vm_state(vm);
		lua_getfield(L, -1, "kind");
		printf("ok %s (%s)\n", cli->scripts[i], lua_tostring(L, -1));
		tide_vm_close(vm);
	}
	return code;
}

int tide_cli_run_script(struct cli *cli)
{
	char err[1024];
	struct tide_vm *vm = load_script(cli, cli->script, err, sizeof(err));
	if (!vm) {
		tide_cli_fail(cli, TIDE_EDB, err);
		return 1;
	}
	lua_State *L = tide_vm_state(vm);
	int decider = lua_gettop(L);
	lua_getfield(L, decider, "kind");
	if (strcmp(lua_tostring(L, -1), "decider") != 0) {
		tide_cli_fail(cli, TIDE_EINVAL,
		              "the script is not a decider (return tide.decider { ... })");
		tide_vm_close(vm);
		return EXIT_USAGE;
	}
	lua_pop(L, 1);

	lua_getfield(L, LUA_REGISTRYINDEX, "tide.runtime");
	lua_getfield(L, -1, "connect");
	lua_pushstring(L, cli->url);
	lua_createtable(L, 0, 1);
	if (cli->partition) {
		lua_pushstring(L, cli->partition);
		lua_setfield(L, -2, "partition");
	}
	lua_call(L, 2, 2);
	if (lua_isnil(L, -2)) {
		char msg[900];
		lua_getfield(L, -1, "message");
		snprintf(msg, sizeof(msg), "cannot connect to the database: %s",
		         lua_tostring(L, -1));
		tide_cli_fail(cli, TIDE_ECONN, msg);
		tide_vm_close(vm);
		return 1;
	}
	lua_pop(L, 1);
	int store = lua_gettop(L);
	lua_getfield(L, store, cli->command_json ? "handle" : "aggregate");
	lua_pushvalue(L, store);
	lua_pushvalue(L, decider);
	lua_pushstring(L, cli->stream);
	int nargs = 3;
	if (cli->command_json) {
		if (tide_lua_push_json_text(L, cli->command_json, strlen(cli->command_json)) != 0) {
			tide_vm_close(vm);
			return tide_cli_usage_error(cli, "COMMAND_JSON is not valid JSON");
		}
		lua_createtable(L, 0, 1);
		lua_pushnumber(L, (lua_Number)cli->retries);
		lua_setfield(L, -2, "retries");
		nargs = 5;
	}
	if (lua_pcall(L, nargs, 2, 0) != 0) {
		tide_cli_fail(cli, TIDE_EINVAL, lua_tostring(L, -1));
		tide_vm_close(vm);
		return cli->exit_code;
	}
	int code = 0;
	if (lua_isnil(L, -2)) {
		code = script_error(cli, L, lua_gettop(L));
	} else {
		if (!cli->command_json) { /* aggregate: state, version → { state, version } */
			lua_createtable(L, 0, 2);
			lua_insert(L, -3);
			lua_setfield(L, -3, "version");
			lua_setfield(L, -2, "state");
		} else {
			lua_pop(L, 1);
			lua_pushnil(L);
			lua_setfield(L, -2, "attempts");
		}
		char *json = tide_lua_to_json_text(L, -1, cli->command_json ? "" : "state", err,
		                                   sizeof(err));
		if (json) {
			puts(json);
			cJSON_free(json);
		} else {
			tide_cli_fail(cli, TIDE_EINVAL, err);
			code = 1;
		}
	}
	tide_vm_close(vm);
	if (fflush(stdout) != 0 && code == 0)
		return 1;
	return code;
}
