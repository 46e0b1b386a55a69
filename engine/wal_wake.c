/* wal_wake.c — wake-ups from the WAL stream (see wal_wake.h). IDENTIFY_SYSTEM gives the
 * end of the WAL, START_REPLICATION PHYSICAL streams from there; every XLogData message
 * ('w') is one "flushed". Keepalives ('k') that ask for an answer get a standby status
 * update that says the WAL received so far was written, and nothing flushed or applied:
 * a walsender waits for "written" before a server shutdown can finish (one that was never
 * told would hold it until wal_sender_timeout), and a standby that has flushed nothing is
 * never a candidate for synchronous replication, so no commit ever waits for this one. A
 * lost or refused stream is tried again after 1 s, doubling up to 5 minutes. */
#include "wal_wake.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg.h"

#define RETRY_FIRST_MS 1000u
#define RETRY_MAX_MS   300000u
#define STATUS_UPDATE  34 /* 'r', write, flush, apply, sent at (8 bytes each), reply asked */

struct tide_wal_wake {
	struct tide_wal_wake_opts o;
	struct tide_pg *pg;
	uv_timer_t retry;
	unsigned delay_ms;
	uint64_t received; /* the end of the WAL received so far */
};

static uint64_t get64(const char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | (unsigned char)p[i];
	return v;
}

static void put64(char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (char)(v & 0xff);
}

static void connect_now(struct tide_wal_wake *w);

static void on_retry(uv_timer_t *t)
{
	connect_now(t->data);
}

/* The stream is gone or never came: say why, and try again later. */
static void lost(struct tide_wal_wake *w, const char *why)
{
	char msg[512];
	snprintf(msg, sizeof(msg), "%s", why && *why ? why : "the server ended the stream");
	tide_pg_close(w->pg);
	w->pg = NULL;
	uv_timer_start(&w->retry, on_retry, w->delay_ms, 0);
	w->delay_ms = w->delay_ms * 2 < RETRY_MAX_MS ? w->delay_ms * 2 : RETRY_MAX_MS;
	w->o.state(w->o.arg, false, msg);
}

static void on_data(void *arg, const char *data, int len)
{
	struct tide_wal_wake *w = arg;
	if (!data) {
		w->delay_ms = RETRY_FIRST_MS;
		w->o.state(w->o.arg, true, NULL);
		return;
	}
	if (data[0] == 'w' && len >= 25) {
		/* 'w', the data's start, the server's end of WAL, its clock, then the data */
		uint64_t end = get64(data + 1) + (uint64_t)(len - 25);
		if (end > w->received)
			w->received = end;
		w->o.flushed(w->o.arg);
	} else if (data[0] == 'k' && len >= 18 && data[17]) {
		/* 'r', written, flushed, applied, the client's clock (left 0), reply wanted */
		char reply[STATUS_UPDATE] = {'r'};
		put64(reply + 1, w->received);
		if (tide_pg_stream_send(w->pg, reply, sizeof(reply)) != 0)
			return; /* the connection's failure ends the stream: on_stream_end */
	}
}

static void on_stream_end(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_wal_wake *w = arg;
	if (reply->status != TIDE_ECLOSED)
		lost(w, reply->err);
}

static void on_identified(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_wal_wake *w = arg;
	if (reply->status == TIDE_ECLOSED)
		return;
	if (reply->status || PQntuples(reply->res) != 1 || PQnfields(reply->res) < 3) {
		lost(w, reply->err ? reply->err : "IDENTIFY_SYSTEM gave no WAL position");
		return;
	}
	const char *at = PQgetvalue(reply->res, 0, 2); /* the end of the WAL: "HI/LO" in hex */
	unsigned hi, lo;
	if (sscanf(at, "%X/%X", &hi, &lo) != 2) {
		lost(w, "IDENTIFY_SYSTEM gave no WAL position");
		return;
	}
	w->received = (uint64_t)hi << 32 | lo;
	char cmd[96];
	snprintf(cmd, sizeof(cmd), "START_REPLICATION PHYSICAL %X/%X", hi, lo);
	if (tide_pg_stream(w->pg, cmd, on_data, w, on_stream_end, w) != 0)
		lost(w, tide_pg_error(w->pg));
}

static void on_open(struct tide_pg *pg, int status, const char *err, void *arg)
{
	(void)pg;
	struct tide_wal_wake *w = arg;
	if (status) {
		lost(w, err);
		return;
	}
	if (tide_pg_script(w->pg, "IDENTIFY_SYSTEM", on_identified, w) != 0)
		lost(w, tide_pg_error(w->pg));
}

static void connect_now(struct tide_wal_wake *w)
{
	if (tide_pg_open(w->o.loop, w->o.url, "tide run: wake-up", TIDE_PG_REPLICATION, on_open, w,
	                 &w->pg) != 0)
		lost(w, "out of memory");
}

struct tide_wal_wake *tide_wal_wake_start(const struct tide_wal_wake_opts *o)
{
	struct tide_wal_wake *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->o = *o;
	w->delay_ms = RETRY_FIRST_MS;
	uv_timer_init(o->loop, &w->retry);
	w->retry.data = w;
	connect_now(w);
	return w;
}

static void on_closed(uv_handle_t *h)
{
	free(h->data);
}

void tide_wal_wake_stop(struct tide_wal_wake *w)
{
	if (!w)
		return;
	tide_pg_close(w->pg);
	uv_close((uv_handle_t *)&w->retry, on_closed);
}
