/* rebuild.h — blue-green rebuilds (sql/0010): a new version of a projection is built by a
 * builder, a processor of its own (ID@rebuild) writing into fresh targets (NAME || suffix),
 * while the running version keeps serving; once caught up, the switch makes the builder's
 * targets and checkpoint the processor's in one transaction. Here: the builder's name and
 * suffix, its progress, and the statements. */
#ifndef TIDE_REBUILD_H
#define TIDE_REBUILD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pg.h"

#define TIDE_REBUILD_TAG "@rebuild"

/* The builder's processor id for processor id (ID@rebuild); false when it does not fit. */
bool tide_rebuild_builder_id(const char *id, char *out, size_t n);

/* The suffix a rebuild to version builds under: __vV, or __vV_2, _3, … when the processor's
 * current suffix is that already (a rebuild of the same version). */
void tide_rebuild_suffix(int version, const char *current, char *out, size_t n);

/* The processor's row as it stands: the reply has no row, or (version, target_suffix). */
TIDE_MUST_CHECK int tide_rebuild_check(struct tide_pg *pg, const char *id, tide_pg_reply_cb cb,
                                       void *arg);

/* Makes builder's work processor id's (tide_rebuild_switch in sql/0010); the reply's row is
 * (old_version, old_suffix, targets). keep: the old targets stay. */
TIDE_MUST_CHECK int tide_rebuild_switch(struct tide_pg *pg, const char *id, const char *builder,
                                        const char *partition, int version, const char *suffix,
                                        bool keep, tide_pg_reply_cb cb, void *arg);

/* How far a builder got: events done of total (the total grows with the log), the rate
 * over the whole build, and the estimated time left. */
struct tide_progress {
	int64_t done, total;
	uint64_t started_ns; /* uv_hrtime() at the start */
	double rate;         /* events/s */
	double eta_s;        /* seconds left; < 0: unknown */
};

/* Updates rate and eta from done and total at now_ns. */
void tide_progress_update(struct tide_progress *p, uint64_t now_ns);

/* "450,000 / 1,000,000 events (45%), 60,123 events/s, 9 s left". */
void tide_progress_format(const struct tide_progress *p, char *out, size_t n);

/* Writes the progress on the builder's row (tide status shows it); failures only logged. */
void tide_rebuild_report(struct tide_pg *pg, const char *builder, const char *of,
                         const struct tide_progress *p);

#endif
