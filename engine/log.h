/* log.h — one line per event on stderr: key=value pairs, or one JSON object per line. */
#ifndef TIDE_LOG_H
#define TIDE_LOG_H

#include <stdbool.h>

enum tide_log_format { TIDE_LOG_TEXT, TIDE_LOG_JSON };

void tide_log_set_format(enum tide_log_format f);

/* tide_log("info", "processor.started", "processor", id, "generation", "1", NULL):
 * string key/value pairs, NULL-terminated. A NULL value is skipped. */
void tide_log(const char *level, const char *event, ...) __attribute__((sentinel));

#endif
