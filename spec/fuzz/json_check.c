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
	if (rc == 0 && !object) {
		fprintf(stderr, "json_check: accepted text that is not one JSON object: \"%s\"\n",
		        text);
		abort();
	}
	if (rc != 0 && object) {
		fprintf(stderr, "json_check: refused a JSON object: \"%s\" (%s)\n", text, err);
		abort();
	}
	if (rc != 0 && (rc != TIDE_EINVAL || strncmp(err, "data ", 5) != 0)) {
		fprintf(stderr, "json_check: refusal %d without naming the input: %s\n", rc, err);
		abort();
	}
	free(text);
	return 0;
}
