/* input.c — the rules of what tide accepts, shared by everything that takes input on its
 * way to the database (appends, reads, imports, the CLI): names, message ids, and how an
 * expected version is written. */
#include "input.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

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

void tide_expected_format(int64_t expected, char *buf, size_t n)
{
	switch (expected) {
	case TIDE_EXPECT_ANY: snprintf(buf, n, "any"); break;
	case TIDE_EXPECT_NO_STREAM: snprintf(buf, n, "no_stream"); break;
	case TIDE_EXPECT_STREAM_EXISTS: snprintf(buf, n, "stream_exists"); break;
	default: snprintf(buf, n, "%" PRId64, expected); break;
	}
}
