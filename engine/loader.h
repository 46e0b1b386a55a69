/* loader.h — a processor script's generations: the file read and loaded into a fresh
 * sandboxed VM off the loop (libuv's work queue; or at once, for inline projections), and
 * the settings read from what the script returned. A generation replaces the running one
 * only between batches. */
#ifndef TIDE_LOADER_H
#define TIDE_LOADER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "lua_vm.h"

/* What a processor does with an event whose handling keeps failing (see consumer.c). */
enum tide_on_error {
	TIDE_ON_ERROR_DEAD_LETTER, /* park it in tide_dead_letters and go on */
	TIDE_ON_ERROR_SKIP,        /* go on without it */
	TIDE_ON_ERROR_STOP,        /* halt until the script changes */
	TIDE_ON_ERROR_RETRY,       /* try again forever */
};

const char *tide_on_error_name(enum tide_on_error e);

struct tide_generation {
	struct tide_vm *vm;
	int ref; /* the processor table, in vm's registry */
	char kind[16];
	int version;
	char partition[TIDE_MAX_PARTITION_BYTES + 1];
	char **types; /* the event types it declares (read filter), or NULL: all */
	size_t ntypes;
	enum tide_on_error on_error;
	int max_attempts;
	unsigned backoff_ms;
	uint64_t hash;   /* of the file's content */
	bool blue_green; /* a new version is built beside the running one (consumer.c) */
	bool is_inline;  /* a projection with inline = true: it runs where events are appended */
	/* A publisher (tide.publisher): where its events go (publish.h). The url and the
	 * headers may carry secrets: never logged. */
	char *url;      /* NULL for other kinds */
	char **headers; /* "Name: value" lines */
	size_t nheaders;
	unsigned timeout_ms; /* a delivery without an answer by then fails */
	int shards;          /* its work split by stream into this many workers (1: not sharded) */
};

void tide_generation_free(struct tide_generation *g);

struct tide_load_request {
	const char *path, *id; /* copied */
	uint64_t known_hash;   /* content already running or pending: nothing to do */
	uint64_t failed_hash;  /* content that failed to load before: not worth a retry */
	bool force;            /* load even when the content is known */
	unsigned cpu_ms;
	size_t memory;
	/* The upcasters loaded with the script (upcast.h): their files, "\n"-joined, or NULL;
	 * or why they cannot be used, which fails the load. Copied. */
	const char *upcasters, *upcasters_error;
};

enum tide_load_outcome {
	TIDE_LOAD_OK,        /* gen is the new generation; the callback's owner takes it */
	TIDE_LOAD_UNCHANGED, /* the content is known (hash) */
	TIDE_LOAD_INERT,     /* no projection or reactor (a decider, a module): err says what */
	TIDE_LOAD_FAILED,    /* err says why */
};

struct tide_load_result {
	enum tide_load_outcome outcome;
	struct tide_generation gen; /* to keep it, move it out: copy, then zero r->gen */
	uint64_t hash;
	const char *err;
};

typedef void (*tide_load_cb)(struct tide_load_result *r, void *arg);

/* Reads and loads the script off the loop; cb fires on the loop once it is done (always on
 * a later loop turn). Returns 0 or TIDE_ENOMEM (then cb never fires). */
TIDE_MUST_CHECK int tide_load(uv_loop_t *loop, const struct tide_load_request *req, tide_load_cb cb,
                              void *arg);

/* The same load, done at once on the calling thread (reading the file blocks it): r is
 * filled as tide_load's callback would get it, r->err pointing into err. A generation in
 * r->gen (TIDE_LOAD_OK) belongs to the caller. */
void tide_load_now(const struct tide_load_request *req, struct tide_load_result *r, char *err,
                   size_t n);

#endif
