/* inline.c — inline projections: the set an appender runs, and the append that runs them
 * inside its own transaction.
 *
 * An inline append is one transaction (or a savepoint in the caller's, or a reactor's batch).
 * First, pipelined in one round trip: BEGIN; the append, returning its rows' message ids and
 * time stamp too (append.c); the wanting projections' rows in tide_processors, created when
 * missing (status 'inline') and then read FOR SHARE. A blue-green switch (a rebuild's last
 * step) takes such a row FOR UPDATE: it waits for the appends in flight, and they for it, so
 * that no append writes into a generation that is being switched away from or into. Then
 * each projection whose row has its script's version runs on the appended events, in a
 * nested batch (batch.c) of its own VM, writing to the row's target suffix; the last one
 * sends COMMIT behind its statements, so a document projection costs two round trips more
 * than a plain append (its documents' read, then its writes with the COMMIT): measured with
 * `scripts/bench --quick` (durable server, 2 busy cores, 1 client), 971 appends/s with one
 * inline document projection against 2,781 plain ones in the same run (0.35). A projection
 * whose row has another version is not run: a rebuild to that version is under way (it folds
 * what this append missed), or this appender runs an outdated script. A failure anywhere
 * rolls the whole append back and reports the projection's error.
 *
 * A projection's setup(sql) runs in the first append of its set that it takes part in (and
 * again for a new target suffix, or after a failure of its, as the transaction that ran it
 * may have been rolled back), under an advisory lock: two appenders creating its tables at
 * once would collide in the catalog. */
#include "inline.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "file.h"
#include "input.h"
#include "loader.h"
#include "log.h"
#include "upcast.h"

#define MAX_SUFFIX 64

struct projection {
	int refs; /* the sets that have it */
	char *id, *app;
	char *script; /* its real path, on its row: what `tide rebuild` loads */
	struct tide_generation gen;
	/* Its setup ran, for this suffix, in an append that succeeded. */
	bool setup_done;
	char setup_suffix[MAX_SUFFIX];
	int told_version; /* the row's version its not running was last logged for */
	bool row_known;   /* its row was there: appends need not make sure of it */
};

struct tide_inline_set {
	int refs;
	unsigned cpu_ms;
	size_t memory;
	struct projection **p;
	size_t n, cap;
};

/* --- the set --------------------------------------------------------------------------- */

static struct projection *projection_new(const char *id, const char *app, const char *path,
                                         struct tide_generation *gen)
{
	struct projection *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->refs = 1;
	p->id = strdup(id);
	p->app = strdup(app);
	char real[PATH_MAX];
	p->script = strdup(realpath(path, real) ? real : path);
	if (!p->id || !p->app || !p->script) {
		free(p->id);
		free(p->app);
		free(p->script);
		free(p);
		return NULL;
	}
	p->gen = *gen;
	memset(gen, 0, sizeof(*gen));
	return p;
}

static void projection_unref(struct projection *p)
{
	if (!p || --p->refs > 0)
		return;
	tide_generation_free(&p->gen);
	free(p->id);
	free(p->app);
	free(p->script);
	free(p);
}

struct tide_inline_set *tide_inline_set_new(unsigned cpu_ms, size_t memory)
{
	struct tide_inline_set *set = calloc(1, sizeof(*set));
	if (!set)
		return NULL;
	set->refs = 1;
	set->cpu_ms = cpu_ms;
	set->memory = memory;
	return set;
}

void tide_inline_set_ref(struct tide_inline_set *set)
{
	set->refs++;
}

void tide_inline_set_unref(struct tide_inline_set *set)
{
	if (!set || --set->refs > 0)
		return;
	for (size_t i = 0; i < set->n; i++)
		projection_unref(set->p[i]);
	free(set->p);
	free(set);
}

size_t tide_inline_set_count(const struct tide_inline_set *set)
{
	return set ? set->n : 0;
}

const char *tide_inline_set_id(const struct tide_inline_set *set, size_t i)
{
	return set->p[i]->id;
}

bool tide_inline_set_has(const struct tide_inline_set *set, const char *id)
{
	for (size_t i = 0; set && i < set->n; i++)
		if (strcmp(set->p[i]->id, id) == 0)
			return true;
	return false;
}

/* Adds p to set, which takes a reference. */
static int add(struct tide_inline_set *set, struct projection *p)
{
	if (set->n == set->cap) {
		size_t cap = set->cap ? set->cap * 2 : 4;
		struct projection **v = realloc(set->p, cap * sizeof(*v));
		if (!v)
			return TIDE_ENOMEM;
		set->p = v;
		set->cap = cap;
	}
	p->refs++;
	set->p[set->n++] = p;
	return 0;
}

/* The directory's own name, of its real path ("." too), as `tide run` names its app;
 * NULL (err set) when it cannot be resolved. */
static const char *app_of(const char *dir, char real[PATH_MAX], char *err, size_t n)
{
	if (!realpath(dir, real)) {
		snprintf(err, n, "cannot read the directory %s: %s", dir, strerror(errno));
		return NULL;
	}
	const char *slash = strrchr(real, '/');
	return slash && slash[1] ? slash + 1 : real;
}

