/* http.c — the daemon's HTTP server (http.h): listens on the loop through H2O, checks the
 * bearer token against the route's scope, splits and decodes the path and the query, hands
 * the call to its route, and keeps the pool of database connections routes work on. */
#include "http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "activity.h"
#include "inline.h"
#include "log.h"
#include "lua_vm.h"
#include "metrics.h"
#include "store.h"
#include "upcast.h"

#define DEFAULT_CONNECTIONS 8
#define MAX_CONNECTIONS     64
#define MAX_BODY_BYTES      (64u << 20)
#define STOP_GRACE_MS       2000

/* A client's socket, known so that stopping can end connections H2O keeps alive. */
struct conn {
	uv_tcp_t tcp;
	struct tide_http *http; /* not in tcp.data: H2O's socket takes that over */
	struct conn *prev, *next;
	bool parked; /* accepted before the pool settled: not H2O's yet */
};

/* Links a request (in its pool) to its call: H2O disposes of the request when the client
 * goes away, and the call, whose database work may still be in flight, must learn it. */
struct tide_http_link {
	struct tide_http_call *call;
};

struct tide_http {
	struct tide_http_opts opts;
	char *url, *listen;
	struct tide_http_token *tokens;
	h2o_globalconf_t config;
	h2o_context_t ctx;
	h2o_accept_ctx_t accept;
	h2o_handler_t *handler;
	uv_tcp_t listener;
	struct conn *conns;
	struct tide_http_call *calls_list; /* in flight */
	struct tide_store **pool;
	/* The daemon's inline projections, which appends over HTTP run (tide_http_use_inline),
	 * and the set each store of the pool was last given. */
	struct tide_inline_set *inline_set, **pool_inline;
	/* The daemon's upcasters (tide_http_use_upcasters): loaded for reads, files for
	 * commands. */
	struct tide_vm *upcast_vm;
	char *upcast_paths, *upcast_error;
	uint64_t upcast_sig;
	int npool, next;
	struct tide_http_workers workers;
	uv_timer_t reconnect, stop_timer;
	uint64_t stop_deadline;
	int calls; /* in flight */
	int timers_closed;
	/* Settled: a store of the pool connected, every one failed, or a second passed. Until
	 * then accepted connections wait (parked), rather than be told the database is
	 * unreachable while the pool is still connecting. */
	bool pool_settled;
	int pool_failures;
	bool stopping;
};

/* The route table: a pattern's "{name}" (or "*") segment is an argument; the pattern is the
 * route's label on /metrics. */
struct route {
	const char *method;
	const char *pattern;
	unsigned scope; /* 0: public */
	void (*run)(struct tide_http_call *c);
};

static const struct route routes[] = {
        {"POST", "/streams/{id}", TIDE_SCOPE_APPEND, tide_http_append},
        {"GET", "/streams/{id}", TIDE_SCOPE_READ, tide_http_read_stream},
        {"POST", "/streams/{id}/archive", TIDE_SCOPE_APPEND, tide_http_archive},
        {"GET", "/log", TIDE_SCOPE_READ, tide_http_read_log},
        {"GET", "/log/subscribe", TIDE_SCOPE_READ, tide_http_subscribe},
        {"GET", "/processors", TIDE_SCOPE_READ, tide_http_processors},
        {"GET", "/documents/{collection}", TIDE_SCOPE_READ, tide_http_documents},
        {"GET", "/documents/{collection}/{id}", TIDE_SCOPE_READ, tide_http_document},
        {"GET", "/metrics", TIDE_SCOPE_READ, tide_http_metrics},
        {"POST", "/commands/{decider}/{stream}", TIDE_SCOPE_COMMAND, tide_http_command},
        {"GET", "/", 0, tide_http_dashboard},
        {"GET", "/live", TIDE_SCOPE_READ, tide_http_live},
};
#define NROUTES ((int)(sizeof(routes) / sizeof(routes[0])))

/* --- tokens ----------------------------------------------------------------------------- */

void tide_http_sha256(const char *text, size_t len, unsigned char out[TIDE_HTTP_SHA256_BYTES])
{
	unsigned int n = 0;
	EVP_Digest(text, len, out, &n, EVP_sha256(), NULL);
}

