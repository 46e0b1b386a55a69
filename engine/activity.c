/* activity.c — the ring of recent notable events (activity.h). Every warn and error line is
 * kept, and the info lines that say a processor's script changed hands (loaded, reloaded,
 * stopped, rebuilt, recovered) or the log was released; the rest of the info lines are
 * routine. Each entry is rendered to JSON once, when logged, with every value cut to
 * TIDE_ACTIVITY_VALUE_MAX bytes: the ring holds at most TIDE_ACTIVITY_ENTRIES of them. */
#include "activity.h"

#include <cJSON.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* Lines come from any thread (POST /commands' workers log too); the ring is under mu. */
static struct {
	pthread_mutex_t mu;
	char *json[TIDE_ACTIVITY_ENTRIES]; /* entry seq lives at [seq % TIDE_ACTIVITY_ENTRIES] */
	uint64_t last;                     /* the newest entry's seq; 0: none yet */
} ring = {.mu = PTHREAD_MUTEX_INITIALIZER};

static bool notable(const char *level, const char *event)
{
	static const char *const info[] = {
	        "processor.loaded",  "processor.reloaded", "processor.stopped",
	        "processor.removed", "processor.retired",  "processor.recovered",
	        "processor.rebuild", "processor.switched", "rebuild.caught_up",
	        "daemon.reload",     "log.released",
	};
	if (strcmp(level, "warn") == 0 || strcmp(level, "error") == 0)
		return true;
	if (strcmp(level, "info") != 0)
		return false;
	for (size_t i = 0; i < sizeof(info) / sizeof(info[0]); i++)
		if (strcmp(event, info[i]) == 0)
			return true;
	return false;
}

/* v, cut to TIDE_ACTIVITY_VALUE_MAX bytes at a character's start, with "…" when cut. */
static cJSON *add_value(cJSON *o, const char *key, const char *v)
{
	size_t len = strlen(v);
	if (len <= TIDE_ACTIVITY_VALUE_MAX)
		return cJSON_AddStringToObject(o, key, v);
	char cut[TIDE_ACTIVITY_VALUE_MAX + 4];
	len = TIDE_ACTIVITY_VALUE_MAX;
	while (len > 0 && ((unsigned char)v[len] & 0xC0) == 0x80) /* a UTF-8 continuation */
		len--;
	memcpy(cut, v, len);
	memcpy(cut + len, "\xe2\x80\xa6", 4);
	return cJSON_AddStringToObject(o, key, cut);
}

static void on_log(const char *level, const char *event, const char *const *kv, int npairs,
                   void *arg)
{
	(void)arg;
	if (!notable(level, event))
		return;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct tm tm;
	gmtime_r(&ts.tv_sec, &tm);
	char time[40];
	size_t o = strftime(time, sizeof(time), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(time + o, sizeof(time) - o, ".%03ldZ", ts.tv_nsec / 1000000);

	pthread_mutex_lock(&ring.mu);
	cJSON *e = cJSON_CreateObject();
	cJSON_AddNumberToObject(e, "seq", (double)(ring.last + 1));
	cJSON_AddStringToObject(e, "time", time);
	cJSON_AddStringToObject(e, "level", level);
	cJSON_AddStringToObject(e, "event", event);
	cJSON *fields = cJSON_CreateObject();
	for (int i = 0; i < npairs; i++) {
		if (strcmp(kv[2 * i], "processor") == 0 && !cJSON_HasObjectItem(e, "processor"))
			add_value(e, "processor", kv[2 * i + 1]);
		else
			add_value(fields, kv[2 * i], kv[2 * i + 1]);
	}
	cJSON_AddItemToObject(e, "fields", fields);
	char *text = cJSON_PrintUnformatted(e);
	cJSON_Delete(e);
	if (text) { /* else out of memory: the entry is lost, the log line is not */
		ring.last++;
		char **slot = &ring.json[ring.last % TIDE_ACTIVITY_ENTRIES];
		cJSON_free(*slot);
		*slot = text;
	}
	pthread_mutex_unlock(&ring.mu);
}

void tide_activity_start(void)
{
	tide_log_set_hook(on_log, NULL);
}

void tide_activity_stop(void)
{
	tide_log_set_hook(NULL, NULL);
	pthread_mutex_lock(&ring.mu);
	for (int i = 0; i < TIDE_ACTIVITY_ENTRIES; i++) {
		cJSON_free(ring.json[i]);
		ring.json[i] = NULL;
	}
	ring.last = 0;
	pthread_mutex_unlock(&ring.mu);
}

uint64_t tide_activity_since(uint64_t after, tide_activity_fn fn, void *arg)
{
	pthread_mutex_lock(&ring.mu);
	uint64_t first =
	        ring.last > TIDE_ACTIVITY_ENTRIES ? ring.last - TIDE_ACTIVITY_ENTRIES + 1 : 1;
	if (after + 1 > first)
		first = after + 1;
	for (uint64_t seq = first; seq <= ring.last; seq++)
		fn(seq, ring.json[seq % TIDE_ACTIVITY_ENTRIES], arg);
	uint64_t last = ring.last > after ? ring.last : after;
	pthread_mutex_unlock(&ring.mu);
	return last;
}
