/* inline.h — inline projections: projections with `inline = true` run inside the transaction
 * that appends their events, wherever tide appends (a store's appends: the CLI, the Lua
 * module, the C library; a reactor's ctx.append in `tide run`). The set an appender runs,
 * loaded from script directories into one sandboxed VM per projection, and the append that
 * runs them (inline.c). */
#ifndef TIDE_INLINE_H
#define TIDE_INLINE_H

#include <stdbool.h>
#include <stddef.h>

#include "append.h"
#include "batch.h"

/* The inline projections of some directories. Reference-counted: an append in flight keeps
 * the set it runs (and the projections' VMs) alive. */
struct tide_inline_set;

/* An empty set whose scripts get these limits (0: the defaults of lua_vm.h); NULL when out
 * of memory. The caller holds the one reference. */
struct tide_inline_set *tide_inline_set_new(unsigned cpu_ms, size_t memory);
void tide_inline_set_ref(struct tide_inline_set *set);
void tide_inline_set_unref(struct tide_inline_set *set);

/* Loads the inline projections of dir into set (blocking: it reads and runs the files), with
 * processor ids APP/NAME as `tide run` names processors: NAME the file name without .lua,
 * APP app or, when NULL, the directory's own name. Each *.lua file but specs is loaded in
 * the sandbox; a file returning a projection with inline = true joins the set, the others
 * are left out, as is an id the set has already. A file that does not load is an error when
 * strict (TIDE_ESCRIPT, err names the file), else left out. TIDE_EINVAL when dir cannot be
 * read. */
TIDE_MUST_CHECK int tide_inline_set_load_dir(struct tide_inline_set *set, const char *dir,
                                             const char *app, bool strict, char *err, size_t n);

size_t tide_inline_set_count(const struct tide_inline_set *set);
/* The id of the i-th projection (APP/NAME), owned by the set. */
const char *tide_inline_set_id(const struct tide_inline_set *set, size_t i);
bool tide_inline_set_has(const struct tide_inline_set *set, const char *id);

/* Whether a projection of the set wants any of these events appended in partition: when
 * none does, the append goes alone, as if there were no set. */
bool tide_inline_set_wants(const struct tide_inline_set *set, const char *partition,
                           const struct tide_event *events, size_t n);

/* `tide run`'s inline projections: those among the scripts of its directories, kept
 * current as files change (a new or changed file is loaded again; the others keep their VMs
 * and what they know, such as whether their setup ran). */
struct tide_inline_dirs;

/* dirs[i]'s processors belong to app apps[i]; both copied. NULL when out of memory. */
struct tide_inline_dirs *tide_inline_dirs_new(const char *const *dirs, const char *const *apps,
                                              int n, unsigned cpu_ms, size_t memory);
void tide_inline_dirs_free(struct tide_inline_dirs *d);

/* Looks at the files again (blocking: it reads them, and loads the new and changed ones).
 * True when that changed which inline projections there are, or their scripts: the current
 * set is then a new one (appends in flight finish with the old). A file that does not load
 * is no inline projection: the daemon runs it as a processor, which reports the error. */
bool tide_inline_dirs_scan(struct tide_inline_dirs *d);

/* The upcasters its projections read through (paths "\n"-joined, or error: why they
 * cannot be used; copied): when the signature changes, the next scan loads every file again. */
void tide_inline_dirs_use_upcasters(struct tide_inline_dirs *d, const char *paths,
                                    const char *error, uint64_t signature);

/* The current set (d's; NULL before the first scan). */
struct tide_inline_set *tide_inline_dirs_set(const struct tide_inline_dirs *d);

/* What `tide run` gives batch.c (tide_batch_set_appender): a reactor's ctx.append runs the
 * current set's projections that want its events, inside the reactor's transaction. */
struct tide_batch_appender tide_inline_dirs_appender(struct tide_inline_dirs *d);

struct tide_store;
/* Makes store's appends run set's projections (referenced; NULL or an empty set: none), as
 * tide_store_set_projections does with a directory's. TIDE_EINVAL while an append with
 * inline projections is in flight. */
TIDE_MUST_CHECK int tide_store_use_inline_set(struct tide_store *store,
                                              struct tide_inline_set *set);

/* Where an inline append runs. */
enum tide_inline_mode {
	TIDE_INLINE_OWN,       /* a transaction of its own: BEGIN … COMMIT */
	TIDE_INLINE_SAVEPOINT, /* in a transaction of the caller's; a failure undoes it alone */
	TIDE_INLINE_JOINED,    /* in a batch's transaction (a reactor's), which a failure dooms */
};

struct tide_inline_opts {
	struct tide_inline_set *set; /* referenced for as long as the append runs */
	uv_loop_t *loop;
	enum tide_inline_mode mode;
	const char *stream, *partition;
	const struct tide_event *events; /* copied */
	size_t n;
	struct tide_wake *wake; /* OWN: woken behind its COMMIT; else NULL */
	const char *role;       /* JOINED: the batch's sql_role (tide's own rows are not its) */
};

/* An append with inline projections: the append statement, the projections' rows in
 * tide_processors, then each projection that wants the events (in a nested batch of its own
 * VM), all in one transaction. cb fires once, on a later loop turn than the start: as for
 * tide_store_append, except that a failing projection ends it with TIDE_ESCRIPT (its script
 * failed: error, CPU or memory limit) or TIDE_EDB (its SQL failed), the message naming it
 * and the result carrying its id and traceback; then nothing of the append is left (OWN,
 * SAVEPOINT) or the batch must fail (JOINED). */
struct tide_inline_append;

/* Builds one around a (built; taken in every case). NULL when out of memory (a freed). */
struct tide_inline_append *tide_inline_append_new(const struct tide_inline_opts *o,
                                                  struct tide_append *a, tide_append_cb cb,
                                                  void *arg);

/* Sends it on pg (pipeline mode). Never calls cb from inside: a connection that cannot take
 * it makes cb report TIDE_ECONN on the next loop turn. */
void tide_inline_append_start(struct tide_inline_append *x, struct tide_pg *pg);

/* Its owner is going away (the store is closing): it touches pg no more and reports
 * TIDE_ECLOSED — at once when it was never started, else once what it waits for is in. */
void tide_inline_append_abandon(struct tide_inline_append *x);

#endif
