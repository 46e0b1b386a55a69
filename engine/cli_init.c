/* cli_init.c — `tide init DIR`: writes a runnable skeleton (a decider, a document and an SQL
 * projection, a reactor, their specs, a configuration for `tide run` and a README) into DIR.
 * The files are lua/tide/skeleton/, embedded at build time (cmake/embed_files.cmake): kept as
 * plain files, they are Lua an editor, `tide check` and `tide test` read in the source tree,
 * not C string literals. Nothing is overwritten without --force: every file is checked
 * before the first one is written. */
#include "cli_init.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli_common.h"

#define MAX_PATH 4096

extern const struct {
	const char *name;
	const char *content;
} tide_skeleton_files[];
extern const size_t tide_skeleton_files_count;

static const char usage[] =
        "usage: tide init DIR [--force]\n"
        "\n"
        "Writes a runnable skeleton into DIR (created if missing): a decider (account.lua), a\n"
        "document projection (balances.lua), an SQL projection (ledger.lua), a reactor\n"
        "(welcome.lua), their specs (*_spec.lua), the settings of `tide run` (tide.conf) and a\n"
        "README.txt, then prints the next commands: `tide test DIR`, `tide run --config\n"
        "DIR/tide.conf DIR`, `tide handle DIR/account.lua ...`.\n"
        "Refuses (exit 2, writing nothing) when any of these files exists already.\n"
        "  --force   overwrite them\n";

/* mkdir -p; 0, or -1 with errno set. */
static int make_dirs(const char *dir)
{
	char path[MAX_PATH];
	if (snprintf(path, sizeof(path), "%s", dir) >= (int)sizeof(path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0777) != 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(path, 0777) != 0 && errno != EEXIST)
		return -1;
	struct stat st;
	if (stat(path, &st) != 0)
		return -1;
	if (!S_ISDIR(st.st_mode)) {
		errno = ENOTDIR;
		return -1;
	}
	return 0;
}

static bool path_of(char *out, size_t n, const char *dir, const char *name)
{
	size_t len = strlen(dir);
	bool slash = len > 0 && dir[len - 1] == '/';
	int w = snprintf(out, n, "%s%s%s", dir, slash ? "" : "/", name);
	return w >= 0 && (size_t)w < n;
}

/* Writes content, with {{app}} replaced by app as the inside of a Lua string. */
static int write_file(const char *path, const char *content, const char *app)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -1;
	bool ok = true;
	const char *at;
	while (ok && (at = strstr(content, "{{app}}"))) {
		ok = fwrite(content, 1, (size_t)(at - content), f) == (size_t)(at - content);
		for (const char *c = app; ok && *c; c++)
			ok = (*c == '"' || *c == '\\' ? fputc('\\', f) != EOF : true) &&
			     fputc(*c, f) != EOF;
		content = at + strlen("{{app}}");
	}
	size_t len = strlen(content);
	ok = ok && fwrite(content, 1, len, f) == len;
	if (fclose(f) != 0)
		ok = false;
	return ok ? 0 : -1;
}

int tide_cli_init_main(int argc, char **argv)
{
	const char *dir = NULL;
	bool force = false;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			fputs(usage, stdout);
			return 0;
		}
		if (strcmp(argv[i], "--force") == 0)
			force = true;
		else if (argv[i][0] == '-' && argv[i][1])
			return tide_cli_usage("init", "unknown option '%s'", argv[i]);
		else if (dir)
			return tide_cli_usage("init", "unexpected argument '%s'", argv[i]);
		else
			dir = argv[i];
	}
	if (!dir || !dir[0])
		return tide_cli_usage("init", "%s", "missing argument: DIR");

	struct stat st;
	if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode))
		return tide_cli_usage("init", "%s exists and is not a directory", dir);
	char path[MAX_PATH];
	int existing = 0;
	for (size_t i = 0; i < tide_skeleton_files_count; i++) {
		if (!path_of(path, sizeof(path), dir, tide_skeleton_files[i].name))
			return tide_cli_usage("init", "%s: the path is too long", dir);
		if (!force && lstat(path, &st) == 0) {
			fprintf(stderr, "tide init: %s exists already\n", path);
			existing++;
		}
	}
	if (existing)
		return tide_cli_usage("init", "%s",
		                      "nothing written: pass --force to overwrite those files");

	if (make_dirs(dir) != 0) {
		fprintf(stderr, "tide init: cannot create %s: %s\n", dir, strerror(errno));
		return 1;
	}
	/* The app is named after the directory, as `tide run` would name it, once and for all. */
	char real[PATH_MAX];
	if (!realpath(dir, real)) {
		fprintf(stderr, "tide init: cannot resolve %s: %s\n", dir, strerror(errno));
		return 1;
	}
	const char *slash = strrchr(real, '/');
	const char *app = slash && slash[1] ? slash + 1 : "app"; /* "/": no name of its own */
	for (size_t i = 0; i < tide_skeleton_files_count; i++) {
		path_of(path, sizeof(path), dir, tide_skeleton_files[i].name);
		if (write_file(path, tide_skeleton_files[i].content, app) != 0) {
			fprintf(stderr, "tide init: cannot write %s: %s\n", path, strerror(errno));
			return 1;
		}
		printf("wrote %s\n", path);
	}
	/* The next commands, with DIR as given (quoted when the shell would split it). */
	bool plain = strspn(dir, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	                         "/._-+,:@%") == strlen(dir);
	const char *q = plain ? "" : "'";
	size_t len = strlen(dir);
	const char *sep = len > 0 && dir[len - 1] == '/' ? "" : "/";
	printf("\nnext (tide run needs TIDE_DATABASE_URL; see %s%sREADME.txt):\n", dir, sep);
	printf("  tide test %s%s%s\n", q, dir, q);
	printf("  tide run --config %s%s%stide.conf%s %s%s%s\n", q, dir, sep, q, q, dir, q);
	printf("  tide handle %s%s%saccount.lua%s account-1 "
	       "'{\"type\":\"Open\",\"data\":{\"owner\":\"ada\"}}'\n",
	       q, dir, sep, q);
	if (fflush(stdout) != 0)
		return 1;
	return 0;
}
