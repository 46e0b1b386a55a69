/* input.h — what tide accepts on the way in (input.c). */
#ifndef TIDE_INPUT_H
#define TIDE_INPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

bool tide_uuid_valid(const char *s);

/* A random (version 4) UUID, lower-case, NUL-terminated: the message id of an event that
 * comes without one. The random bytes come from the kernel (getrandom), a few thousand at
 * a time. */
void tide_uuid_v4(char out[37]);

/* 0 when name[0..len) is a name tide stores (a stream, an event type, a partition):
 * 1..max bytes of valid UTF-8 without NUL bytes. Otherwise TIDE_EINVAL and one line in
 * err that names it by `what` ("stream name"). */
int tide_check_name(const char *what, const char *name, size_t len, size_t max, char *err,
                    size_t n);

/* "*" in a processor's partition: every partition. Not a partition of its own. */
#define TIDE_ALL_PARTITIONS "*"
static inline bool tide_all_partitions(const char *partition)
{
	return partition && partition[0] == '*' && partition[1] == '\0';
}

/* tide_check_name for a partition that is read or written: also refuses "*". */
int tide_check_partition(const char *name, size_t len, char *err, size_t n);

/* "any", "no_stream", "stream_exists" or the number. */
void tide_expected_format(int64_t expected, char *buf, size_t n);

#endif
