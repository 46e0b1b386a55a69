/* import_line.c — libFuzzer target for the line parser of `tide import` (engine/import.c),
 * which reads untrusted files. A line it accepts must be one JSON object (cJSON agrees)
 * whose stream_id and type decode to the names it returned, whose data and metadata are
 * the values there and pass the check appends use; a refusal must be TIDE_EINVAL with a
 * message of one line. */
#include <cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "import.h"
#include "json.h"
#include "tide.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void die(const char *what, const uint8_t *line, size_t size, const char *err)
{
	fprintf(stderr, "import_line: %s: \"", what);
	for (size_t i = 0; i < size; i++)
		fprintf(stderr,
		        line[i] >= 0x20 && line[i] < 0x7f && line[i] != '\\' ? "%c" : "\\x%02x",
		        line[i]);
	fprintf(stderr, "\" (%s)\n", err);
	abort();
}

/* The text of a JSON value as cJSON prints it, to compare values found two ways. */
static char *canonical(const char *text, size_t len)
{
	cJSON *v = cJSON_ParseWithLength(text, len);
	char *s = v ? cJSON_PrintUnformatted(v) : NULL;
	cJSON_Delete(v);
	return s;
}

static int same_value(cJSON *item, const char *text, size_t len)
{
	char *a = cJSON_PrintUnformatted(item), *b = canonical(text, len);
	int same = a && b && strcmp(a, b) == 0;
	free(a);
	free(b);
	return same;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct tide_import_event ev;
	char err[700] = "";
	int rc = tide_import_parse_line((const char *)data, size, &ev, err, sizeof(err));
	if (rc != 0) {
		if (rc != TIDE_EINVAL || !err[0] || strchr(err, '\n'))
			die("a refusal that is not TIDE_EINVAL with one line", data, size, err);
		return 0;
	}
	char *text = malloc(size + 1);
	if (!text)
		abort();
	memcpy(text, data, size);
	text[size] = '\0';
	cJSON *o = memchr(data, 0, size) ? NULL : cJSON_ParseWithOpts(text, NULL, 1);
	if (!o || !cJSON_IsObject(o))
		die("accepted a line that is not one JSON object", data, size, "");
	cJSON *sid = cJSON_GetObjectItemCaseSensitive(o, "stream_id");
	cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
	cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "data");
	cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "metadata");
	if (!cJSON_IsString(sid) || strcmp(sid->valuestring, ev.stream_id) != 0 ||
	    strlen(ev.stream_id) != ev.stream_id_len)
		die("the stream id is not the line's", data, size, ev.stream_id);
	if (!cJSON_IsString(type) || strcmp(type->valuestring, ev.type) != 0)
		die("the type is not the line's", data, size, ev.type);
	if (!cJSON_IsObject(d) || !same_value(d, ev.data, ev.data_len))
		die("the data is not the line's", data, size, "");
	if (ev.metadata ? !cJSON_IsObject(m) || !same_value(m, ev.metadata, ev.metadata_len)
	                : m && !cJSON_IsNull(m))
		die("the metadata is not the line's", data, size, "");
	if (tide_json_check_object_n(ev.data, ev.data_len, "data", err, sizeof(err)) ||
	    (ev.metadata &&
	     tide_json_check_object_n(ev.metadata, ev.metadata_len, "metadata", err, sizeof(err))))
		die("accepted data or metadata that the check refuses", data, size, err);
	cJSON_Delete(o);
	free(text);
	return 0;
}
