/* import.c — where imports happen (see import.h): the input is read in blocks off the loop
 * (uv_fs_read: a file, a pipe, a terminal alike), cut into lines, each line checked and
 * turned into a binary COPY row (copy.c) of the chunk being filled. A chunk (at most
 * CHUNK_ROWS events or CHUNK_BYTES of rows) goes to the server on one simple-mode
 * connection, inside the import's one transaction:
 *   1. the chunk's streams this import has not seen yet are locked and advanced by one
 *      statement (sql_reserve: new ones created), which returns each one's position
 *      before the chunk; streams seen before take theirs from the client's count;
 *   2. the rows, their stream positions now filled in, go in by COPY FROM STDIN.
 * Before COMMIT the streams whose rows are behind the client's count get their versions
 * written (sql_write_back): a stream's row is written at its first chunk and at the end,
 * whatever the number of chunks. The client keeps at most CACHE_STREAMS counts (their rows
 * stay locked by the transaction, so the counts stay true); when that is full it writes
 * them back and forgets them, and a stream seen again is locked again by sql_reserve. A
 * stream row this transaction wrote has our xid as its xmin, which tells a stream that
 * existed before the import (with no_stream: a conflict) from one it created, and counts
 * the import's streams at the end when the client forgot some.
 * While the server takes one chunk the next is read and checked; with both buffers full,
 * reading waits. Memory is two chunks, the counts, one read block and the longest line,
 * whatever the input's size or number of streams.
 * Nothing is committed before the whole input has been read and checked: a bad line, a
 * conflict or an error rolls everything back (what was sent leaves dead rows for VACUUM).
 * The transaction holds the row locks of every stream it touched, and holds consumers back
 * (the gap-safe read waits for it), until it commits. */
#include "import.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "append.h"
#include "copy.h"
#include "file.h"
#include "input.h"
#include "json.h"
#include "pg.h"
#include "store.h"

/* Measured on 100,000 events of ~170 bytes (README, "Importing events"): chunks of 2,048 to
 * 65,536 events import alike within this machine's noise, 16,384 with the best median; a
 * chunk's round trips then cost well under 1 %, and two chunks stay far below 64 MiB. */
#define CHUNK_ROWS  16384
#define CHUNK_BYTES (8u << 20)
#define READ_BYTES  (1u << 20)
#define PIECE_BYTES (256u << 10) /* COPY data handed to libpq at a time */
/* A line holds one event: data and metadata within the event limit, two names (escaped,
 * up to 6 bytes a character) and an id. Longer is refused before it is read whole. */
#define MAX_LINE_BYTES (TIDE_MAX_EVENT_BYTES + 16 * TIDE_MAX_NAME_BYTES + 4096)
/* The streams whose next position the client keeps (their rows locked, and written back
 * before COMMIT or when this is full): a stream's row is written once at its first chunk
 * and once at the end, not once per chunk. Powers of two. */
#define CACHE_STREAMS  65536
#define CACHE_ID_BYTES (4u << 20)

/* Locks and advances the stream rows of a chunk's streams that the client does not know
 * (yet, or any more): one statement, whatever their number. $1 partition, $2 their ids, $3
 * their event counts in the chunk, $4 true unless every stream must be new. Returns one
 * row per stream in $2's order: its position before the chunk, or NULL when $4 is false
 * and it existed before the import (a row whose xmin is not this transaction's). Rows are
 * locked in stream id order, so two imports over the same streams do not deadlock. */
static const char sql_reserve[] =
        "WITH input AS ("
        " SELECT i.stream_id, i.n, i.k"
        "  FROM unnest($2::text[], $3::bigint[]) WITH ORDINALITY AS i(stream_id, n, k)),"
        " reserved AS ("
        " INSERT INTO emt_streams AS s (stream_id, stream_position, partition, stream_type,"
        "  stream_metadata, is_archived)"
        " SELECT i.stream_id, i.n, $1, split_part(i.stream_id, '-', 1), '{}', false"
        "  FROM input i ORDER BY i.stream_id"
        " ON CONFLICT (stream_id, partition, is_archived) DO UPDATE"
        "  SET stream_position = s.stream_position + excluded.stream_position"
        "  WHERE $4::boolean OR s.xmin = pg_current_xact_id()::xid"
        " RETURNING s.stream_id, s.stream_position)"
        " SELECT r.stream_position - i.n FROM input i LEFT JOIN reserved r USING (stream_id)"
        " ORDER BY i.k";

/* The versions the client counted: $1 partition, $2 stream ids, $3 their versions. The rows
 * exist and are this transaction's (locked, and written by sql_reserve). An upsert rather
 * than UPDATE ... FROM: its arbiter index finds each row whatever the planner believes of
 * the table, which has no statistics right after a load; UPDATE ... FROM then hashes the
 * whole table (1,000 rows of a 100,000-stream table: 118 ms against 35-48 ms). */
static const char sql_write_back[] =
        "INSERT INTO emt_streams AS s (stream_id, stream_position, partition, stream_type,"
        "  stream_metadata, is_archived)"
        " SELECT v.stream_id, v.p, $1, split_part(v.stream_id, '-', 1), '{}', false"
        "  FROM unnest($2::text[], $3::bigint[]) AS v(stream_id, p) ORDER BY v.stream_id"
        " ON CONFLICT (stream_id, partition, is_archived) DO UPDATE"
        "  SET stream_position = excluded.stream_position";

/* The streams of the import, once the client has forgotten some: the rows this transaction
 * wrote. One pass over the partition's streams, at the end of an import of many streams. */
static const char sql_count_streams[] =
        "SELECT count(*) FROM emt_streams"
        " WHERE partition = $1 AND NOT is_archived AND xmin = pg_current_xact_id()::xid";

/* Wakes idle consumers once the import is committed (TIDE_WAKE_SQL, append.h). */
static const char sql_wake[] = TIDE_WAKE_SQL;

