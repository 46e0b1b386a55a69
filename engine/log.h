/* log.h — one line per event on stderr: key=value pairs, or one JSON object per line. */
#ifndef TIDE_LOG_H
#define TIDE_LOG_H

#include <stdbool.h>

enum tide_log_format { TIDE_LOG_TEXT, TIDE_LOG_JSON };

void tide_log_set_format(enum tide_log_format f);

/* Lines below this level ("debug", "info", "warn", "error") are dropped; default info.
 * Returns -1 for an unknown level. */
int tide_log_set_level(const char *level);
bool tide_log_enabled(const char *level);

/* tide_log("info", "processor.started", "processor", id, "generation", "1", NULL):
 * string key/value pairs, NULL-terminated. A NULL value is skipped. */
void tide_log(const char *level, const char *event, ...) __attribute__((sentinel));

/* A function that sees every line, whatever the level threshold (the daemon's activity ring,
 * activity.h): kv holds npairs key/value pairs (no NULL values). It runs inside tide_log, on
 * the logging thread: it must not log, and should only copy what it keeps. NULL: none. */
typedef void (*tide_log_hook_fn)(const char *level, const char *event, const char *const *kv,
                                 int npairs, void *arg);
void tide_log_set_hook(tide_log_hook_fn fn, void *arg);

#endif
