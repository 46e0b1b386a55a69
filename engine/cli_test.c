/* cli_test.c — `tide test`: runs the busted specs (*_spec.lua) of directories under LuaJIT,
 * with tide's Lua runtime (lua/tide: tide.testing, tide.model, ...) and each spec's own
 * directory on the module path, so that `require "cart"` in cart_spec.lua finds cart.lua
 * beside it, from any working directory. It execs `luajit BUSTED ...`, which is what
 * `busted --lua=luajit` does itself, minus the shell that re-exec goes through (it would
 * split a path with a space or a ';' in it). The runtime is found relative to the binary once
 * installed (`cmake --install`), else in the source tree the binary was built from. */
#include "cli_test.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "cli_common.h"
#include "file.h"

#define MAX_PATH 4096

static const char usage[] =
        "usage: tide test [DIR|FILE...] [-- BUSTED_ARGS...]\n"
        "\n"
        "Runs the busted specs (*_spec.lua) of each DIR (default: the current directory), or\n"
        "the spec FILEs, under LuaJIT. The specs need no package.path lines: tide's Lua\n"
        "runtime is on the path (require \"tide.testing\", require \"tide\"; the global `tide`\n"
        "is set, as in the sandbox), and so is each spec's directory (require \"cart\" loads\n"
        "cart.lua beside cart_spec.lua). Specs run as plain Lua, not in the sandbox.\n"
        "Arguments after -- go to busted (e.g. -- --output=TAP, -- --filter=cart).\n"
        "Exits with busted's status: 0 when every spec passes.\n"
        "Needs luajit and busted (Debian: luajit, lua-busted) on the PATH; TIDE_BUSTED names\n"
        "busted's Lua script if it is elsewhere, TIDE_LUA_DIR the directory holding tide/.\n";

/* out = a/b; false when it does not fit. */
static bool join(char *out, size_t n, const char *a, const char *b)
{
	int len = snprintf(out, n, "%s/%s", a, b);
	return len >= 0 && (size_t)len < n;
}

static bool exists(const char *dir, const char *file)
{
	char path[MAX_PATH];
	struct stat st;
	return join(path, sizeof(path), dir, file) && stat(path, &st) == 0;
}

/* Where the runtime's Lua files (lua/, holding tide/) and tide.core (cmod, holding tide/core.so;
 * may stay empty) are: TIDE_LUA_DIR; else installed beside the binary; else the build tree. */
static bool find_runtime(char *lua, char *cmod, size_t n)
{
	cmod[0] = '\0';
	const char *env = getenv("TIDE_LUA_DIR");
	if (env && env[0]) {
		snprintf(lua, n, "%s", env);
		return exists(lua, "tide/testing.lua");
	}
	char exe[MAX_PATH];
	size_t len = sizeof(exe);
	if (uv_exepath(exe, &len) == 0) {
		char *slash = strrchr(exe, '/');
		if (slash)
			*slash = '\0';
		if (join(lua, n, exe, TIDE_LUA_FROM_BIN) && exists(lua, "tide/testing.lua")) {
			if (!join(cmod, n, exe, TIDE_CMOD_FROM_BIN))
				cmod[0] = '\0';
			return true;
		}
	}
	snprintf(lua, n, "%s", TIDE_SOURCE_LUA_DIR);
	snprintf(cmod, n, "%s", TIDE_BUILD_LUA_DIR);
	return exists(lua, "tide/testing.lua");
}

/* busted's Lua script: TIDE_BUSTED, else `busted` on the PATH, if its first line runs Lua
 * (a luarocks wrapper is a shell script: luajit cannot run that). */
