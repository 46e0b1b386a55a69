/* json.h — JSON checks and output helpers over cJSON shared by the store and the CLI. */
#ifndef TIDE_JSON_H
#define TIDE_JSON_H

#include <cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* 0 when text[0..len) is exactly one JSON object (whitespace around it, nothing else) that
 * every path of tide can carry: strict JSON syntax as PostgreSQL's jsonb reads it; at most
 * TIDE_MAX_JSON_DEPTH nested objects and arrays; strings and keys valid UTF-8, with no
 * NUL byte, no \u0000 (jsonb cannot store it) and no unpaired surrogate; numbers within a
 * double's range (neither infinity nor a non-zero that reads back as 0) and with at most
 * as many digits after the point as PostgreSQL's numeric keeps. Otherwise TIDE_EINVAL and
 * one line in err that starts with `what` and names the problem and its byte (from 1). */
int tide_json_check_object_n(const char *text, size_t len, const char *what, char *err, size_t n);

/* The same for a NUL-terminated text. */
int tide_json_check_object(const char *text, const char *what, char *err, size_t n);

/* n when text[0..n) is valid UTF-8 (no overlong forms, surrogates or code points above
 * U+10FFFF, as PostgreSQL wants), else the offset of the first byte that is not. */
size_t tide_utf8_check(const char *text, size_t n);

/* Up to max bytes of text for a message, in dst: whole UTF-8 characters, any other byte
 * (control characters, invalid UTF-8) as '?', "..." when cut, so a message stays one
 * printable line. */
void tide_snippet(char *dst, size_t dstlen, const char *text, size_t len, size_t max);

/* Removes the whitespace outside strings from the JSON text, in place; its new length.
 * Numbers and strings keep their bytes (no reparse: nothing is rounded). */
size_t tide_json_compact(char *text);

/* Adds JSON text (PostgreSQL's jsonb output, say) compacted, as tide prints JSON. */
cJSON *tide_json_add_compact(cJSON *obj, const char *key, const char *json);

/* Adds an exact 64-bit integer (cJSON's own numbers are doubles). */
cJSON *tide_json_add_i64(cJSON *obj, const char *key, int64_t v);

#endif