enum chunk_state { CHUNK_FILLING, CHUNK_READY, CHUNK_SENDING };

/* A stream of a chunk (count: its events there; next: its position before the chunk, then
 * as rows are numbered) or one the client knows (next: its position after what was sent;
 * dirty: its emt_streams row is behind that). */
struct stream {
	size_t id_at, id_len; /* in streams.ids */
	uint64_t hash;
	int64_t count, next;
	bool miss; /* a chunk's stream the client did not know */
	bool dirty;
};

/* Streams by id: open addressing over at most max entries. */
struct streams {
	struct stream *e;
	size_t n, max;
	uint32_t *slots; /* entry index + 1, 0: free */
	size_t nslots;
	char *ids;
	size_t ids_len, ids_cap;
	size_t dirty;
};

struct chunk_row {
	size_t at; /* where tide_copy_set fills in its position and transaction, in chunk.buf */
	uint32_t stream;
};

struct chunk {
	enum chunk_state state;
	char *buf; /* binary COPY rows */
	size_t len, cap;
	struct chunk_row *rows;
	size_t nrows;
	struct streams streams;
	int phase; /* of its COPY data: 0 header, 1 rows, 2 trailer, 3 done */
	size_t sent;
};

struct tide_import {
	uv_loop_t *loop;
	struct tide_pg *pg;
	tide_import_cb cb;
	void *arg;
	char partition[TIDE_MAX_PARTITION_BYTES + 1];
	bool no_stream;
	uv_file fd;
	uv_fs_t read_req;
	bool reading, eof, paused, input_done, began, finished, closed;
	char *block;
	size_t block_len, block_pos;
	char *line; /* a line cut by the end of a block */
	size_t line_len, line_cap;
	struct chunk chunks[2];
	int filling;          /* the chunk lines go to */
	struct streams known; /* the next position of streams this import locked */
	bool forgot;          /* known was full once: it no longer has every stream */
	uint64_t xid;
	uint64_t start_ns;
	struct tide_import_stats stats;
	struct tide_import_event ev;
	char *lit_ids, *lit_counts; /* the array parameters of sql_reserve */
	size_t lit_ids_cap, lit_counts_cap;
	uv_timer_t done_timer; /* the outcome reaches cb from the loop, never nested */
	int open_handles;
	int status;
	char err[800];
};

/* --- one line ------------------------------------------------------------------------ */

struct line_scan {
	const unsigned char *s;
	size_t len, i;
	char *err;
	size_t n;
};

