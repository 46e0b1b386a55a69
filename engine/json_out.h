/* json_out.h — the JSON shapes tide answers in, the same from the CLI and over HTTP:
 * events, documents and an append's outcome. json_out.c. */
#ifndef TIDE_JSON_OUT_H
#define TIDE_JSON_OUT_H

#include <cJSON.h>
#include <stdbool.h>

#include "tide.h"

/* One event as a JSON object, keys in this order: stream_id, stream_position,
 * global_position, type, data, metadata, message_id, created, schema_version (when known),
 * and with cursor its position in the global log ("XID:POS"); the JSON columns spliced in as
 * PostgreSQL gave them, without the spaces its jsonb output adds. */
cJSON *tide_json_message(const struct tide_message *m, bool cursor);

/* "schema_version": a whole number as a number, any other text as a string; NULL: none. */
void tide_json_add_schema_version(cJSON *o, const char *v);

/* An append's outcome: {"next_expected_version": N, "global_positions": [...]}. */
cJSON *tide_json_append_result(const struct tide_append_result *r);

/* A document: {"id", "doc" (compact), "last_stream_id", "last_stream_position",
 * "last_global_position" (null when not recorded), "updated_at"}. */
cJSON *tide_json_document(const struct tide_document *d);

#endif
