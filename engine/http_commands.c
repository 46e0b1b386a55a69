/* http_commands.c — POST /commands/{decider}/{stream}: a command through the decider
 * DIR/DECIDER.lua of the daemon's directories, run exactly as `tide handle` runs it
 * (command.c: read, fold, decide, append; the tail and a retry after a conflict, then a
 * locked attempt; snapshots; tide.reject; the inline projections of the directories).
 *
 * That code path blocks: the runtime's store waits on a private loop, and a decide may
 * take its whole CPU limit. So commands run on a few worker threads of their own, never on
 * the daemon's loop. Each worker has its own loop and database connection (wrapped for
 * the runtime as a borrowed store: one connection per worker, whatever the deciders), its
 * own inline projections, and a VM per decider file, kept between commands as a
 * processor's is and loaded again when the file's content changes. Nothing of a worker is
 * shared with another thread but the job queue; the CPU guard's watchdog (watchdog.c) is
 * one thread for every VM of the process, under its mutex. The loop parses and checks the
 * request, queues it, and answers when a uv_async_t says the worker is done. A locked
 * attempt's transaction is thus on a worker's own connection, never on the loop's pool. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "command.h"
#include "file.h"
#include "http.h"
#include "inline.h"
#include "input.h"
#include "log.h"
#include "lua_store.h"
#include "pg.h"
#include "store.h"
#include "upcast.h"

#define WORKERS     4    /* threads, each with a database connection */
#define MAX_QUEUED  1000 /* commands waiting for a worker; then 503 */
#define MAX_CACHED  16   /* decider VMs a worker keeps */
#define MAX_RETRIES 20
#define MAX_NAME    200

/* One command, from the loop to a worker and back. */
struct job {
	struct tide_http_call *call; /* the loop's alone */
	char *decider, *stream, *partition, *command;
	size_t command_len;
	int64_t retries;
	bool stats;
	int status;  /* the reply, made by the worker */
	char *reply; /* JSON text, malloc'd */
	struct job *next;
	struct job *prev_pending, *next_pending; /* the loop's list of unanswered jobs */
};

/* Shared by the loop and the workers; the queue and the done list under mu. */
struct tide_http_commands {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct job *queue, *queue_tail, *done, *done_tail;
	int queued;
	int refs;      /* the loop's and each worker's */
	bool stopping; /* set by the loop, under mu, before async is closed */
	uv_async_t *async;
	struct job *pending; /* the loop's alone */
	/* copies of what the workers need */
	char *url;
	char **dirs, **apps;
	int ndirs;
	unsigned cpu_ms;
	size_t memory;
	/* The daemon's upcasters, loaded beside each decider (under mu: the loop replaces them
	 * when they change). */
	char *upcasters, *upcasters_error;
	uint64_t upcasters_sig;
};

/* --- on a worker ------------------------------------------------------------------------ */

struct cached {
	char *path;
	uint64_t hash;          /* of the content it was loaded from */
	uint64_t upcasters_sig; /* of the upcasters loaded with it */
	struct tide_vm *vm;
	int ref;
	uint64_t used; /* for dropping the least recently used */
};

struct worker {
	struct tide_http_commands *w;
	uv_loop_t loop;
	struct tide_store *store;
	struct tide_inline_dirs *inline_dirs;
	struct cached cache[MAX_CACHED];
	int ncached;
	uint64_t tick;
};