int tide_http_scopes(const char *name, unsigned *out)
{
	static const char *const names[] = {"read", "append", "command", "admin"};
	for (unsigned i = 0; i < 4; i++)
		if (strcmp(name, names[i]) == 0) {
			*out |= 1u << i;
			return 0;
		}
	return -1;
}

/* The scopes of the request's token; -1: a token was given but is not known (401), -2:
 * none was given while tokens are configured (401). */
static long token_scopes(struct tide_http *http, h2o_req_t *req, const char *query_token)
{
	if (http->opts.ntokens == 0)
		return TIDE_SCOPE_READ | TIDE_SCOPE_APPEND | TIDE_SCOPE_COMMAND | TIDE_SCOPE_ADMIN;
	const char *secret = NULL;
	size_t len = 0;
	ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
	if (i != -1) {
		h2o_iovec_t v = req->headers.entries[i].value;
		if (v.len > 7 && strncasecmp(v.base, "Bearer ", 7) == 0) {
			secret = v.base + 7;
			len = v.len - 7;
		} else {
			return -1;
		}
	} else if (query_token) {
		secret = query_token;
		len = strlen(query_token);
	}
	if (!secret)
		return -2;
	unsigned char hash[TIDE_HTTP_SHA256_BYTES];
	tide_http_sha256(secret, len, hash);
	long scopes = -1;
	for (size_t t = 0; t < http->opts.ntokens; t++) /* no early exit: constant time */
		if (CRYPTO_memcmp(hash, http->tokens[t].sha256, sizeof(hash)) == 0)
			scopes = http->tokens[t].scopes;
	if (scopes > 0 && (scopes & TIDE_SCOPE_ADMIN))
		scopes |= TIDE_SCOPE_READ | TIDE_SCOPE_APPEND | TIDE_SCOPE_COMMAND;
	return scopes;
}

/* --- calls ------------------------------------------------------------------------------ */

static void on_req_disposed(void *p)
{
	struct tide_http_link *link = p;
	if (link->call) {
		if (!link->call->status) /* a route that answered through its own generator */
			link->call->status = link->call->req->res.status;
		link->call->req = NULL;
		link->call->link = NULL;
	}
}

/* The request's method as a label: one of the usual, so that clients cannot grow the
 * series without bound. */
static const char *method_label(const h2o_req_t *req)
{
	static const char *const methods[] = {"GET",    "HEAD",    "POST", "PUT",
	                                      "DELETE", "OPTIONS", "PATCH"};
	for (size_t i = 0; req && i < sizeof(methods) / sizeof(methods[0]); i++)
		if (req->method.len == strlen(methods[i]) &&
		    memcmp(req->method.base, methods[i], req->method.len) == 0)
			return methods[i];
	return "OTHER";
}

/* Every call ends here: /metrics counts it by route and status code. */
static void call_free(struct tide_http_call *c)
{
	if (!c->status && c->req)
		c->status = c->req->res.status;
	/* No status: the client went away before any reply; 499 is nginx's name for that. */
	const struct route *r = c->route >= 0 ? &routes[c->route] : NULL;
	tide_metrics_http(r ? r->method : method_label(c->req), r ? r->pattern : "unmatched",
	                  c->status ? c->status : 499, uv_hrtime() - c->started);
	if (c->link)
		c->link->call = NULL;
	if (c->prev)
		c->prev->next = c->next;
	else
		c->http->calls_list = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->http->calls--;
	free(c->strings);
	free(c);
}

void tide_http_call_end(struct tide_http_call *c)
{
	call_free(c);
}

const struct tide_http_opts *tide_http_opts(const struct tide_http *http)
{
	return &http->opts;
}

struct tide_http_workers *tide_http_workers(struct tide_http *http)
{
	return &http->workers;
}

bool tide_http_stopping(const struct tide_http *http)
{
	return http->stopping;
}

const char *tide_http_param(const struct tide_http_call *c, const char *name)
{
	for (int i = 0; i < c->nquery; i++)
		if (strcmp(c->query[i][0], name) == 0)
			return c->query[i][1];
	return NULL;
}

