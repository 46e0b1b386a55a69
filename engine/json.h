/* json.h — JSON checks and output helpers over cJSON shared by the store and the CLI. */
#ifndef TIDE_JSON_H
#define TIDE_JSON_H

#include <cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* 0 when text is a JSON object; otherwise TIDE_EINVAL and a message naming `what`. */
int tide_json_check_object(const char *text, const char *what, char *err, size_t n);

/* Adds an exact 64-bit integer (cJSON's own numbers are doubles). */
cJSON *tide_json_add_i64(cJSON *obj, const char *key, int64_t v);

#endif