static int line_fail(struct line_scan *l, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

static int line_fail(struct line_scan *l, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(l->err, l->n, fmt, ap);
	va_end(ap);
	return TIDE_EINVAL;
}

static void line_ws(struct line_scan *l)
{
	while (l->i < l->len && (l->s[l->i] == ' ' || l->s[l->i] == '\t' || l->s[l->i] == '\n' ||
	                         l->s[l->i] == '\r'))
		l->i++;
}

static int line_unexpected(struct line_scan *l, const char *wanted)
{
	if (l->i >= l->len)
		return line_fail(l, "not valid JSON: the line ends where %s should be", wanted);
	unsigned char c = l->s[l->i];
	if (c >= 0x21 && c < 0x7f)
		return line_fail(l, "not valid JSON: '%c' at byte %zu where %s should be", c,
		                 l->i + 1, wanted);
	return line_fail(l, "not valid JSON: byte 0x%02x at byte %zu where %s should be", c,
	                 l->i + 1, wanted);
}

static int hex_digit(unsigned char c)
{
	return c >= '0' && c <= '9'   ? c - '0'
	       : c >= 'a' && c <= 'f' ? c - 'a' + 10
	       : c >= 'A' && c <= 'F' ? c - 'A' + 10
	                              : -1;
}

static int hex4_at(struct line_scan *l, size_t at)
{
	if (at + 4 > l->len)
		return -1;
	int v = 0;
	for (size_t k = 0; k < 4; k++) {
		int d = hex_digit(l->s[at + k]);
		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	return v;
}

/* Decodes the JSON string at the opening quote into dst (at most cap bytes kept, then a
 * NUL); *out_len is its whole decoded length, which may exceed cap. Raw bytes are copied
 * as they are: the name check after this validates them as UTF-8. */
static int line_string(struct line_scan *l, char *dst, size_t cap, size_t *out_len)
{
	size_t start = l->i, o = 0;
	l->i++;
	for (;;) {
		if (l->i >= l->len)
			return line_fail(l, "not valid JSON: the string at byte %zu is not closed",
			                 start + 1);
		unsigned char c = l->s[l->i];
		if (c == '"') {
			l->i++;
			break;
		}
		unsigned char tmp[4];
		size_t nb = 1;
		tmp[0] = c;
		if (c < 0x20)
			return line_fail(l,
			                 "not valid JSON: control character 0x%02x inside a string "
			                 "at byte %zu (write it as \\u%04x)",
			                 c, l->i + 1, c);
		if (c != '\\') {
			l->i++;
		} else {
			unsigned char e = l->i + 1 < l->len ? l->s[l->i + 1] : 0;
			const char *plain = strchr("\"\\/bfnrt", e);
			if (e && plain) {
				static const char to[] = "\"\\/\b\f\n\r\t";
				tmp[0] = (unsigned char)to[plain - "\"\\/bfnrt"];
				l->i += 2;
			} else if (e == 'u') {
				int cp = hex4_at(l, l->i + 2);
				if (cp < 0)
					return line_fail(
					        l, "not valid JSON: bad \\u escape at byte %zu",
					        l->i + 1);
				size_t esc = 6;
				if (cp >= 0xd800 && cp <= 0xdbff) {
					int lo = l->i + 7 < l->len && l->s[l->i + 6] == '\\' &&
					                         l->s[l->i + 7] == 'u'
					                 ? hex4_at(l, l->i + 8)
					                 : -1;
					if (lo < 0xdc00 || lo > 0xdfff)
						return line_fail(
						        l,
						        "contains an unpaired surrogate \\u%04x "
						        "at byte %zu (not a character)",
						        (unsigned)cp, l->i + 1);
					cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
					esc = 12;
				} else if (cp >= 0xdc00 && cp <= 0xdfff) {
					return line_fail(
					        l,
					        "contains an unpaired surrogate \\u%04x at "
					        "byte %zu (not a character)",
					        (unsigned)cp, l->i + 1);
				}
				if (cp < 0x80) {
					tmp[0] = (unsigned char)cp;
				} else if (cp < 0x800) {
					tmp[0] = (unsigned char)(0xc0 | (cp >> 6));
					tmp[1] = (unsigned char)(0x80 | (cp & 0x3f));
					nb = 2;
				} else if (cp < 0x10000) {
					tmp[0] = (unsigned char)(0xe0 | (cp >> 12));
					tmp[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
					tmp[2] = (unsigned char)(0x80 | (cp & 0x3f));
					nb = 3;
				} else {
					tmp[0] = (unsigned char)(0xf0 | (cp >> 18));
					tmp[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
					tmp[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
					tmp[3] = (unsigned char)(0x80 | (cp & 0x3f));
					nb = 4;
				}
				l->i += esc;
			} else {
				return line_fail(l, "not valid JSON: unknown escape at byte %zu",
				                 l->i + 1);
			}
		}
		for (size_t k = 0; k < nb; k++, o++)
			if (o < cap)
				dst[o] = (char)tmp[k];
	}
	dst[o < cap ? o : cap] = '\0';
	*out_len = o;
	return 0;
}

/* Where the JSON value at l->i ends, strings and nesting followed but nothing checked
 * (tide_json_check_object_n does that on the result); len when it does not end. */
static size_t value_end(const struct line_scan *l)
{
	size_t i = l->i;
	int depth = 0;
	while (i < l->len) {
		unsigned char c = l->s[i++];
		if (c == '"') {
			while (i < l->len && l->s[i] != '"')
				i += l->s[i] == '\\' ? 2 : 1;
			i++;
		} else if (c == '{' || c == '[') {
			depth++;
		} else if (c == '}' || c == ']') {
			if (--depth == 0)
				return i;
		}
	}
	return l->len;
}

/* A name (stream_id, type) checked as tide_store_append checks it. */
static int line_name(struct line_scan *l, const char *key, const char *what, char *dst, size_t *len)
{
	if (l->i >= l->len || l->s[l->i] != '"')
		return line_fail(l, "\"%s\" must be a string", key);
	int rc = line_string(l, dst, TIDE_MAX_NAME_BYTES, len);
	if (rc)
		return rc;
	if (*len > TIDE_MAX_NAME_BYTES)
		return line_fail(l, "the %s is %zu bytes long; at most %d are allowed", what, *len,
		                 TIDE_MAX_NAME_BYTES);
	return tide_check_name(what, dst, *len, TIDE_MAX_NAME_BYTES, l->err, l->n);
}

/* data or metadata: one JSON object, checked as an append's are. */
static int line_object(struct line_scan *l, const char *key, const char **at, size_t *len)
{
	if (l->i >= l->len || l->s[l->i] != '{') {
		char shown[64];
		tide_snippet(shown, sizeof(shown), (const char *)l->s + l->i, l->len - l->i, 20);
		return line_fail(l, "\"%s\" must be a JSON object, got: %s", key, shown);
	}
	size_t end = value_end(l);
	*at = (const char *)l->s + l->i;
	*len = end - l->i;
	l->i = end;
	return tide_json_check_object_n(*at, *len, key, l->err, l->n);
}

static bool line_null(struct line_scan *l)
{
	if (l->i + 4 <= l->len && memcmp(l->s + l->i, "null", 4) == 0) {
		l->i += 4;
		return true;
	}
	return false;
}

int tide_import_parse_line(const char *line, size_t len, struct tide_import_event *ev, char *err,
                           size_t n)
{
	struct line_scan l = {(const unsigned char *)line, len, 0, err, n};
	enum { K_STREAM = 1, K_TYPE = 2, K_DATA = 4, K_METADATA = 8, K_ID = 16, K_VERSION = 32 };
	static const char *const keys[] = {"stream_id", "type", "data",
	                                   "metadata",  "id",   "schema_version"};
	unsigned seen = 0;
	ev->id[0] = '\0';
	ev->schema_version[0] = '\0';
	ev->metadata = NULL;
	ev->metadata_len = 0;
	line_ws(&l);
	if (l.i >= len || l.s[l.i] != '{')
		return line_unexpected(&l,
		                       "an event object {\"stream_id\":…,\"type\":…,\"data\":{…}}");
	l.i++;
	line_ws(&l);
	bool first = true;
	while (!(first && l.i < len && l.s[l.i] == '}')) {
		first = false;
		line_ws(&l);
		if (l.i >= len || l.s[l.i] != '"')
			return line_unexpected(&l, "a key");
		char key[24];
		size_t key_len, key_at = l.i;
		int rc = line_string(&l, key, sizeof(key) - 1, &key_len);
		if (rc)
			return rc;
		unsigned k = 0;
		for (unsigned j = 0; j < 6 && !k; j++)
			if (key_len == strlen(keys[j]) && memcmp(key, keys[j], key_len) == 0)
				k = 1u << j;
		if (!k) {
			char shown[64];
			tide_snippet(shown, sizeof(shown), line + key_at, l.i - key_at, 40);
			return line_fail(
			        &l,
			        "unknown key %s at byte %zu (an event has stream_id, type, "
			        "data, and optionally metadata, id and schema_version)",
			        shown, key_at + 1);
		}
		if (seen & k)
			return line_fail(&l, "\"%s\" appears twice", key);
		seen |= k;
		line_ws(&l);
		if (l.i >= len || l.s[l.i] != ':')
			return line_unexpected(&l, "':'");
		l.i++;
		line_ws(&l);
		switch (k) {
		case K_STREAM:
			rc = line_name(&l, key, "stream name", ev->stream_id, &ev->stream_id_len);
			break;
		case K_TYPE: rc = line_name(&l, key, "event type", ev->type, &ev->type_len); break;
		case K_DATA: rc = line_object(&l, key, &ev->data, &ev->data_len); break;
		case K_METADATA:
			rc = line_null(&l) ? 0
			                   : line_object(&l, key, &ev->metadata, &ev->metadata_len);
			break;
		case K_VERSION: {
			/* The shape data has: a whole number from 1 to 999999999. */
			size_t at = l.i, d = 0;
			while (l.i < len && l.s[l.i] >= '0' && l.s[l.i] <= '9')
				l.i++, d++;
			bool more = l.i < len &&
			            (l.s[l.i] == '.' || l.s[l.i] == 'e' || l.s[l.i] == 'E');
			if (d == 0 || d > 9 || l.s[at] == '0' || more)
				return line_fail(&l,
				                 "\"schema_version\" at byte %zu must be a whole "
				                 "number from 1 to 999999999",
				                 at + 1);
			memcpy(ev->schema_version, line + at, d);
			ev->schema_version[d] = '\0';
			break;
		}
		case K_ID: {
			if (line_null(&l))
				break;
			if (l.i >= len || l.s[l.i] != '"')
				return line_fail(&l, "\"id\" must be a string (a UUID)");
			size_t at = l.i, id_len;
			if ((rc = line_string(&l, ev->id, sizeof(ev->id) - 1, &id_len)))
				return rc;
			if (id_len != 36 || !tide_uuid_valid(ev->id)) {
				char shown[64];
				tide_snippet(shown, sizeof(shown), line + at, l.i - at, 44);
				return line_fail(&l, "\"id\" is not a UUID: %s", shown);
			}
			break;
		}
		}
		if (rc)
			return rc;
		line_ws(&l);
		if (l.i < len && l.s[l.i] == ',') {
			l.i++;
			continue;
		}
		if (l.i >= len || l.s[l.i] != '}')
			return line_unexpected(&l, "',' or '}'");
		break;
	}
	l.i++;
	line_ws(&l);
	if (l.i < len) {
		char shown[48];
		tide_snippet(shown, sizeof(shown), line + l.i, len - l.i, 20);
		return line_fail(&l,
		                 "not valid JSON: unexpected text after the event at byte %zu: %s",
		                 l.i + 1, shown);
	}
	for (unsigned j = 0; j < 3; j++)
		if (!(seen & (1u << j)))
			return line_fail(&l, "\"%s\" is missing", keys[j]);
	size_t size = ev->data_len + ev->metadata_len;
	if (size > TIDE_MAX_EVENT_BYTES)
		return line_fail(&l,
		                 "the event is too large: its data and metadata are %zu bytes of "
		                 "JSON; at most %u (%u MiB) are allowed",
		                 size, TIDE_MAX_EVENT_BYTES, TIDE_MAX_EVENT_BYTES >> 20);
	return 0;
}

/* --- the outcome --------------------------------------------------------------------- */

static void on_done_timer(uv_timer_t *t)
{
	struct tide_import *imp = t->data;
	imp->stats.seconds = (double)(uv_hrtime() - imp->start_ns) / 1e9;
	imp->cb(imp->status, imp->status ? imp->err : NULL, &imp->stats, imp->arg);
}

/* The outcome, delivered on the next loop turn. */
static void finish(struct tide_import *imp)
{
	if (imp->finished)
		return;
	imp->finished = true;
	uv_timer_start(&imp->done_timer, on_done_timer, 0, 0);
}

static void on_rolled_back(const struct tide_pg_reply *reply, void *arg)
{
	(void)reply;
	finish(arg);
}

static void failv(struct tide_import *imp, int status, const char *fmt, va_list ap)
{
	if (imp->status || imp->finished)
		return;
	imp->status = status;
	vsnprintf(imp->err, sizeof(imp->err), fmt, ap);
	/* Behind whatever is in flight (a chunk's COPY has all its data): then nothing of the
	 * transaction is left. Without a connection there is no transaction either. */
	if (!imp->pg || tide_pg_query(imp->pg, "ROLLBACK", 0, NULL, on_rolled_back, imp) != 0)
		finish(imp);
}

static void fail(struct tide_import *imp, int status, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void fail(struct tide_import *imp, int status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	failv(imp, status, fmt, ap);
	va_end(ap);
}

/* A reply that failed: the server's message, with `tide migrate` suggested when the
 * schema is missing. */
static void fail_reply(struct tide_import *imp, const struct tide_pg_reply *reply,
                       const char *doing)
{
	char buf[700];
	fail(imp, reply->status == TIDE_ECLOSED ? TIDE_ECONN : reply->status, "%s: %s", doing,
	     tide_pg_explain(reply, buf, sizeof(buf)));
}

/* --- stream tables ------------------------------------------------------------------- */

static int grow(void *pp, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	size_t ncap = *cap ? *cap : 1024;
	while (ncap < need)
		ncap *= 2;
	void *n = realloc(*(void **)pp, ncap * elem);
	if (!n)
		return TIDE_ENOMEM;
	*(void **)pp = n;
	*cap = ncap;
	return 0;
}

static int streams_init(struct streams *t, size_t max)
{
	t->max = max;
	t->nslots = 2 * max; /* max is a power of two: so is this */
	t->e = malloc(max * sizeof(*t->e));
	t->slots = calloc(t->nslots, sizeof(*t->slots));
	return t->e && t->slots ? 0 : TIDE_ENOMEM;
}

static void streams_free(struct streams *t)
{
	free(t->e);
	free(t->slots);
	free(t->ids);
}

static void streams_clear(struct streams *t)
{
	memset(t->slots, 0, t->nslots * sizeof(*t->slots));
	t->n = 0;
	t->ids_len = 0;
	t->dirty = 0;
	/* After huge names, give the memory back. */
	if (t->ids_cap > (1u << 20)) {
		free(t->ids);
		t->ids = NULL;
		t->ids_cap = 0;
	}
}

static const char *stream_id(const struct streams *t, const struct stream *e)
{
	return t->ids + e->id_at;
}

/* The entry of the stream, or NULL; *slot is where it is or would go. */
static struct stream *streams_find(struct streams *t, const char *id, size_t len, uint64_t h,
                                   size_t *slot)
{
	size_t i = (size_t)h & (t->nslots - 1);
	for (; t->slots[i]; i = (i + 1) & (t->nslots - 1)) {
		struct stream *e = &t->e[t->slots[i] - 1];
		if (e->hash == h && e->id_len == len && memcmp(t->ids + e->id_at, id, len) == 0)
			break;
	}
	*slot = i;
	return t->slots[i] ? &t->e[t->slots[i] - 1] : NULL;
}

/* The stream's entry, added (zeroed) when new; NULL when out of memory. The table has room
 * (callers keep n < max). */
static struct stream *streams_get(struct streams *t, const char *id, size_t len)
{
	uint64_t h = tide_hash(id, len);
	size_t slot;
	struct stream *e = streams_find(t, id, len, h, &slot);
	if (e)
		return e;
	if (grow(&t->ids, &t->ids_cap, t->ids_len + len, 1))
		return NULL;
	e = &t->e[t->n];
	memset(e, 0, sizeof(*e));
	e->id_at = t->ids_len;
	e->id_len = len;
	e->hash = h;
	memcpy(t->ids + t->ids_len, id, len);
	t->ids_len += len;
	t->slots[slot] = (uint32_t)++t->n;
	return e;
}

/* --- chunks -------------------------------------------------------------------------- */

static int chunk_init(struct chunk *c)
{
	c->rows = malloc(CHUNK_ROWS * sizeof(*c->rows));
	return c->rows ? streams_init(&c->streams, CHUNK_ROWS) : TIDE_ENOMEM;
}

static void chunk_free(struct chunk *c)
{
	free(c->buf);
	free(c->rows);
	streams_free(&c->streams);
}

static void chunk_reset(struct chunk *c)
{
	c->state = CHUNK_FILLING;
	c->len = 0;
	c->nrows = 0;
	c->phase = 0;
	c->sent = 0;
	streams_clear(&c->streams);
	/* A chunk that once held a huge event gives its memory back. */
	if (c->cap > 2 * CHUNK_BYTES) {
		free(c->buf);
		c->buf = NULL;
		c->cap = 0;
	}
}

static void kick(struct tide_import *imp);

static void add_event(struct tide_import *imp, const struct tide_import_event *ev)
{
	struct chunk *c = &imp->chunks[imp->filling];
	char id[37];
	if (ev->id[0])
		memcpy(id, ev->id, sizeof(id));
	else
		tide_uuid_v4(id);
	struct tide_copy_row row = {
	        .stream_id = ev->stream_id,
	        .stream_id_len = ev->stream_id_len,
	        .partition = imp->partition,
	        .partition_len = strlen(imp->partition),
	        .type = ev->type,
	        .type_len = ev->type_len,
	        .data = ev->data,
	        .data_len = ev->data_len,
	        .metadata = ev->metadata,
	        .metadata_len = ev->metadata_len,
	        .message_id = id,
	        .schema_version = ev->schema_version[0] ? ev->schema_version : NULL,
	};
	size_t size = tide_copy_row_size(&row);
	struct stream *s = streams_get(&c->streams, ev->stream_id, ev->stream_id_len);
	if (!s || grow(&c->buf, &c->cap, c->len + size, 1)) {
		fail(imp, TIDE_ENOMEM, "out of memory");
		return;
	}
	c->rows[c->nrows].at = c->len + tide_copy_row_write(c->buf + c->len, &row);
	c->rows[c->nrows].stream = (uint32_t)(s - c->streams.e);
	c->nrows++;
	c->len += size;
	s->count++;
	imp->stats.events++;
	if (c->nrows == CHUNK_ROWS || c->len >= CHUNK_BYTES ||
	    c->streams.ids_len >= CACHE_ID_BYTES / 2) {
		c->state = CHUNK_READY;
		kick(imp);
	}
}

/* The streams of t picked by `want` (all when NULL), as a PostgreSQL text[] literal in
 * imp->lit_ids, and the value of each (from `value`) as a bigint[] literal in
 * imp->lit_counts. */
static int literals(struct tide_import *imp, const struct streams *t,
                    bool (*want)(const struct stream *), int64_t (*value)(const struct stream *))
{
	size_t need = 3 + t->n * 3 + 2 * t->ids_len;
	if (grow(&imp->lit_ids, &imp->lit_ids_cap, need, 1) ||
	    grow(&imp->lit_counts, &imp->lit_counts_cap, 3 + t->n * 21, 1))
		return TIDE_ENOMEM;
	char *o = imp->lit_ids, *n = imp->lit_counts;
	*o++ = '{';
	*n++ = '{';
	bool first = true;
	for (size_t i = 0; i < t->n; i++) {
		const struct stream *s = &t->e[i];
		if (want && !want(s))
			continue;
		if (!first) {
			*o++ = ',';
			*n++ = ',';
		}
		first = false;
		*o++ = '"';
		for (size_t k = 0; k < s->id_len; k++) {
			char ch = stream_id(t, s)[k];
			if (ch == '"' || ch == '\\')
				*o++ = '\\';
			*o++ = ch;
		}
		*o++ = '"';
		n += sprintf(n, "%" PRId64, value(s));
	}
	strcpy(o, "}");
	strcpy(n, "}");
	return 0;
}

static bool is_miss(const struct stream *s)
{
	return s->miss;
}

static bool is_dirty(const struct stream *s)
{
	return s->dirty;
}

static int64_t count_of(const struct stream *s)
{
	return s->count;
}

static int64_t next_of(const struct stream *s)
{
	return s->next;
}

static struct chunk *sending(struct tide_import *imp)
{
	for (int i = 0; i < 2; i++)
		if (imp->chunks[i].state == CHUNK_SENDING)
			return &imp->chunks[i];
	return NULL;
}

static void process(struct tide_import *imp);

static void on_copied(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_import *imp = arg;
	if (imp->status)
		return;
	if (reply->status) {
		fail_reply(imp, reply, "the COPY of the events failed, nothing was imported");
		return;
	}
	chunk_reset(sending(imp));
	kick(imp);
	if (imp->paused) {
		imp->paused = false;
		process(imp);
	}
}

static int copy_source(void *arg, const char **data, size_t *len)
{
	struct chunk *c = arg;
	switch (c->phase) {
	case 0:
		c->phase = 1;
		*data = tide_copy_header;
		*len = TIDE_COPY_HEADER_BYTES;
		return 1;
	case 1:
		if (c->sent < c->len) {
			size_t n = c->len - c->sent;
			*data = c->buf + c->sent;
			*len = n < PIECE_BYTES ? n : PIECE_BYTES;
			c->sent += *len;
			return 1;
		}
		c->phase = 2;
		*data = tide_copy_trailer;
		*len = TIDE_COPY_TRAILER_BYTES;
		return 1;
	default: return 0;
	}
}

/* Every stream of the chunk has its position before the chunk: number the rows and send
 * them. */
static void copy_chunk(struct tide_import *imp, struct chunk *c)
{
	for (size_t r = 0; r < c->nrows; r++)
		tide_copy_set(c->buf + c->rows[r].at, ++c->streams.e[c->rows[r].stream].next,
		              imp->xid);
	if (tide_pg_copy(imp->pg, TIDE_COPY_MESSAGES_SQL, copy_source, c, on_copied, imp))
		fail(imp, TIDE_ECONN, "cannot send the events: %s", tide_pg_error(imp->pg));
}

static void on_reserved(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_import *imp = arg;
	if (imp->status)
		return;
	if (reply->status) {
		fail_reply(imp, reply, "cannot lock the streams, nothing was imported");
		return;
	}
	struct chunk *c = sending(imp);
	PGresult *res = reply->res;
	int row = 0;
	for (size_t i = 0; i < c->streams.n; i++) {
		struct stream *s = &c->streams.e[i];
		if (!s->miss)
			continue;
		if (row >= PQntuples(res)) {
			fail(imp, TIDE_EDB, "locking the streams returned too few rows");
			return;
		}
		if (PQgetisnull(res, row, 0)) {
			char shown[200];
			tide_snippet(shown, sizeof(shown), stream_id(&c->streams, s), s->id_len,
			             160);
			fail(imp, TIDE_ECONFLICT,
			     "version conflict: stream %s already exists (--expected no_stream); "
			     "nothing was imported",
			     shown);
			return;
		}
		s->next = strtoll(PQgetvalue(res, row, 0), NULL, 10);
		/* New to the import, unless the client forgot it (then counted at the end). */
		imp->stats.streams += !imp->forgot;
		row++;
		/* Its row now says where the stream will be after this chunk. */
		struct stream *k = streams_get(&imp->known, stream_id(&c->streams, s), s->id_len);
		if (!k) {
			fail(imp, TIDE_ENOMEM, "out of memory");
			return;
		}
		k->next = s->next + s->count;
	}
	copy_chunk(imp, c);
}

static void on_written_back(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_import *imp = arg;
	if (!imp->status && reply->status)
		fail_reply(imp, reply, "cannot update the streams' versions, nothing was imported");
}

/* The streams whose rows are behind (events of later chunks went by the client's count)
 * get their versions written; cb is called with the outcome (*sent false: none was). */
static int write_back(struct tide_import *imp, tide_pg_reply_cb cb, bool *sent)
{
	*sent = false;
	if (imp->known.dirty) {
		if (literals(imp, &imp->known, is_dirty, next_of))
			return TIDE_ENOMEM;
		const char *values[3] = {imp->partition, imp->lit_ids, imp->lit_counts};
		int rc = tide_pg_query(imp->pg, sql_write_back, 3, values, cb, imp);
		if (rc)
			return rc;
		*sent = true;
	}
	return 0;
}

/* A chunk's streams: those the client knows take their positions from it; the others are
 * locked (created when new) and advanced on the server first. */
static void send_chunk(struct tide_import *imp, struct chunk *c)
{
	c->state = CHUNK_SENDING;
	struct streams *known = &imp->known;
	if (known->n + c->streams.n > known->max ||
	    known->ids_len + c->streams.ids_len > CACHE_ID_BYTES) {
		bool sent;
		if (write_back(imp, on_written_back, &sent)) {
			fail(imp, TIDE_ECONN, "cannot send the events: %s", tide_pg_error(imp->pg));
			return;
		}
		streams_clear(known);
		imp->forgot = true;
	}
	size_t misses = 0;
	for (size_t i = 0; i < c->streams.n; i++) {
		struct stream *s = &c->streams.e[i];
		size_t slot;
		struct stream *k =
		        streams_find(known, stream_id(&c->streams, s), s->id_len, s->hash, &slot);
		s->miss = !k;
		if (k) {
			s->next = k->next;
			k->next += s->count;
			known->dirty += !k->dirty;
			k->dirty = true;
		}
		misses += s->miss;
	}
	if (!misses) {
		copy_chunk(imp, c);
		return;
	}
	if (literals(imp, &c->streams, is_miss, count_of)) {
		fail(imp, TIDE_ENOMEM, "out of memory");
		return;
	}
	const char *values[4] = {imp->partition, imp->lit_ids, imp->lit_counts,
	                         imp->no_stream ? "false" : "true"};
	if (tide_pg_query(imp->pg, sql_reserve, 4, values, on_reserved, imp))
		fail(imp, TIDE_ECONN, "cannot send the events: %s", tide_pg_error(imp->pg));
}

static void on_woken(const struct tide_pg_reply *reply, void *arg)
{
	(void)reply; /* consumers that miss it find the events by their poll */
	finish(arg);
}

static void on_committed(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_import *imp = arg;
	if (reply->status == TIDE_ECONN && reply->sent) {
		imp->status = TIDE_EUNKNOWN;
		snprintf(imp->err, sizeof(imp->err),
		         "the connection was lost after COMMIT was sent, so the import may or may "
		         "not have been committed (read a stream to find out): %s",
		         reply->err);
	} else if (reply->status) {
		fail_reply(imp, reply, "the commit failed, nothing was imported");
		return;
	} else if (strcmp(PQcmdStatus(reply->res), "COMMIT") != 0) {
		/* A transaction that failed answers COMMIT with ROLLBACK, and no error. */
		fail(imp, TIDE_EDB, "the transaction was rolled back, nothing was imported");
		return;
	} else if (tide_pg_query(imp->pg, sql_wake, 0, NULL, on_woken, imp) == 0) {
		return;
	}
	finish(imp);
}

static void commit(struct tide_import *imp)
{
	if (tide_pg_query(imp->pg, "COMMIT", 0, NULL, on_committed, imp))
		fail(imp, TIDE_ECONN, "cannot commit: %s", tide_pg_error(imp->pg));
}

static void on_counted(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_import *imp = arg;
	if (imp->status)
		return;
	if (reply->status) {
		fail_reply(imp, reply, "cannot count the streams, nothing was imported");
		return;
	}
	imp->stats.streams = strtoull(PQgetvalue(reply->res, 0, 0), NULL, 10);
	commit(imp);
}

/* The last step before COMMIT (which after an error would roll back without saying so):
 * the number of streams, when the client forgot some. */
static void count_then_commit(struct tide_import *imp)
{
	const char *values[1] = {imp->partition};
	if (!imp->forgot)
		commit(imp);
	else if (tide_pg_query(imp->pg, sql_count_streams, 1, values, on_counted, imp))
		fail(imp, TIDE_ECONN, "cannot commit: %s", tide_pg_error(imp->pg));
}

static void on_last_written_back(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_import *imp = arg;
	on_written_back(reply, arg);
	if (!imp->status)
		count_then_commit(imp);
}

/* Sends the next ready chunk once the transaction has begun and no chunk is in flight;
 * commits once the input is done and every chunk is in. */
static void kick(struct tide_import *imp)
{
	if (imp->status || !imp->began || sending(imp))
		return;
	for (int i = 0; i < 2; i++) {
		if (imp->chunks[i].state == CHUNK_READY) {
			send_chunk(imp, &imp->chunks[i]);
			return;
		}
	}
	if (!imp->input_done || imp->chunks[0].nrows || imp->chunks[1].nrows)
		return;
	imp->began = false; /* nothing more goes out */
	/* COMMIT only once the versions are written: after an error it would roll back. */
	bool sent;
	if (write_back(imp, on_last_written_back, &sent))
		fail(imp, TIDE_ECONN, "cannot send the events: %s", tide_pg_error(imp->pg));
	else if (!sent)
		count_then_commit(imp);
}

/* --- reading ------------------------------------------------------------------------- */

static void on_read(uv_fs_t *req);

static void read_more(struct tide_import *imp)
{
	uv_buf_t buf = uv_buf_init(imp->block, READ_BYTES);
	imp->reading = true;
	if (uv_fs_read(imp->loop, &imp->read_req, imp->fd, &buf, 1, -1, on_read) != 0) {
		imp->reading = false;
		fail(imp, TIDE_EINVAL, "cannot read the input");
	}
}

static bool blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

static void take_line(struct tide_import *imp, const char *s, size_t n)
{
	imp->stats.lines++;
	if (blank(s, n))
		return;
	char err[700];
	if (tide_import_parse_line(s, n, &imp->ev, err, sizeof(err))) {
		fail(imp, TIDE_EINVAL, "line %" PRIu64 ": %s", imp->stats.lines, err);
		return;
	}
	add_event(imp, &imp->ev);
}

/* Whether the chunk being filled can take a line; switches to the other one when it can. */
static bool room(struct tide_import *imp)
{
	if (imp->chunks[imp->filling].state == CHUNK_FILLING)
		return true;
	int other = 1 - imp->filling;
	if (imp->chunks[other].state != CHUNK_FILLING)
		return false;
	imp->filling = other;
	return true;
}

/* Lines of the block read last, as long as a chunk has room; then the next block. */
static void process(struct tide_import *imp)
{
	while (imp->block_pos < imp->block_len && !imp->status) {
		if (!room(imp)) {
			imp->paused = true; /* on_copied goes on */
			return;
		}
		const char *p = imp->block + imp->block_pos;
		size_t left = imp->block_len - imp->block_pos;
		const char *nl = memchr(p, '\n', left);
		size_t piece = nl ? (size_t)(nl - p) : left;
		if (imp->line_len + piece > MAX_LINE_BYTES) {
			fail(imp, TIDE_EINVAL,
			     "line %" PRIu64 ": longer than %u bytes, more than one event may be "
			     "(data and metadata at most %u MiB)",
			     imp->stats.lines + 1, MAX_LINE_BYTES, TIDE_MAX_EVENT_BYTES >> 20);
			return;
		}
		imp->block_pos += piece + (nl != NULL);
		if (!nl || imp->line_len) {
			if (grow(&imp->line, &imp->line_cap, imp->line_len + piece, 1)) {
				fail(imp, TIDE_ENOMEM, "out of memory");
				return;
			}
			memcpy(imp->line + imp->line_len, p, piece);
			imp->line_len += piece;
			if (!nl)
				break;
			take_line(imp, imp->line, imp->line_len);
			imp->line_len = 0;
			if (imp->line_cap > 2 * READ_BYTES) { /* after a huge line */
				free(imp->line);
				imp->line = NULL;
				imp->line_cap = 0;
			}
		} else {
			take_line(imp, p, piece);
		}
	}
	if (imp->status)
		return;
	if (!imp->eof) {
		read_more(imp);
		return;
	}
	if (imp->line_len) { /* the last line has no newline */
		if (!room(imp)) {
			imp->paused = true;
			return;
		}
		take_line(imp, imp->line, imp->line_len);
		imp->line_len = 0;
		if (imp->status)
			return;
	}
	if (!room(imp)) {
		imp->paused = true;
		return;
	}
	struct chunk *c = &imp->chunks[imp->filling];
	if (c->nrows)
		c->state = CHUNK_READY;
	imp->input_done = true;
	kick(imp);
}

static void free_import(struct tide_import *imp)
{
	for (int i = 0; i < 2; i++)
		chunk_free(&imp->chunks[i]);
	streams_free(&imp->known);
	free(imp->block);
	free(imp->line);
	free(imp->lit_ids);
	free(imp->lit_counts);
	free(imp);
}

static void on_read(uv_fs_t *req)
{
	struct tide_import *imp = req->data;
	ssize_t n = req->result;
	uv_fs_req_cleanup(req);
	imp->reading = false;
	if (imp->closed) {
		if (imp->open_handles == 0)
			free_import(imp);
		return;
	}
	if (imp->status)
		return;
	if (n < 0) {
		fail(imp, TIDE_EINVAL, "cannot read the input: %s", uv_strerror((int)n));
		return;
	}
	imp->eof = n == 0;
	imp->block_len = (size_t)n;
	imp->block_pos = 0;
	imp->stats.bytes += (uint64_t)n;
	process(imp);
}

/* --- connection ---------------------------------------------------------------------- */

static void on_begun(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_import *imp = arg;
	if (imp->status)
		return;
	if (reply->status) {
		fail_reply(imp, reply, "cannot start the import");
		return;
	}
	imp->xid = strtoull(PQgetvalue(reply->res, 0, 0), NULL, 10);
	imp->began = true;
	kick(imp);
}

static void on_connected(struct tide_pg *pg, int status, const char *err, void *arg)
{
	(void)pg;
	struct tide_import *imp = arg;
	if (imp->status)
		return;
	if (status) {
		fail(imp, status, "cannot connect to the database: %s", err);
		return;
	}
	const char *values[1] = {imp->partition};
	if (tide_pg_script(imp->pg, "SET client_encoding TO 'UTF8'; BEGIN", NULL, NULL) ||
	    tide_pg_query(imp->pg, "SELECT pg_current_xact_id()::text, tide_ensure_partition($1)",
	                  1, values, on_begun, imp))
		fail(imp, TIDE_ECONN, "cannot start the import: %s", tide_pg_error(imp->pg));
}

static void on_handle_closed(uv_handle_t *h)
{
	struct tide_import *imp = h->data;
	if (--imp->open_handles == 0 && !imp->reading)
		free_import(imp);
}

int tide_import_start(uv_loop_t *loop, const struct tide_import_opts *opts, tide_import_cb cb,
                      void *arg, struct tide_import **out)
{
	*out = NULL;
	struct tide_import *imp = calloc(1, sizeof(*imp));
	if (!imp)
		return TIDE_ENOMEM;
	imp->loop = loop;
	imp->cb = cb;
	imp->arg = arg;
	imp->fd = opts->fd;
	imp->no_stream = opts->no_stream;
	imp->start_ns = uv_hrtime();
	snprintf(imp->partition, sizeof(imp->partition), "%s",
	         opts->partition ? opts->partition : TIDE_DEFAULT_PARTITION);
	imp->block = malloc(READ_BYTES);
	if (!imp->block || chunk_init(&imp->chunks[0]) || chunk_init(&imp->chunks[1]) ||
	    streams_init(&imp->known, CACHE_STREAMS)) {
		free_import(imp);
		return TIDE_ENOMEM;
	}
	uv_timer_init(loop, &imp->done_timer);
	imp->done_timer.data = imp;
	imp->open_handles = 1;
	imp->read_req.data = imp;
	int rc = tide_pg_open(loop, opts->url, opts->application_name, TIDE_PG_SIMPLE, on_connected,
	                      imp, &imp->pg);
	if (rc) {
		imp->closed = true;
		uv_close((uv_handle_t *)&imp->done_timer, on_handle_closed);
		return rc;
	}
	*out = imp;
	read_more(imp);
	return 0;
}

void tide_import_stats(const struct tide_import *imp, struct tide_import_stats *out)
{
	*out = imp->stats;
	out->seconds = (double)(uv_hrtime() - imp->start_ns) / 1e9;
}

void tide_import_close(struct tide_import *imp)
{
	if (!imp || imp->closed)
		return;
	imp->closed = true;
	imp->status = imp->status ? imp->status : TIDE_ECLOSED; /* nothing more is sent */
	tide_pg_close(imp->pg);
	imp->pg = NULL;
	uv_timer_stop(&imp->done_timer);
	uv_close((uv_handle_t *)&imp->done_timer, on_handle_closed);
}