static void reply_error(struct job *j, int status, const char *kind, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

static void set_reply(struct job *j, int status, cJSON *o)
{
	char *text = o ? cJSON_PrintUnformatted(o) : NULL;
	cJSON_Delete(o);
	size_t len = text ? strlen(text) : 0;
	j->reply = text ? malloc(len + 2) : NULL;
	if (!j->reply) {
		free(text);
		j->status = 500;
		return; /* the loop answers "out of memory" */
	}
	memcpy(j->reply, text, len);
	memcpy(j->reply + len, "\n", 2);
	free(text);
	j->status = status;
}

static void reply_error(struct job *j, int status, const char *kind, const char *fmt, ...)
{
	char msg[1200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	set_reply(j, status, tide_http_error_body(kind, msg, NULL));
}

static void on_open(struct tide_store *s, int status, const char *err, void *arg)
{
	(void)s;
	(void)status;
	(void)err;
	*(bool *)arg = true;
}

static void run_until(uv_loop_t *loop, const bool *done)
{
	while (!*done)
		uv_run(loop, UV_RUN_ONCE);
}

/* The worker's connection, opened with its first command. A failed connection is the
 * runtime's store's to retry (it reconnects before a call). */
static int ensure_store(struct worker *wk)
{
	if (wk->store)
		return 0;
	bool done = false;
	if (tide_store_open_named(&wk->loop, wk->w->url, "tide command", on_open, &done,
	                          &wk->store) != 0)
		return TIDE_ENOMEM;
	run_until(&wk->loop, &done);
	return 0;
}

static void on_end(int status, const char *err, void *arg)
{
	(void)status;
	(void)err;
	*(bool *)arg = true;
}

/* The next command must not run inside a transaction a failed one left open. */
static void end_transaction(struct worker *wk)
{
	bool done = false;
	if (wk->store && tide_store_in_transaction(wk->store) &&
	    tide_store_rollback(wk->store, on_end, &done) == 0)
		run_until(&wk->loop, &done);
}

static void drop_cached(struct worker *wk, int i)
{
	free(wk->cache[i].path);
	tide_vm_close(wk->cache[i].vm);
	wk->cache[i] = wk->cache[--wk->ncached];
}

/* DIR/NAME.lua of the first directory that has it; false when none does. */
static bool find_decider(struct worker *wk, const char *name, char *path, size_t n)
{
	for (int i = 0; i < wk->w->ndirs; i++) {
		struct stat st;
		snprintf(path, n, "%s/%s.lua", wk->w->dirs[i], name);
		if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
			return true;
	}
	return false;
}

/* The decider's VM: the cached one while the file has the content it was loaded from, else
 * loaded anew. NULL with the job's reply made when it cannot be had. */
static struct cached *decider_vm(struct worker *wk, struct job *j)
{
	char path[4200], err[2048];
	if (!find_decider(wk, j->decider, path, sizeof(path))) {
		reply_error(j, 404, "not_found",
		            "no decider %s: there is no %s.lua in the daemon's directories",
		            j->decider, j->decider);
		return NULL;
	}
	size_t len;
	char *src = tide_file_read(path, &len, err, sizeof(err));
	if (!src) {
		reply_error(j, 500, "error", "%s", err);
		return NULL;
	}
	uint64_t hash = tide_hash(src, len);
	pthread_mutex_lock(&wk->w->mu);
	uint64_t sig = wk->w->upcasters_sig;
	char *upcasters = wk->w->upcasters ? strdup(wk->w->upcasters) : NULL;
	char *upcasters_error = wk->w->upcasters_error ? strdup(wk->w->upcasters_error) : NULL;
	bool copied =
	        (!wk->w->upcasters || upcasters) && (!wk->w->upcasters_error || upcasters_error);
	pthread_mutex_unlock(&wk->w->mu);
	int at = -1;
	for (int i = 0; i < wk->ncached; i++)
		if (strcmp(wk->cache[i].path, path) == 0)
			at = i;
	if (at >= 0 && wk->cache[at].hash == hash && wk->cache[at].upcasters_sig == sig) {
		free(upcasters);
		free(upcasters_error);
		free(src);
		wk->cache[at].used = ++wk->tick;
		return &wk->cache[at];
	}
	if (at >= 0)
		drop_cached(wk, at);
	struct tide_vm_opts opts = {.cpu_ms = wk->w->cpu_ms, .memory_limit = wk->w->memory};
	struct cached c = {.hash = hash, .upcasters_sig = sig, .used = ++wk->tick};
	int rc = copied ? tide_vm_open(&opts, &c.vm, err, sizeof(err)) : TIDE_ENOMEM;
	if (rc == 0 && upcasters_error) {
		snprintf(err, sizeof(err), "%s", upcasters_error);
		rc = TIDE_ESCRIPT;
	}
	if (rc == 0)
		rc = tide_upcasters_load(c.vm, upcasters, err, sizeof(err));
	if (rc == 0)
		rc = tide_vm_load(c.vm, path, src, len, &c.ref, err, sizeof(err));
	free(src);
	free(upcasters);
	free(upcasters_error);
	if (rc == 0 && !(c.path = strdup(path)))
		rc = TIDE_ENOMEM;
	if (rc) {
		tide_vm_close(c.vm);
		if (rc == TIDE_VM_NOT_PROCESSOR)
			reply_error(j, 404, "not_found", "%s is not a decider: %s", path,
			            tide_vm_unprefixed(err, path));
		else if (rc == TIDE_ENOMEM)
			reply_error(j, 500, "memory", "out of memory");
		else
			reply_error(j, 422, "script", "the decider does not load: %s", err);
		return NULL;
	}
	if (wk->ncached == MAX_CACHED) {
		int oldest = 0;
		for (int i = 1; i < wk->ncached; i++)
			if (wk->cache[i].used < wk->cache[oldest].used)
				oldest = i;
		drop_cached(wk, oldest);
	}
	wk->cache[wk->ncached] = c;
	return &wk->cache[wk->ncached++];
}

static int push_store(lua_State *L, void *arg, int *status, char *msg, size_t n)
{
	(void)status;
	(void)msg;
	(void)n;
	struct worker *wk = arg;
	tide_lua_store_push_borrowed(L, &wk->loop, wk->store);
	return 1;
}

/* The reply of a failed command: its status by the runtime's error kind, the error as the
 * runtime gives it (a rejection's details, a conflict's versions, a failing inline
 * projection's id), and for a script's failure its stack. */
static void reply_failure(struct job *j, struct tide_command_result *r)
{
	bool script = strcmp(r->kind, "script") == 0 || strcmp(r->kind, "timeout") == 0 ||
	              strcmp(r->kind, "memory") == 0;
	int status = r->rejected ? 422 : script ? 422 : 0;
	if (!status)
		switch (r->status) {
		case TIDE_EINVAL: status = 400; break;
		case TIDE_ECONFLICT: status = 409; break;
		case TIDE_ECONN:
		case TIDE_EUNKNOWN: status = 503; break;
		default: status = 500;
		}
	cJSON *e = r->out ? cJSON_GetObjectItemCaseSensitive(r->out, "error") : NULL;
	if (!e) {
		reply_error(j, status,
		            r->rejected ? "rejected"
		            : script    ? "script"
		                        : tide_strerror(r->status),
		            "%s", r->message);
		return;
	}
	/* A script's failure is "script" whatever stopped it (an error, its CPU or memory
	 * limit): the message says which. */
	if (script)
		cJSON_ReplaceItemInObjectCaseSensitive(e, "kind", cJSON_CreateString("script"));
	char *frames = r->traceback ? tide_vm_script_frames(r->traceback) : NULL;
	if (frames)
		cJSON_AddStringToObject(e, "traceback", frames);
	free(frames);
	set_reply(j, status, r->out);
	r->out = NULL;
}

static void run_job(struct worker *wk, struct job *j)
{
	if (ensure_store(wk) != 0) {
		reply_error(j, 500, "memory", "out of memory");
		return;
	}
	/* What the server sent while this worker was idle (the error that ends a connection
	 * it terminated), read now: else it would be taken for the answer to the command's
	 * first request. */
	uv_run(&wk->loop, UV_RUN_NOWAIT);
	if (tide_store_set_partition(wk->store,
	                             j->partition ? j->partition : TIDE_DEFAULT_PARTITION) != 0) {
		reply_error(j, 400, "invalid", "partition: %s", tide_store_error(wk->store));
		return;
	}
	struct cached *c = decider_vm(wk, j);
	if (!c)
		return;
	/* The inline projections as the files are now: a new one sees this command's events. */
	if (!wk->inline_dirs)
		wk->inline_dirs = tide_inline_dirs_new((const char *const *)wk->w->dirs,
		                                       (const char *const *)wk->w->apps,
		                                       wk->w->ndirs, wk->w->cpu_ms, wk->w->memory);
	if (wk->inline_dirs)
		tide_inline_dirs_scan(wk->inline_dirs);
	if (tide_store_use_inline_set(wk->store, tide_inline_dirs_set(wk->inline_dirs)) != 0) {
		reply_error(j, 500, "error", "%s", tide_store_error(wk->store));
		return;
	}
	struct tide_command cmd = {
	        .ref = c->ref,
	        .name = j->decider,
	        .stream = j->stream,
	        .command_json = j->command,
	        .command_len = j->command_len,
	        .retries = j->retries,
	        .stats = j->stats,
	        .push_store = push_store,
	        .arg = wk,
	};
	struct tide_command_result r;
	struct tide_vm_error e;
	int rc;
	for (int attempt = 1;; attempt++) {
		rc = tide_command_run(c->vm, &cmd, &r, &e);
		end_transaction(wk);
		/* A connection the server ended while this worker was idle is found lost by the
		 * command's first request. "connection" says nothing was written ("unknown" would
		 * say the outcome is not known): once more, on a new connection. */
		if (rc != 0 || r.status != TIDE_ECONN || attempt == 2)
			break;
		tide_command_result_free(&r);
	}
	if (rc != 0) {
		/* The VM's memory ran out outside the script's own calls (the stream read into
		 * it, say): the sandbox's limit all the same. Anything else raised is misuse. */
		bool memory = strcmp(e.kind, "memory") == 0;
		reply_error(j, memory ? 422 : 500, memory ? "script" : "error", "%s", e.message);
		drop_cached(wk, (int)(c - wk->cache));
	} else if (r.status == 0) {
		set_reply(j, 200, r.out);
		r.out = NULL;
	} else if (r.not_decider) {
		reply_error(j, 404, "not_found",
		            "%s.lua is a %s, not a decider (a decider returns tide.decider { "
		            "initial, evolve, decide })",
		            j->decider, r.kind[0] ? r.kind : "processor of another kind");
	} else {
		reply_failure(j, &r);
	}
	if (r.warning[0]) {
		char line[sizeof(r.warning)];
		tide_pg_redact(NULL, r.warning, line, sizeof(line));
		tide_log("warn", "command.snapshot_failed", "decider", j->decider, "stream",
		         j->stream, "error", line, (char *)NULL);
	}
	tide_command_result_free(&r);
}

static void worker_close(struct worker *wk)
{
	for (int i = wk->ncached - 1; i >= 0; i--)
		drop_cached(wk, i);
	if (wk->store)
		tide_store_close(wk->store);
	uv_run(&wk->loop, UV_RUN_DEFAULT);
	tide_inline_dirs_free(wk->inline_dirs);
	(void)uv_loop_close(&wk->loop);
}

static void job_free(struct job *j)
{
	free(j->decider);
	free(j->stream);
	free(j->partition);
	free(j->command);
	free(j->reply);
	free(j);
}

static void commands_free(struct tide_http_commands *w)
{
	for (int i = 0; i < w->ndirs; i++) {
		free(w->dirs[i]);
		free(w->apps[i]);
	}
	free(w->dirs);
	free(w->apps);
	free(w->url);
	free(w->upcasters);
	free(w->upcasters_error);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv);
	free(w);
}

/* Drops a reference (under mu); the last one frees. */
static void unref_locked(struct tide_http_commands *w)
{
	bool last = --w->refs == 0;
	pthread_mutex_unlock(&w->mu);
	if (last)
		commands_free(w);
}

static void *worker_main(void *arg)
{
	struct worker *wk = calloc(1, sizeof(*wk));
	struct tide_http_commands *w = arg;
	if (wk) {
		wk->w = w;
		uv_loop_init(&wk->loop);
	}
	pthread_mutex_lock(&w->mu);
	while (wk) {
		while (!w->stopping && !w->queue)
			pthread_cond_wait(&w->cv, &w->mu);
		if (w->stopping)
			break;
		struct job *j = w->queue;
		w->queue = j->next;
		if (!w->queue)
			w->queue_tail = NULL;
		w->queued--;
		pthread_mutex_unlock(&w->mu);
		run_job(wk, j);
		pthread_mutex_lock(&w->mu);
		if (w->stopping) { /* no one waits for it any more */
			job_free(j);
			continue;
		}
		j->next = NULL;
		if (w->done_tail)
			w->done_tail->next = j;
		else
			w->done = j;
		w->done_tail = j;
		uv_async_send(w->async);
	}
	pthread_mutex_unlock(&w->mu);
	if (wk) {
		worker_close(wk);
		free(wk);
	}
	pthread_mutex_lock(&w->mu);
	unref_locked(w);
	return NULL;
}

/* --- on the loop ------------------------------------------------------------------------ */

static void unlink_pending(struct tide_http_commands *w, struct job *j)
{
	if (j->prev_pending)
		j->prev_pending->next_pending = j->next_pending;
	else
		w->pending = j->next_pending;
	if (j->next_pending)
		j->next_pending->prev_pending = j->prev_pending;
}

/* Answers the jobs of the list (linked by next) with their replies, and frees them; linked:
 * they are in the pending list still. */
static void answer(struct tide_http_commands *w, struct job *j, bool linked)
{
	while (j) {
		struct job *next = j->next;
		if (linked)
			unlink_pending(w, j);
		if (j->reply)
			tide_http_reply(j->call, j->status, "application/json", j->reply,
			                strlen(j->reply));
		else
			tide_http_fail(j->call, 500, "memory", "out of memory");
		job_free(j);
		j = next;
	}
}

static void on_done(uv_async_t *a)
{
	struct tide_http_commands *w = a->data;
	pthread_mutex_lock(&w->mu);
	struct job *done = w->done;
	w->done = w->done_tail = NULL;
	pthread_mutex_unlock(&w->mu);
	answer(w, done, true);
}

static void on_async_closed(uv_handle_t *h)
{
	free(h);
}

static void workers_stop(void *state)
{
	struct tide_http_commands *w = state;
	if (!w)
		return;
	pthread_mutex_lock(&w->mu);
	w->stopping = true;
	struct job *queued = w->queue, *done = w->done;
	w->queue = w->queue_tail = w->done = w->done_tail = NULL;
	pthread_cond_broadcast(&w->cv);
	for (struct job *lists[] = {queued, done}, **l = lists; l < lists + 2; l++)
		for (struct job *j = *l; j; j = j->next)
			unlink_pending(w, j);
	/* The rest are running: their workers free them (under mu, hence this is under it
	 * too), and no one hears how they end. */
	for (struct job *j = w->pending; j; j = j->next_pending)
		tide_http_fail(j->call, 503, "unknown",
		               "the daemon is stopping while the command runs: it may yet be "
		               "applied; read the stream to know");
	w->pending = NULL;
	pthread_mutex_unlock(&w->mu);
	uv_close((uv_handle_t *)w->async, on_async_closed);
	answer(w, done, false);
	for (struct job *j = queued, *next; j; j = next) {
		next = j->next;
		tide_http_fail(j->call, 503, "unavailable",
		               "the daemon is stopping: the command was not run");
		job_free(j);
	}
	pthread_mutex_lock(&w->mu);
	unref_locked(w);
}

static char *dup_all(char **out, const char *const *in, int n)
{
	for (int i = 0; i < n; i++)
		if (!(out[i] = strdup(in[i])))
			return NULL;
	return (char *)out;
}

/* The daemon's upcasters changed (struct tide_http_workers): commands load the new set. */
static void use_upcasters(void *state, const char *paths, const char *error, uint64_t sig)
{
	struct tide_http_commands *w = state;
	char *p = paths ? strdup(paths) : NULL;
	char *e = error ? strdup(error) : NULL;
	if ((paths && !p) || (error && !e)) {
		/* Out of memory: the commands keep the set they have. */
		free(p);
		free(e);
		return;
	}
	pthread_mutex_lock(&w->mu);
	free(w->upcasters);
	free(w->upcasters_error);
	w->upcasters = p;
	w->upcasters_error = e;
	w->upcasters_sig = sig;
	pthread_mutex_unlock(&w->mu);
}

/* The workers, started with the first command; NULL when they cannot be. */
static struct tide_http_commands *start(struct tide_http *http)
{
	struct tide_http_workers *slot = tide_http_workers(http);
	if (slot->state)
		return slot->state;
	const struct tide_http_opts *o = tide_http_opts(http);
	struct tide_http_commands *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	w->ndirs = o->ndirs;
	w->cpu_ms = o->cpu_ms;
	w->memory = o->memory;
	w->url = strdup(o->url);
	w->dirs = calloc((size_t)o->ndirs + 1, sizeof(char *));
	w->apps = calloc((size_t)o->ndirs + 1, sizeof(char *));
	w->async = malloc(sizeof(*w->async));
	if (!w->url || !w->dirs || !w->apps || !w->async || !dup_all(w->dirs, o->dirs, o->ndirs) ||
	    !dup_all(w->apps, o->apps, o->ndirs)) {
		free(w->async);
		commands_free(w);
		return NULL;
	}
	tide_http_upcasters(http, &w->upcasters, &w->upcasters_error, &w->upcasters_sig);
	uv_async_init(o->loop, w->async, on_done);
	w->async->data = w;
	uv_unref((uv_handle_t *)w->async);
	w->refs = 1;
	/* Signals are the loop's to handle (libuv's signal pipe): none goes to a worker. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	int rc = 0;
	for (int i = 0; i < WORKERS && rc == 0; i++) {
		pthread_t t;
		pthread_mutex_lock(&w->mu);
		w->refs++;
		pthread_mutex_unlock(&w->mu);
		if ((rc = pthread_create(&t, &attr, worker_main, w)) != 0) {
			pthread_mutex_lock(&w->mu);
			w->refs--;
			pthread_mutex_unlock(&w->mu);
		}
	}
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (w->refs == 1) {
		tide_log("error", "http.command_workers_failed", "error", strerror(rc),
		         (char *)NULL);
		workers_stop(w);
		return NULL;
	}
	*slot = (struct tide_http_workers){w, workers_stop, use_upcasters};
	return w;
}

/* A decider's name as the path gives it: a file name of the directories, no path, not
 * hidden, not a spec. */
static bool plain_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > MAX_NAME || s[0] == '.' || (n >= 5 && strcmp(s + n - 5, "_spec") == 0))
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] == '/' || s[i] == '\\' || (unsigned char)s[i] < 0x20)
			return false;
	return true;
}

