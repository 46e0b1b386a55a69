/* copy.h — rows of emt_messages in PostgreSQL's binary COPY format, and fresh message ids:
 * what a COPY into the log sends (tide import; large appends may share it). The binary
 * format needs no escaping and carries jsonb and the bigint columns without text parsing. */
#ifndef TIDE_COPY_H
#define TIDE_COPY_H

#include <stddef.h>
#include <stdint.h>

/* The statement the rows below are for: global_position and created take their defaults
 * (the sequence, the transaction's now()), as an append's rows do; message_kind 'E' and
 * is_archived false too. */
#define TIDE_COPY_MESSAGES_SQL                                                                     \
	"COPY emt_messages (stream_position, transaction_id, stream_id, partition, message_type,"  \
	" message_data, message_metadata, message_id, message_schema_version)"                     \
	" FROM STDIN (FORMAT binary)"

/* The binary format's header (signature, flags, extension length) and trailer. */
#define TIDE_COPY_HEADER_BYTES  19
#define TIDE_COPY_TRAILER_BYTES 2
extern const char tide_copy_header[TIDE_COPY_HEADER_BYTES];
extern const char tide_copy_trailer[TIDE_COPY_TRAILER_BYTES];

/* One message; the texts are not NUL-terminated. metadata NULL stands for {}. The message
 * id is 36 characters (a UUID). */
struct tide_copy_row {
	const char *stream_id, *partition, *type, *data, *metadata, *message_id;
	const char *schema_version; /* NULL: "1" */
	size_t stream_id_len, partition_len, type_len, data_len, metadata_len;
};

/* The bytes tide_copy_row_write writes for r. */
size_t tide_copy_row_size(const struct tide_copy_row *r);

/* Writes r at dst with stream position and transaction id 0; returns the offset in dst
 * where tide_copy_set fills them in, once the transaction has begun and the stream's
 * position is known. */
size_t tide_copy_row_write(char *dst, const struct tide_copy_row *r);

void tide_copy_set(char *at, int64_t stream_position, uint64_t transaction_id);

#endif