static int find_busted(char *out, size_t n)
{
	const char *env = getenv("TIDE_BUSTED");
	if (env && env[0]) {
		snprintf(out, n, "%s", env);
		return 0;
	}
	const char *path = getenv("PATH");
	if (!path || !path[0])
		path = "/usr/local/bin:/usr/bin:/bin";
	out[0] = '\0';
	for (const char *p = path; *p;) {
		size_t len = strcspn(p, ":");
		char dir[MAX_PATH];
		snprintf(dir, sizeof(dir), "%.*s", (int)len, len ? p : ".");
		if (join(out, n, dir, "busted") && access(out, X_OK) == 0)
			break;
		out[0] = '\0';
		p += len;
		if (*p == ':')
			p++;
	}
	if (!out[0]) {
		fprintf(stderr, "tide test: busted is not on the PATH (Debian: apt-get install "
		                "lua-busted; or set TIDE_BUSTED to busted's Lua script)\n");
		return 1;
	}
	char line[256] = "";
	FILE *f = fopen(out, "r");
	if (f) {
		if (!fgets(line, sizeof(line), f))
			line[0] = '\0';
		fclose(f);
	}
	if (strncmp(line, "#!", 2) != 0 || !strstr(line, "lua")) {
		fprintf(stderr,
		        "tide test: %s is not a Lua script (a luarocks wrapper?); set TIDE_BUSTED "
		        "to busted's Lua script\n",
		        out);
		return 1;
	}
	return 0;
}

/* What goes to busted: the argument vector, grown as needed, and the module path. */
struct run {
	char **argv;
	int argc, cap;
	char lpath[16384];
	size_t lpath_len;
};

static bool push(struct run *r, const char *arg)
{
	if (r->argc + 1 >= r->cap) {
		char **nv = realloc(r->argv, (size_t)(r->cap = r->cap * 2 + 32) * sizeof(char *));
		if (!nv)
			return false;
		r->argv = nv;
	}
	r->argv[r->argc] = strdup(arg);
	if (!r->argv[r->argc])
		return false;
	r->argv[++r->argc] = NULL;
	return true;
}

/* Puts dir (made absolute: busted may be told to change directory) on the module path,
 * once. 0, 1 (failure, said) or 2 (a path Lua cannot search). */
static int add_dir(struct run *r, const char *dir)
{
	char abs[PATH_MAX];
	if (!realpath(dir, abs)) {
		fprintf(stderr, "tide test: cannot resolve %s: %s\n", dir, strerror(errno));
		return 1;
	}
	if (strpbrk(abs, ";?"))
		return tide_cli_usage("test",
		                      "%s: a directory whose path has a ';' or a '?' cannot be on "
		                      "Lua's module path",
		                      abs);
	char entry[2 * PATH_MAX + 32];
	int len = snprintf(entry, sizeof(entry), "%s/?.lua;%s/?/init.lua;", abs, abs);
	if (strstr(r->lpath, entry))
		return 0;
	if (r->lpath_len + (size_t)len >= sizeof(r->lpath)) {
		fprintf(stderr, "tide test: too many directories\n");
		return 1;
	}
	memcpy(r->lpath + r->lpath_len, entry, (size_t)len + 1);
	r->lpath_len += (size_t)len;
	return 0;
}

/* One DIR or FILE argument: its specs become busted's files, its directory goes on the path.
 * Returns 0 or the exit code; *found counts the specs. */
