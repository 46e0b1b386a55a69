/* processor.h — one processor of the daemon: its script generations (VMs), its lease,
 * and its consumer loop over the global log (claim → read → batch → commit → read …). */
#ifndef TIDE_PROCESSOR_H
#define TIDE_PROCESSOR_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon.h"

struct tide_processor;

/* A processor for the script at path, named id; starts loading it at once. */
struct tide_processor *tide_processor_new(struct tide_daemon *d, const char *id, const char *path);

/* Loads the file again (off the loop) if its content changed, or always when force;
 * a good load replaces the running generation between batches. */
void tide_processor_reload(struct tide_processor *p, bool force);

/* New events may be there: read now if idle. */
void tide_processor_wake(struct tide_processor *p);

/* Finish the batch in flight, release the lease, close; then tell the daemon. */
void tide_processor_stop(struct tide_processor *p);

void tide_processor_free(struct tide_processor *p);

const char *tide_processor_id(const struct tide_processor *p);
const char *tide_processor_path(const struct tide_processor *p);
struct tide_processor *tide_processor_next(struct tide_processor *p);
void tide_processor_set_next(struct tide_processor *p, struct tide_processor *next);

#endif
