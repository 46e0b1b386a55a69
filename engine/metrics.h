/* metrics.h — what GET /metrics shows, kept in memory where things happen: per processor
 * (events, batches, batch durations, failures, retries, state) and for the daemon (appends,
 * conflicts, append latency, reloads, reconnects, HTTP requests), rendered in Prometheus'
 * text format (metrics.c) together with what the database says at scrape time (lag, the
 * held-back log: http_metrics.c asks).
 *
 * Loop-only: every function runs on the daemon's loop thread, so nothing is locked; work
 * done on another thread reports back through the loop first. Nothing is recorded until
 * tide_metrics_enable (`tide run` calls it): the library's other users (the Lua module, the
 * CLI) pay a test of a pointer per call. Memory is fixed but for one small record per
 * processor, dropped with it. */
#ifndef TIDE_METRICS_H
#define TIDE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A processor's state, one-hot in tide_processor_state{state=...}. */
enum tide_metrics_state {
	TIDE_METRICS_CONNECTING, /* connecting to the database, or claiming its lease */
	TIDE_METRICS_RUNNING,    /* holds its lease: processing, or caught up */
	TIDE_METRICS_FAILED,     /* its last try failed (retrying), or its script does not load */
	TIDE_METRICS_HALTED,     /* on_error = "stop" gave up: waits for a new script */
	TIDE_METRICS_WAITING,    /* another daemon holds its lease */
	TIDE_METRICS_REBUILDING, /* a blue-green rebuild runs (or is it) */
	TIDE_METRICS_STOPPING,
	TIDE_METRICS_NSTATES
};

/* Where an append came from. */
enum tide_metrics_source {
	TIDE_METRICS_HTTP,    /* POST /streams/{id} */
	TIDE_METRICS_REACTOR, /* a reactor's ctx.append */
	TIDE_METRICS_NSOURCES
};

/* Whose database connection was lost (and is being made again). */
enum tide_metrics_conn {
	TIDE_METRICS_PROCESSOR, /* a processor's */
	TIDE_METRICS_LISTEN,    /* the daemon's LISTEN connection */
	TIDE_METRICS_WAL,       /* the daemon's WAL stream (wal_wake.c) */
	TIDE_METRICS_NCONNS
};

/* Starts recording (and sets the process start time); _disable frees what was recorded and
 * stops. */
void tide_metrics_enable(void);
void tide_metrics_disable(void);

/* --- per processor ------------------------------------------------------------------------ */

struct tide_metrics_processor;

typedef enum tide_metrics_state (*tide_metrics_state_fn)(void *arg);

/* A processor's series, labelled processor=id (copied); state(arg) says its state at each
 * scrape. NULL when not enabled (every function below takes NULL and does nothing). */
struct tide_metrics_processor *tide_metrics_processor_add(const char *id,
                                                          tide_metrics_state_fn state, void *arg);

/* Drops its series (the processor stopped for good). */
void tide_metrics_processor_drop(struct tide_metrics_processor *p);

/* The partition its script works in (copied): a label unless it is the default. */
void tide_metrics_processor_partition(struct tide_metrics_processor *p, const char *partition);

/* A batch ran for ns nanoseconds; committed: its events were handled. */
void tide_metrics_batch(struct tide_metrics_processor *p, bool committed, int64_t events,
                        uint64_t ns);

/* A try failed in the script or its SQL (a batch, or one event alone). */
void tide_metrics_failed(struct tide_metrics_processor *p);

/* An event was given up on: dead-lettered or skipped (on_error). */
void tide_metrics_gave_up(struct tide_metrics_processor *p);

/* A try of events tried before from the same checkpoint (after a failure, a lost
 * connection or a crash), or of a dead letter queued for a retry. */
void tide_metrics_retry(struct tide_metrics_processor *p);

/* --- per daemon --------------------------------------------------------------------------- */

/* An append's reply after ns nanoseconds: status 0 (events written), TIDE_ECONFLICT, or
 * another failure. A reactor's appended events count once its batch committed: pass 0
 * events here and tide_metrics_appended then. */
void tide_metrics_append(enum tide_metrics_source source, int status, size_t events, uint64_t ns);
void tide_metrics_appended(enum tide_metrics_source source, size_t events);

/* A changed script was loaded again: ok, or it failed to load (the old one runs on). */
void tide_metrics_reload(bool ok);

void tide_metrics_reconnect(enum tide_metrics_conn conn);

/* Whether the daemon's WAL stream runs (its wake-ups: wal_wake.h). */
void tide_metrics_wal_stream(bool up);

/* An HTTP request ended: method and route are static strings (the route's pattern, e.g.
 * "/streams/{id}"; kept as pointers), code its status, ns its time from arrival. */
void tide_metrics_http(const char *method, const char *route, int code, uint64_t ns);

/* --- rendering ---------------------------------------------------------------------------- */

/* What the database said at scrape time; NULL when it could not be asked. */
struct tide_metrics_db {
	/* Processor id's lag and parked events; false when the database does not know it. */
	bool (*processor)(void *arg, const char *id, int64_t *lag_events, double *lag_seconds,
	                  int64_t *dead_letters);
	void *arg;
	double held_back_seconds; /* 0 when no transaction holds the log back; < 0 unknown */
};

/* Everything recorded, in Prometheus' text format 0.0.4; malloc'd, *len its length; NULL
 * when out of memory. */
char *tide_metrics_render(const struct tide_metrics_db *db, size_t *len);

#endif
