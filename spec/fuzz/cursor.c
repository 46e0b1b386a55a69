/* cursor.c — libFuzzer target for the global-log cursor's text form (tide_cursor_parse and
 * tide_cursor_format, engine/store.c): what parses formats to text that parses to the same
 * cursor, and that text formats to itself. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void die(const char *what, const char *input, const char *formatted)
{
	fprintf(stderr, "cursor: %s\n  input: \"", what);
	for (const unsigned char *c = (const unsigned char *)input; *c; c++)
		fprintf(stderr, *c >= 0x20 && *c < 0x7f && *c != '\\' ? "%c" : "\\x%02x", *c);
	fprintf(stderr, "\"\n  formatted: \"%s\"\n", formatted);
	abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	if (!text)
		abort();
	memcpy(text, data, size);
	text[size] = '\0';
	struct tide_cursor c, again;
	if (tide_cursor_parse(text, &c) == 0) {
		char buf[48], buf2[48];
		tide_cursor_format(&c, buf);
		if (tide_cursor_parse(buf, &again) != 0)
			die("the formatted cursor does not parse", text, buf);
		if (again.transaction_id != c.transaction_id ||
		    again.global_position != c.global_position)
			die("the formatted cursor parses to another cursor", text, buf);
		tide_cursor_format(&again, buf2);
		if (strcmp(buf, buf2) != 0)
			die("formatting is not stable", text, buf);
	}
	free(text);
	return 0;
}