/* A script's processor id, APP/NAME (an app and a file name are NAME_MAX bytes at most). */
static void id_of(const char *app, const char *path, char id[600])
{
	const char *file = strrchr(path, '/');
	file = file ? file + 1 : path;
	int len = (int)strlen(file) - 4;
	snprintf(id, 600, "%.255s/%.*s", app, len < 255 ? len : 255, file);
}

/* Loads one script: a new projection when it is an inline one; NULL when it is not (or does
 * not load: then *failed, and err says why, naming the file). */
/* upcasters: what the projection reads through (upcast.h), or NULL; or upcasters_error. */
static struct projection *load(unsigned cpu_ms, size_t memory, const char *path, const char *app,
                               const char *upcasters, const char *upcasters_error, uint64_t *hash,
                               bool *failed, char *err, size_t n)
{
	char id[600];
	id_of(app, path, id);
	struct tide_load_request req = {
	        .path = path,
	        .id = id,
	        .force = true,
	        .cpu_ms = cpu_ms,
	        .memory = memory,
	        .upcasters = upcasters,
	        .upcasters_error = upcasters_error,
	};
	struct tide_load_result r;
	char lerr[1024];
	tide_load_now(&req, &r, lerr, sizeof(lerr));
	*hash = r.hash;
	*failed = r.outcome == TIDE_LOAD_FAILED;
	if (*failed) {
		/* An error raised by `return tide.projection { ... }` (a tail call) has no
		 * file:line of the script: name the file anyway. */
		bool named = strstr(lerr, path) != NULL;
		snprintf(err, n, "%s%s%s", named ? "" : path, named ? "" : ": ", lerr);
		return NULL;
	}
	struct projection *p = NULL;
	if (r.outcome == TIDE_LOAD_OK && r.gen.is_inline && strcmp(r.gen.kind, "projection") == 0) {
		p = projection_new(id, app, path, &r.gen);
		if (!p) {
			*failed = true;
			snprintf(err, n, "out of memory");
		}
	}
	tide_generation_free(&r.gen);
	return p;
}

int tide_inline_set_load_dir(struct tide_inline_set *set, const char *dir, const char *app,
                             bool strict, char *err, size_t n)
{
	char real[PATH_MAX];
	if (!app && !(app = app_of(dir, real, err, n)))
		return TIDE_EINVAL;
	char **paths;
	size_t count;
	if (tide_file_list_lua(dir, &paths, &count, err, n) != 0)
		return TIDE_EINVAL;
	/* The upcasters among them, which the projections read through. */
	struct tide_upcasters up;
	struct tide_vm_opts vo = {.cpu_ms = set->cpu_ms, .memory_limit = set->memory};
	const char *dirs[1] = {dir};
	if (tide_upcasters_find(dirs, 1, &vo, &up) != 0) {
		tide_file_list_free(paths, count);
		snprintf(err, n, "out of memory");
		return TIDE_ENOMEM;
	}
	int rc = 0;
	for (size_t i = 0; i < count && rc == 0; i++) {
		char id[600];
		id_of(app, paths[i], id);
		if (tide_file_is_spec(paths[i]) || tide_inline_set_has(set, id))
			continue;
		uint64_t hash;
		bool failed;
		char lerr[1200];
		struct projection *p = load(set->cpu_ms, set->memory, paths[i], app, up.paths,
		                            up.error, &hash, &failed, lerr, sizeof(lerr));
		if (failed && strict) {
			snprintf(err, n, "cannot load the inline projections of %s: %s", dir, lerr);
			rc = TIDE_ESCRIPT;
		}
		if (p && add(set, p) != 0) {
			snprintf(err, n, "out of memory");
			rc = TIDE_ENOMEM;
		}
		projection_unref(p);
	}
	tide_file_list_free(paths, count);
	tide_upcasters_free(&up);
	return rc;
}

static bool wants(const struct projection *p, const char *partition,
                  const struct tide_event *events, size_t n)
{
	if (!tide_all_partitions(p->gen.partition) && strcmp(p->gen.partition, partition) != 0)
		return false;
	if (!p->gen.types)
		return true;
	for (size_t i = 0; i < n; i++)
		for (size_t t = 0; t < p->gen.ntypes; t++)
			if (strcmp(events[i].type, p->gen.types[t]) == 0)
				return true;
	return false;
}

bool tide_inline_set_wants(const struct tide_inline_set *set, const char *partition,
                           const struct tide_event *events, size_t n)
{
	for (size_t i = 0; set && i < set->n; i++)
		if (wants(set->p[i], partition, events, n))
			return true;
	return false;
}

/* --- the daemon's directories ---------------------------------------------------------- */

struct known_file {
	char *path;
	uint64_t hash;
	struct projection *p; /* NULL: not an inline projection */
	bool seen;
};

struct tide_inline_dirs {
	char **dirs, **apps;
	int n;
	unsigned cpu_ms;
	size_t memory;
	struct tide_inline_set *set;
	struct known_file *files;
	size_t nfiles, cap;
	char *upcasters, *upcasters_error; /* the daemon's (tide_inline_dirs_use_upcasters) */
	uint64_t upcasters_sig;
};

