/* cli_script.c — `tide handle`, `tide aggregate` and `tide check`: a decider or processor
 * script loaded in a sandboxed VM, driven through the Lua runtime (command.c);
 * `tide replay` (cli_replay.c) loads its script and reports its errors the same way. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli_common.h"
#include "command.h"
#include "file.h"
#include "json.h"
#include "lua_json.h"
#include "lua_vm.h"
#include "pg.h"
#include "upcast.h"

int tide_cli_connect_vm(struct lua_State *L, struct cli *cli, int *status, char *msg, size_t n)
{
	lua_getfield(L, LUA_REGISTRYINDEX, "tide.runtime");
	lua_getfield(L, -1, "connect");
	lua_remove(L, -2);
	lua_pushstring(L, cli->url);
	lua_createtable(L, 0, 2);
	if (cli->partition) {
		lua_pushstring(L, cli->partition);
		lua_setfield(L, -2, "partition");
	}
	if (cli->projections) {
		lua_pushstring(L, cli->projections);
		lua_setfield(L, -2, "projections");
	}
	lua_call(L, 2, 2);
	if (lua_isnil(L, -2)) {
		/* Connected, but the inline projections did not load: their own error. */
		lua_getfield(L, -1, "kind");
		const char *kind = lua_tostring(L, -1);
		bool loading = kind && strcmp(kind, "connection") != 0;
		lua_getfield(L, -2, "message");
		*status = loading ? tide_command_error_status(kind) : TIDE_ECONN;
		snprintf(msg, n, "%s%s",
		         loading ? "" : "cannot connect to the database: ", lua_tostring(L, -1));
		return 0;
	}
	lua_pop(L, 1);
	return lua_gettop(L);
}

int tide_cli_load_script(struct cli *cli, const char *path, struct tide_vm **out, int *ref,
                         char *err, size_t n)
{
	*out = NULL;
	size_t len;
	char *src = tide_file_read(path, &len, err, n);
	if (!src)
		return TIDE_EINVAL;
	struct tide_vm_opts opts = {.cpu_ms = cli->cpu_ms};
	struct tide_vm *vm = NULL;
	int rc = tide_vm_open(&opts, &vm, err, n);
	/* The upcasters beside the script: what it reads, it reads in their newest shape
	 * (`tide check` checks files one by one, upcasters as any other). */
	if (rc == 0 && strcmp(cli->cmd, "check") != 0)
		rc = tide_upcasters_load_beside(vm, path, &opts, err, n);
	if (rc == 0)
		rc = tide_vm_load(vm, path, src, len, ref, err, n);
	free(src);
	if (rc) {
		tide_vm_close(vm);
		return rc;
	}
	*out = vm;
	return 0;
}

/* The processor at ref, checked as `tide run` checks it (tide.model.settings, under the CPU
 * guard: a metatable on what the script returned may run its code); its kind. */
struct kind_read {
	int ref;
	char kind[32];
};