h2o_iovec_t tide_http_body(const struct tide_http_call *c)
{
	return c->req ? c->req->entity : h2o_iovec_init("", 0);
}

static int hex(int ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	ch |= 0x20;
	return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* Percent-decodes src[0..len) to dst (NUL-terminated); '+' is a space in a query. NULL
 * when an escape is broken or decodes to a NUL byte. */
static char *decode(char *dst, const char *src, size_t len, bool query)
{
	char *out = dst;
	for (size_t i = 0; i < len; i++) {
		if (src[i] == '%') {
			int hi = i + 2 < len ? hex((unsigned char)src[i + 1]) : -1;
			int lo = i + 2 < len ? hex((unsigned char)src[i + 2]) : -1;
			if (hi < 0 || lo < 0 || (hi | lo) == 0)
				return NULL;
			*out++ = (char)(hi << 4 | lo);
			i += 2;
		} else {
			*out++ = query && src[i] == '+' ? ' ' : src[i];
		}
	}
	*out = '\0';
	return dst;
}

/* --- replies ---------------------------------------------------------------------------- */

static const char *reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 201: return "Created";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 413: return "Payload Too Large";
	case 422: return "Unprocessable Entity";
	case 503: return "Service Unavailable";
	default: return status < 500 ? "Error" : "Internal Server Error";
	}
}

void tide_http_reply(struct tide_http_call *c, int status, const char *content_type,
                     const char *body, size_t len)
{
	h2o_req_t *req = c->req;
	c->status = status;
	if (req) {
		req->res.status = status;
		req->res.reason = reason(status);
		h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
		               content_type, strlen(content_type));
		if (status == 401)
			h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE,
			               NULL, H2O_STRLIT("Bearer realm=\"tide\""));
		h2o_send_inline(req, body, len);
	}
	call_free(c);
}

void tide_http_reply_json(struct tide_http_call *c, int status, cJSON *body)
{
	char *text = body ? cJSON_PrintUnformatted(body) : NULL;
	cJSON_Delete(body);
	if (!text) {
		static const char oom[] =
		        "{\"error\":{\"kind\":\"memory\",\"message\":\"out of memory\"}}\n";
		tide_http_reply(c, 500, "application/json", oom, sizeof(oom) - 1);
		return;
	}
	size_t len = strlen(text);
	char *line = realloc(text, len + 2);
	if (line) {
		line[len++] = '\n';
		line[len] = '\0';
		text = line;
	}
	tide_http_reply(c, status, "application/json", text, len);
	free(text);
}

void tide_http_fail(struct tide_http_call *c, int status, const char *kind, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	tide_http_reply_json(c, status, tide_http_error_body(kind, msg, NULL));
}

cJSON *tide_http_error_body(const char *kind, const char *message, cJSON **error)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *e = cJSON_AddObjectToObject(o, "error");
	cJSON_AddStringToObject(e, "kind", kind);
	cJSON_AddStringToObject(e, "message", message);
	if (error)
		*error = e;
	return o;
}

void tide_http_fail_code(struct tide_http_call *c, int code, const char *err)
{
	int status;
	switch (code) {
	case TIDE_EINVAL: status = 400; break;
	case TIDE_ECONFLICT: status = 409; break;
	case TIDE_ECONN:
	case TIDE_EUNKNOWN:
	case TIDE_ECLOSED: status = 503; break;
	case TIDE_ESCRIPT: status = 422; break;
	case TIDE_EARCHIVED: status = 410; break;
	default: status = 500;
	}
	tide_http_fail(c, status, tide_strerror(code), "%s", err ? err : tide_strerror(code));
}

/* --- the pool --------------------------------------------------------------------------- */

static void settle(struct tide_http *http);

static void on_pool_open(struct tide_store *s, int status, const char *err, void *arg)
{
	(void)s;
	struct tide_http *http = arg;
	if (status && status != TIDE_ECLOSED && !http->stopping)
		tide_log("warn", "http.database_unreachable", "error", err, (char *)NULL);
	if (status == 0 || ++http->pool_failures >= http->npool)
		settle(http);
}

