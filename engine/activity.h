/* activity.h — the daemon's recent notable events, for the dashboard's live stream: a
 * bounded ring of the log lines that matter to someone watching (reloads and failed
 * loads, script errors, halts, warnings such as the held-back log), fed by a hook on
 * tide_log (log.h), each kept as one JSON object. activity.c. */
#ifndef TIDE_ACTIVITY_H
#define TIDE_ACTIVITY_H

#include <stdint.h>

/* How many entries the ring keeps (the oldest go first), and how long a value may be. */
#define TIDE_ACTIVITY_ENTRIES   100
#define TIDE_ACTIVITY_VALUE_MAX 1000

/* Starts recording: installs the log hook. Lines logged before are not seen. The ring is
 * the process's (like the log); lines may come from any thread (it has a lock), start,
 * stop and reading are the loop's. */
void tide_activity_start(void);

/* Stops recording and forgets every entry. */
void tide_activity_stop(void);

/* fn gets an entry's sequence number (from 1, increasing) and its JSON text, valid during
 * the call: {"seq", "time" (ISO 8601, UTC), "level", "event", "processor" (when the line
 * names one), "fields": {the line's other keys: "error", "reason", ...}}. */
typedef void (*tide_activity_fn)(uint64_t seq, const char *json, void *arg);

/* Calls fn for each entry newer than seq `after`, oldest first, under the ring's lock (fn
 * must not log); returns the newest entry's seq (`after` when there is none newer). */
uint64_t tide_activity_since(uint64_t after, tide_activity_fn fn, void *arg);

#endif
