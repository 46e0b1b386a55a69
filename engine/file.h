/* file.h — reading a whole file (scripts, the configuration), and the one hash tide uses
 * for texts (a script's content, a statement's SQL). */
#ifndef TIDE_FILE_H
#define TIDE_FILE_H

#include <stddef.h>
#include <stdint.h>

/* Scripts and configuration files are at most this big (a larger "file" is likely a
 * device or a mistake, and would be read forever). */
#define TIDE_MAX_FILE_BYTES (16u << 20)

/* The file's bytes (malloc'd, NUL-terminated, *len without the NUL); NULL with err saying
 * why ("cannot read PATH: ..."), also when it is larger than TIDE_MAX_FILE_BYTES. */
char *tide_file_read(const char *path, size_t *len, char *err, size_t n);

/* FNV-1a, 64 bits. */
static inline uint64_t tide_hash(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
	return h;
}

#endif
