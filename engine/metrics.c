/* metrics.c — the daemon's counters, gauges and histograms (metrics.h), and their text in
 * Prometheus' exposition format 0.0.4. One registry, on the loop thread; a histogram is a
 * fixed row of bucket counts in nanoseconds, cumulated only when rendered. Recording costs a
 * few increments per batch or request, nothing per event. */
#include "metrics.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include "tide.h"

#ifndef TIDE_VERSION
#define TIDE_VERSION "unknown"
#endif

/* Seconds, 0.5 ms to 10 s: a batch, an append, an HTTP request. */
static const double bounds_s[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                  0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define NBOUNDS ((int)(sizeof(bounds_s) / sizeof(bounds_s[0])))
static const uint64_t bounds_ns[NBOUNDS] = {
        500000,    1000000,   2500000,    5000000,    10000000,   25000000,   50000000,
        100000000, 250000000, 500000000u, 1000000000, 2500000000, 5000000000, 10000000000};

struct histogram {
	uint64_t counts[NBOUNDS + 1]; /* per bucket, not cumulated; the last is +Inf's */
	uint64_t sum_ns, count;
};

static void observe(struct histogram *h, uint64_t ns)
{
	int i = 0;
	while (i < NBOUNDS && ns > bounds_ns[i])
		i++;
	h->counts[i]++;
	h->sum_ns += ns;
	h->count++;
}

struct tide_metrics_processor {
	struct tide_metrics_processor *prev, *next;
	char *id;
	char partition[TIDE_MAX_PARTITION_BYTES + 1]; /* "" for the default */
	tide_metrics_state_fn state;
	void *arg;
	uint64_t events, batches, failed, gave_up, retries;
	struct histogram batch;
};

#define MAX_HTTP_SERIES 256 /* method × route × code: a few dozen in practice */
#define MAX_HTTP_ROUTES 64  /* method × route */

struct http_series {
	const char *method, *route;
	int code;
	uint64_t count;
};

struct http_route {
	const char *method, *route;
	struct histogram h;
};

static struct registry {
	double started; /* the process's start, Unix seconds */
	struct tide_metrics_processor *procs;
	uint64_t appended[TIDE_METRICS_NSOURCES], conflicts[TIDE_METRICS_NSOURCES];
	struct histogram append[TIDE_METRICS_NSOURCES];
	uint64_t reloads[2]; /* failed, ok */
	uint64_t reconnects[TIDE_METRICS_NCONNS];
	int wal_up; /* the WAL stream: 1 up, 0 down, -1 not tried (no daemon, wake = notify) */
	struct http_series http[MAX_HTTP_SERIES];
	int nhttp;
	struct http_route routes[MAX_HTTP_ROUTES];
	int nroutes;
} * m;

void tide_metrics_enable(void)
{
	if (m)
		return;
	m = calloc(1, sizeof(*m));
	if (!m)
		return; /* nothing is recorded; /metrics says so (an empty page) */
	struct timeval now;
	gettimeofday(&now, NULL);
	m->started = (double)now.tv_sec + (double)now.tv_usec / 1e6;
	m->wal_up = -1;
}

void tide_metrics_disable(void)
{
	if (!m)
		return;
	while (m->procs)
		tide_metrics_processor_drop(m->procs);
	free(m);
	m = NULL;
}

/* --- recording ------------------------------------------------------------------------------ */

struct tide_metrics_processor *tide_metrics_processor_add(const char *id,
                                                          tide_metrics_state_fn state, void *arg)
{
	if (!m)
		return NULL;
	struct tide_metrics_processor *p = calloc(1, sizeof(*p));
	if (!p || !(p->id = strdup(id))) {
		free(p);
		return NULL; /* a processor without series, rather than none */
	}
	p->state = state;
	p->arg = arg;
	p->next = m->procs;
	if (m->procs)
		m->procs->prev = p;
	m->procs = p;
	return p;
}

void tide_metrics_processor_drop(struct tide_metrics_processor *p)
{
	if (!p || !m)
		return;
	if (p->prev)
		p->prev->next = p->next;
	else
		m->procs = p->next;
	if (p->next)
		p->next->prev = p->prev;
	free(p->id);
	free(p);
}

void tide_metrics_processor_partition(struct tide_metrics_processor *p, const char *partition)
{
	if (!p)
		return;
	bool shown = partition && strcmp(partition, TIDE_DEFAULT_PARTITION) != 0;
	snprintf(p->partition, sizeof(p->partition), "%s", shown ? partition : "");
}

void tide_metrics_batch(struct tide_metrics_processor *p, bool committed, int64_t events,
                        uint64_t ns)
{
	if (!p)
		return;
	observe(&p->batch, ns);
	if (committed) {
		p->batches++;
		p->events += (uint64_t)events;
	}
}

void tide_metrics_failed(struct tide_metrics_processor *p)
{
	if (p)
		p->failed++;
}

void tide_metrics_gave_up(struct tide_metrics_processor *p)
{
	if (p)
		p->gave_up++;
}

void tide_metrics_retry(struct tide_metrics_processor *p)
{
	if (p)
		p->retries++;
}

void tide_metrics_append(enum tide_metrics_source source, int status, size_t events, uint64_t ns)
{
	if (!m)
		return;
	observe(&m->append[source], ns);
	if (status == 0)
		m->appended[source] += events;
	else if (status == TIDE_ECONFLICT)
		m->conflicts[source]++;
}

void tide_metrics_appended(enum tide_metrics_source source, size_t events)
{
	if (m)
		m->appended[source] += events;
}

void tide_metrics_reload(bool ok)
{
	if (m)
		m->reloads[ok]++;
}

void tide_metrics_reconnect(enum tide_metrics_conn conn)
{
	if (m)
		m->reconnects[conn]++;
}

void tide_metrics_wal_stream(bool up)
{
	if (m)
		m->wal_up = up;
}

void tide_metrics_http(const char *method, const char *route, int code, uint64_t ns)
{
	if (!m)
		return;
	int i = 0;
	while (i < m->nhttp && (m->http[i].method != method || m->http[i].route != route ||
	                        m->http[i].code != code))
		i++;
	if (i == m->nhttp && m->nhttp < MAX_HTTP_SERIES)
		m->http[m->nhttp++] = (struct http_series){method, route, code, 0};
	if (i < m->nhttp)
		m->http[i].count++;
	int r = 0;
	while (r < m->nroutes && (m->routes[r].method != method || m->routes[r].route != route))
		r++;
	if (r == m->nroutes && m->nroutes < MAX_HTTP_ROUTES)
		m->routes[m->nroutes++] = (struct http_route){.method = method, .route = route};
	if (r < m->nroutes)
		observe(&m->routes[r].h, ns);
}

/* --- rendering ------------------------------------------------------------------------------ */

/* A label value as the format wants it: backslash, double quote and newline escaped. */
static void label(FILE *f, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			fputc('\\', f);
		if (*v == '\n')
			fputs("\\n", f);
		else
			fputc(*v, f);
	}
}