/* The body: a command {"type": "...", "data": {...}}; 0, or -1 with the call answered. */
static int check_command(struct tide_http_call *c, h2o_iovec_t body)
{
	cJSON *doc = cJSON_ParseWithLength(body.base, body.len);
	const char *why = NULL;
	if (!doc)
		why = "the body is not JSON";
	else if (!cJSON_IsObject(doc))
		why = "the body must be a JSON object";
	else if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(doc, "type")) ||
	         !cJSON_GetObjectItemCaseSensitive(doc, "type")->valuestring[0])
		why = "the command has no \"type\" (a non-empty string)";
	else if (cJSON_GetObjectItemCaseSensitive(doc, "data") &&
	         !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(doc, "data")))
		why = "the command's \"data\" must be a JSON object";
	cJSON_Delete(doc);
	if (!why)
		return 0;
	tide_http_fail(c, 400, "invalid", "%s: a command is {\"type\": \"...\", \"data\": {...}}",
	               why);
	return -1;
}

void tide_http_command(struct tide_http_call *c)
{
	const char *decider = c->args[0], *stream = c->args[1];
	char err[300];
	if (!plain_name(decider)) {
		tide_http_fail(c, 400, "invalid",
		               "the decider is named by its file name without .lua (DECIDER.lua in "
		               "the daemon's directories; no path, not hidden, not a spec), got "
		               "'%.80s'",
		               decider);
		return;
	}
	if (tide_check_name("stream name", stream, strlen(stream), TIDE_MAX_NAME_BYTES, err,
	                    sizeof(err)) != 0) {
		tide_http_fail(c, 400, "invalid", "%s", err);
		return;
	}
	int64_t retries = 2;
	const char *v = tide_http_param(c, "retries");
	if (v) {
		char *end;
		errno = 0;
		long long n = strtoll(v, &end, 10);
		if (errno || end == v || *end || n < 0 || n > MAX_RETRIES) {
			tide_http_fail(c, 400, "invalid",
			               "retries wants a whole number from 0 to %d, got '%.40s'",
			               MAX_RETRIES, v);
			return;
		}
		retries = n;
	}
	const char *stats = tide_http_param(c, "stats");
	if (stats && strcmp(stats, "true") != 0 && strcmp(stats, "false") != 0) {
		tide_http_fail(c, 400, "invalid", "stats wants true or false, got '%.40s'", stats);
		return;
	}
	h2o_iovec_t body = tide_http_body(c);
	if (check_command(c, body) != 0)
		return;
	if (tide_http_stopping(c->http)) {
		tide_http_fail(c, 503, "unavailable",
		               "the daemon is stopping: the command was not run");
		return;
	}
	struct tide_http_commands *w = start(c->http);
	if (!w) {
		tide_http_fail(c, 503, "unavailable",
		               "the command workers cannot be started; see the daemon's log");
		return;
	}
	struct job *j = calloc(1, sizeof(*j));
	if (j) {
		j->call = c;
		j->decider = strdup(decider);
		j->stream = strdup(stream);
		j->partition = c->partition ? strdup(c->partition) : NULL;
		j->command = malloc(body.len + 1);
		j->command_len = body.len;
		j->retries = retries;
		j->stats = stats && strcmp(stats, "true") == 0;
	}
	if (!j || !j->decider || !j->stream || (c->partition && !j->partition) || !j->command) {
		if (j)
			job_free(j);
		tide_http_fail(c, 500, "memory", "out of memory");
		return;
	}
	memcpy(j->command, body.base, body.len);
	j->command[body.len] = '\0';
	pthread_mutex_lock(&w->mu);
	if (w->queued >= MAX_QUEUED) {
		pthread_mutex_unlock(&w->mu);
		job_free(j);
		tide_http_fail(c, 503, "busy",
		               "%d commands are waiting for a worker already: try again later",
		               MAX_QUEUED);
		return;
	}
	j->next_pending = w->pending;
	if (w->pending)
		w->pending->prev_pending = j;
	w->pending = j;
	if (w->queue_tail)
		w->queue_tail->next = j;
	else
		w->queue = j;
	w->queue_tail = j;
	w->queued++;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}