static int add_target(struct run *r, char ***files, int *nfiles, const char *arg, int *found)
{
	struct stat st;
	if (stat(arg, &st) != 0)
		return tide_cli_usage("test", "cannot find %s", arg);
	if (!S_ISDIR(st.st_mode)) {
		char dir[MAX_PATH];
		snprintf(dir, sizeof(dir), "%s", arg);
		char *slash = strrchr(dir, '/');
		if (slash)
			slash[slash == dir ? 1 : 0] = '\0';
		else
			snprintf(dir, sizeof(dir), ".");
		int rc = add_dir(r, dir);
		if (rc)
			return rc;
		if (!((*files)[*nfiles] = strdup(arg))) {
			fprintf(stderr, "tide test: out of memory\n");
			return 1;
		}
		(*nfiles)++;
		(*found)++;
		return 0;
	}
	int rc = add_dir(r, arg);
	if (rc)
		return rc;
	char err[1024];
	char **paths;
	size_t n;
	if (tide_file_list_lua(arg, &paths, &n, err, sizeof(err)) != 0) {
		fprintf(stderr, "tide test: %s\n", err);
		return 1;
	}
	char **grown = realloc(*files, (size_t)(*nfiles + (int)n + 1) * sizeof(char *));
	if (!grown) {
		tide_file_list_free(paths, n);
		fprintf(stderr, "tide test: out of memory\n");
		return 1;
	}
	*files = grown;
	for (size_t i = 0; i < n; i++) {
		if (tide_file_is_spec(paths[i])) {
			(*files)[(*nfiles)++] = paths[i];
			(*found)++;
		} else {
			free(paths[i]);
		}
	}
	free(paths);
	return 0;
}

int tide_cli_test_main(int argc, char **argv)
{
	int dashdash = argc;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) {
			dashdash = i;
			break;
		}
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			fputs(usage, stdout);
			return 0;
		}
		if (argv[i][0] == '-' && argv[i][1])
			return tide_cli_usage("test",
			                      "unknown option '%s' (busted's options go after --)",
			                      argv[i]);
	}

	char lua[MAX_PATH], cmod[MAX_PATH], busted[MAX_PATH];
	if (!find_runtime(lua, cmod, sizeof(lua))) {
		fprintf(stderr,
		        "tide test: cannot find tide's Lua runtime (%s/tide/testing.lua); set "
		        "TIDE_LUA_DIR to the directory holding tide/\n",
		        lua);
		return 1;
	}
	int rc = find_busted(busted, sizeof(busted));
	if (rc)
		return rc;

	struct run r = {0};
	char **files = calloc((size_t)argc + 1, sizeof(char *));
	int nfiles = 0, found = 0;
	if (!files) {
		fprintf(stderr, "tide test: out of memory\n");
		return 1;
	}
	for (int i = 1; i < dashdash && rc == 0; i++)
		rc = add_target(&r, &files, &nfiles, argv[i], &found);
	if (rc == 0 && dashdash == 1)
		rc = add_target(&r, &files, &nfiles, ".", &found);
	if (rc == 0 && found == 0) {
		fprintf(stderr, "tide test: no specs (*_spec.lua) in %s\n",
		        dashdash > 1 ? argv[1] : ".");
		rc = 1;
	}

	char lpath[sizeof(r.lpath) + 2 * MAX_PATH + 64], cpath[MAX_PATH + 64];
	snprintf(lpath, sizeof(lpath), "--lpath=%s%s/?.lua;%s/?/init.lua", r.lpath, lua, lua);
	snprintf(cpath, sizeof(cpath), "--cpath=%s/?.so", cmod);
	bool ok = rc == 0 && push(&r, "luajit") && push(&r, busted) && push(&r, "--ignore-lua") &&
	          push(&r, lpath) && (!cmod[0] || push(&r, cpath)) && push(&r, "-e") &&
	          push(&r, "tide = require 'tide'");
	for (int i = dashdash + 1; ok && i < argc; i++)
		ok = push(&r, argv[i]);
	for (int i = 0; ok && i < nfiles; i++)
		ok = push(&r, files[i]);
	for (int i = 0; i < nfiles; i++)
		free(files[i]);
	free(files);
	if (ok) {
		fflush(stdout);
		execvp("luajit", r.argv);
		fprintf(stderr,
		        "tide test: cannot run luajit: %s (Debian: apt-get install luajit)\n",
		        strerror(errno));
		rc = 1;
	} else if (rc == 0) {
		fprintf(stderr, "tide test: out of memory\n");
		rc = 1;
	}
	for (int i = 0; i < r.argc; i++)
		free(r.argv[i]);
	free(r.argv);
	return rc;
}
