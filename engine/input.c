/* input.c — the rules of what tide accepts, shared by everything that takes input on its
 * way to the database (appends, reads, imports, the CLI): names, message ids (and new ones
 * for the events that come without), and how an expected version is written. */
#include "input.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "json.h"
#include "tide.h"

int tide_check_name(const char *what, const char *name, size_t len, size_t max, char *err, size_t n)
{
	if (!name || len == 0) {
		snprintf(err, n, "the %s is empty", what);
		return TIDE_EINVAL;
	}
	const char *nul = memchr(name, '\0', len);
	if (nul) {
		snprintf(err, n, "the %s contains a NUL byte (at byte %zu)", what,
		         (size_t)(nul - name) + 1);
		return TIDE_EINVAL;
	}
	if (len > max) {
		snprintf(err, n, "the %s is %zu bytes long; at most %zu are allowed", what, len,
		         max);
		return TIDE_EINVAL;
	}
	size_t bad = tide_utf8_check(name, len);
	if (bad < len) {
		snprintf(err, n, "the %s is not valid UTF-8 (at byte %zu)", what, bad + 1);
		return TIDE_EINVAL;
	}
	return 0;
}

int tide_check_partition(const char *name, size_t len, char *err, size_t n)
{
	if (tide_check_name("partition name", name, len, TIDE_MAX_PARTITION_BYTES, err, n))
		return TIDE_EINVAL;
	if (len == 1 && name[0] == '*') {
		snprintf(err, n,
		         "the partition name '*' means every partition: only a processor "
		         "reads it (partition = \"*\"); appends and reads name one "
		         "partition");
		return TIDE_EINVAL;
	}
	return 0;
}

bool tide_uuid_valid(const char *s)
{
	static const char shape[] = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
	for (size_t i = 0; i < sizeof(shape) - 1; i++) {
		char c = s[i];
		if (shape[i] == '-' ? c != '-' : !strchr("0123456789abcdefABCDEF", c) || !c)
			return false;
	}
	return s[sizeof(shape) - 1] == '\0';
}

/* Random bytes for new ids, a pool per thread (each loop's thread draws from its own). A
 * child process starts with an empty pool: a copy of its parent's would repeat the
 * parent's next ids. */
static _Thread_local unsigned char uuid_pool[4096];
static _Thread_local size_t uuid_left;

static void uuid_forget(void)
{
	uuid_left = 0;
}

static void uuid_at_fork(void)
{
	pthread_atfork(NULL, NULL, uuid_forget);
}

void tide_uuid_v4(char out[37])
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, uuid_at_fork);
	if (uuid_left < 16) {
		size_t got = 0;
		while (got < sizeof(uuid_pool)) {
			ssize_t n = getrandom(uuid_pool + got, sizeof(uuid_pool) - got, 0);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				abort(); /* no randomness from the kernel: nothing sensible to do */
			got += (size_t)n;
		}
		uuid_left = sizeof(uuid_pool);
	}
	unsigned char *b = uuid_pool + sizeof(uuid_pool) - uuid_left;
	uuid_left -= 16;
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
	static const char hex[] = "0123456789abcdef";
	char *o = out;
	for (int i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*o++ = '-';
		*o++ = hex[b[i] >> 4];
		*o++ = hex[b[i] & 15];
	}
	*o = '\0';
}

void tide_expected_format(int64_t expected, char *buf, size_t n)
{
	switch (expected) {
	case TIDE_EXPECT_ANY: snprintf(buf, n, "any"); break;
	case TIDE_EXPECT_NO_STREAM: snprintf(buf, n, "no_stream"); break;
	case TIDE_EXPECT_STREAM_EXISTS: snprintf(buf, n, "stream_exists"); break;
	default: snprintf(buf, n, "%" PRId64, expected); break;
	}
}
