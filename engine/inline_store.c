/* inline_store.c — a store's appends with inline projections (tide_store_set_projections):
 * the set of projections the store's appends run, and those appends, one transaction each on
 * the store's connection, one at a time: the first is in flight, the others wait behind it.
 * The store (store.c) hands every append here first (struct tide_store_inline); an append no
 * projection wants goes the plain way, unless one of these is in flight. inline.c runs them. */
#include <stdlib.h>
#include <string.h>

#include "inline.h"
#include "store.h"

/* An append with inline projections, and the next one waiting behind it. */
struct queued {
	struct tide_store *store; /* NULL once the store is closing */
	tide_append_cb cb;
	void *arg;
	unsigned partition_gen; /* the store's partition when it was sent */
	struct tide_inline_append *append;
	struct queued *next;
};

struct queue {
	struct tide_inline_set *set;
	struct queued *head, *tail;
};

static struct queue *queue_of(const struct tide_store *store)
{
	return store->inline_state;
}

static void on_appended(int status, const char *err, const struct tide_append_result *r, void *arg)
{
	struct queued *c = arg;
	struct tide_store *store = c->store;
	if (store) {
		/* The next one starts before the caller hears: the callback may close the store. */
		struct queue *q = queue_of(store);
		q->head = c->next;
		if (!c->next)
			q->tail = NULL;
		if (status == 0 && c->partition_gen == store->partition_gen)
			store->partition_ready = true;
		if (q->head)
			tide_inline_append_start(q->head->append, store->pg);
	}
	c->cb(status, err, r, c->arg);
	free(c);
}

/* One transaction per append, on the store's connection: they go one at a time. */
static int append_inline(struct tide_store *store, const char *stream,
                         const struct tide_event *events, size_t n, int64_t expected,
                         tide_append_cb cb, void *arg)
{
	struct queue *q = queue_of(store);
	if (!tide_store_usable(store))
		return TIDE_ECONN;
	struct tide_append *a = NULL;
	int rc = tide_append_build(stream, store->partition, events, n, expected,
	                           !store->partition_ready, store->error, sizeof(store->error), &a);
	if (rc)
		return rc;
	struct queued *c = calloc(1, sizeof(*c));
	if (!c) {
		tide_append_free(a);
		return tide_store_fail(store, TIDE_ENOMEM, "out of memory");
	}
	c->store = store;
	c->cb = cb;
	c->arg = arg;
	c->partition_gen = store->partition_gen;
	struct tide_inline_opts o = {
	        .set = q->set,
	        .loop = store->loop,
	        .mode = store->in_transaction ? TIDE_INLINE_SAVEPOINT : TIDE_INLINE_OWN,
	        .stream = stream,
	        .partition = store->partition,
	        .events = events,
	        .n = n,
	        .wake = store->in_transaction ? NULL : &store->wake,
	};
	c->append = tide_inline_append_new(&o, a, on_appended, c);
	if (!c->append) {
		free(c);
		return tide_store_fail(store, TIDE_ENOMEM, "out of memory");
	}
	if (store->in_transaction)
		store->appended_in_transaction = true;
	if (q->tail) {
		q->tail->next = c;
		q->tail = c;
		return 0;
	}
	q->head = q->tail = c;
	tide_inline_append_start(c->append, store->pg);
	return 0;
}

static bool take_append(struct tide_store *store, const char *stream,
                        const struct tide_event *events, size_t n, int64_t expected,
                        tide_append_cb cb, void *arg, int *rc)
{
	struct queue *q = queue_of(store);
	/* An append no inline projection wants goes alone, unless one that runs them is in
	 * flight: then its transaction is open on the connection. */
	*rc = tide_append_check(stream, events, n, expected, store->error, sizeof(store->error));
	if (*rc)
		return true;
	if (!q->head && !tide_inline_set_wants(q->set, store->partition, events, n))
		return false;
	*rc = append_inline(store, stream, events, n, expected, cb, arg);
	return true;
}

static bool busy(const struct tide_store *store)
{
	return queue_of(store)->head != NULL;
}

/* The appends fail: the one in flight with the connection, the ones waiting behind it then,
 * in order. None of them touches the store any more. */
static void close_queue(struct tide_store *store)
{
	struct queue *q = queue_of(store);
	struct queued *first = q->head;
	q->head = q->tail = NULL;
	for (struct queued *c = first; c; c = c->next)
		c->store = NULL;
	struct queued *waiting = first ? first->next : NULL;
	if (first)
		tide_inline_append_abandon(first->append);
	tide_pg_close(store->pg);
	while (waiting) {
		struct queued *next = waiting->next;
		tide_inline_append_abandon(waiting->append); /* reports, frees it */
		waiting = next;
	}
	tide_inline_set_unref(q->set);
	free(q);
	store->inline_state = NULL;
	store->inline_ops = NULL;
}

static bool wants(const struct tide_store *store, const struct tide_event *events, size_t n)
{
	return tide_inline_set_wants(queue_of(store)->set, store->partition, events, n);
}

static const struct tide_store_inline ops = {take_append, busy, wants, close_queue};

int tide_store_set_projections(struct tide_store *store, const char *dir)
{
	if (tide_store_inline_busy(store))
		return tide_store_fail(
		        store, TIDE_EINVAL,
		        "an append with inline projections is in flight: wait for its callback");
	struct tide_inline_set *set = NULL;
	if (dir) {
		set = tide_inline_set_new(0, 0);
		if (!set)
			return tide_store_fail(store, TIDE_ENOMEM, "out of memory");
		int rc = tide_inline_set_load_dir(set, dir, NULL, true, store->error,
		                                  sizeof(store->error));
		if (rc) {
			tide_inline_set_unref(set);
			return rc;
		}
	}
	int rc = tide_store_use_inline_set(store, set);
	tide_inline_set_unref(set);
	return rc;
}

int tide_store_use_inline_set(struct tide_store *store, struct tide_inline_set *set)
{
	if (tide_store_inline_busy(store))
		return tide_store_fail(
		        store, TIDE_EINVAL,
		        "an append with inline projections is in flight: wait for its callback");
	struct queue *q = queue_of(store);
	if (q && q->set == set)
		return 0;
	if (!set || tide_inline_set_count(set) == 0) { /* nothing to run: appends stay plain */
		if (q) {
			tide_inline_set_unref(q->set);
			free(q);
		}
		store->inline_state = NULL;
		store->inline_ops = NULL;
		return 0;
	}
	if (!q && !(q = calloc(1, sizeof(*q))))
		return tide_store_fail(store, TIDE_ENOMEM, "out of memory");
	tide_inline_set_ref(set);
	tide_inline_set_unref(q->set);
	q->set = set;
	store->inline_state = q;
	store->inline_ops = &ops;
	return 0;
}
