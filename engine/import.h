/* import.h — bulk appends from newline-delimited JSON (`tide import`): every line checked
 * as an append's events are, each stream's events given the positions after its current
 * one in file order, all of it COPYed into emt_messages in one transaction, reading the
 * input as it goes (memory stays flat whatever its size). import.c. */
#ifndef TIDE_IMPORT_H
#define TIDE_IMPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "tide.h"

struct tide_import;

struct tide_import_opts {
	const char *url;
	const char *application_name; /* NULL: "tide" */
	const char *partition;        /* NULL: TIDE_DEFAULT_PARTITION; a checked name */
	bool no_stream;               /* every stream of the input must be new */
	uv_file fd; /* the input, read from where it stands; left open for the caller */
};

struct tide_import_stats {
	uint64_t lines;   /* lines read, blank ones too */
	uint64_t events;  /* events read and checked (at the end: imported) */
	uint64_t streams; /* distinct streams, counted as their events reach the server */
	uint64_t bytes;   /* input bytes read */
	double seconds;   /* since tide_import_start */
};

/* status: 0 (committed), TIDE_EINVAL (a bad line, or the input cannot be read: err starts
 * "line N: " for a line), TIDE_ECONFLICT (with no_stream, a stream that exists), TIDE_ECONN,
 * TIDE_EDB, TIDE_ENOMEM, or TIDE_EUNKNOWN (the connection was lost after COMMIT was sent).
 * Unless status is 0 or TIDE_EUNKNOWN nothing was written. Fires once, from the loop. */
typedef void (*tide_import_cb)(int status, const char *err, const struct tide_import_stats *stats,
                               void *arg);

/* Connects and starts reading; *out belongs to the caller, who releases it with
 * tide_import_close — after cb, or before it to abandon the import (rolled back). */
TIDE_MUST_CHECK int tide_import_start(uv_loop_t *loop, const struct tide_import_opts *opts,
                                      tide_import_cb cb, void *arg, struct tide_import **out);

/* The counts so far (for a progress display). */
void tide_import_stats(const struct tide_import *imp, struct tide_import_stats *out);

/* Closes the connection (an unfinished import is rolled back by the server) and frees imp
 * once its handles and any read in flight are done (the loop must run for that). */
void tide_import_close(struct tide_import *imp);

/* One line's event. The names are decoded from JSON; data and metadata point into the line
 * (metadata NULL when absent or null). */
struct tide_import_event {
	char stream_id[TIDE_MAX_NAME_BYTES + 1];
	char type[TIDE_MAX_NAME_BYTES + 1];
	char id[37];             /* "" when not given */
	char schema_version[10]; /* "" when not given (written as "1") */
	size_t stream_id_len, type_len;
	const char *data, *metadata;
	size_t data_len, metadata_len;
};

/* Parses and checks one line (without its newline):
 * {"stream_id":"...","type":"...","data":{...},"metadata":{...}?,"id":"uuid"?,
 * "schema_version":N?} (N from 1 to 999999999) with the
 * rules of tide_store_append (names, JSON, sizes, UUID), keys in any order, no others.
 * 0, or TIDE_EINVAL with one line in err naming the problem (bytes counted from 1 at the
 * start of the line, or of data/metadata for what their check finds). */
TIDE_MUST_CHECK int tide_import_parse_line(const char *line, size_t len,
                                           struct tide_import_event *ev, char *err, size_t n);

#endif
