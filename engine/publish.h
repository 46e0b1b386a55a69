/* publish.h — a publisher's deliveries (tide.publisher): the events of a batch POSTed one by
 * one, in log order, to an HTTP endpoint from the daemon's loop (libcurl's multi interface on
 * libuv). The consumer (consumer.c) moves the checkpoint past what was delivered. */
#ifndef TIDE_PUBLISH_H
#define TIDE_PUBLISH_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "tide.h"

/* Where events go. Not copied: lives until the delivery's callback has fired. */
struct tide_publish_dest {
	const char *url;
	char *const *headers; /* "Name: value" lines, sent as they are and never logged */
	size_t nheaders;
	unsigned timeout_ms; /* for one event: connect, send and the answer */
	/* After this long, the delivery ends at the next event (status 0, fewer delivered): the
	 * consumer commits what went out, which renews its lease, before going on. */
	unsigned budget_ms;
};

/* The events of a batch, rendered as the HTTP API shows them (json_out.c). */
struct tide_publish_events;

/* Renders a read's messages (which need not outlive the call). NULL when out of memory. */
struct tide_publish_events *tide_publish_events_new(const struct tide_read_result *r);
void tide_publish_events_free(struct tide_publish_events *ev);
/* The cursor after the i-th event (0-based). */
struct tide_cursor tide_publish_events_cursor(const struct tide_publish_events *ev, size_t i);

struct tide_publish_outcome {
	/* 0: delivered (all, or those within the budget); TIDE_ECLOSED: cancelled; else the
	 * event after those delivered failed */
	int status;
	size_t delivered; /* how many, from the first, were delivered (2xx) */
	const char *err;  /* why the next one failed: one line, with the url redacted */
};

/* Fires once, on a later loop turn than tide_publisher_deliver's. */
typedef void (*tide_publish_cb)(const struct tide_publish_outcome *o, void *arg);

/* One per processor: its connections to the endpoint are kept between batches. */
struct tide_publisher;

struct tide_publisher *tide_publisher_new(uv_loop_t *loop);

/* POSTs ev's events to dest one at a time, each with an Idempotency-Key header (its message
 * id), until one fails or all are delivered; then cb. One delivery at a time per
 * publisher. Returns 0, or TIDE_ENOMEM (cb does not fire). */
TIDE_MUST_CHECK int tide_publisher_deliver(struct tide_publisher *p,
                                           const struct tide_publish_dest *dest,
                                           const struct tide_publish_events *ev, tide_publish_cb cb,
                                           void *arg);

/* Ends the delivery in flight, if any: its callback fires (later) with TIDE_ECLOSED. */
void tide_publisher_cancel(struct tide_publisher *p);

/* Cancels, closes every handle, frees p, then calls closed(arg) (on a later loop turn). */
void tide_publisher_close(struct tide_publisher *p, void (*closed)(void *arg), void *arg);

/* The url as logs may show it: scheme, host, port and path; no user, password, query or
 * fragment (where secrets ride). */
void tide_publish_redact(const char *url, char *out, size_t n);

#endif
