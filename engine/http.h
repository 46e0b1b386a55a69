/* http.h — the daemon's HTTP service: H2O (HTTP/1.1 and HTTP/2) on the daemon's own libuv
 * loop. http.c listens, checks bearer tokens, routes, and replies in JSON; each route lives
 * in a file of its own concern: http_streams.c (appends, stream and global-log reads),
 * http_subscribe.c (the live log as Server-Sent Events), http_commands.c (deciders),
 * http_processors.c, http_documents.c, http_metrics.c, http_dashboard.c. Every route answers from
 * the loop: database work goes through a pool of pipelined stores, never a blocking call. */
#ifndef TIDE_HTTP_H
#define TIDE_HTTP_H

#define H2O_USE_LIBUV 1
#include <cJSON.h>
#include <h2o.h>
#include <stdbool.h>
#include <stddef.h>

#include "tide.h"

/* What a token may do; a request needs its route's scope. */
enum {
	TIDE_SCOPE_READ = 1,    /* reads, the live log, processors, documents, metrics */
	TIDE_SCOPE_APPEND = 2,  /* POST /streams/{id} */
	TIDE_SCOPE_COMMAND = 4, /* POST /commands/... */
	TIDE_SCOPE_ADMIN = 8,   /* everything */
};

#define TIDE_HTTP_SHA256_BYTES 32

/* A bearer token as the configuration gives it: a name for logs (never the secret) and
 * the SHA-256 of the secret (the configuration may hold either; only the hash is kept). */
struct tide_http_token {
	char name[64];
	unsigned char sha256[TIDE_HTTP_SHA256_BYTES];
	unsigned scopes;
};

struct tide_http_opts {
	uv_loop_t *loop;
	const char *url;    /* the database */
	const char *listen; /* HOST:PORT, [IPV6]:PORT */
	/* Serve a non-loopback address without tokens (else tide_http_start refuses). */
	bool insecure;
	const struct tide_http_token *tokens;
	size_t ntokens;
	int connections; /* database connections of the request pool; 0: the default */
	/* Where POST /commands/{decider}/... finds the decider's script: DIR/DECIDER.lua; the
	 * inline projections among them (of app apps[i]) run in its appends. */
	const char *const *dirs;
	const char *const *apps;
	int ndirs;
	unsigned cpu_ms; /* a command's CPU and memory limits, as processors' */
	size_t memory;
	/* Live streams (http_sse.h): a heartbeat after this long idle, and how long a client
	 * may accept nothing while bytes wait before it is dropped; 0: the defaults. */
	unsigned heartbeat_ms, stall_ms;
	/* How often an idle subscription reads anyway (a lost wake-up): the daemon's poll. */
	unsigned poll_ms;
};

struct tide_http;

/* Checks the options without side effects: the address parses, and it is loopback unless
 * tokens are configured or insecure is set. 0, or -1 with err. */
int tide_http_check(const struct tide_http_opts *opts, char *err, size_t n);

/* Listens and connects the request pool. 0, or -1 with err (the check above, or the address
 * is in use or not this machine's). */
int tide_http_start(const struct tide_http_opts *opts, struct tide_http **out, char *err, size_t n);

/* The address it listens on, HOST:PORT (the port chosen when the options said 0). */
void tide_http_address(const struct tide_http *http, char *buf, size_t n);

/* Stops listening, tells the long-lived calls (on_stop: live streams end), waits for the
 * calls in flight (2 s at most), ends open connections and closes the pool; the loop ends
 * once they are closed. NULL: nothing. */
void tide_http_stop(struct tide_http *http);

/* New events may be in the log (a notification, or the daemon's log probe): tells the
 * calls waiting for them (on_wake). NULL: nothing. */
void tide_http_wake(struct tide_http *http);

/* Appends over HTTP run set's inline projections from now on (referenced; NULL: none), as
 * reactors' ctx.append does: `tide run` gives the current set of its directories. */
struct tide_inline_set;
void tide_http_use_inline(struct tide_http *http, struct tide_inline_set *set);

/* Reads over HTTP (GET /streams/{id}, GET /log, the live subscription) hand on events upcast
 * by the upcasters loaded in vm (taken: closed by http; NULL: none), and commands load the
 * upcaster files (paths "\n"-joined, or error: why they cannot be used) beside their
 * deciders; signature tells one set from another. `tide run` gives its directories'. */
struct tide_vm;
void tide_http_use_upcasters(struct tide_http *http, struct tide_vm *vm, const char *paths,
                             const char *error, uint64_t signature);

/* Adds the scope called name (read, append, command, admin) to *scopes; -1 when there is
 * no such scope. */
int tide_http_scopes(const char *name, unsigned *scopes);

/* The SHA-256 of text (for tokens). */
void tide_http_sha256(const char *text, size_t len, unsigned char out[TIDE_HTTP_SHA256_BYTES]);

/* --- for the routes (http_*.c) -------------------------------------------------------- */

/* One request in flight. It outlives the client: when the client goes away first, req
 * turns NULL and the reply is dropped. Each reply function ends the call (frees it). */
struct tide_http_call {
	struct tide_http *http;
	h2o_req_t *req;      /* NULL once the client has gone */
	const char *args[3]; /* the route's {…} path segments, percent-decoded */
	int nargs;
	const char *partition; /* ?partition=, else NULL (the default) */
	unsigned scopes;       /* what its token may do */
	uint64_t started;      /* uv_hrtime() at arrival */
	int route;             /* index in the route table (metrics) */
	int status;            /* the reply's status, once known (metrics) */
	void *route_state;     /* a route's own, freed by it */
	/* A long-lived call (a live stream) hears of new events in the log (tide_http_wake) and
	 * of the server stopping (tide_http_stop: end soon) through these; NULL: not. */
	void (*on_wake)(void *arg);
	void *wake_arg;
	void (*on_stop)(void *arg);
	void *stop_arg;
	struct tide_http_call *prev, *next; /* the calls in flight */
	struct tide_http_link *link;
	/* decoded query parameters, and the strings above: one block */
	int nquery;
	const char *query[16][2];
	char *strings;
};

