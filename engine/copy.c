/* copy.c — emt_messages rows in PostgreSQL's binary COPY format (see copy.h). */
#include "copy.h"

#include <stdlib.h>
#include <string.h>

const char tide_copy_header[TIDE_COPY_HEADER_BYTES] = "PGCOPY\n\377\r\n\0"
                                                      "\0\0\0\0"  /* flags */
                                                      "\0\0\0\0"; /* header extension */
const char tide_copy_trailer[TIDE_COPY_TRAILER_BYTES] = "\377\377";

#define NFIELDS 9

static char *put_u16(char *p, uint16_t v)
{
	p[0] = (char)(v >> 8);
	p[1] = (char)v;
	return p + 2;
}

static char *put_u32(char *p, uint32_t v)
{
	for (int i = 3; i >= 0; i--)
		*p++ = (char)(v >> (8 * i));
	return p;
}

static char *put_u64(char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--)
		*p++ = (char)(v >> (8 * i));
	return p;
}

/* A field: its length, then its bytes (after a prefix byte when one is given). */
static char *put_field(char *p, int prefix, const char *s, size_t n)
{
	p = put_u32(p, (uint32_t)(n + (prefix >= 0)));
	if (prefix >= 0)
		*p++ = (char)prefix;
	memcpy(p, s, n);
	return p + n;
}

size_t tide_copy_row_size(const struct tide_copy_row *r)
{
	size_t meta = r->metadata ? r->metadata_len : 2;
	return 2 + NFIELDS * 4 + 8 + r->stream_id_len + r->partition_len + r->type_len +
	       (1 + r->data_len) + (1 + meta) + 36 +
	       (r->schema_version ? strlen(r->schema_version) : 1) + 8;
}

size_t tide_copy_row_write(char *dst, const struct tide_copy_row *r)
{
	char *p = put_u16(dst, NFIELDS);
	size_t at = (size_t)(p - dst);
	p = put_u32(p, 8);
	p = put_u64(p, 0); /* stream_position */
	p = put_u32(p, 8);
	p = put_u64(p, 0); /* transaction_id, xid8 */
	p = put_field(p, -1, r->stream_id, r->stream_id_len);
	p = put_field(p, -1, r->partition, r->partition_len);
	p = put_field(p, -1, r->type, r->type_len);
	/* jsonb's binary form is a version byte (1) and the JSON text. */
	p = put_field(p, 1, r->data, r->data_len);
	p = r->metadata ? put_field(p, 1, r->metadata, r->metadata_len) : put_field(p, 1, "{}", 2);
	p = put_field(p, -1, r->message_id, 36);
	if (r->schema_version)
		put_field(p, -1, r->schema_version, strlen(r->schema_version));
	else
		put_field(p, -1, "1", 1); /* message_schema_version */
	return at;
}

void tide_copy_set(char *at, int64_t stream_position, uint64_t transaction_id)
{
	put_u64(at + 4, (uint64_t)stream_position);
	put_u64(at + 16, transaction_id);
}