static int read_kind(lua_State *L)
{
	struct kind_read *k = lua_touserdata(L, 1);
	lua_getfield(L, LUA_REGISTRYINDEX, "tide.runtime");
	lua_getfield(L, -1, "processor_settings");
	lua_rawgeti(L, LUA_REGISTRYINDEX, k->ref);
	lua_call(L, 1, 1);
	lua_pushliteral(L, "kind");
	lua_rawget(L, -2);
	snprintf(k->kind, sizeof(k->kind), "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
	return 0;
}

/* Loads one script as `tide run` or `tide handle` would; false when it does not load. */
static bool check_script(struct cli *cli, const char *path)
{
	char err[2048];
	struct kind_read k = {0};
	struct tide_vm_error e;
	struct tide_vm *vm;
	if (tide_cli_load_script(cli, path, &vm, &k.ref, err, sizeof(err)) ==
	    TIDE_VM_NOT_PROCESSOR) {
		/* As `tide run` has it: a module beside the scripts, not a broken script. */
		fprintf(stderr, "tide check: skipping %s (%s; `tide run` leaves it alone)\n", path,
		        tide_vm_unprefixed(err, path));
		return true;
	}
	if (vm && tide_vm_protected(vm, read_kind, &k, &e) != 0) {
		snprintf(err, sizeof(err), "%.900s: %s", path, e.message);
		tide_vm_close(vm);
		vm = NULL;
	}
	if (!vm) {
		/* An error raised by `return tide.reactor { ... }` (a tail call) has no file:line
		 * of the script: name the file anyway. */
		bool named = strstr(err, path) != NULL;
		char line[sizeof(err)];
		tide_pg_redact(NULL, err, line, sizeof(line)); /* one line, as every error */
		fprintf(stderr, "tide check: %s%s%s\n", named ? "" : path, named ? "" : ": ", line);
		return false;
	}
	printf("ok %s (%s)\n", path, k.kind);
	tide_vm_close(vm);
	return true;
}

/* Specs are busted's, not scripts: say so once and leave them alone. */
static bool skip_spec(const char *path)
{
	if (!tide_file_is_spec(path))
		return false;
	fprintf(stderr, "tide check: skipping %s (a spec)\n", path);
	return true;
}

/* A directory: every *.lua file in it but its specs (as `tide run DIR` takes them). */
static int check_directory(struct cli *cli, const char *dir)
{
	char err[1024];
	char **paths;
	size_t n;
	if (tide_file_list_lua(dir, &paths, &n, err, sizeof(err)) != 0) {
		fprintf(stderr, "tide check: %s\n", err);
		return 1;
	}
	int code = 0;
	size_t scripts = 0;
	for (size_t i = 0; i < n; i++) {
		if (skip_spec(paths[i]))
			continue;
		scripts++;
		if (!check_script(cli, paths[i]))
			code = 1;
	}
	if (scripts == 0) {
		fprintf(stderr, "tide check: no scripts in %s (no *.lua file that is not a spec)\n",
		        dir);
		code = 1;
	}
	tide_file_list_free(paths, n);
	/* Its upcasters make one chain per type: a gap is an error of the directory. */
	const char *dirs[1] = {dir};
	struct tide_vm_opts opts = {.cpu_ms = cli->cpu_ms};
	struct tide_upcasters u;
	if (tide_upcasters_find(dirs, 1, &opts, &u) != 0) {
		fprintf(stderr, "tide check: out of memory\n");
		return 1;
	}
	if (u.error) {
		char line[2048];
		tide_pg_redact(NULL, u.error, line, sizeof(line));
		fprintf(stderr, "tide check: %s: %s\n", dir, line);
		code = 1;
	}
	tide_upcasters_free(&u);
	return code;
}

int tide_cli_run_check(struct cli *cli)
{
	int code = 0;
	for (int i = 0; i < cli->nscripts; i++) {
		const char *path = cli->scripts[i];
		struct stat st;
		if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
			if (check_directory(cli, path) != 0)
				code = 1;
		} else if (!skip_spec(path) && !check_script(cli, path)) {
			code = 1;
		}
	}
	return code;
}

/* The store of a handle or an aggregate: the runtime's for cli's database, partition and
 * inline projections; tide.command wants the C store inside it. */
static int push_store(lua_State *L, void *arg, int *status, char *msg, size_t n)
{
	int store = tide_cli_connect_vm(L, arg, status, msg, n);
	if (!store)
		return 0;
	lua_getfield(L, store, "raw");
	lua_remove(L, store);
	return 1;
}

/* The name of the script's file without its directory and ".lua". */
static void script_name(const char *path, char *out, size_t n)
{
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	size_t len = strlen(base);
	if (len > 4 && strcmp(base + len - 4, ".lua") == 0)
		len -= 4;
	snprintf(out, n, "%.*s", (int)len, base);
}

int tide_cli_run_script(struct cli *cli)
{
	char err[1024], name[256];
	struct tide_command cmd = {
	        .stream = cli->stream,
	        .command_json = cli->command_json,
	        .command_len = cli->command_json ? strlen(cli->command_json) : 0,
	        .retries = cli->retries,
	        .stats = cli->stats,
	        .push_store = push_store,
	        .arg = cli,
	        .name = name,
	};
	script_name(cli->script, name, sizeof(name));
	struct tide_vm *vm;
	if (tide_cli_load_script(cli, cli->script, &vm, &cmd.ref, err, sizeof(err)) != 0) {
		tide_cli_fail(cli, TIDE_EDB, err);
		return 1;
	}
	struct tide_command_result r;
	struct tide_vm_error e;
	if (tide_command_run(vm, &cmd, &r, &e) != 0) {
		/* Misuse raises (bad arguments); a memory error is the script's VM running out. */
		tide_cli_fail(cli, strcmp(e.kind, "memory") == 0 ? TIDE_EDB : TIDE_EINVAL,
		              e.message);
		tide_command_result_free(&r);
		tide_vm_close(vm);
		return cli->exit_code;
	}
	int code = 0;
	if (r.status) {
		tide_cli_fail(cli, r.status, r.message);
		if (r.traceback)
			tide_cli_print_traceback(r.traceback);
		if (r.rejected) {
			cli->exit_code = EXIT_REJECTED;
			if (r.out)
				tide_cli_print_line(r.out);
			r.out = NULL;
		}
		code = cli->exit_code;
	} else {
		tide_cli_print_line(r.out);
		r.out = NULL;
	}
	if (r.warning[0]) {
		char line[sizeof(r.warning)];
		tide_pg_redact(NULL, r.warning, line, sizeof(line));
		fprintf(stderr, "tide %s: warning: %s\n", cli->cmd, line);
	}
	tide_command_result_free(&r);
	tide_vm_close(vm);
	if (fflush(stdout) != 0 && code == 0)
		return 1;
	return code;
}