/* A query parameter's decoded value, or NULL when absent. */
const char *tide_http_param(const struct tide_http_call *c, const char *name);

/* The request body (may be empty). */
h2o_iovec_t tide_http_body(const struct tide_http_call *c);

/* A store of the pool, connected, working in the call's partition; NULL (and the call
 * answered 503) when the database is unreachable. */
struct tide_store *tide_http_store(struct tide_http_call *c);

/* A connected store of the pool without a call (or without replying): NULL when the
 * database is unreachable. Its partition is whatever the last call set: set it, or send
 * only statements that do not depend on it. */
struct tide_store *tide_http_store_if_up(struct tide_http *http);

/* Replies with body as JSON (freed) and ends the call. */
void tide_http_reply_json(struct tide_http_call *c, int status, cJSON *body);

/* Replies with a body of the given type (copied) and ends the call. */
void tide_http_reply(struct tide_http_call *c, int status, const char *content_type,
                     const char *body, size_t len);

/* {"error":{"kind":KIND,"message":MESSAGE}}; *error (when not NULL) is the inner object, for
 * more fields. Touches nothing of a server: any thread may build one. */
cJSON *tide_http_error_body(const char *kind, const char *message, cJSON **error);

/* Replies {"error":{"kind":KIND,"message":...}} and ends the call. */
void tide_http_fail(struct tide_http_call *c, int status, const char *kind, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* The same for a TIDE_E* code: 400 bad input, 409 conflict, 503 database unreachable or the
 * outcome unknown, 422 a failing script, 500 the rest; kind is tide_strerror(code). */
void tide_http_fail_code(struct tide_http_call *c, int code, const char *err);

/* Ends the call without replying (a route that answers through its own generator, or a
 * client that has gone). */
void tide_http_call_end(struct tide_http_call *c);

/* The database URL, and the daemon's command settings, for routes. */
const struct tide_http_opts *tide_http_opts(const struct tide_http *http);

/* What a route keeps for the server's life — POST /commands' worker threads, started by
 * its first call (http_commands.c) — and how to stop it: the server's stop calls stop(state)
 * once it stops waiting for calls in flight (the route then answers what it still holds). */
struct tide_http_workers {
	void *state;
	void (*stop)(void *state);
	/* The daemon's upcasters changed (tide_http_use_upcasters); may be NULL. */
	void (*use_upcasters)(void *state, const char *paths, const char *error, uint64_t sig);
};
struct tide_http_workers *tide_http_workers(struct tide_http *http);
/* The VM the upcasters of reads are loaded in, or NULL (tide_http_use_upcasters). */
struct tide_vm *tide_http_upcast_vm(struct tide_http *http);
/* A read's messages upcast by the daemon's upcasters: *messages is r's own when there are
 * none, else up's (release up with tide_upcast_result_free either way). 0, or TIDE_ESCRIPT
 * (an upcaster failed, or the upcasters cannot be used) / TIDE_ENOMEM with err. */
struct tide_upcast_result;
int tide_http_upcast(struct tide_http *http, const struct tide_read_result *r,
                     struct tide_upcast_result *up, const struct tide_message **messages, char *err,
                     size_t n);
/* The upcasters commands load: copies (malloc'd; NULL for none) and their signature. */
void tide_http_upcasters(struct tide_http *http, char **paths, char **error, uint64_t *sig);
/* Whether the server is stopping (work that would outlive it is refused). */
bool tide_http_stopping(const struct tide_http *http);
/* What GET /processors answers, {"processors": [...], "held_back_by": {...}|null}, built
 * from two requests on s: cb gets the body (then its own) or a TIDE_E* status and err.
 * 0, or TIDE_ECONN or TIDE_ENOMEM (and cb is not called). http_processors.c. */
typedef void (*tide_http_processors_cb)(cJSON *body, int status, const char *err, void *arg);
int tide_http_processors_query(struct tide_store *s, tide_http_processors_cb cb, void *arg);

/* Routes (one per file of its concern). Each is called on the loop with a call whose
 * token has the route's scope; it replies, now or later, exactly once. */
void tide_http_append(struct tide_http_call *c);      /* POST /streams/{id} */
void tide_http_read_stream(struct tide_http_call *c); /* GET /streams/{id} */
void tide_http_archive(struct tide_http_call *c);     /* POST /streams/{id}/archive */
void tide_http_read_log(struct tide_http_call *c);    /* GET /log */
void tide_http_processors(struct tide_http_call *c);  /* GET /processors */
void tide_http_document(struct tide_http_call *c);    /* GET /documents/{c}/{id} */
void tide_http_documents(struct tide_http_call *c);   /* GET /documents/{c} */
void tide_http_metrics(struct tide_http_call *c);     /* GET /metrics (http_metrics.c) */
void tide_http_command(struct tide_http_call *c);     /* POST /commands/{decider}/{stream} */
void tide_http_subscribe(struct tide_http_call *c);   /* GET /log/subscribe */
void tide_http_dashboard(struct tide_http_call *c);   /* GET / */
void tide_http_live(struct tide_http_call *c);        /* GET /live */

#endif
