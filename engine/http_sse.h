/* http_sse.h — a Server-Sent Events stream for a route that answers with one: the
 * response's headers, events and comments framed as the SSE format wants them, heartbeats
 * while it is idle, and H2O's flow control (one send with H2O at a time, the rest queued
 * here, so the owner sees how much waits and can stop producing). Nothing in it knows what
 * the events mean: GET /log/subscribe (http_subscribe.c) and GET /live build on it.
 *
 * Memory: what waits is the owner's to bound (tide_sse_queued, on_drain); a client that
 * accepts nothing for stall_ms while bytes wait is reported (TIDE_SSE_STALLED), and cut off
 * if it is still stuck stall_ms after the owner closed the stream. Under HTTP/2 cutting off
 * one stream ends its whole connection (H2O 2.2 offers a handler no stream reset). */
#ifndef TIDE_HTTP_SSE_H
#define TIDE_HTTP_SSE_H

#include <stddef.h>

#include "http.h"

#define TIDE_SSE_HEARTBEAT_MS 15000
#define TIDE_SSE_STALL_MS     30000

/* Why a stream ends before its owner closed it. */
enum tide_sse_end {
	TIDE_SSE_GONE,     /* the client went away: nothing more reaches it */
	TIDE_SSE_STALLED,  /* the client accepted no byte for stall_ms while bytes waited */
	TIDE_SSE_STOPPING, /* the server stops (tide_http_stop): close soon, maybe with a
	                    * final event; the server cuts what is still open after its grace */
};

struct tide_sse;

/* Callbacks fire from the loop, never inside a tide_sse_* call, and never after
 * tide_sse_close. */
typedef void (*tide_sse_drain_cb)(struct tide_sse *sse, void *arg);
typedef void (*tide_sse_end_cb)(struct tide_sse *sse, enum tide_sse_end why, void *arg);

struct tide_sse_opts {
	unsigned heartbeat_ms; /* a ": ping" comment after this long without a byte; 0: 15 s */
	unsigned stall_ms;     /* see TIDE_SSE_STALLED; 0: 30 s */
	/* on_drain fires each time the bytes queued fall to low_water or below after a send
	 * left more than that waiting. An owner that stops producing while
	 * tide_sse_queued() > low_water is thus always woken again. */
	size_t low_water;
	tide_sse_drain_cb on_drain; /* may be NULL */
	tide_sse_end_cb on_end;     /* fires at most once; the owner then calls tide_sse_close */
	void *arg;
};

/* Answers the call with 200, content-type text/event-stream and cache-control no-cache,
 * and takes the call over (the stream ends it). The headers go out on a later loop turn,
 * together with what was queued by then. opts is copied. NULL when the client has
 * already gone or memory is short: the call is then answered or ended already. */
struct tide_sse *tide_sse_open(struct tide_http_call *c, const struct tide_sse_opts *opts);

/* Queues one event: "event: NAME" when name is not NULL, "id: ID" when id is not NULL
 * (the client's Last-Event-ID when it reconnects), and data[0..len) as one "data:" line per
 * line (split at CRLF, LF or CR; the client joins them with LF). 0; TIDE_EINVAL when name or
 * id holds a line break or a NUL byte (nothing queued); TIDE_ECLOSED once the client has
 * gone or the stream is closing; TIDE_ENOMEM. */
int tide_sse_event(struct tide_sse *sse, const char *name, const char *id, const char *data,
                   size_t len);

/* Queues a comment line ": TEXT" (clients ignore it; people reading the stream see it).
 * Line breaks in text become spaces. Returns as tide_sse_event. */
int tide_sse_comment(struct tide_sse *sse, const char *text);

/* The bytes queued and not yet taken by the client's connection (those with H2O
 * included). */
size_t tide_sse_queued(const struct tide_sse *sse);

/* Ends the stream: the final event (when name or data is not NULL; id as tide_sse_event)
 * after what is queued, then the end of the response. No callback fires after it; the
 * stream frees itself (and ends its call) once the client has everything or has gone, or
 * has accepted nothing for stall_ms (its connection is then cut). Call it exactly once,
 * also after on_end. */
void tide_sse_close(struct tide_sse *sse, const char *name, const char *id, const char *data);

#endif