/* Connects again whatever lost its connection, once a second. */
static void on_reconnect(uv_timer_t *t)
{
	struct tide_http *http = t->data;
	settle(http);
	for (int i = 0; i < http->npool; i++)
		if (!tide_store_connected(http->pool[i]) &&
		    tide_store_reconnect(http->pool[i], on_pool_open, http) != 0)
			continue; /* still failing the old connection's requests: next time */
}

/* A connected store of the pool, one not busy with an inline append if there is one (a
 * request sent behind such an append runs inside its transaction), given the current
 * inline projections when it is free to take them. */
struct tide_store *tide_http_store_if_up(struct tide_http *http)
{
	for (int pass = 0; pass < 2; pass++)
		for (int n = 0; n < http->npool; n++) {
			int i = http->next++ % http->npool;
			struct tide_store *s = http->pool[i];
			if (!tide_store_connected(s) || (pass == 0 && tide_store_inline_busy(s)))
				continue;
			if (http->pool_inline[i] != http->inline_set &&
			    !tide_store_inline_busy(s) &&
			    tide_store_use_inline_set(s, http->inline_set) == 0)
				http->pool_inline[i] = http->inline_set;
			return s;
		}
	return NULL;
}

void tide_http_use_upcasters(struct tide_http *http, struct tide_vm *vm, const char *paths,
                             const char *error, uint64_t signature)
{
	if (!http) {
		tide_vm_close(vm);
		return;
	}
	tide_vm_close(http->upcast_vm);
	http->upcast_vm = vm;
	free(http->upcast_paths);
	free(http->upcast_error);
	http->upcast_paths = paths && *paths ? strdup(paths) : NULL;
	http->upcast_error = error ? strdup(error) : NULL;
	http->upcast_sig = signature;
	if (http->workers.state && http->workers.use_upcasters)
		http->workers.use_upcasters(http->workers.state, http->upcast_paths,
		                            http->upcast_error, signature);
}

struct tide_vm *tide_http_upcast_vm(struct tide_http *http)
{
	return http->upcast_vm;
}

int tide_http_upcast(struct tide_http *http, const struct tide_read_result *r,
                     struct tide_upcast_result *up, const struct tide_message **messages, char *err,
                     size_t n)
{
	memset(up, 0, sizeof(*up));
	*messages = r->messages;
	if (http->upcast_error) {
		snprintf(err, n, "the upcasters cannot be used: %s", http->upcast_error);
		return TIDE_ESCRIPT;
	}
	if (!http->upcast_vm || r->count == 0)
		return 0;
	int rc = tide_upcast_messages(http->upcast_vm, r->messages, r->count, up, err, n);
	if (rc == 0)
		*messages = up->messages;
	return rc;
}

void tide_http_upcasters(struct tide_http *http, char **paths, char **error, uint64_t *sig)
{
	*paths = http->upcast_paths ? strdup(http->upcast_paths) : NULL;
	*error = http->upcast_error ? strdup(http->upcast_error) : NULL;
	*sig = http->upcast_sig;
}

void tide_http_use_inline(struct tide_http *http, struct tide_inline_set *set)
{
	if (!http || set == http->inline_set)
		return;
	if (set)
		tide_inline_set_ref(set);
	if (http->inline_set)
		tide_inline_set_unref(http->inline_set);
	http->inline_set = set;
}

struct tide_store *tide_http_store(struct tide_http_call *c)
{
	struct tide_store *s = tide_http_store_if_up(c->http);
	if (s) {
		int rc = tide_store_set_partition(s, c->partition ? c->partition
		                                                  : TIDE_DEFAULT_PARTITION);
		if (rc) { /* a partition name that breaks the rules */
			tide_http_fail(c, 400, "invalid", "partition: %s", tide_store_error(s));
			return NULL;
		}
		return s;
	}
	tide_http_fail(c, 503, "connection",
	               "the database is unreachable; tide is reconnecting: try again later");
	return NULL;
}

/* --- routing ---------------------------------------------------------------------------- */