struct tide_inline_dirs *tide_inline_dirs_new(const char *const *dirs, const char *const *apps,
                                              int n, unsigned cpu_ms, size_t memory)
{
	struct tide_inline_dirs *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->cpu_ms = cpu_ms;
	d->memory = memory;
	d->dirs = calloc((size_t)n + 1, sizeof(char *));
	d->apps = calloc((size_t)n + 1, sizeof(char *));
	bool ok = d->dirs && d->apps;
	for (int i = 0; ok && i < n; i++) {
		d->dirs[i] = strdup(dirs[i]);
		d->apps[i] = strdup(apps[i]);
		d->n = i + 1;
		ok = d->dirs[i] && d->apps[i];
	}
	if (!ok) {
		tide_inline_dirs_free(d);
		return NULL;
	}
	return d;
}

void tide_inline_dirs_free(struct tide_inline_dirs *d)
{
	if (!d)
		return;
	for (int i = 0; i < d->n; i++) {
		free(d->dirs[i]);
		free(d->apps[i]);
	}
	free(d->dirs);
	free(d->apps);
	for (size_t i = 0; i < d->nfiles; i++) {
		free(d->files[i].path);
		projection_unref(d->files[i].p);
	}
	free(d->files);
	free(d->upcasters);
	free(d->upcasters_error);
	tide_inline_set_unref(d->set);
	free(d);
}

void tide_inline_dirs_use_upcasters(struct tide_inline_dirs *d, const char *paths,
                                    const char *error, uint64_t signature)
{
	if (!d || (d->upcasters_sig == signature && (d->upcasters || d->upcasters_error)))
		return;
	char *p = paths ? strdup(paths) : NULL;
	char *e = error ? strdup(error) : NULL;
	if ((paths && !p) || (error && !e)) {
		free(p);
		free(e);
		return; /* the projections keep the upcasters they have */
	}
	free(d->upcasters);
	free(d->upcasters_error);
	d->upcasters = p ? p : strdup("");
	d->upcasters_error = e;
	d->upcasters_sig = signature;
	/* Every file loads again at the next scan, with them. */
	for (size_t i = 0; i < d->nfiles; i++)
		d->files[i].hash = 0;
}

struct tide_inline_set *tide_inline_dirs_set(const struct tide_inline_dirs *d)
{
	return d ? d->set : NULL;
}

static struct known_file *known(struct tide_inline_dirs *d, const char *path)
{
	for (size_t i = 0; i < d->nfiles; i++)
		if (strcmp(d->files[i].path, path) == 0)
			return &d->files[i];
	if (d->nfiles == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 16;
		struct known_file *f = realloc(d->files, cap * sizeof(*f));
		if (!f)
			return NULL;
		d->files = f;
		d->cap = cap;
	}
	struct known_file *f = &d->files[d->nfiles];
	memset(f, 0, sizeof(*f));
	if (!(f->path = strdup(path)))
		return NULL;
	d->nfiles++;
	return f;
}

/* Whether the file's content is what was loaded last (reading it is cheap; loading is not). */
static bool unchanged(const struct known_file *f)
{
	char err[200];
	size_t len;
	char *text = tide_file_read(f->path, &len, err, sizeof(err));
	bool same = text && f->hash && tide_hash(text, len) == f->hash;
	free(text);
	return same;
}

static bool scan_dir(struct tide_inline_dirs *d, int i)
{
	char err[1200];
	char **paths;
	size_t count;
	if (tide_file_list_lua(d->dirs[i], &paths, &count, err, sizeof(err)) != 0)
		return false; /* the daemon says so for its processors */
	bool changed = false;
	for (size_t k = 0; k < count; k++) {
		if (tide_file_is_spec(paths[k]))
			continue;
		struct known_file *f = known(d, paths[k]);
		if (!f)
			break;
		f->seen = true;
		if (unchanged(f))
			continue;
		bool failed;
		struct projection *p =
		        load(d->cpu_ms, d->memory, paths[k], d->apps[i], d->upcasters,
		             d->upcasters_error, &f->hash, &failed, err, sizeof(err));
		if (failed && f->p) {
			/* A bad save of an inline projection: the script that ran goes on. */
			tide_log("error", "inline.reload_failed", "processor", f->p->id, "error",
			         err, "keeping", "the running generation keeps serving",
			         (char *)NULL);
			continue;
		}
		changed = changed || p || f->p;
		projection_unref(f->p);
		f->p = p;
	}
	tide_file_list_free(paths, count);
	return changed;
}

bool tide_inline_dirs_scan(struct tide_inline_dirs *d)
{
	for (size_t i = 0; i < d->nfiles; i++)
		d->files[i].seen = false;
	bool changed = !d->set;
	for (int i = 0; i < d->n; i++)
		changed = scan_dir(d, i) || changed;
	for (size_t i = 0; i < d->nfiles;) {
		struct known_file *f = &d->files[i];
		if (f->seen) {
			i++;
			continue;
		}
		changed = changed || f->p;
		free(f->path);
		projection_unref(f->p);
		*f = d->files[--d->nfiles];
	}
	if (!changed)
		return false;
	struct tide_inline_set *set = tide_inline_set_new(d->cpu_ms, d->memory);
	if (!set)
		return false; /* the old set goes on */
	/* The first file to claim an id has it, as the daemon's processors do. */
	for (size_t i = 0; i < d->nfiles; i++) {
		struct projection *p = d->files[i].p;
		if (p && !tide_inline_set_has(set, p->id) && add(set, p) != 0)
			break;
	}
	tide_inline_set_unref(d->set);
	d->set = set;
	return true;
}

