/* file.h — reading a whole file (scripts, the configuration), which files of a directory
 * are scripts and which are their specs, and the one hash tide uses for texts (a script's
 * content, a statement's SQL). */
#ifndef TIDE_FILE_H
#define TIDE_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Scripts and configuration files are at most this big (a larger "file" is likely a
 * device or a mistake, and would be read forever). */
#define TIDE_MAX_FILE_BYTES (16u << 20)

/* The file's bytes (malloc'd, NUL-terminated, *len without the NUL); NULL with err saying
 * why ("cannot read PATH: ..."), also when it is larger than TIDE_MAX_FILE_BYTES. */
char *tide_file_read(const char *path, size_t *len, char *err, size_t n);

/* True for NAME_spec.lua (a bare name or a path): busted's specs, kept beside the scripts
 * they test. `tide run` and `tide check` leave them alone; `tide test` runs them. */
bool tide_file_is_spec(const char *path);

/* The *.lua files of dir (hidden ones left out) as "dir/name" paths, sorted by name, specs
 * included: *paths is malloc'd, free it with tide_file_list_free. 0, or -1 with err saying
 * why ("cannot read DIR: ..."). */
int tide_file_list_lua(const char *dir, char ***paths, size_t *n, char *err, size_t errn);
void tide_file_list_free(char **paths, size_t n);

/* FNV-1a, 64 bits. */
static inline uint64_t tide_hash(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
	return h;
}

#endif