/* Whether the path's segments match pattern; the argument segments are stored. */
static bool match(const char *pattern, char **segs, int nsegs, struct tide_http_call *c)
{
	int i = 0;
	c->nargs = 0;
	for (const char *p = pattern + 1; *p || i < nsegs;) {
		if (i >= nsegs || !*p)
			return false;
		const char *end = strchr(p, '/');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if ((len == 1 && *p == '*') || (len > 2 && *p == '{' && p[len - 1] == '}')) {
			if (!segs[i][0] || c->nargs == 3)
				return false;
			c->args[c->nargs++] = segs[i];
		} else if (strlen(segs[i]) != len || memcmp(segs[i], p, len) != 0) {
			return false;
		}
		i++;
		p += len + (end ? 1 : 0);
		if (!end)
			return i == nsegs;
	}
	return i == nsegs;
}

static bool method_is(h2o_req_t *req, const char *m)
{
	return req->method.len == strlen(m) && memcmp(req->method.base, m, req->method.len) == 0;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
	struct tide_http *http = *(struct tide_http **)(self + 1);
	struct tide_http_call *c = calloc(1, sizeof(*c));
	/* Room for every decoded segment and parameter: never longer than the path. */
	char *strings = malloc(req->path.len * 2 + 16);
	if (!c || !strings) {
		free(c);
		free(strings);
		h2o_send_error_generic(req, 500, "Internal Server Error", "out of memory", 0);
		return 0;
	}
	c->http = http;
	c->req = req;
	c->strings = strings;
	c->started = uv_hrtime();
	c->route = -1;
	http->calls++;
	c->next = http->calls_list;
	if (c->next)
		c->next->prev = c;
	http->calls_list = c;
	c->link = h2o_mem_alloc_shared(&req->pool, sizeof(*c->link), on_req_disposed);
	c->link->call = c;

	size_t path_len = req->query_at != SIZE_MAX ? req->query_at : req->path.len;
	char *segs[8];
	int nsegs = 0;
	char *out = strings;
	bool bad = false, too_deep = false;
	for (size_t i = 1; i <= path_len && path_len > 1;) {
		size_t end = i;
		while (end < path_len && req->path.base[end] != '/')
			end++;
		if (nsegs == 8) {
			too_deep = true;
			break;
		}
		if (!decode(out, req->path.base + i, end - i, false))
			bad = true;
		segs[nsegs++] = out;
		out += end - i + 1;
		i = end + 1;
	}
	if (req->query_at != SIZE_MAX) {
		const char *q = req->path.base + req->query_at + 1;
		const char *qend = req->path.base + req->path.len;
		while (q < qend && c->nquery < 16) {
			const char *amp = memchr(q, '&', (size_t)(qend - q));
			const char *pend = amp ? amp : qend;
			const char *eq = memchr(q, '=', (size_t)(pend - q));
			const char *kend = eq ? eq : pend;
			if (kend > q) {
				char *k = out;
				if (!decode(out, q, (size_t)(kend - q), true))
					bad = true;
				out += kend - q + 1;
				char *v = out;
				if (!decode(out, eq ? eq + 1 : pend,
				            eq ? (size_t)(pend - eq - 1) : 0, true))
					bad = true;
				out += (eq ? pend - eq - 1 : 0) + 1;
				c->query[c->nquery][0] = k;
				c->query[c->nquery][1] = v;
				c->nquery++;
			}
			q = pend + 1;
		}
	}
	if (bad) {
		tide_http_fail(c, 400, "invalid",
		               "the path or the query has a broken %%-escape or a %%00");
		return 0;
	}
	int found = -1;
	bool path_known = false;
	for (int r = 0; r < NROUTES && found < 0 && !too_deep; r++)
		if (match(routes[r].pattern, segs, nsegs, c)) {
			path_known = true;
			if (method_is(req, routes[r].method))
				found = r;
		}
	if (found < 0) {
		if (path_known)
			tide_http_fail(c, 405, "method", "%.*s is not allowed on %.*s",
			               (int)req->method.len, req->method.base, (int)path_len,
			               req->path.base);
		else
			tide_http_fail(c, 404, "not_found",
			               "no route %.*s %.*s (see the README's HTTP API)",
			               (int)req->method.len, req->method.base, (int)path_len,
			               req->path.base);
		return 0;
	}
	match(routes[found].pattern, segs, nsegs, c); /* its arguments, not a later try's */
	c->route = found;
	const struct route *route = &routes[found];
	if (route->scope) {
		long scopes = token_scopes(http, req, tide_http_param(c, "access_token"));
		if (scopes < 0) {
			tide_http_fail(c, 401, "unauthorized",
			               scopes == -2 ? "this server wants a bearer token "
			                              "(Authorization: Bearer TOKEN)"
			                            : "the bearer token is not known here");
			return 0;
		}
		c->scopes = (unsigned)scopes;
		if (!(c->scopes & route->scope)) {
			tide_http_fail(c, 403, "forbidden",
			               "the token may not do this: %s %s wants the %s scope",
			               route->method, route->pattern,
			               route->scope == TIDE_SCOPE_APPEND    ? "append"
			               : route->scope == TIDE_SCOPE_COMMAND ? "command"
			               : route->scope == TIDE_SCOPE_ADMIN   ? "admin"
			                                                    : "read");
			return 0;
		}
	}
	c->partition = tide_http_param(c, "partition");
	if (c->partition && !c->partition[0]) {
		tide_http_fail(c, 400, "invalid", "partition must not be empty");
		return 0;
	}
	route->run(c);
	return 0;
}

