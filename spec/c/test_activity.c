/* test_activity.c — the ring of recent notable log lines the dashboard replays
 * (engine/activity.c), without a database: what it keeps and skips, the shape of an
 * entry, its bounds (entries and value length), and reading it from a sequence number. */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "activity.h"
#include "harness.h"
#include "log.h"

struct seen {
	int n;
	uint64_t first, last;
	cJSON *entries; /* an array of the entries, parsed */
};

static void collect(uint64_t seq, const char *json, void *arg)
{
	struct seen *s = arg;
	if (s->n++ == 0)
		s->first = seq;
	else
		CHECK(seq == s->last + 1);
	s->last = seq;
	cJSON *e = cJSON_Parse(json);
	CHECK(e);
	CHECK_EQ_I64(cJSON_GetObjectItem(e, "seq")->valuedouble, seq);
	cJSON_AddItemToArray(s->entries, e);
}

static struct seen since(uint64_t after)
{
	struct seen s = {0, 0, 0, cJSON_CreateArray()};
	tide_activity_since(after, collect, &s);
	return s;
}

static const char *str(cJSON *o, const char *key)
{
	cJSON *v = cJSON_GetObjectItem(o, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void keeps_what_matters(void)
{
	tide_log_set_level("error"); /* the ring sees lines the log's level drops */
	tide_activity_start();
	tide_log("info", "processor.started", "processor", "app/a", (char *)NULL); /* routine */
	tide_log("debug", "consumer.state", "processor", "app/a", (char *)NULL);
	tide_log("info", "processor.reloaded", "processor", "app/a", "generation", "2",
	         (char *)NULL);
	tide_log("error", "processor.reload_failed", "processor", "app/a", "error",
	         "a.lua:3: '}' expected near <eof>", "keeping", "the running generation",
	         (char *)NULL);
	tide_log("warn", "log.held_back", "backend_pid", "42", "user", NULL, "open_seconds", "9",
	         (char *)NULL);
	tide_log("info", "http.listening", "address", "127.0.0.1:1", (char *)NULL); /* routine */

	struct seen s = since(0);
	CHECK_EQ_I64(s.n, 3);
	CHECK_EQ_I64(s.first, 1);
	cJSON *reloaded = cJSON_GetArrayItem(s.entries, 0);
	CHECK(strcmp(str(reloaded, "event"), "processor.reloaded") == 0);
	CHECK(strcmp(str(reloaded, "level"), "info") == 0);
	CHECK(strcmp(str(reloaded, "processor"), "app/a") == 0);
	CHECK(strcmp(str(cJSON_GetObjectItem(reloaded, "fields"), "generation"), "2") == 0);
	const char *time = str(reloaded, "time"); /* 2026-01-02T03:04:05.678Z */
	CHECK(time && strlen(time) == 24 && time[10] == 'T' && time[23] == 'Z');

	cJSON *failed = cJSON_GetArrayItem(s.entries, 1);
	CHECK(strcmp(str(failed, "event"), "processor.reload_failed") == 0);
	CHECK(strcmp(str(failed, "level"), "error") == 0);
	cJSON *fields = cJSON_GetObjectItem(failed, "fields");
	CHECK(strcmp(str(fields, "error"), "a.lua:3: '}' expected near <eof>") == 0);
	CHECK(!cJSON_HasObjectItem(fields, "processor")); /* it is the entry's own key */

	cJSON *held = cJSON_GetArrayItem(s.entries, 2);
	CHECK(!cJSON_HasObjectItem(held, "processor"));
	fields = cJSON_GetObjectItem(held, "fields");
	CHECK(strcmp(str(fields, "backend_pid"), "42") == 0);
	CHECK(!cJSON_HasObjectItem(fields, "user")); /* a NULL value is skipped, as in the log */
	cJSON_Delete(s.entries);

	/* From a sequence number: only what is newer. */
	s = since(2);
	CHECK_EQ_I64(s.n, 1);
	CHECK_EQ_I64(s.first, 3);
	cJSON_Delete(s.entries);
	CHECK_EQ_I64(tide_activity_since(3, collect, NULL), 3); /* nothing newer: fn not called */
	CHECK_EQ_I64(tide_activity_since(7, collect, NULL), 7);

	tide_activity_stop();
	tide_log("error", "batch.failed", "processor", "app/a", (char *)NULL);
	s = since(0);
	CHECK_EQ_I64(s.n, 0);
	cJSON_Delete(s.entries);
	printf("ok keeps_what_matters\n");
}

static void bounded(void)
{
	tide_log_set_level("error");
	tide_activity_start();
	/* More lines than the ring holds: the oldest go. */
	for (int i = 1; i <= TIDE_ACTIVITY_ENTRIES * 2 + 50; i++) {
		char n[16];
		snprintf(n, sizeof(n), "%d", i);
		tide_log("warn", "connect.failed", "processor", "app/a", "attempt", n,
		         (char *)NULL);
	}
	struct seen s = since(0);
	CHECK_EQ_I64(s.n, TIDE_ACTIVITY_ENTRIES);
	CHECK_EQ_I64(s.first, TIDE_ACTIVITY_ENTRIES + 51);
	CHECK_EQ_I64(s.last, TIDE_ACTIVITY_ENTRIES * 2 + 50);
	cJSON *oldest = cJSON_GetArrayItem(s.entries, 0);
	char want[16];
	snprintf(want, sizeof(want), "%d", TIDE_ACTIVITY_ENTRIES + 51);
	CHECK(strcmp(str(cJSON_GetObjectItem(oldest, "fields"), "attempt"), want) == 0);
	cJSON_Delete(s.entries);
	s = since(1); /* a reader that fell behind gets what is left */
	CHECK_EQ_I64(s.n, TIDE_ACTIVITY_ENTRIES);
	cJSON_Delete(s.entries);

	/* A long value is cut, at a character's start: 3-byte characters across the limit. */
	size_t len = 3 * TIDE_ACTIVITY_VALUE_MAX;
	char *big = malloc(len + 1);
	CHECK(big);
	for (size_t i = 0; i < len; i += 3)
		memcpy(big + i, "\xe2\x9c\x93", 3); /* ✓ */
	big[len] = '\0';
	tide_log("error", "batch.failed", "processor", "app/a", "traceback", big, (char *)NULL);
	free(big);
	uint64_t last = s.last;
	s = since(last);
	CHECK_EQ_I64(s.n, 1);
	const char *tb =
	        str(cJSON_GetObjectItem(cJSON_GetArrayItem(s.entries, 0), "fields"), "traceback");
	size_t tl = strlen(tb);
	CHECK(tl <= TIDE_ACTIVITY_VALUE_MAX + 3);
	CHECK(tl > TIDE_ACTIVITY_VALUE_MAX - 6);
	CHECK(strcmp(tb + tl - 3, "\xe2\x80\xa6") == 0); /* … */
	CHECK((tl - 3) % 3 == 0);                        /* whole characters only */
	cJSON_Delete(s.entries);
	tide_activity_stop();
	printf("ok bounded\n");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s keeps_what_matters|bounded\n", argv[0]);
		return 2;
	}
	if (strcmp(argv[1], "keeps_what_matters") == 0)
		keeps_what_matters();
	else if (strcmp(argv[1], "bounded") == 0)
		bounded();
	else
		return 2;
	return 0;
}
