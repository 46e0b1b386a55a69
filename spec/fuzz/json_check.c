/* json_check.c — libFuzzer target for tide_json_check_object (engine/json.c), the check that
 * event data, metadata and commands pass before they reach PostgreSQL or a script. It must
 * accept exactly the texts that are one JSON object and nothing else (PostgreSQL's jsonb
 * refuses anything after the value), and a refusal must say which input it was. */
#include <cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "tide.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void die(const char *what, const char *text, const char *err)
{
	fprintf(stderr, "json_check: %s: \"", what);
	for (const unsigned char *c = (const unsigned char *)text; *c; c++)
		fprintf(stderr, *c >= 0x20 && *c < 0x7f && *c != '\\' ? "%c" : "\\x%02x", *c);
	fprintf(stderr, err[0] ? "\" (%s)\n" : "\"\n", err);
	abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	if (!text)
		abort();
	memcpy(text, data, size);
	text[size] = '\0';
	char err[256] = "";
	int rc = tide_json_check_object(text, "data", err, sizeof(err));
	/* The whole text, up to its NUL, must be the one value. */
	cJSON *v = cJSON_ParseWithOpts(text, NULL, 1);
	int object = v && cJSON_IsObject(v);
	cJSON_Delete(v);
	if (rc == 0 && !object)
		die("accepted text that is not one JSON object", text, err);
	if (rc != 0 && object)
		die("refused a JSON object", text, err);
	if (rc != 0 && (rc != TIDE_EINVAL || strncmp(err, "data ", 5) != 0))
		die("a refusal that is not TIDE_EINVAL naming the input", text, err);
	free(text);
	return 0;
}