static int joined_append(void *ctx, uv_loop_t *loop, struct tide_pg *pg, struct tide_append *a,
                         const char *stream, const char *partition, const struct tide_event *events,
                         size_t n, const char *role, tide_append_cb cb, void *arg)
{
	struct tide_inline_dirs *d = ctx;
	if (!tide_inline_set_wants(d->set, partition, events, n))
		return tide_append_send(pg, a, NULL, cb, arg);
	struct tide_inline_opts o = {
	        .set = d->set,
	        .loop = loop,
	        .mode = TIDE_INLINE_JOINED,
	        .stream = stream,
	        .partition = partition,
	        .events = events,
	        .n = n,
	        .role = role,
	};
	struct tide_inline_append *x = tide_inline_append_new(&o, a, cb, arg);
	if (!x)
		return TIDE_ENOMEM;
	tide_inline_append_start(x, pg);
	return 0;
}

struct tide_batch_appender tide_inline_dirs_appender(struct tide_inline_dirs *d)
{
	return (struct tide_batch_appender){.send = joined_append, .ctx = d};
}

/* --- statements ------------------------------------------------------------------------ */

static const struct tide_pg_stmt stmt_begin = {"tide_inline_begin",
                                               "BEGIN ISOLATION LEVEL READ COMMITTED", 0};
static const struct tide_pg_stmt stmt_savepoint = {"tide_inline_savepoint", "SAVEPOINT tide_inline",
                                                   0};
static const struct tide_pg_stmt stmt_commit = {"tide_inline_commit", "COMMIT", 0};
static const struct tide_pg_stmt stmt_release = {"tide_inline_release",
                                                 "RELEASE SAVEPOINT tide_inline", 0};
static const struct tide_pg_stmt stmt_rollback = {"tide_inline_rollback", "ROLLBACK", 0};
static const struct tide_pg_stmt stmt_undo = {"tide_inline_undo",
                                              "ROLLBACK TO SAVEPOINT tide_inline", 0};

/* The statement the last projection sends behind its own, by mode (JOINED: the batch's). */
static const char *const close_sql[] = {
        [TIDE_INLINE_OWN] = "COMMIT",
        [TIDE_INLINE_SAVEPOINT] = "RELEASE SAVEPOINT tide_inline",
        [TIDE_INLINE_JOINED] = NULL,
};

/* A reactor's batch runs its SQL as sql_role; tide's own rows are the connecting user's. */
static const struct tide_pg_stmt stmt_role_none = {"tide_inline_role_none",
                                                   "SELECT set_config('role', 'none', true)", 0};
static const struct tide_pg_stmt stmt_role = {"tide_inline_role",
                                              "SELECT set_config('role', $1, true)", 1};

/* $1 ids, $2 versions, $3 apps, $4 the partition. */
static const struct tide_pg_stmt stmt_rows = {
        "tide_inline_rows",
        "INSERT INTO tide_processors (processor_id, kind, version, partition, status, app,"
        " script)"
        " SELECT r.id, 'projection', r.version, $4, 'inline', r.app, r.script"
        " FROM unnest($1::text[], $2::int[], $3::text[], $5::text[]) AS r(id, version, app,"
        "  script)"
        " ON CONFLICT (processor_id) DO NOTHING",
        5,
};

/* Another statement, so that it sees the rows the one before created or waited for. */
static const struct tide_pg_stmt stmt_generations = {
        "tide_inline_generations",
        "SELECT processor_id, version, target_suffix FROM tide_processors"
        " WHERE processor_id = ANY ($1::text[]) ORDER BY processor_id FOR SHARE",
        1,
};

static const struct tide_pg_stmt stmt_setup_lock = {
        "tide_inline_setup_lock",
        "SELECT pg_advisory_xact_lock(hashtext('tide_inline_setup'), hashtext($1))", 1};

/* --- the append ------------------------------------------------------------------------ */

enum phase {
	X_NEW,     /* not started */
	X_SENT,    /* the opening statements are out */
	X_RUNNING, /* a projection's batch runs */
	X_ENDING,  /* the closing statements are out */
	X_DONE,
};

/* A projection that wants the events, and what its row says. */
struct wanted {
	struct projection *p;
	bool found;
	int version;
	char suffix[MAX_SUFFIX];
	bool setup; /* its setup ran in this append */
};