/* --- listening -------------------------------------------------------------------------- */

static void on_conn_closed(uv_handle_t *h)
{
	struct conn *conn = (struct conn *)h;
	struct tide_http *http = conn->http;
	if (conn->prev)
		conn->prev->next = conn->next;
	else
		http->conns = conn->next;
	if (conn->next)
		conn->next->prev = conn->prev;
	free(conn);
}

static void serve(struct tide_http *http, struct conn *conn)
{
	h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)&conn->tcp, on_conn_closed);
	h2o_accept(&http->accept, sock);
}

static void on_accept(uv_stream_t *listener, int status)
{
	struct tide_http *http = listener->data;
	if (status != 0 || http->stopping)
		return;
	struct conn *conn = calloc(1, sizeof(*conn));
	if (!conn)
		return;
	uv_tcp_init(listener->loop, &conn->tcp);
	conn->http = http;
	conn->next = http->conns;
	if (http->conns)
		http->conns->prev = conn;
	http->conns = conn;
	if (uv_accept(listener, (uv_stream_t *)&conn->tcp) != 0) {
		uv_close((uv_handle_t *)&conn->tcp, on_conn_closed);
		return;
	}
	uv_tcp_nodelay(&conn->tcp, 1);
	if (http->pool_settled)
		serve(http, conn);
	else
		conn->parked = true;
}

/* Hands the connections accepted while the pool was connecting to H2O. */
static void settle(struct tide_http *http)
{
	if (http->pool_settled)
		return;
	http->pool_settled = true;
	for (struct conn *c = http->conns; c; c = c->next)
		if (c->parked) {
			c->parked = false;
			serve(http, c);
		}
}

/* HOST:PORT or [V6]:PORT into addr; whether the host is a loopback address. */
static int parse_listen(const char *text, struct sockaddr_storage *addr, bool *loopback, char *err,
                        size_t n)
{
	char host[128];
	const char *colon = strrchr(text, ':');
	if (!colon || colon == text || colon - text >= (long)sizeof(host)) {
		snprintf(err, n, "--http wants HOST:PORT (127.0.0.1:8080, [::1]:8080), got '%s'",
		         text);
		return -1;
	}
	memcpy(host, text, (size_t)(colon - text));
	host[colon - text] = '\0';
	char *end;
	long port = strtol(colon + 1, &end, 10);
	if (*end || end == colon + 1 || port < 0 || port > 65535) {
		snprintf(err, n, "--http wants a port of 0 to 65535, got '%s'", colon + 1);
		return -1;
	}
	size_t hl = strlen(host);
	if (host[0] == '[' && host[hl - 1] == ']') {
		host[hl - 1] = '\0';
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)addr;
		if (uv_ip6_addr(host + 1, (int)port, a6) != 0) {
			snprintf(err, n, "--http: '%s' is not an IPv6 address", host + 1);
			return -1;
		}
		*loopback = IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr);
		return 0;
	}
	if (strcmp(host, "localhost") == 0)
		snprintf(host, sizeof(host), "127.0.0.1");
	struct sockaddr_in *a4 = (struct sockaddr_in *)addr;
	if (uv_ip4_addr(host, (int)port, a4) != 0) {
		snprintf(err, n,
		         "--http: '%s' is not an IPv4 address (use 0.0.0.0, 127.0.0.1, [::1], ...)",
		         host);
		return -1;
	}
	*loopback = (ntohl(a4->sin_addr.s_addr) >> 24) == 127;
	return 0;
}

