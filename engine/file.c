/* file.c — reading a whole file into memory, for the loader, the CLI and the daemon's
 * configuration; listing a directory's scripts and telling specs from them. */
#include "file.h"

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *tide_file_read(const char *path, size_t *len, char *err, size_t n)
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
		if (*len > TIDE_MAX_FILE_BYTES) {
			free(buf);
			fclose(f);
			snprintf(err, n, "cannot read %s: larger than %u MiB", path,
			         TIDE_MAX_FILE_BYTES >> 20);
			return NULL;
		}
		if (*len + 4096 > cap) {
			char *nb = realloc(buf, cap = cap * 2 + 8192);
			if (!nb) {
				free(buf);
				fclose(f);
				snprintf(err, n, "out of memory reading %s", path);
				return NULL;
			}
			buf = nb;
		}
		size_t got = fread(buf + *len, 1, cap - *len - 1, f);
		*len += got;
		if (got == 0)
			break;
	}
	bool bad = ferror(f);
	fclose(f);
	if (bad) {
		snprintf(err, n, "cannot read %s: %s", path, strerror(errno));
		free(buf);
		return NULL;
	}
	buf[*len] = '\0';
	return buf;
}

bool tide_file_is_spec(const char *path)
{
	const char *slash = strrchr(path, '/');
	const char *name = slash ? slash + 1 : path;
	size_t len = strlen(name);
	return len > 9 && strcmp(name + len - 9, "_spec.lua") == 0;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

void tide_file_list_free(char **paths, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(paths[i]);
	free(paths);
}

int tide_file_list_lua(const char *dir, char ***paths, size_t *n, char *err, size_t errn)
{
	*paths = NULL;
	*n = 0;
	DIR *d = opendir(dir);
	if (!d) {
		snprintf(err, errn, "cannot read %s: %s", dir, strerror(errno));
		return -1;
	}
	char **list = NULL;
	size_t count = 0, cap = 0;
	size_t dlen = strlen(dir);
	bool slash = dlen > 0 && dir[dlen - 1] == '/';
	struct dirent *e;
	while ((e = readdir(d))) {
		size_t len = strlen(e->d_name);
		if (e->d_name[0] == '.' || len <= 4 || strcmp(e->d_name + len - 4, ".lua") != 0)
			continue;
		if (count == cap) {
			char **nl = realloc(list, (cap = cap * 2 + 16) * sizeof(*list));
			if (!nl)
				goto nomem;
			list = nl;
		}
		list[count] = malloc(dlen + len + 2);
		if (!list[count])
			goto nomem;
		snprintf(list[count], dlen + len + 2, "%s%s%s", dir, slash ? "" : "/", e->d_name);
		count++;
	}
	closedir(d);
	if (count)
		qsort(list, count, sizeof(*list), by_name);
	*paths = list;
	*n = count;
	return 0;
nomem:
	closedir(d);
	tide_file_list_free(list, count);
	snprintf(err, errn, "out of memory listing %s", dir);
	return -1;
}