struct tide_inline_append {
	struct tide_inline_set *set;
	uv_loop_t *loop;
	struct tide_pg *pg;
	enum tide_inline_mode mode;
	struct tide_wake *wake;
	char *role, *stream, *partition;
	struct tide_event *events; /* the strings are copies (owned) */
	size_t n;
	struct tide_append *a; /* until sent */
	tide_append_cb cb;
	void *arg;
	enum phase phase;
	int pending; /* replies still out (the append's callback counts as one) */
	bool abandoned;
	uv_timer_t *defer;
	struct wanted *want;
	size_t nwant, at, running;
	bool rows_made; /* the INSERT of missing rows was sent */
	/* The append's outcome. */
	struct tide_append_rows rows;
	struct tide_message *messages; /* the events as the projections get them */
	int64_t next_version, *positions;
	size_t npositions;
	/* The first failure. */
	int status;
	bool conflict, archived;
	int64_t expected, actual;
	const char *failed_id; /* the projection's (its set outlives this) */
	char err[1200];
	char traceback[4096];
};

static void free_append(struct tide_inline_append *x)
{
	tide_append_free(x->a);
	for (size_t i = 0; x->events && i < x->n; i++) {
		free((char *)x->events[i].type);
		free((char *)x->events[i].data);
		free((char *)x->events[i].metadata);
		free((char *)x->events[i].message_id);
		free((char *)x->events[i].schema_version);
	}
	free(x->events);
	free(x->role);
	free(x->stream);
	free(x->partition);
	free(x->want);
	free(x->rows.message_ids);
	free(x->messages);
	free(x->positions);
	tide_inline_set_unref(x->set);
	free(x);
}

static char *dup_or_null(const char *s, bool *ok)
{
	if (!s)
		return NULL;
	char *c = strdup(s);
	*ok = *ok && c;
	return c;
}

struct tide_inline_append *tide_inline_append_new(const struct tide_inline_opts *o,
                                                  struct tide_append *a, tide_append_cb cb,
                                                  void *arg)
{
	struct tide_inline_append *x = calloc(1, sizeof(*x));
	if (!x) {
		tide_append_free(a);
		return NULL;
	}
	tide_inline_set_ref(o->set);
	x->set = o->set;
	x->loop = o->loop;
	x->mode = o->mode;
	x->wake = o->wake;
	x->a = a;
	x->cb = cb;
	x->arg = arg;
	bool ok = true;
	x->role = dup_or_null(o->role, &ok);
	x->stream = dup_or_null(o->stream, &ok);
	x->partition = dup_or_null(o->partition, &ok);
	x->events = calloc(o->n, sizeof(*x->events));
	x->want = calloc(o->set->n ? o->set->n : 1, sizeof(*x->want));
	ok = ok && x->events && x->want;
	for (size_t i = 0; ok && i < o->n; i++) {
		const struct tide_event *e = &o->events[i];
		x->events[i].type = dup_or_null(e->type, &ok);
		x->events[i].data = dup_or_null(e->data ? e->data : "{}", &ok);
		x->events[i].metadata = dup_or_null(e->metadata ? e->metadata : "{}", &ok);
		x->events[i].message_id = dup_or_null(e->message_id, &ok);
		x->events[i].schema_version = dup_or_null(e->schema_version, &ok);
		x->n = i + 1;
	}
	if (!ok) {
		free_append(x);
		return NULL;
	}
	for (size_t i = 0; i < o->set->n; i++)
		if (wants(o->set->p[i], o->partition, o->events, o->n))
			x->want[x->nwant++].p = o->set->p[i];
	return x;
}

