/* pg.h — one non-blocking libpq connection driven by a libuv loop.
 * Owns the socket watch (one uv_poll_t), connection start-up, lazily prepared statements
 * and the queue of requests in flight. In pipeline mode many requests are on the wire at
 * once; in simple mode one script (several statements) runs at a time. */
#ifndef TIDE_PG_H
#define TIDE_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <uv.h>

#include "tide.h"

struct tide_pg;

/* A statement prepared on first use on each connection; static storage. */
struct tide_pg_stmt {
	const char *name;
	const char *sql;
	int nparams;
};

/* res is the request's last successful result (NULL on failure), owned by the
 * connection and cleared after the callback; sqlstate is "" when not from the server. */
struct tide_pg_reply {
	int status; /* 0, TIDE_EDB, TIDE_ECONN or TIDE_ECLOSED */
	const char *err;
	const char *sqlstate;
	PGresult *res;
	/* The request had wholly gone to the server: on TIDE_ECONN it may have taken effect. */
	bool sent;
};

typedef void (*tide_pg_reply_cb)(const struct tide_pg_reply *reply, void *arg);
typedef void (*tide_pg_ready_cb)(struct tide_pg *pg, int status, const char *err, void *arg);
/* channel NULL: the connection was lost (no more notifications will come). */
typedef void (*tide_pg_notify_cb)(const char *channel, const char *payload, void *arg);

enum tide_pg_mode {
	TIDE_PG_PIPELINE,    /* prepared statements, many in flight */
	TIDE_PG_SIMPLE,      /* multi-statement scripts, statements, COPY: one at a time */
	TIDE_PG_REPLICATION, /* as simple, on a physical replication connection: replication
	                      * commands (tide_pg_script) and a WAL stream (tide_pg_stream) */
};

/* application_name: what pg_stat_activity shows unless the URL names one (NULL: "tide"). */
TIDE_MUST_CHECK int tide_pg_open(uv_loop_t *loop, const char *conninfo,
                                 const char *application_name, enum tide_pg_mode mode,
                                 tide_pg_ready_cb cb, void *arg, struct tide_pg **out);

/* Pipeline mode: runs stmt with text parameters (copied at once). */
TIDE_MUST_CHECK int tide_pg_exec(struct tide_pg *pg, const struct tide_pg_stmt *stmt,
                                 const char *const *values, tide_pg_reply_cb cb, void *arg);

/* The same, with every column of the rows in binary format (PQfformat 1). */
TIDE_MUST_CHECK int tide_pg_exec_binary(struct tide_pg *pg, const struct tide_pg_stmt *stmt,
                                        const char *const *values, tide_pg_reply_cb cb, void *arg);

/* Rows of a query as they arrive: one or more (PQntuples), valid during the call only. */
typedef void (*tide_pg_rows_cb)(const PGresult *rows, void *arg);

/* As tide_pg_exec_binary, but the rows go to rows (arg is cb's) while the server still
 * sends the rest — one at a time, or all at once should libpq not allow that — and the
 * reply only ends the query (its res is not for reading rows). After an error
 * (reply->status) the rows already handed on are not the query's whole result. */
TIDE_MUST_CHECK int tide_pg_exec_rows(struct tide_pg *pg, const struct tide_pg_stmt *stmt,
                                      const char *const *values, tide_pg_rows_cb rows,
                                      tide_pg_reply_cb cb, void *arg);

/* Pipeline mode: runs one statement given as text (parsed each time), parameters copied. */
TIDE_MUST_CHECK int tide_pg_exec_sql(struct tide_pg *pg, const char *sql, int nparams,
                                     const char *const *values, tide_pg_reply_cb cb, void *arg);

/* Simple mode: runs a script of one or more statements. */
TIDE_MUST_CHECK int tide_pg_script(struct tide_pg *pg, const char *sql, tide_pg_reply_cb cb,
                                   void *arg);

/* Simple mode: one statement with text parameters (copied at once; NULL for SQL NULL), sent
 * through the extended protocol once the requests before it are done. */
TIDE_MUST_CHECK int tide_pg_query(struct tide_pg *pg, const char *sql, int nparams,
                                  const char *const *values, tide_pg_reply_cb cb, void *arg);

/* Where the data of a COPY FROM STDIN comes from: called on the loop whenever the
 * connection can take more, it sets *data and *len to the next piece and returns 1 (the
 * piece is copied at once), returns 0 at the end of the data, or returns -1 with *data a
 * message to abort the COPY with (its reply is then the server's error). It must answer
 * at once: it is asked again only when the socket drains. */
typedef int (*tide_pg_copy_cb)(void *arg, const char **data, size_t *len);

/* Simple mode: a COPY ... FROM STDIN statement, fed from source; cb gets its result once
 * the data has ended. libpq's output buffer holds at most one piece beyond what the kernel
 * took, so memory stays flat whatever the amount of data. */
TIDE_MUST_CHECK int tide_pg_copy(struct tide_pg *pg, const char *sql, tide_pg_copy_cb source,
                                 void *source_arg, tide_pg_reply_cb cb, void *arg);

/* Each message of a replication stream (COPY BOTH), data[0] its kind; one call with data
 * NULL when the stream has begun. The data is valid during the call only. */
typedef void (*tide_pg_stream_cb)(void *arg, const char *data, int len);

/* Replication mode: a command that starts a stream (START_REPLICATION); each message goes
 * to on_data, and cb gets the command's result once the stream ends (the server ended it,
 * or the connection failed). */
TIDE_MUST_CHECK int tide_pg_stream(struct tide_pg *pg, const char *sql, tide_pg_stream_cb on_data,
                                   void *data_arg, tide_pg_reply_cb cb, void *arg);

/* Sends a message to the server on a running stream (a standby status update). */
TIDE_MUST_CHECK int tide_pg_stream_send(struct tide_pg *pg, const char *data, int len);

/* The loop pg runs on. */
uv_loop_t *tide_pg_loop(const struct tide_pg *pg);

void tide_pg_on_notify(struct tide_pg *pg, tide_pg_notify_cb cb, void *arg);

/* Fails pending requests with TIDE_ECLOSED; memory is freed once handles close. */
void tide_pg_close(struct tide_pg *pg);

bool tide_pg_ready(const struct tide_pg *pg);

/* Every request so far has wholly gone to the kernel (the server's receive queue). */
bool tide_pg_flushed(const struct tide_pg *pg);

/* No request is queued or waiting to be failed. */
bool tide_pg_idle(const struct tide_pg *pg);
const char *tide_pg_error(const struct tide_pg *pg);

/* Copies msg into dst (size n; msg may be dst) as one line: the URL's password replaced
 * wherever it appears, each run of whitespace with a newline or tab in it turned into one
 * space, other control characters into '?', no trailing space. */
void tide_pg_redact(const struct tide_pg *pg, const char *msg, char *dst, size_t n);

/* v as the text of a PostgreSQL text[] ({"a","b"}, with " and \ escaped), for a parameter;
 * malloc'd, NULL when out of memory. */
char *tide_pg_text_array(const char *const *v, size_t n);

/* The reply's message, with a hint when the tide schema is missing (run tide migrate). */
const char *tide_pg_explain(const struct tide_pg_reply *reply, char *buf, size_t n);

#endif
