/* test_metrics.c — the registry of GET /metrics (engine/metrics.c) without a database or a
 * daemon: nothing is recorded until enabled, label values are escaped, histogram buckets
 * are cumulative with inclusive bounds, a dropped processor's series go, and the database's
 * figures appear only when it gave them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "metrics.h"

static char *page(const struct tide_metrics_db *db)
{
	size_t len;
	char *text = tide_metrics_render(db, &len);
	CHECK(text);
	CHECK(strlen(text) == len);
	return text;
}

/* The page has this line (whole). */
static bool has_line(const char *text, const char *line)
{
	size_t n = strlen(line);
	for (const char *p = strstr(text, line); p; p = strstr(p + 1, line))
		if ((p == text || p[-1] == '\n') && p[n] == '\n')
			return true;
	return false;
}

#define CHECK_LINE(text, line)                                                                     \
	do {                                                                                       \
		if (!has_line(text, line)) {                                                       \
			fprintf(stderr, "%s:%d: no line '%s' in:\n%s\n", __FILE__, __LINE__, line, \
			        text);                                                             \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

static enum tide_metrics_state halted(void *arg)
{
	(void)arg;
	return TIDE_METRICS_HALTED;
}

static void disabled(void)
{
	CHECK(tide_metrics_processor_add("app/p", halted, NULL) == NULL);
	tide_metrics_batch(NULL, true, 10, 1000);
	tide_metrics_append(TIDE_METRICS_HTTP, 0, 3, 1000);
	tide_metrics_http("GET", "/log", 200, 1000);
	char *text = page(NULL);
	CHECK(text[0] == '\0');
	free(text);
	printf("ok disabled\n");
}

static bool lag_of(void *arg, const char *id, int64_t *events, double *seconds, int64_t *parked)
{
	(void)arg;
	if (strcmp(id, "app/known") != 0)
		return false;
	*events = 7;
	*seconds = 1.5;
	*parked = 2;
	return true;
}

static void rendering(void)
{
	tide_metrics_enable();
	struct tide_metrics_processor *odd =
	        tide_metrics_processor_add("a\"p\\p\n/x", halted, NULL);
	struct tide_metrics_processor *known = tide_metrics_processor_add("app/known", NULL, NULL);
	CHECK(odd && known);
	tide_metrics_processor_partition(odd, "tenant-1");
	tide_metrics_processor_partition(known, TIDE_DEFAULT_PARTITION);
	tide_metrics_batch(known, true, 500, 1000000); /* 1 ms: on a bound, inside it */
	tide_metrics_batch(known, true, 20, 1000001);
	tide_metrics_batch(known, false, 20, 20000000000ull); /* past the last bound */
	tide_metrics_failed(known);
	tide_metrics_retry(known);
	tide_metrics_gave_up(known);
	tide_metrics_append(TIDE_METRICS_HTTP, 0, 3, 400000);
	tide_metrics_append(TIDE_METRICS_HTTP, TIDE_ECONFLICT, 0, 400000);
	tide_metrics_append(TIDE_METRICS_REACTOR, 0, 0, 400000);
	tide_metrics_appended(TIDE_METRICS_REACTOR, 4);
	tide_metrics_reload(false);
	tide_metrics_reconnect(TIDE_METRICS_LISTEN);
	tide_metrics_http("POST", "/streams/{id}", 200, 1000);
	tide_metrics_http("POST", "/streams/{id}", 200, 1000);
	tide_metrics_http("POST", "/streams/{id}", 409, 1000);

	struct tide_metrics_db db = {.processor = lag_of, .held_back_seconds = 12};
	char *text = page(&db);
	CHECK_LINE(text, "tide_processor_events_total{processor=\"a\\\"p\\\\p\\n/x\","
	                 "partition=\"tenant-1\"} 0");
	CHECK_LINE(text, "tide_processor_events_total{processor=\"app/known\"} 520");
	CHECK_LINE(text, "tide_processor_batches_total{processor=\"app/known\"} 2");
	CHECK_LINE(text, "tide_processor_failed_batches_total{processor=\"app/known\"} 1");
	CHECK_LINE(text, "tide_processor_failed_events_total{processor=\"app/known\"} 1");
	CHECK_LINE(text, "tide_processor_retries_total{processor=\"app/known\"} 1");
	CHECK_LINE(text, "tide_processor_batch_duration_seconds_bucket{processor=\"app/known\","
	                 "le=\"0.0005\"} 0");
	CHECK_LINE(text, "tide_processor_batch_duration_seconds_bucket{processor=\"app/known\","
	                 "le=\"0.001\"} 1");
	CHECK_LINE(text, "tide_processor_batch_duration_seconds_bucket{processor=\"app/known\","
	                 "le=\"0.0025\"} 2");
	CHECK_LINE(text, "tide_processor_batch_duration_seconds_bucket{processor=\"app/known\","
	                 "le=\"10\"} 2");
	CHECK_LINE(text, "tide_processor_batch_duration_seconds_bucket{processor=\"app/known\","
	                 "le=\"+Inf\"} 3");
	CHECK_LINE(text, "tide_processor_batch_duration_seconds_count{processor=\"app/known\"} 3");
	CHECK_LINE(text, "tide_processor_batch_duration_seconds_sum{processor=\"app/known\"} "
	                 "20.002000001");
	/* One-hot: a state callback's answer, running without one. */
	CHECK_LINE(text, "tide_processor_state{processor=\"a\\\"p\\\\p\\n/x\",partition=\"tenant-"
	                 "1\",state=\"halted\"} 1");
	CHECK_LINE(text, "tide_processor_state{processor=\"a\\\"p\\\\p\\n/x\",partition=\"tenant-"
	                 "1\",state=\"running\"} 0");
	CHECK_LINE(text, "tide_processor_state{processor=\"app/known\",state=\"running\"} 1");
	/* The database's figures, for the processors it knows only. */
	CHECK_LINE(text, "tide_processor_lag_events{processor=\"app/known\"} 7");
	CHECK_LINE(text, "tide_processor_lag_seconds{processor=\"app/known\"} 1.500");
	CHECK_LINE(text, "tide_processor_dead_letters{processor=\"app/known\"} 2");
	CHECK(!strstr(text, "tide_processor_lag_events{processor=\"a\\\""));
	CHECK_LINE(text, "tide_held_back_seconds 12.000");
	CHECK_LINE(text, "tide_appended_events_total{source=\"http\"} 3");
	CHECK_LINE(text, "tide_appended_events_total{source=\"reactor\"} 4");
	CHECK_LINE(text, "tide_append_conflicts_total{source=\"http\"} 1");
	CHECK_LINE(text, "tide_append_duration_seconds_count{source=\"http\"} 2");
	CHECK_LINE(text, "tide_append_duration_seconds_bucket{source=\"reactor\",le=\"0.0005\"} 1");
	CHECK_LINE(text, "tide_reloads_total{result=\"failed\"} 1");
	CHECK_LINE(text, "tide_reloads_total{result=\"ok\"} 0");
	CHECK_LINE(text, "tide_reconnects_total{connection=\"listen\"} 1");
	CHECK_LINE(text, "tide_http_requests_total{method=\"POST\",route=\"/streams/{id}\","
	                 "code=\"200\"} 2");
	CHECK_LINE(text, "tide_http_requests_total{method=\"POST\",route=\"/streams/{id}\","
	                 "code=\"409\"} 1");
	CHECK_LINE(text, "tide_http_request_duration_seconds_count{method=\"POST\",route=\"/"
	                 "streams/{id}\"} 3");
	CHECK_LINE(text, "# TYPE tide_processor_events_total counter");
	CHECK_LINE(text, "# TYPE tide_processor_batch_duration_seconds histogram");
	CHECK(strstr(text, "\ntide_build_info{version=\""));
	CHECK(strstr(text, "\nprocess_start_time_seconds "));
	free(text);

	/* Without the database: no lag, no held-back gauge; the counters are still there. */
	tide_metrics_processor_drop(odd);
	text = page(NULL);
	CHECK(!strstr(text, "a\\\"p"));
	CHECK(!strstr(text, "tide_processor_lag_events"));
	CHECK(!strstr(text, "tide_held_back_seconds"));
	CHECK_LINE(text, "tide_processor_events_total{processor=\"app/known\"} 520");
	free(text);
	db.held_back_seconds = -1; /* unknown */
	text = page(&db);
	CHECK(!strstr(text, "tide_held_back_seconds"));
	free(text);

	/* No processor left: no empty families. */
	tide_metrics_processor_drop(known);
	text = page(NULL);
	CHECK(!strstr(text, "tide_processor_"));
	free(text);
	tide_metrics_disable();
	printf("ok rendering\n");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s disabled|rendering\n", argv[0]);
		return 2;
	}
	if (strcmp(argv[1], "disabled") == 0)
		disabled();
	else if (strcmp(argv[1], "rendering") == 0)
		rendering();
	else
		return 2;
	return 0;
}