static void fail(struct tide_inline_append *x, int status, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* Records the first failure; the append ends with it. */
static void fail(struct tide_inline_append *x, int status, const char *fmt, ...)
{
	if (x->status)
		return;
	x->status = status;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(x->err, sizeof(x->err), fmt, ap);
	va_end(ap);
}

static void report(struct tide_inline_append *x)
{
	x->phase = X_DONE;
	if (x->abandoned && !x->status)
		fail(x, TIDE_ECLOSED, "the store was closed before the append completed");
	struct tide_append_result r = {.expected = x->expected, .actual = -1};
	if (!x->status) {
		/* Committed (or, in a caller's transaction, kept): the setups it ran are done,
		 * unless that transaction rolls back; a failure of the projection then runs its
		 * setup again. */
		for (size_t i = 0; i < x->nwant; i++) {
			struct wanted *w = &x->want[i];
			if (w->setup) {
				w->p->setup_done = true;
				memcpy(w->p->setup_suffix, w->suffix, sizeof(w->suffix));
			}
		}
		r.next_expected_version = x->next_version;
		r.global_positions = x->positions;
		r.count = x->npositions;
		x->cb(0, NULL, &r, x->arg);
	} else if (x->conflict) {
		r.actual = x->actual;
		r.archived = x->archived;
		x->cb(TIDE_ECONFLICT, x->err, &r, x->arg);
	} else if (x->failed_id) {
		r.processor = x->failed_id;
		r.traceback = x->traceback;
		x->cb(x->status, x->err, &r, x->arg);
	} else {
		x->cb(x->status, x->err, NULL, x->arg);
	}
	free_append(x);
}

static void defer_closed(uv_handle_t *h)
{
	free(h);
}

static void on_deferred(uv_timer_t *t)
{
	struct tide_inline_append *x = t->data;
	uv_close((uv_handle_t *)t, defer_closed);
	report(x);
}

/* Reports on the next loop turn: nothing went out, so no reply will call back. */
static void defer_report(struct tide_inline_append *x)
{
	x->phase = X_ENDING;
	x->defer = malloc(sizeof(*x->defer));
	if (!x->defer || uv_timer_init(x->loop, x->defer) != 0) {
		tide_log("error", "inline.lost", "error", "out of memory ending an append",
		         (char *)NULL);
		abort();
	}
	x->defer->data = x;
	uv_timer_start(x->defer, on_deferred, 0, 0);
}

static bool send_stmt(struct tide_inline_append *x, const struct tide_pg_stmt *stmt,
                      const char *const *values, tide_pg_reply_cb cb)
{
	if (tide_pg_exec(x->pg, stmt, values, cb, x) != 0) {
		fail(x, TIDE_ECONN, "%s", tide_pg_error(x->pg));
		return false;
	}
	x->pending++;
	return true;
}

static void step(struct tide_inline_append *x);
static bool send_rows(struct tide_inline_append *x);

static void note_failure(struct tide_inline_append *x, const struct tide_pg_reply *reply)
{
	char buf[800];
	fail(x, tide_append_lost(reply) ? TIDE_ECONN : reply->status, "%s",
	     tide_pg_explain(reply, buf, sizeof(buf)));
}

/* Replies that only matter when they fail. */
static void on_reply(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_inline_append *x = arg;
	x->pending--;
	if (reply->status)
		note_failure(x, reply);
	step(x);
}

/* The COMMIT sent when no projection sent it. */
static void on_commit(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_inline_append *x = arg;
	x->pending--;
	if (tide_append_lost(reply) && reply->sent)
		fail(x, TIDE_EUNKNOWN,
		     "the connection was lost after COMMIT was sent, so the append may or may not "
		     "have been committed (read the stream to find out): %s",
		     reply->err);
	else if (reply->status)
		note_failure(x, reply);
	else if (strcmp(PQcmdStatus(reply->res), "COMMIT") != 0)
		fail(x, TIDE_EDB,
		     "the transaction was rolled back, not committed: a statement in it had "
		     "failed");
	step(x);
}

/* The ending's replies: a failure is reported already; a lost connection is no news. */
static void on_undone(const struct tide_pg_reply *reply, void *arg)
{
	(void)reply;
	struct tide_inline_append *x = arg;
	x->pending--;
	step(x);
}

static void on_generations(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_inline_append *x = arg;
	x->pending--;
	if (reply->status) {
		note_failure(x, reply);
		step(x);
		return;
	}
	for (int r = 0; r < PQntuples(reply->res); r++) {
		const char *id = PQgetvalue(reply->res, r, 0);
		const char *suffix = PQgetvalue(reply->res, r, 2);
		for (size_t i = 0; i < x->nwant; i++) {
			struct wanted *w = &x->want[i];
			if (strcmp(w->p->id, id) != 0)
				continue;
			if (strlen(suffix) >= sizeof(w->suffix)) {
				fail(x, TIDE_EDB,
				     "the target suffix of inline projection %s in tide_processors "
				     "is "
				     "longer than %d bytes",
				     id, MAX_SUFFIX - 1);
				break;
			}
			w->found = true;
			w->p->row_known = true;
			w->version = atoi(PQgetvalue(reply->res, r, 1));
			memcpy(w->suffix, suffix, strlen(suffix) + 1);
		}
	}
	/* A row taken for granted is gone (`tide forget`): make it, and read again. */
	bool missing = false;
	for (size_t i = 0; i < x->nwant; i++)
		if (!x->want[i].found) {
			x->want[i].p->row_known = false;
			missing = true;
		}
	if (missing && !x->rows_made && !x->status)
		send_rows(x);
	step(x);
}

static void on_appended(int status, const char *err, const struct tide_append_result *r, void *arg)
{
	struct tide_inline_append *x = arg;
	x->pending--;
	if (status == 0) {
		x->next_version = r->next_expected_version;
		x->positions = malloc((r->count ? r->count : 1) * sizeof(int64_t));
		if (!x->positions) {
			fail(x, TIDE_ENOMEM, "out of memory");
		} else {
			memcpy(x->positions, r->global_positions, r->count * sizeof(int64_t));
			x->npositions = r->count;
		}
	} else if (status == TIDE_ECONFLICT && !x->status) {
		fail(x, status, "%s", err);
		x->conflict = true;
		x->expected = r->expected;
		x->actual = r->actual;
		x->archived = r->archived;
	} else if (status == TIDE_EUNKNOWN && x->mode == TIDE_INLINE_OWN) {
		/* Its transaction had not been committed: it went with the connection. */
		fail(x, TIDE_ECONN,
		     "the connection was lost before the append's transaction was committed "
		     "(nothing was written)");
	} else {
		fail(x, status, "%s", err);
	}
	step(x);
}

/* The projections' rows: made when one may be missing (the first append of this set, or
 * after one went missing), then read FOR SHARE. */
static bool send_rows(struct tide_inline_append *x)
{
	bool make = false;
	for (size_t i = 0; i < x->nwant; i++)
		make = make || !x->want[i].p->row_known;
	x->rows_made = x->rows_made || make;
	const char *ids[64], *apps[64], *scripts[64];
	const char **idv = x->nwant <= 64 ? ids : calloc(x->nwant, sizeof(char *));
	const char **appv = x->nwant <= 64 ? apps : calloc(x->nwant, sizeof(char *));
	const char **scriptv = x->nwant <= 64 ? scripts : calloc(x->nwant, sizeof(char *));
	size_t vlen = x->nwant * 12 + 3;
	char *versions = malloc(vlen);
	char *id_text = NULL, *app_text = NULL, *script_text = NULL;
	bool ok = false;
	if (!idv || !appv || !scriptv || !versions)
		goto done;
	size_t o = 0;
	versions[o++] = '{';
	for (size_t i = 0; i < x->nwant; i++) {
		idv[i] = x->want[i].p->id;
		appv[i] = x->want[i].p->app;
		scriptv[i] = x->want[i].p->script;
		o += (size_t)snprintf(versions + o, vlen - o, "%s%d", i ? "," : "",
		                      x->want[i].p->gen.version);
	}
	snprintf(versions + o, vlen - o, "}");
	id_text = tide_pg_text_array(idv, x->nwant);
	app_text = tide_pg_text_array(appv, x->nwant);
	script_text = tide_pg_text_array(scriptv, x->nwant);
	if (!id_text || !app_text || !script_text)
		goto done;
	const char *rows[5] = {id_text, versions, app_text, x->partition, script_text};
	const char *generations[1] = {id_text};
	const char *role[1] = {x->role};
	ok = (!x->role || send_stmt(x, &stmt_role_none, NULL, on_reply)) &&
	     (!make || send_stmt(x, &stmt_rows, rows, on_reply)) &&
	     send_stmt(x, &stmt_generations, generations, on_generations) &&
	     (!x->role || send_stmt(x, &stmt_role, role, on_reply));
done:
	if (!ok && !x->status)
		fail(x, TIDE_ENOMEM, "out of memory");
	if (idv != ids)
		free(idv);
	if (appv != apps)
		free(appv);
	if (scriptv != scripts)
		free(scriptv);
	free(versions);
	free(id_text);
	free(app_text);
	free(script_text);
	return ok;
}

void tide_inline_append_start(struct tide_inline_append *x, struct tide_pg *pg)
{
	x->pg = pg;
	x->phase = X_SENT;
	struct tide_append *a = x->a;
	x->a = NULL;
	if (!tide_pg_ready(pg)) {
		tide_append_free(a);
		fail(x, TIDE_ECONN, "not connected to the database");
		defer_report(x);
		return;
	}
	const struct tide_pg_stmt *opening = x->mode == TIDE_INLINE_OWN         ? &stmt_begin
	                                     : x->mode == TIDE_INLINE_SAVEPOINT ? &stmt_savepoint
	                                                                        : NULL;
	bool ok = !opening || send_stmt(x, opening, NULL, on_reply);
	if (ok) {
		tide_append_return_rows(a, &x->rows);
		ok = tide_append_send(pg, a, NULL, on_appended, x) == 0;
		a = NULL;
		if (ok)
			x->pending++;
		else
			fail(x, TIDE_ECONN, "%s", tide_pg_error(pg));
	}
	tide_append_free(a);
	if (ok && x->nwant)
		send_rows(x);
	if (x->pending == 0)
		defer_report(x);
	/* Else the replies come, also from a connection that fails. */
}

void tide_inline_append_abandon(struct tide_inline_append *x)
{
	x->abandoned = true;
	if (x->phase == X_NEW)
		report(x);
}

static void run_next(struct tide_inline_append *x);

/* The end: after a failure, undo (and wait for it, so that the connection is clean for
 * whatever comes next); after success, the closing statement unless a projection sent it. */
static void end(struct tide_inline_append *x, bool closed)
{
	x->phase = X_ENDING;
	if (x->abandoned || !tide_pg_ready(x->pg)) {
		step(x);
		return;
	}
	if (x->status) {
		if (x->mode == TIDE_INLINE_OWN)
			send_stmt(x, &stmt_rollback, NULL, on_undone);
		else if (x->mode == TIDE_INLINE_SAVEPOINT)
			(void)(send_stmt(x, &stmt_undo, NULL, on_undone) &&
			       send_stmt(x, &stmt_release, NULL, on_undone));
	} else if (!closed && x->mode == TIDE_INLINE_OWN) {
		if (send_stmt(x, &stmt_commit, NULL, on_commit) && x->wake)
			tide_wake(x->pg, x->wake);
	} else if (!closed && x->mode == TIDE_INLINE_SAVEPOINT) {
		send_stmt(x, &stmt_release, NULL, on_reply);
	}
	step(x);
}

/* Everything out has come back: go on. */
static void step(struct tide_inline_append *x)
{
	if (x->pending > 0)
		return;
	switch (x->phase) {
	case X_SENT:
		if (x->status || x->abandoned) {
			end(x, false);
			return;
		}
		x->phase = X_RUNNING;
		run_next(x);
		return;
	case X_ENDING: report(x); return;
	default: return;
	}
}

/* The events as the projections get them: the append's positions, ids and time stamp. */
static bool build_messages(struct tide_inline_append *x)
{
	if (x->messages)
		return true;
	x->messages = calloc(x->n, sizeof(*x->messages));
	if (!x->messages || x->npositions != x->n || x->rows.count != x->n)
		return false;
	for (size_t i = 0; i < x->n; i++) {
		struct tide_message *m = &x->messages[i];
		m->stream_id = x->stream;
		m->stream_position = x->next_version - (int64_t)x->n + (int64_t)i + 1;
		m->global_position = x->positions[i];
		m->type = x->events[i].type;
		m->data = x->events[i].data;
		m->metadata = x->events[i].metadata;
		m->message_id = x->rows.message_ids[i];
		m->created = x->rows.created;
		m->partition = x->partition;
		/* What the append writes. */
		m->schema_version = x->events[i].schema_version ? x->events[i].schema_version : "1";
	}
	return true;
}

static bool runnable(const struct wanted *w)
{
	return w->found && w->version == w->p->gen.version;
}

/* Said once per projection and row version: it is not run in this append. */
static void tell_not_run(const struct wanted *w)
{
	if (w->p->told_version == (w->found ? w->version : -1))
		return;
	w->p->told_version = w->found ? w->version : -1;
	char script[16], row[16];
	snprintf(script, sizeof(script), "%d", w->p->gen.version);
	snprintf(row, sizeof(row), "%d", w->version);
	tide_log("info", "inline.not_run", "processor", w->p->id, "version", script, "row_version",
	         w->found ? row : NULL, "reason",
	         w->found ? "its row in tide_processors has another version: a rebuild to that "
	                    "version is under way (it takes in these events), or this script is "
	                    "outdated"
	                  : "it has no row in tide_processors (forgotten meanwhile)",
	         (char *)NULL);
}

static void on_projection(const struct tide_batch_outcome *o, void *arg);

static void run_next(struct tide_inline_append *x)
{
	while (x->at < x->nwant && !runnable(&x->want[x->at]))
		tell_not_run(&x->want[x->at++]);
	if (x->at == x->nwant || x->abandoned || x->status) {
		end(x, false);
		return;
	}
	size_t i = x->at++;
	struct wanted *w = &x->want[i];
	bool last = true;
	for (size_t k = x->at; k < x->nwant; k++)
		last = last && !runnable(&x->want[k]);
	if (!build_messages(x)) {
		fail(x, TIDE_ENOMEM, "out of memory");
		end(x, false);
		return;
	}
	struct tide_read_result read = {.messages = x->messages, .count = x->n};
	int ref;
	char err[600];
	if (tide_batch_events(w->p->gen.vm, &read, &ref, err, sizeof(err)) != 0) {
		fail(x, TIDE_ESCRIPT, "inline projection %s: %s", w->p->id, err);
		x->failed_id = w->p->id;
		end(x, false);
		return;
	}
	w->setup = !w->p->setup_done || strcmp(w->p->setup_suffix, w->suffix) != 0;
	const char *lock[1] = {w->p->id};
	if (w->setup && !send_stmt(x, &stmt_setup_lock, lock, on_reply)) {
		tide_batch_events_free(w->p->gen.vm, ref);
		end(x, false);
		return;
	}
	struct tide_batch_spec spec = {
	        .loop = x->loop,
	        .vm = w->p->gen.vm,
	        .processor_ref = w->p->gen.ref,
	        .pg = x->pg,
	        .events_ref = ref,
	        .setup = w->setup,
	        .trace_sql = true, /* a failing statement names the script's line */
	        .target_suffix = w->suffix,
	        .nested = true,
	        .in_append = true,
	        .close_sql = last ? close_sql[x->mode] : NULL,
	        .wake = last && x->mode == TIDE_INLINE_OWN ? x->wake : NULL,
	};
	x->running = i;
	tide_batch_run(&spec, on_projection, x);
}

static void on_projection(const struct tide_batch_outcome *o, void *arg)
{
	struct tide_inline_append *x = arg;
	struct wanted *w = &x->want[x->running];
	if (o->status) {
		/* Its setup may have gone with a transaction rolled back: run it again. */
		w->p->setup_done = false;
		w->setup = false;
		int status = o->status == TIDE_ECONN
		                     ? (o->closed && x->mode == TIDE_INLINE_OWN ? TIDE_EUNKNOWN
		                                                                : TIDE_ECONN)
		             : o->script ? TIDE_ESCRIPT
		                         : TIDE_EDB;
		if (status == TIDE_EUNKNOWN)
			fail(x, status,
			     "the connection was lost after COMMIT was sent, so the append may or "
			     "may "
			     "not have been committed (read the stream to find out): %s",
			     o->err);
		else
			fail(x, status, "inline projection %s: %s", w->p->id, o->err);
		if (!x->failed_id && x->status == status) {
			x->failed_id = w->p->id;
			snprintf(x->traceback, sizeof(x->traceback), "%s", o->traceback);
		}
		end(x, true);
		return;
	}
	if (o->closed) {
		end(x, true); /* the transaction is committed, or the savepoint released */
		return;
	}
	x->phase = X_RUNNING;
	run_next(x);
}