static void family(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* processor="ID"[,partition="P"] */
static void processor_labels(FILE *f, const struct tide_metrics_processor *p)
{
	fputs("processor=\"", f);
	label(f, p->id);
	if (p->partition[0]) {
		fputs("\",partition=\"", f);
		label(f, p->partition);
	}
	fputc('"', f);
}

/* name_bucket{labels,le=...} for every bound and +Inf, then _sum and _count. labels is
 * written by a function, as it needs escaping. */
static void histogram(FILE *f, const char *name, const struct histogram *h,
                      void (*labels)(FILE *f, const void *arg), const void *arg)
{
	uint64_t cumulated = 0;
	for (int i = 0; i <= NBOUNDS; i++) {
		cumulated += h->counts[i];
		fprintf(f, "%s_bucket{", name);
		labels(f, arg);
		if (i < NBOUNDS)
			fprintf(f, ",le=\"%g\"} %" PRIu64 "\n", bounds_s[i], cumulated);
		else
			fprintf(f, ",le=\"+Inf\"} %" PRIu64 "\n", cumulated);
	}
	fprintf(f, "%s_sum{", name);
	labels(f, arg);
	/* Seconds to the nanosecond, exactly. */
	fprintf(f, "} %" PRIu64 ".%09" PRIu64 "\n%s_count{", h->sum_ns / 1000000000u,
	        h->sum_ns % 1000000000u, name);
	labels(f, arg);
	fprintf(f, "} %" PRIu64 "\n", h->count);
}

static void processor_labels_cb(FILE *f, const void *p)
{
	processor_labels(f, p);
}

static const char *const state_names[TIDE_METRICS_NSTATES] = {
        "connecting", "running", "failed", "halted", "waiting", "rebuilding", "stopping",
};
static const char *const source_names[TIDE_METRICS_NSOURCES] = {"http", "reactor"};
static const char *const conn_names[TIDE_METRICS_NCONNS] = {"processor", "listen", "wal"};

static void source_labels_cb(FILE *f, const void *arg)
{
	fprintf(f, "source=\"%s\"", source_names[*(const int *)arg]);
}

static void route_labels_cb(FILE *f, const void *arg)
{
	const struct http_route *r = arg;
	fputs("method=\"", f);
	label(f, r->method);
	fputs("\",route=\"", f);
	label(f, r->route);
	fputc('"', f);
}

/* One counter per processor: offset is the counter's place in the record. */
static void processor_counter(FILE *f, const char *name, const char *help, size_t offset)
{
	if (!m->procs)
		return;
	family(f, name, "counter", help);
	for (const struct tide_metrics_processor *p = m->procs; p; p = p->next) {
		fprintf(f, "%s{", name);
		processor_labels(f, p);
		fprintf(f, "} %" PRIu64 "\n", *(const uint64_t *)((const char *)p + offset));
	}
}

/* The database's figures of each processor; the families only when it knows one. */
static void processor_db(FILE *f, const struct tide_metrics_db *db)
{
	static const struct {
		const char *name, *help;
	} gauges[] = {
	        {"tide_processor_lag_events",
	         "Events in the log after the processor's checkpoint."},
	        {"tide_processor_lag_seconds",
	         "Age of the oldest event after the processor's checkpoint (0 when caught up)."},
	        {"tide_processor_dead_letters",
	         "Events of the processor parked in tide_dead_letters (see tide dlq)."},
	};
	for (size_t g = 0; g < sizeof(gauges) / sizeof(gauges[0]); g++) {
		bool told = false;
		for (const struct tide_metrics_processor *p = m->procs; p; p = p->next) {
			int64_t events, parked;
			double seconds;
			if (!db->processor(db->arg, p->id, &events, &seconds, &parked))
				continue;
			if (!told)
				family(f, gauges[g].name, "gauge", gauges[g].help);
			told = true;
			fprintf(f, "%s{", gauges[g].name);
			processor_labels(f, p);
			if (g == 1)
				fprintf(f, "} %.3f\n", seconds);
			else
				fprintf(f, "} %" PRId64 "\n", g == 0 ? events : parked);
		}
	}
}

static void render_processors(FILE *f, const struct tide_metrics_db *db)
{
	if (!m->procs)
		return;
	processor_counter(f, "tide_processor_events_total",
	                  "Events handled: in batches the processor committed.",
	                  offsetof(struct tide_metrics_processor, events));
	processor_counter(f, "tide_processor_batches_total", "Batches committed.",
	                  offsetof(struct tide_metrics_processor, batches));
	processor_counter(
	        f, "tide_processor_failed_batches_total",
	        "Tries (a batch, or one event alone) that failed in the script or its SQL.",
	        offsetof(struct tide_metrics_processor, failed));
	processor_counter(f, "tide_processor_failed_events_total",
	                  "Events given up on after their last try: dead-lettered or skipped.",
	                  offsetof(struct tide_metrics_processor, gave_up));
	processor_counter(f, "tide_processor_retries_total",
	                  "Tries of events tried before (after a failure, a lost connection or a "
	                  "crash), and of dead letters queued for a retry.",
	                  offsetof(struct tide_metrics_processor, retries));
	family(f, "tide_processor_batch_duration_seconds", "histogram",
	       "Time a batch took, from handing it to the script to its commit or failure.");
	for (const struct tide_metrics_processor *p = m->procs; p; p = p->next)
		histogram(f, "tide_processor_batch_duration_seconds", &p->batch,
		          processor_labels_cb, p);
	family(f, "tide_processor_state", "gauge",
	       "1 for the processor's state, 0 for the others: connecting, running, failed, "
	       "halted, waiting (another daemon holds its lease), rebuilding, stopping.");
	for (const struct tide_metrics_processor *p = m->procs; p; p = p->next) {
		enum tide_metrics_state now = p->state ? p->state(p->arg) : TIDE_METRICS_RUNNING;
		for (int s = 0; s < TIDE_METRICS_NSTATES; s++) {
			fputs("tide_processor_state{", f);
			processor_labels(f, p);
			fprintf(f, ",state=\"%s\"} %d\n", state_names[s], s == (int)now);
		}
	}
	if (db)
		processor_db(f, db);
}

static void render_daemon(FILE *f, const struct tide_metrics_db *db)
{
	family(f, "tide_appended_events_total", "counter",
	       "Events this daemon appended, by source: http (POST /streams/{id}) or reactor "
	       "(ctx.append, counted once its batch committed).");
	for (int s = 0; s < TIDE_METRICS_NSOURCES; s++)
		fprintf(f, "tide_appended_events_total{source=\"%s\"} %" PRIu64 "\n",
		        source_names[s], m->appended[s]);
	family(f, "tide_append_conflicts_total", "counter",
	       "Appends refused because the stream's version was not the expected one.");
	for (int s = 0; s < TIDE_METRICS_NSOURCES; s++)
		fprintf(f, "tide_append_conflicts_total{source=\"%s\"} %" PRIu64 "\n",
		        source_names[s], m->conflicts[s]);
	family(f, "tide_append_duration_seconds", "histogram",
	       "Time an append took, whatever its outcome: from sending it to its reply (http: "
	       "from the request's arrival).");
	for (int s = 0; s < TIDE_METRICS_NSOURCES; s++)
		histogram(f, "tide_append_duration_seconds", &m->append[s], source_labels_cb, &s);
	family(f, "tide_reloads_total", "counter",
	       "Changed scripts loaded again: ok (the new one runs between batches) or failed "
	       "(it did not load; the old one runs on).");
	fprintf(f, "tide_reloads_total{result=\"ok\"} %" PRIu64 "\n", m->reloads[1]);
	fprintf(f, "tide_reloads_total{result=\"failed\"} %" PRIu64 "\n", m->reloads[0]);
	family(f, "tide_reconnects_total", "counter",
	       "Database connections lost and made again: a processor's, the daemon's LISTEN "
	       "connection, or its WAL stream.");
	for (int c = 0; c < TIDE_METRICS_NCONNS; c++)
		fprintf(f, "tide_reconnects_total{connection=\"%s\"} %" PRIu64 "\n", conn_names[c],
		        m->reconnects[c]);
	if (m->wal_up >= 0) {
		family(f, "tide_wal_stream_up", "gauge",
		       "1 while the daemon streams the server's WAL, which wakes it at every "
		       "commit; 0 while it wakes by NOTIFY and its probe instead.");
		fprintf(f, "tide_wal_stream_up %d\n", m->wal_up);
	}
	if (db && db->held_back_seconds >= 0) {
		family(f, "tide_held_back_seconds", "gauge",
		       "How long the oldest open writing transaction on the server has held every "
		       "processor back (0 when none has for 5 s).");
		fprintf(f, "tide_held_back_seconds %.3f\n", db->held_back_seconds);
	}
	if (m->nhttp) {
		family(f, "tide_http_requests_total", "counter",
		       "HTTP requests, by method, route (its pattern; \"unmatched\" for no route) "
		       "and status code.");
		for (int i = 0; i < m->nhttp; i++) {
			const struct http_series *h = &m->http[i];
			fputs("tide_http_requests_total{method=\"", f);
			label(f, h->method);
			fputs("\",route=\"", f);
			label(f, h->route);
			fprintf(f, "\",code=\"%d\"} %" PRIu64 "\n", h->code, h->count);
		}
		family(f, "tide_http_request_duration_seconds", "histogram",
		       "Time from a request's arrival to its reply (or, for a stream, its end).");
		for (int i = 0; i < m->nroutes; i++)
			histogram(f, "tide_http_request_duration_seconds", &m->routes[i].h,
			          route_labels_cb, &m->routes[i]);
	}
}

/* The process: when it started, its CPU time, its resident memory. /proc/self/statm is
 * made by the kernel on the read, from memory: it never waits on a disk. */
static void render_process(FILE *f)
{
	family(f, "tide_build_info", "gauge", "Always 1; the version of tide that runs.");
	fputs("tide_build_info{version=\"", f);
	label(f, TIDE_VERSION);
	fputs("\"} 1\n", f);
	family(f, "process_start_time_seconds", "gauge",
	       "Start time of the process since the Unix epoch, in seconds.");
	fprintf(f, "process_start_time_seconds %.3f\n", m->started);
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) == 0) {
		family(f, "process_cpu_seconds_total", "counter",
		       "User and system CPU time the process spent, in seconds.");
		fprintf(f, "process_cpu_seconds_total %.6f\n",
		        (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
		                (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
	}
	FILE *statm = fopen("/proc/self/statm", "r");
	unsigned long size, resident;
	if (statm && fscanf(statm, "%lu %lu", &size, &resident) == 2) {
		family(f, "process_resident_memory_bytes", "gauge",
		       "Resident memory of the process, in bytes.");
		fprintf(f, "process_resident_memory_bytes %lu\n",
		        resident * (unsigned long)sysconf(_SC_PAGESIZE));
	}
	if (statm)
		fclose(statm);
}

char *tide_metrics_render(const struct tide_metrics_db *db, size_t *len)
{
	char *text = NULL;
	*len = 0;
	FILE *f = open_memstream(&text, len);
	if (!f)
		return NULL;
	if (m) {
		render_processors(f, db);
		render_daemon(f, db);
		render_process(f);
	}
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}
