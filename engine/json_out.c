/* json_out.c — events, documents and append outcomes as JSON (json_out.h). */
#include "json_out.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "json.h"

void tide_json_add_schema_version(cJSON *o, const char *v)
{
	if (!v)
		return;
	/* A whole number (what tide and Emmett write) as a number; anything else as text. */
	size_t len = strspn(v, "0123456789");
	if (len > 0 && len <= 15 && !v[len] && (v[0] != '0' || len == 1))
		cJSON_AddItemToObject(o, "schema_version", cJSON_CreateRaw(v));
	else
		cJSON_AddStringToObject(o, "schema_version", v);
}

cJSON *tide_json_message(const struct tide_message *m, bool cursor)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "stream_id", m->stream_id);
	tide_json_add_i64(o, "stream_position", m->stream_position);
	tide_json_add_i64(o, "global_position", m->global_position);
	cJSON_AddStringToObject(o, "type", m->type);
	tide_json_add_compact(o, "data", m->data);
	tide_json_add_compact(o, "metadata", m->metadata);
	cJSON_AddStringToObject(o, "message_id", m->message_id);
	cJSON_AddStringToObject(o, "created", m->created);
	if (m->partition && strcmp(m->partition, TIDE_DEFAULT_PARTITION) != 0)
		cJSON_AddStringToObject(o, "partition", m->partition);
	tide_json_add_schema_version(o, m->schema_version);
	if (cursor) {
		char text[48];
		struct tide_cursor c = {m->transaction_id, m->global_position};
		tide_cursor_format(&c, text);
		cJSON_AddStringToObject(o, "cursor", text);
	}
	return o;
}

cJSON *tide_json_append_result(const struct tide_append_result *r)
{
	cJSON *o = cJSON_CreateObject();
	tide_json_add_i64(o, "next_expected_version", r->next_expected_version);
	cJSON *positions = cJSON_AddArrayToObject(o, "global_positions");
	for (size_t i = 0; i < r->count; i++) {
		char buf[24];
		snprintf(buf, sizeof(buf), "%" PRId64, r->global_positions[i]);
		cJSON_AddItemToArray(positions, cJSON_CreateRaw(buf));
	}
	return o;
}

cJSON *tide_json_document(const struct tide_document *d)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "id", d->id);
	tide_json_add_compact(o, "doc", d->doc);
	if (d->last_stream_id) {
		cJSON_AddStringToObject(o, "last_stream_id", d->last_stream_id);
		tide_json_add_i64(o, "last_stream_position", d->last_stream_position);
		tide_json_add_i64(o, "last_global_position", d->last_global_position);
	} else {
		cJSON_AddNullToObject(o, "last_stream_id");
		cJSON_AddNullToObject(o, "last_stream_position");
		cJSON_AddNullToObject(o, "last_global_position");
	}
	cJSON_AddStringToObject(o, "updated_at", d->updated_at);
	return o;
}