static void http_free(struct tide_http *http)
{
	tide_vm_close(http->upcast_vm);
	free(http->upcast_paths);
	free(http->upcast_error);
	if (http->inline_set)
		tide_inline_set_unref(http->inline_set);
	free(http->pool_inline);
	free(http->pool);
	free(http->tokens);
	free(http->url);
	free(http->listen);
	free(http);
}

static void on_listener_failed(uv_handle_t *h)
{
	http_free(h->data);
}

int tide_http_check(const struct tide_http_opts *opts, char *err, size_t n)
{
	struct sockaddr_storage addr;
	bool loopback = false;
	if (parse_listen(opts->listen, &addr, &loopback, err, n) != 0)
		return -1;
	if (!loopback && opts->ntokens == 0 && !opts->insecure) {
		snprintf(err, n,
		         "--http %s is not a loopback address and no token is configured: anyone "
		         "who reaches it could read and append; configure http.tokens (see `tide "
		         "run --help`), or pass --http-insecure",
		         opts->listen);
		return -1;
	}
	return 0;
}

int tide_http_start(const struct tide_http_opts *opts, struct tide_http **out, char *err, size_t n)
{
	struct sockaddr_storage addr = {0};
	bool loopback;
	if (tide_http_check(opts, err, n) != 0 ||
	    parse_listen(opts->listen, &addr, &loopback, err, n))
		return -1;
	struct tide_http *http = calloc(1, sizeof(*http));
	if (!http) {
		snprintf(err, n, "out of memory");
		return -1;
	}
	http->opts = *opts;
	http->url = strdup(opts->url);
	http->listen = strdup(opts->listen);
	http->opts.url = http->url;
	http->opts.listen = http->listen;
	http->npool = opts->connections > 0 ? opts->connections : DEFAULT_CONNECTIONS;
	if (http->npool > MAX_CONNECTIONS)
		http->npool = MAX_CONNECTIONS;
	http->pool = calloc((size_t)http->npool, sizeof(*http->pool));
	http->pool_inline = calloc((size_t)http->npool, sizeof(*http->pool_inline));
	if (opts->ntokens) {
		http->tokens = malloc(opts->ntokens * sizeof(*http->tokens));
		if (http->tokens)
			memcpy(http->tokens, opts->tokens, opts->ntokens * sizeof(*http->tokens));
		http->opts.tokens = http->tokens;
	}
	if (!http->url || !http->listen || !http->pool || !http->pool_inline ||
	    (opts->ntokens && !http->tokens)) {
		http_free(http);
		snprintf(err, n, "out of memory");
		return -1;
	}
	/* A client that goes away before its reply makes the write fail (EPIPE), not end the
	 * process. */
	signal(SIGPIPE, SIG_IGN);
	uv_tcp_init(opts->loop, &http->listener);
	http->listener.data = http;
	int rc = uv_tcp_bind(&http->listener, (struct sockaddr *)&addr, 0);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&http->listener, 511, on_accept);
	if (rc != 0) {
		snprintf(err, n, "cannot listen on %s: %s", opts->listen, uv_strerror(rc));
		uv_close((uv_handle_t *)&http->listener, on_listener_failed);
		return -1;
	}

	h2o_config_init(&http->config);
	http->config.max_request_entity_size = MAX_BODY_BYTES;
	h2o_hostconf_t *host = h2o_config_register_host(
	        &http->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
	h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
	http->handler = h2o_create_handler(path, sizeof(*http->handler) + sizeof(http));
	http->handler->on_req = on_req;
	*(struct tide_http **)(http->handler + 1) = http;
	h2o_context_init(&http->ctx, opts->loop, &http->config);
	http->accept.ctx = &http->ctx;
	http->accept.hosts = http->config.hosts;

	for (int i = 0; i < http->npool; i++)
		if (tide_store_open_named(opts->loop, http->url, "tide http", on_pool_open, http,
		                          &http->pool[i]) != 0)
			break;
	uv_timer_init(opts->loop, &http->reconnect);
	http->reconnect.data = http;
	uv_timer_start(&http->reconnect, on_reconnect, 1000, 1000);
	uv_unref((uv_handle_t *)&http->reconnect);
	uv_timer_init(opts->loop, &http->stop_timer);
	http->stop_timer.data = http;
	tide_activity_start(); /* what the dashboard's live stream replays */
	*out = http;
	return 0;
}

