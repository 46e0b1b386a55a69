/* pg.c — one non-blocking libpq connection on a libuv loop: start-up through
 * PQconnectPoll, then requests written with PQflush and results read with
 * PQconsumeInput → PQisBusy → PQgetResult, never blocking the loop thread. */
#include "pg.h"

#include "file.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define TIDE_PG_CONNECT_TIMEOUT_MS 10000
#define TIDE_PG_MAX_STMTS          32
#define TIDE_PG_MAX_CACHED         64 /* statements given as text, prepared on first use */

struct request {
	struct request *next;
	tide_pg_reply_cb cb;
	void *arg;
	char *script; /* simple mode: the SQL, sent when the request reaches the head */
	/* Simple mode, tide_pg_query: its text parameters (params[i] NULL for NULL), in one
	 * allocation with the pointers; NULL for a script. */
	char **params;
	int nparams;
	tide_pg_copy_cb copy; /* tide_pg_copy: where the data of its COPY FROM STDIN comes from */
	void *copy_arg;
	tide_pg_stream_cb stream; /* tide_pg_stream: where the messages of its stream go */
	void *stream_arg;
	tide_pg_rows_cb rows; /* tide_pg_exec_rows: where its rows go as they arrive */
	bool single_row;      /* libpq hands them on one at a time (PQsetSingleRowMode took) */
	bool copy_ended;      /* the end of its COPY data is in libpq's buffer */
	PGresult *res;        /* last good result */
	int status;
	char err[512];
	char sqlstate[6];
	const struct tide_pg_stmt *prepared; /* statement this request prepares, if any */
	int cached; /* index of the cached text statement it prepares, or -1 */
	bool sent;  /* all of it went to the kernel: the server may have acted on it */
	/* It prepares a statement: the first result is the prepare's, and whether it worked
	 * says whether the statement exists on the server, whatever happens after. */
	bool awaits_parse, parsed;
};

struct cached_stmt {
	uint64_t hash;
	char *sql;
};

struct tide_pg {
	uv_loop_t *loop;
	PGconn *conn;
	enum tide_pg_mode mode;
	uv_poll_t *poll; /* NULL until the socket is known; replaced if the socket changes */
	int fd;
	int poll_events;
	uv_timer_t timer; /* connect timeout, deferred start-up and send failures */
	int open_handles;
	bool connected, closing, script_sent;
	bool copying;   /* the head request is sending COPY data (until its end is flushed) */
	bool streaming; /* the head request (tide_pg_stream) is receiving its stream */
	bool failing;   /* a send failed: the requests fail on the next loop turn */
	int fail_status;
	tide_pg_ready_cb ready_cb;
	void *ready_arg;
	tide_pg_notify_cb notify_cb;
	void *notify_arg;
	struct request *head, *tail; /* requests sent (pipeline) or queued (simple), in order */
	struct request *unsent;      /* the first request not yet wholly flushed, or NULL */
	const struct tide_pg_stmt *stmts[TIDE_PG_MAX_STMTS];
	int nstmts;
	struct cached_stmt cached[TIDE_PG_MAX_CACHED];
	int ncached;
	char *password;
	char error[512];
};

static void on_poll(uv_poll_t *h, int status, int events);
static void fail_all(struct tide_pg *pg, int status, const char *msg);

static void handle_closed(uv_handle_t *h)
{
	struct tide_pg *pg = h->data;
	if (h != (uv_handle_t *)&pg->timer)
		free(h);
	if (--pg->open_handles == 0) {
		for (int i = 0; i < pg->ncached; i++)
			free(pg->cached[i].sql);
		free(pg->password);
		free(pg);
	}
}

