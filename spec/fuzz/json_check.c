/* json_check.c — libFuzzer target for tide_json_check_object (engine/json.c), the check that
 * event data, metadata and commands pass before they reach PostgreSQL or a script. What it
 * accepts must be one JSON object and nothing after it (PostgreSQL's jsonb refuses anything
 * after the value); it refuses more than cJSON does on purpose (what jsonb or a script
 * cannot hold: \u0000, lone surrogates, nesting over 128, numbers beyond a double), and a
 * refusal must be TIDE_EINVAL and say which input it was. */
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

/* The reasons to refuse an object cJSON takes (see engine/json.c and tide.h's limits). */
static int documented(const char *err)
{
	static const char *const reasons[] = {"\\u0000",
	                                      "surrogate",
	                                      "nested too deeply",
	                                      "out of range",
	                                      "UTF-8",
	                                      "control character",
	                                      "digits after the decimal point",
	                                      "too large",
	                                      "NUL byte",
	                                      "not valid JSON",
	                                      NULL};
	for (const char *const *r = reasons; *r; r++)
		if (strstr(err, *r))
			return 1;
	return 0;
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
	if (rc != 0 && object && !documented(err))
		die("refused a JSON object for no documented reason", text, err);
	if (rc != 0 && (rc != TIDE_EINVAL || strncmp(err, "data ", 5) != 0))
		die("a refusal that is not TIDE_EINVAL naming the input", text, err);
	free(text);
	return 0;
}
