/* log.c — the daemon's log lines: `ts=… level=info event=… key=value` or JSON. Values
 * with spaces, quotes or '=' are quoted; every line is written with one call. */
#include "log.h"

#include <cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static enum tide_log_format format = TIDE_LOG_TEXT;
static int threshold = 1; /* info */
static tide_log_hook_fn hook;
static void *hook_arg;

void tide_log_set_hook(tide_log_hook_fn fn, void *arg)
{
	hook = fn;
	hook_arg = arg;
}

void tide_log_set_format(enum tide_log_format f)
{
	format = f;
}

static int rank(const char *level)
{
	static const char *const levels[] = {"debug", "info", "warn", "error"};
	for (int i = 0; i < 4; i++)
		if (strcmp(level, levels[i]) == 0)
			return i;
	return -1;
}

int tide_log_set_level(const char *level)
{
	int r = rank(level);
	if (r < 0)
		return -1;
	threshold = r;
	return 0;
}

bool tide_log_enabled(const char *level)
{
	return rank(level) >= threshold;
}

static void timestamp(char *buf, size_t n)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct tm tm;
	gmtime_r(&ts.tv_sec, &tm);
	size_t o = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + o, n - o, ".%03ldZ", ts.tv_nsec / 1000000);
}

static void append_text(char **p, char *end, const char *key, const char *val)
{
	bool quote = !val[0] || strpbrk(val, " \t\n\"=") != NULL;
	*p += snprintf(*p, (size_t)(end - *p), " %s=", key);
	if (*p >= end)
		return;
	if (!quote) {
		*p += snprintf(*p, (size_t)(end - *p), "%s", val);
		return;
	}
	if (*p < end - 1)
		*(*p)++ = '"';
	for (const char *c = val; *c && *p < end - 3; c++) {
		if (*c == '"' || *c == '\\')
			*(*p)++ = '\\';
		if (*c == '\n') {
			*(*p)++ = '\\';
			*(*p)++ = 'n';
			continue;
		}
		*(*p)++ = *c;
	}
	if (*p < end - 1)
		*(*p)++ = '"';
	**p = '\0';
}

/* Hands the line's pairs to the hook (at most HOOK_PAIRS of them). */
#define HOOK_PAIRS 32
static void call_hook(const char *level, const char *event, va_list ap)
{
	const char *kv[HOOK_PAIRS * 2];
	int n = 0;
	const char *k;
	while (n < HOOK_PAIRS && (k = va_arg(ap, const char *))) {
		const char *v = va_arg(ap, const char *);
		if (v) {
			kv[2 * n] = k;
			kv[2 * n + 1] = v;
			n++;
		}
	}
	hook(level, event, kv, n, hook_arg);
}

void tide_log(const char *level, const char *event, ...)
{
	if (hook) {
		va_list hp;
		va_start(hp, event);
		call_hook(level, event, hp);
		va_end(hp);
	}
	if (!tide_log_enabled(level))
		return;
	char ts[40];
	timestamp(ts, sizeof(ts));
	va_list ap;
	va_start(ap, event);
	if (format == TIDE_LOG_JSON) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "ts", ts);
		cJSON_AddStringToObject(o, "level", level);
		cJSON_AddStringToObject(o, "event", event);
		const char *k;
		while ((k = va_arg(ap, const char *))) {
			const char *v = va_arg(ap, const char *);
			if (v)
				cJSON_AddStringToObject(o, k, v);
		}
		char *s = cJSON_PrintUnformatted(o);
		if (s)
			fprintf(stderr, "%s\n", s);
		cJSON_free(s);
		cJSON_Delete(o);
	} else {
		char line[4096];
		char *p = line, *end = line + sizeof(line) - 2;
		p += snprintf(p, (size_t)(end - p), "ts=%s level=%s event=%s", ts, level, event);
		const char *k;
		while ((k = va_arg(ap, const char *)) && p < end) {
			const char *v = va_arg(ap, const char *);
			if (v)
				append_text(&p, end, k, v);
		}
		if (p > end)
			p = end;
		*p++ = '\n';
		fwrite(line, 1, (size_t)(p - line), stderr);
	}
	va_end(ap);
}