void tide_pg_redact(const struct tide_pg *pg, const char *msg, char *dst, size_t n)
{
	if (n == 0)
		return;
	/* Callers may redact in place; "***" can be longer than what it hides. */
	char *copy = NULL;
	if (msg == dst) {
		copy = strdup(msg);
		if (!copy) {
			dst[0] = '\0';
			return;
		}
		msg = copy;
	}
	size_t o = 0;
	const char *pw = pg ? pg->password : NULL;
	size_t pwlen = pw ? strlen(pw) : 0;
	for (const char *p = msg; *p && o + 1 < n;) {
		if (pwlen > 0 && strncmp(p, pw, pwlen) == 0) {
			for (const char *r = "***"; *r && o + 1 < n; r++)
				dst[o++] = *r;
			p += pwlen;
			continue;
		}
		/* A URL echoed back: hide "user:secret@" whatever the secret is. */
		if (strncmp(p, "://", 3) == 0) {
			const char *at = strpbrk(p + 3, "@/ ");
			const char *colon = memchr(p + 3, ':', at ? (size_t)(at - (p + 3)) : 0);
			if (at && *at == '@' && colon) {
				size_t keep = (size_t)(colon + 1 - p);
				for (size_t i = 0; i < keep && o + 1 < n; i++)
					dst[o++] = p[i];
				for (const char *r = "***"; *r && o + 1 < n; r++)
					dst[o++] = *r;
				p = at;
				continue;
			}
		}
		/* One line: libpq's "...failed: ...\n\tIs the server running...?" becomes
		 * "...failed: ... Is the server running...?". */
		if (strchr("\n\r\t\v\f", *p)) {
			while (o > 0 && dst[o - 1] == ' ')
				o--;
			while (*p && strchr(" \n\r\t\v\f", *p))
				p++;
			if (o > 0 && *p)
				dst[o++] = ' ';
			continue;
		}
		unsigned char c = (unsigned char)*p++;
		dst[o++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
	}
	while (o > 0 && dst[o - 1] == ' ')
		o--;
	dst[o] = '\0';
	free(copy);
}

static void set_error(struct tide_pg *pg, const char *msg)
{
	tide_pg_redact(pg, msg, pg->error, sizeof(pg->error));
}

/* Gives up the socket's watch for good. It must go before anything else can open a socket:
 * libpq closes a lost connection's socket itself, a new connection gets the same number,
 * and libuv, told later to stop watching that number, would stop watching the new one
 * (the kernel's registration is by number) — that connection would never be heard from
 * again. So a lost connection drops its watch before any callback runs. */
static void unwatch(struct tide_pg *pg)
{
	if (pg->poll) {
		uv_poll_stop(pg->poll);
		uv_close((uv_handle_t *)pg->poll, handle_closed);
		pg->poll = NULL;
	}
	pg->poll_events = 0;
}

static int watch(struct tide_pg *pg, int events)
{
	int fd = PQsocket(pg->conn);
	if (fd < 0)
		return TIDE_ECONN;
	if (pg->poll && fd != pg->fd)
		unwatch(pg); /* libpq moved to another socket (next host, or SSL retry) */
	if (!pg->poll) {
		pg->poll = malloc(sizeof(*pg->poll));
		if (!pg->poll)
			return TIDE_ENOMEM;
		if (uv_poll_init_socket(pg->loop, pg->poll, fd) != 0) {
			free(pg->poll);
			pg->poll = NULL;
			return TIDE_ECONN;
		}
		pg->poll->data = pg;
		pg->open_handles++;
		pg->fd = fd;
		pg->poll_events = 0;
	}
	if (events != pg->poll_events) {
		if (uv_poll_start(pg->poll, events, on_poll) != 0)
			return TIDE_ECONN;
		pg->poll_events = events;
	}
	return 0;
}

static void finish_connect(struct tide_pg *pg, int status, const char *msg)
{
	uv_timer_stop(&pg->timer);
	if (status != 0) {
		set_error(pg, msg);
		unwatch(pg);
	} else {
		pg->connected = true;
	}
	tide_pg_ready_cb cb = pg->ready_cb;
	pg->ready_cb = NULL;
	if (cb)
		cb(pg, status, status ? pg->error : NULL, pg->ready_arg);
}

static void on_timer(uv_timer_t *t)
{
	struct tide_pg *pg = t->data;
	if (pg->failing) {
		char msg[sizeof(pg->error)];
		snprintf(msg, sizeof(msg), "%s", pg->error);
		fail_all(pg, pg->fail_status, msg);
		return;
	}
	if (pg->connected || pg->closing)
		return;
	finish_connect(pg, TIDE_ECONN,
	               pg->error[0] ? pg->error : "the server did not answer within 10 s");
}

/* Server notices ("relation already exists, skipping") are not errors: keep them off
 * stderr, where libpq would print them. */
static void quiet_notice(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

static void connect_step(struct tide_pg *pg)
{
	PostgresPollingStatusType st = PQconnectPoll(pg->conn);
	switch (st) {
	case PGRES_POLLING_READING:
		if (watch(pg, UV_READABLE) != 0)
			finish_connect(pg, TIDE_ECONN, "cannot watch the database socket");
		return;
	case PGRES_POLLING_WRITING:
		if (watch(pg, UV_WRITABLE) != 0)
			finish_connect(pg, TIDE_ECONN, "cannot watch the database socket");
		return;
	case PGRES_POLLING_OK:
		PQsetNoticeProcessor(pg->conn, quiet_notice, NULL);
		if (PQsetnonblocking(pg->conn, 1) != 0 ||
		    (pg->mode == TIDE_PG_PIPELINE && PQenterPipelineMode(pg->conn) != 1) ||
		    watch(pg, UV_READABLE) != 0) {
			finish_connect(pg, TIDE_ECONN, PQerrorMessage(pg->conn));
			return;
		}
		finish_connect(pg, 0, NULL);
		return;
	default: finish_connect(pg, TIDE_ECONN, PQerrorMessage(pg->conn)); return;
	}
}

int tide_pg_open(uv_loop_t *loop, const char *conninfo, const char *application_name,
                 enum tide_pg_mode mode, tide_pg_ready_cb cb, void *arg, struct tide_pg **out)
{
	*out = NULL;
	struct tide_pg *pg = calloc(1, sizeof(*pg));
	if (!pg)
		return TIDE_ENOMEM;
	pg->loop = loop;
	pg->mode = mode;
	pg->fd = -1;
	pg->ready_cb = cb;
	pg->ready_arg = arg;
	uv_timer_init(loop, &pg->timer);
	pg->timer.data = pg;
	pg->open_handles = 1;
	*out = pg;

	char *perr = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
	if (!opts) {
		snprintf(pg->error, sizeof(pg->error), "invalid database URL: %s",
		         perr ? perr : "out of memory");
		PQfreemem(perr);
		tide_pg_redact(NULL, pg->error, pg->error, sizeof(pg->error));
		uv_timer_start(&pg->timer, on_timer, 0, 0);
		return 0;
	}
	for (PQconninfoOption *o = opts; o->keyword; o++)
		if (strcmp(o->keyword, "password") == 0 && o->val && o->val[0])
			pg->password = strdup(o->val);
	PQconninfoFree(opts);

	/* The URL is expanded as dbname; a name it gives wins over the fallback. */
	const char *const keys[] = {"dbname", "fallback_application_name", "replication", NULL};
	const char *const vals[] = {conninfo, application_name ? application_name : "tide",
	                            mode == TIDE_PG_REPLICATION ? "true" : NULL, NULL};
	pg->conn = PQconnectStartParams(keys, vals, 1);
	if (!pg->conn) {
		snprintf(pg->error, sizeof(pg->error), "out of memory connecting to the database");
		uv_timer_start(&pg->timer, on_timer, 0, 0);
		return 0;
	}
	if (PQstatus(pg->conn) == CONNECTION_BAD) {
		set_error(pg, PQerrorMessage(pg->conn));
		uv_timer_start(&pg->timer, on_timer, 0, 0);
		return 0;
	}
	uv_timer_start(&pg->timer, on_timer, TIDE_PG_CONNECT_TIMEOUT_MS, 0);
	/* PQconnectStartParams behaves as if PQconnectPoll had asked to write. */
	if (watch(pg, UV_WRITABLE) != 0) {
		set_error(pg, "cannot watch the database socket");
		uv_timer_start(&pg->timer, on_timer, 0, 0);
	}
	return 0;
}

/* libpq's output buffer is empty: every request queued so far is on its way. */
static void flushed(struct tide_pg *pg)
{
	for (struct request *rq = pg->unsent; rq; rq = rq->next)
		rq->sent = true;
	pg->unsent = NULL;
}

static void flush(struct tide_pg *pg)
{
	int r = PQflush(pg->conn);
	if (r < 0) {
		fail_all(pg, TIDE_ECONN, PQerrorMessage(pg->conn));
		return;
	}
	if (r == 0)
		flushed(pg);
	if (watch(pg, r == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE) != 0)
		fail_all(pg, TIDE_ECONN, "cannot watch the database socket");
}

static void complete(struct tide_pg *pg)
{
	struct request *rq = pg->head;
	pg->head = rq->next;
	if (!pg->head)
		pg->tail = NULL;
	if (pg->unsent == rq)
		pg->unsent = rq->next;
	pg->script_sent = false;
	struct tide_pg_reply reply = {
	        .status = rq->status,
	        .err = rq->status ? rq->err : NULL,
	        .sqlstate = rq->sqlstate,
	        .res = rq->status ? NULL : rq->res,
	        .sent = rq->sent,
	};
	/* A prepare that failed left no statement on the server: prepare it again next time.
	 * (One that worked stays, even when running it failed: preparing it again under the
	 * same name would fail with "already exists".) */
	bool unprepared = rq->status && !rq->parsed;
	if (unprepared && rq->cached >= 0 && pg->cached[rq->cached].sql) {
		free(pg->cached[rq->cached].sql);
		pg->cached[rq->cached].sql = NULL;
		pg->cached[rq->cached].hash = 0;
	}
	if (unprepared && rq->prepared) {
		for (int i = 0; i < pg->nstmts; i++)
			if (pg->stmts[i] == rq->prepared)
				pg->stmts[i] = pg->stmts[--pg->nstmts];
	}
	if (pg->conn && PQstatus(pg->conn) == CONNECTION_BAD)
		unwatch(pg); /* before the callback, which may open a connection */
	if (rq->cb)
		rq->cb(&reply, rq->arg);
	PQclear(rq->res);
	free(rq->script);
	free(rq->params);
	free(rq);
}

static void fail_all(struct tide_pg *pg, int status, const char *msg)
{
	set_error(pg, msg);
	bool was_connected = pg->connected || pg->failing;
	pg->connected = false; /* callbacks below must not queue more on this connection */
	pg->failing = false;
	pg->copying = false;
	pg->streaming = false;
	unwatch(pg);
	while (pg->head) {
		struct request *rq = pg->head;
		if (!rq->status) {
			rq->status = status;
			snprintf(rq->err, sizeof(rq->err), "%s", pg->error);
			rq->sqlstate[0] = '\0';
		}
		complete(pg);
	}
	pg->nstmts = 0;
	for (int i = 0; i < pg->ncached; i++) {
		free(pg->cached[i].sql);
		pg->cached[i].sql = NULL;
	}
	pg->ncached = 0;
	/* A listener has no request in flight to learn it from: tell it. */
	if (was_connected && status == TIDE_ECONN && !pg->closing && pg->notify_cb)
		pg->notify_cb(NULL, NULL, pg->notify_arg);
	pg->connected = false;
}

static int sent(struct tide_pg *pg, bool ok);

static void send_script(struct tide_pg *pg)
{
	if (pg->script_sent || !pg->head)
		return;
	pg->script_sent = true;
	struct request *rq = pg->head;
	if (rq->params)
		(void)sent(pg, PQsendQueryParams(pg->conn, rq->script, rq->nparams, NULL,
		                                 (const char *const *)rq->params, NULL, NULL, 0));
	else
		(void)sent(pg, PQsendQuery(pg->conn, rq->script));
}

/* Sends the head request's COPY data while the socket takes it: a piece from its source,
 * then PQflush; when the kernel's buffer is full, the socket's next writable event goes on.
 * libpq's own buffer would grow without bound if fed faster than it drains, so it is never
 * given more than one piece ahead. A request without a source (a COPY FROM STDIN in a
 * script) ends its COPY with an error. Returns once the end of the data is flushed too
 * (pg->copying false): the COPY's result follows. */
static void copy_feed(struct tide_pg *pg)
{
	struct request *rq = pg->head;
	while (pg->copying) {
		int f = PQflush(pg->conn);
		if (f < 0) {
			fail_all(pg, TIDE_ECONN, PQerrorMessage(pg->conn));
			return;
		}
		if (f == 1) {
			if (watch(pg, UV_READABLE | UV_WRITABLE) != 0)
				fail_all(pg, TIDE_ECONN, "cannot watch the database socket");
			return;
		}
		if (rq->copy_ended) { /* the end went out with that flush */
			pg->copying = false;
			flushed(pg);
			if (watch(pg, UV_READABLE) != 0)
				fail_all(pg, TIDE_ECONN, "cannot watch the database socket");
			return;
		}
		const char *data = "COPY FROM STDIN is not supported in a script";
		size_t len = 0;
		int more = rq->copy ? rq->copy(rq->copy_arg, &data, &len) : -1;
		int ok;
		if (more > 0) {
			ok = PQputCopyData(pg->conn, data, (int)len);
		} else {
			ok = PQputCopyEnd(pg->conn, more < 0 ? data : NULL);
			rq->copy_ended = true;
		}
		/* 0 only when libpq cannot grow its buffer: its buffer is empty here. */
		if (ok != 1) {
			fail_all(pg, TIDE_ECONN,
			         ok == 0 ? "out of memory buffering COPY data"
			                 : PQerrorMessage(pg->conn));
			return;
		}
	}
}

static void take_result(struct request *rq, PGresult *r, struct tide_pg *pg)
{
	if (rq->awaits_parse) {
		rq->awaits_parse = false;
		rq->parsed = PQresultStatus(r) == PGRES_COMMAND_OK;
		if (rq->parsed) {
			PQclear(r);
			return;
		}
	}
	switch (PQresultStatus(r)) {
	case PGRES_FATAL_ERROR:
	case PGRES_NONFATAL_ERROR:
	case PGRES_BAD_RESPONSE:
		if (!rq->status) {
			/* An error libpq made up itself (no SQLSTATE) on a connection that is now
			 * bad — "server closed the connection unexpectedly" — is the connection's
			 * loss, not the statement's failure. */
			bool lost = !PQresultErrorField(r, PG_DIAG_SQLSTATE) &&
			            PQstatus(pg->conn) == CONNECTION_BAD;
			rq->status = lost ? TIDE_ECONN : TIDE_EDB;
			/* One line: "primary (detail: ...; hint: ...)"; not the SQL context lines.
			 */
			const char *primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
			const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
			const char *hint = PQresultErrorField(r, PG_DIAG_MESSAGE_HINT);
			char msg[sizeof(rq->err)];
			if (primary && (detail || hint))
				snprintf(msg, sizeof(msg), "%s (%s%s%s%s%s)", primary,
				         detail ? "detail: " : "", detail ? detail : "",
				         detail && hint ? "; " : "", hint ? "hint: " : "",
				         hint ? hint : "");
			else if (primary)
				snprintf(msg, sizeof(msg), "%s", primary);
			else
				snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
			for (char *c = msg; *c; c++)
				if (*c == '\n')
					*c = ' ';
			tide_pg_redact(pg, msg, rq->err, sizeof(rq->err));
			const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
			snprintf(rq->sqlstate, sizeof(rq->sqlstate), "%s", s ? s : "");
		}
		PQclear(r);
		break;
	case PGRES_PIPELINE_ABORTED: PQclear(r); break;
	case PGRES_SINGLE_TUPLE:
		if (rq->rows && !rq->status)
			rq->rows(r, rq->arg);
		PQclear(r);
		break;
	default:
		if (rq->rows && !rq->status && PQntuples(r) > 0)
			rq->rows(r, rq->arg); /* all at once: single-row mode did not take */
		PQclear(rq->res);
		rq->res = r;
		break;
	}
}

/* The messages of a stream that have arrived, each to its callback. False: none is left
 * for now (or the connection went); true: the stream ended, its result follows. */
static bool read_stream(struct tide_pg *pg)
{
	struct request *rq = pg->head;
	for (;;) {
		char *buf = NULL;
		int n = PQgetCopyData(pg->conn, &buf, 1);
		if (n == 0)
			return false;
		if (n == -1) {
			pg->streaming = false;
			return true;
		}
		if (n < 0) {
			fail_all(pg, TIDE_ECONN, PQerrorMessage(pg->conn));
			return false;
		}
		rq->stream(rq->stream_arg, buf, n);
		PQfreemem(buf);
		if (pg->closing || !pg->conn || pg->head != rq)
			return false;
	}
}

/* When the head request wants its rows as they arrive and its query is the command libpq
 * is now reading the results of, asks libpq for them one by one. libpq takes that only for
 * the current command and before any of its results: it refuses (harmlessly) while the
 * request's own PREPARE or an earlier request is still being read, so this is tried again
 * before each result. */
static void single_row(struct tide_pg *pg)
{
	struct request *rq = pg->head;
	if (rq && rq->rows && !rq->single_row && !rq->awaits_parse)
		rq->single_row = PQsetSingleRowMode(pg->conn) == 1;
}

static void read_results(struct tide_pg *pg)
{
	if (!PQconsumeInput(pg->conn)) {
		fail_all(pg, TIDE_ECONN, PQerrorMessage(pg->conn));
		return;
	}
	int nulls = 0; /* PQgetResult's NULLs in a row */
	while (pg->head && pg->conn && !pg->closing) {
		if (pg->mode != TIDE_PG_PIPELINE && (!pg->script_sent || pg->copying))
			break;
		if (pg->streaming) {
			if (!read_stream(pg))
				break;
			continue;
		}
		single_row(pg);
		if (PQisBusy(pg->conn))
			break;
		PGresult *r = PQgetResult(pg->conn);
		/* One NULL ends a command's results; a second in a row means nothing more is
		 * there yet — or, on a connection the server dropped in the middle of a
		 * pipeline, ever: asking again would spin forever. */
		nulls = r ? 0 : nulls + 1;
		if (nulls == 2)
			break; /* the socket's next event (EOF, if that) tells the rest */
		if (pg->mode != TIDE_PG_PIPELINE) {
			if (!r) {
				complete(pg);
				if (pg->conn && !pg->closing)
					send_script(pg);
				continue;
			}
			if (PQresultStatus(r) == PGRES_COPY_IN) {
				/* The server waits for the data: libpq answers PGRES_COPY_IN
				 * again until the COPY ends, so results wait for that. */
				PQclear(r);
				pg->copying = true;
				copy_feed(pg);
				continue;
			}
			if (PQresultStatus(r) == PGRES_COPY_BOTH && pg->head->stream) {
				PQclear(r);
				pg->streaming = true;
				pg->head->stream(pg->head->stream_arg, NULL, 0);
				continue;
			}
		} else {
			if (!r)
				continue; /* end of one command; the request ends at its sync */
			if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
				PQclear(r);
				complete(pg);
				continue;
			}
		}
		take_result(pg->head, r, pg);
	}
	PGnotify *n;
	while (pg->conn && !pg->closing && (n = PQnotifies(pg->conn))) {
		if (pg->notify_cb)
			pg->notify_cb(n->relname, n->extra, pg->notify_arg);
		PQfreemem(n);
	}
	if (pg->conn && PQstatus(pg->conn) == CONNECTION_BAD)
		fail_all(pg, TIDE_ECONN, PQerrorMessage(pg->conn));
}

static void on_poll(uv_poll_t *h, int status, int events)
{
	struct tide_pg *pg = h->data;
	if (pg->closing || !pg->conn)
		return;
	if (!pg->connected) {
		if (pg->ready_cb)
			connect_step(pg);
		return;
	}
	if (status < 0) {
		/* libuv reports an error on the socket (POLLERR: the server reset or dropped the
		 * connection) as "bad file descriptor" and stops watching it. libpq, reading,
		 * finds the real reason: the server's last message, or the socket's error. */
		read_results(pg);
		if (pg->connected && !pg->closing) {
			int fd = PQsocket(pg->conn), soerr = 0;
			socklen_t len = sizeof(soerr);
			if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
				soerr = 0;
			char msg[160];
			snprintf(msg, sizeof(msg), "the connection to the server failed: %s",
			         soerr ? strerror(soerr) : "an error on its socket");
			fail_all(pg, TIDE_ECONN, msg);
		}
		return;
	}
	if (events & UV_WRITABLE) {
		if (pg->copying) {
			copy_feed(pg);
			/* The COPY's result may already be in libpq's buffer. */
			if (!pg->copying && pg->conn && !pg->closing && !(events & UV_READABLE))
				read_results(pg);
		} else {
			flush(pg);
		}
	}
	if (events & UV_READABLE)
		read_results(pg);
}

static struct request *enqueue(struct tide_pg *pg, tide_pg_reply_cb cb, void *arg)
{
	struct request *rq = calloc(1, sizeof(*rq));
	if (!rq)
		return NULL;
	rq->cb = cb;
	rq->arg = arg;
	rq->cached = -1;
	if (pg->tail)
		pg->tail->next = rq;
	else
		pg->head = rq;
	pg->tail = rq;
	if (!pg->unsent)
		pg->unsent = rq;
	return rq;
}

/* A request queued on a pipelined connection, or NULL with *rc saying why not. */
static struct request *pipeline_request(struct tide_pg *pg, tide_pg_reply_cb cb, void *arg, int *rc)
{
	*rc = pg->closing ? TIDE_ECLOSED : TIDE_ECONN;
	if (!pg->connected || pg->closing || pg->mode != TIDE_PG_PIPELINE)
		return NULL;
	struct request *rq = enqueue(pg, cb, arg);
	*rc = rq ? 0 : TIDE_ENOMEM;
	return rq;
}

/* A send failed inside a caller's tide_pg_* call: the connection takes no more requests
 * at once, and the queued ones (the caller's included) fail on the next loop turn, so that
 * no callback runs inside the call that queued it (tide.h). */
static void fail_later(struct tide_pg *pg, int status, const char *msg)
{
	set_error(pg, msg);
	pg->connected = false;
	if (pg->failing)
		return;
	pg->failing = true;
	pg->fail_status = status;
	unwatch(pg);
	uv_timer_start(&pg->timer, on_timer, 0, 0);
}

/* Ends a request's commands with a sync and sends them. When libpq refused any of them the
 * request is already queued, so it fails with the others, through its callback. */
static int sent(struct tide_pg *pg, bool ok)
{
	if (!ok || (pg->mode == TIDE_PG_PIPELINE && !PQpipelineSync(pg->conn))) {
		fail_later(pg, TIDE_ECONN, PQerrorMessage(pg->conn));
		return 0;
	}
	int r = PQflush(pg->conn);
	if (r < 0) {
		fail_later(pg, TIDE_ECONN, PQerrorMessage(pg->conn));
		return 0;
	}
	if (r == 0)
		flushed(pg);
	if (watch(pg, r == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE) != 0)
		fail_later(pg, TIDE_ECONN, "cannot watch the database socket");
	return 0;
}

static bool is_prepared(struct tide_pg *pg, const struct tide_pg_stmt *stmt)
{
	for (int i = 0; i < pg->nstmts; i++)
		if (pg->stmts[i] == stmt)
			return true;
	return false;
}

static int exec_stmt(struct tide_pg *pg, const struct tide_pg_stmt *stmt, const char *const *values,
                     int result_format, tide_pg_rows_cb rows, tide_pg_reply_cb cb, void *arg)
{
	int rc;
	struct request *rq = pipeline_request(pg, cb, arg, &rc);
	if (!rq)
		return rc;
	rq->rows = rows;
	bool ok = true;
	if (!is_prepared(pg, stmt)) {
		ok = PQsendPrepare(pg->conn, stmt->name, stmt->sql, stmt->nparams, NULL);
		rq->awaits_parse = ok;
		if (ok && pg->nstmts < TIDE_PG_MAX_STMTS) {
			pg->stmts[pg->nstmts++] = stmt;
			rq->prepared = stmt;
		}
	}
	/* libpq copies the parameters into its output buffer here. */
	ok = ok && PQsendQueryPrepared(pg->conn, stmt->name, stmt->nparams, values, NULL, NULL,
	                               result_format);
	rc = sent(pg, ok);
	if (pg->connected)
		single_row(pg); /* nothing else on the wire: the query is libpq's current command */
	return rc;
}

int tide_pg_exec(struct tide_pg *pg, const struct tide_pg_stmt *stmt, const char *const *values,
                 tide_pg_reply_cb cb, void *arg)
{
	return exec_stmt(pg, stmt, values, 0, NULL, cb, arg);
}

int tide_pg_exec_binary(struct tide_pg *pg, const struct tide_pg_stmt *stmt,
                        const char *const *values, tide_pg_reply_cb cb, void *arg)
{
	return exec_stmt(pg, stmt, values, 1, NULL, cb, arg);
}

int tide_pg_exec_rows(struct tide_pg *pg, const struct tide_pg_stmt *stmt,
                      const char *const *values, tide_pg_rows_cb rows, tide_pg_reply_cb cb,
                      void *arg)
{
	return exec_stmt(pg, stmt, values, 1, rows, cb, arg);
}

int tide_pg_exec_sql(struct tide_pg *pg, const char *sql, int nparams, const char *const *values,
                     tide_pg_reply_cb cb, void *arg)
{
	int rc;
	struct request *rq = pipeline_request(pg, cb, arg, &rc);
	if (!rq)
		return rc;
	/* Scripts repeat the same few statements: prepare each once per connection (named by
	 * its slot), so PostgreSQL parses and plans it once. */
	uint64_t h = tide_hash(sql, strlen(sql));
	int slot = -1, free_slot = -1;
	for (int i = 0; i < pg->ncached && slot < 0; i++) {
		if (pg->cached[i].sql && pg->cached[i].hash == h &&
		    strcmp(pg->cached[i].sql, sql) == 0)
			slot = i;
		else if (!pg->cached[i].sql && free_slot < 0)
			free_slot = i;
	}
	char name[32];
	bool ok = true;
	if (slot < 0 && (free_slot >= 0 || pg->ncached < TIDE_PG_MAX_CACHED)) {
		slot = free_slot >= 0 ? free_slot : pg->ncached++;
		pg->cached[slot].sql = strdup(sql);
		pg->cached[slot].hash = h;
		snprintf(name, sizeof(name), "tide_sql_%d", slot);
		ok = pg->cached[slot].sql && PQsendPrepare(pg->conn, name, sql, nparams, NULL);
		rq->cached = slot;
		rq->awaits_parse = true;
	}
	if (slot >= 0) {
		snprintf(name, sizeof(name), "tide_sql_%d", slot);
		ok = ok && PQsendQueryPrepared(pg->conn, name, nparams, values, NULL, NULL, 0);
	} else {
		ok = PQsendQueryParams(pg->conn, sql, nparams, NULL, values, NULL, NULL, 0);
	}
	return sent(pg, ok);
}

int tide_pg_script(struct tide_pg *pg, const char *sql, tide_pg_reply_cb cb, void *arg)
{
	if (!pg->connected || pg->closing || pg->mode == TIDE_PG_PIPELINE)
		return pg->closing ? TIDE_ECLOSED : TIDE_ECONN;
	char *copy = strdup(sql);
	struct request *rq = copy ? enqueue(pg, cb, arg) : NULL;
	if (!rq) {
		free(copy);
		return TIDE_ENOMEM;
	}
	rq->script = copy;
	send_script(pg);
	return 0;
}

int tide_pg_query(struct tide_pg *pg, const char *sql, int nparams, const char *const *values,
                  tide_pg_reply_cb cb, void *arg)
{
	if (!pg->connected || pg->closing || pg->mode != TIDE_PG_SIMPLE)
		return pg->closing ? TIDE_ECLOSED : TIDE_ECONN;
	/* The pointers, then the texts, in one allocation. */
	size_t size = (size_t)(nparams > 0 ? nparams : 1) * sizeof(char *);
	for (int i = 0; i < nparams; i++)
		size += values[i] ? strlen(values[i]) + 1 : 0;
	char *copy = strdup(sql);
	char **params = malloc(size);
	struct request *rq = copy && params ? enqueue(pg, cb, arg) : NULL;
	if (!rq) {
		free(copy);
		free(params);
		return TIDE_ENOMEM;
	}
	char *text = (char *)(params + (nparams > 0 ? nparams : 1));
	for (int i = 0; i < nparams; i++) {
		params[i] = NULL;
		if (values[i]) {
			size_t n = strlen(values[i]) + 1;
			params[i] = memcpy(text, values[i], n);
			text += n;
		}
	}
	rq->script = copy;
	rq->params = params;
	rq->nparams = nparams;
	send_script(pg);
	return 0;
}

int tide_pg_copy(struct tide_pg *pg, const char *sql, tide_pg_copy_cb source, void *source_arg,
                 tide_pg_reply_cb cb, void *arg)
{
	int rc = tide_pg_query(pg, sql, 0, NULL, cb, arg);
	if (rc)
		return rc;
	pg->tail->copy = source;
	pg->tail->copy_arg = source_arg;
	return 0;
}

int tide_pg_stream(struct tide_pg *pg, const char *sql, tide_pg_stream_cb on_data, void *data_arg,
                   tide_pg_reply_cb cb, void *arg)
{
	if (pg->mode != TIDE_PG_REPLICATION)
		return TIDE_EINVAL;
	int rc = tide_pg_script(pg, sql, cb, arg);
	if (rc)
		return rc;
	pg->tail->stream = on_data;
	pg->tail->stream_arg = data_arg;
	return 0;
}

int tide_pg_stream_send(struct tide_pg *pg, const char *data, int len)
{
	if (!pg->streaming || pg->closing)
		return TIDE_ECONN;
	if (PQputCopyData(pg->conn, data, len) != 1) {
		fail_later(pg, TIDE_ECONN, PQerrorMessage(pg->conn));
		return TIDE_ECONN;
	}
	flush(pg);
	return 0;
}

uv_loop_t *tide_pg_loop(const struct tide_pg *pg)
{
	return pg->loop;
}

void tide_pg_on_notify(struct tide_pg *pg, tide_pg_notify_cb cb, void *arg)
{
	pg->notify_cb = cb;
	pg->notify_arg = arg;
}

void tide_pg_close(struct tide_pg *pg)
{
	if (!pg || pg->closing)
		return;
	fail_all(pg, TIDE_ECLOSED, "the connection was closed");
	pg->closing = true;
	pg->ready_cb = NULL;
	unwatch(pg);
	if (pg->conn) {
		PQfinish(pg->conn);
		pg->conn = NULL;
	}
	uv_timer_stop(&pg->timer);
	uv_close((uv_handle_t *)&pg->timer, handle_closed);
}

bool tide_pg_ready(const struct tide_pg *pg)
{
	return pg->connected && !pg->closing;
}

bool tide_pg_flushed(const struct tide_pg *pg)
{
	return !pg->unsent;
}

bool tide_pg_idle(const struct tide_pg *pg)
{
	return !pg->head && !pg->failing;
}

const char *tide_pg_error(const struct tide_pg *pg)
{
	return pg->error;
}

char *tide_pg_text_array(const char *const *v, size_t n)
{
	size_t len = 3;
	for (size_t i = 0; i < n; i++)
		len += 2 * strlen(v[i]) + 3;
	char *s = malloc(len), *o = s;
	if (!s)
		return NULL;
	*o++ = '{';
	for (size_t i = 0; i < n; i++) {
		if (i)
			*o++ = ',';
		*o++ = '"';
		for (const char *c = v[i]; *c; c++) {
			if (*c == '"' || *c == '\\')
				*o++ = '\\';
			*o++ = *c;
		}
		*o++ = '"';
	}
	*o++ = '}';
	*o = '\0';
	return s;
}

/* Adds what a user can do about the errors that mean "this database has no tide schema". */
const char *tide_pg_explain(const struct tide_pg_reply *reply, char *buf, size_t n)
{
	if (strcmp(reply->sqlstate, "42883") == 0 || strcmp(reply->sqlstate, "42P01") == 0) {
		snprintf(buf, n, "%s (is the database migrated? run `tide migrate`)", reply->err);
		return buf;
	}
	return reply->err;
}