void tide_http_address(const struct tide_http *http, char *buf, size_t n)
{
	struct sockaddr_storage a;
	int len = sizeof(a);
	char host[64] = "?";
	int port = 0;
	if (uv_tcp_getsockname(&http->listener, (struct sockaddr *)&a, &len) == 0) {
		if (a.ss_family == AF_INET6) {
			uv_ip6_name((struct sockaddr_in6 *)&a, host, sizeof(host));
			port = ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
			snprintf(buf, n, "[%s]:%d", host, port);
			return;
		}
		uv_ip4_name((struct sockaddr_in *)&a, host, sizeof(host));
		port = ntohs(((struct sockaddr_in *)&a)->sin_port);
	}
	snprintf(buf, n, "%s:%d", host, port);
}

/* --- stopping --------------------------------------------------------------------------- */

/* The two timers are the last handles in the struct; whichever closes second frees it. */
static void on_timer_closed(uv_handle_t *h)
{
	struct tide_http *http = h->data;
	if (++http->timers_closed == 2) {
		tide_activity_stop();
		http_free(http);
	}
}

/* Waits for the calls in flight (at most STOP_GRACE_MS), then ends the connections H2O
 * keeps alive by shutting their sockets (H2O then closes them as after a client's close),
 * and disposes of everything once the last is closed. */
static void on_stop_tick(uv_timer_t *t)
{
	struct tide_http *http = t->data;
	if (http->calls == 0 || uv_now(t->loop) >= http->stop_deadline) {
		if (http->workers.stop) /* answers the commands still running */
			http->workers.stop(http->workers.state);
		http->workers = (struct tide_http_workers){0};
		for (struct conn *c = http->conns; c; c = c->next) {
			uv_os_fd_t fd;
			if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
				shutdown(fd, SHUT_RDWR);
		}
	}
	if (http->conns)
		return;
	uv_timer_stop(t);
	/* H2O's dispose runs the loop for its own handles' close callbacks. */
	h2o_context_dispose(&http->ctx);
	h2o_config_dispose(&http->config);
	for (int i = 0; i < http->npool; i++)
		if (http->pool[i])
			tide_store_close(http->pool[i]);
	uv_close((uv_handle_t *)&http->reconnect, on_timer_closed);
	uv_close((uv_handle_t *)&http->stop_timer, on_timer_closed);
}

void tide_http_wake(struct tide_http *http)
{
	if (!http || http->stopping)
		return;
	for (struct tide_http_call *c = http->calls_list, *next; c; c = next) {
		next = c->next;
		if (c->on_wake)
			c->on_wake(c->wake_arg);
	}
}

void tide_http_stop(struct tide_http *http)
{
	if (!http || http->stopping)
		return;
	http->stopping = true;
	uv_close((uv_handle_t *)&http->listener, NULL);
	for (struct conn *c = http->conns; c; c = c->next)
		if (c->parked) {
			c->parked = false;
			uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
		}
	for (struct tide_http_call *c = http->calls_list, *next; c; c = next) {
		next = c->next;
		if (c->on_stop)
			c->on_stop(c->stop_arg);
	}
	http->stop_deadline = uv_now(http->opts.loop) + STOP_GRACE_MS;
	uv_timer_start(&http->stop_timer, on_stop_tick, 0, 20);
}
