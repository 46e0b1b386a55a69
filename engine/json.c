/* json.c — JSON validation and exact-integer output for the store and the CLI. */
#include "json.h"

#include <inttypes.h>
#include <stdio.h>

#include "tide.h"

int tide_json_check_object(const char *text, const char *what, char *err, size_t n)
{
	if (!text) {
		snprintf(err, n, "%s is missing", what);
		return TIDE_EINVAL;
	}
	cJSON *v = cJSON_Parse(text);
	if (!v) {
		snprintf(err, n, "%s is not valid JSON: %.60s", what, text);
		return TIDE_EINVAL;
	}
	int ok = cJSON_IsObject(v);
	cJSON_Delete(v);
	if (!ok) {
		snprintf(err, n, "%s must be a JSON object, got: %.60s", what, text);
		return TIDE_EINVAL;
	}
	return 0;
}

cJSON *tide_json_add_i64(cJSON *obj, const char *key, int64_t v)
{
	char buf[24];
	snprintf(buf, sizeof(buf), "%" PRId64, v);
	return cJSON_AddRawToObject(obj, key, buf);
}
