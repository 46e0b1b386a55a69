/* test_snapshot.c — engine/snapshot.c against a real PostgreSQL: a snapshot written and read
 * back, the newer of two racing writers kept, a snapshot the stream no longer matches said to
 * be so, and what is refused (bad names, a caller's transaction, a state too large). */
#include <inttypes.h>

#include "harness.h"
#include "snapshot.h"

struct loaded {
	bool done, found;
	int status;
	struct tide_snapshot s;
	char state[256];
	char err[640];
};

static void on_load(int status, const char *err, const struct tide_snapshot *s, void *arg)
{
	struct loaded *l = arg;
	l->done = true;
	l->status = status;
	if (err)
		snprintf(l->err, sizeof(l->err), "%s", err);
	if (s) {
		l->found = true;
		l->s = *s;
		snprintf(l->state, sizeof(l->state), "%s", s->state);
		l->s.state = l->state;
	}
}

static struct loaded load(struct tide_store *s, const char *stream, const char *decider)
{
	struct loaded l = {0};
	CHECK(tide_snapshot_load(s, stream, decider, on_load, &l) == 0);
	test_wait(&l.done);
	return l;
}

struct saved {
	bool done;
	int status;
	char err[640];
};

static void on_save(int status, const char *err, void *arg)
{
	struct saved *w = arg;
	w->done = true;
	w->status = status;
	if (err)
		snprintf(w->err, sizeof(w->err), "%s", err);
}

static int save(struct tide_store *s, const char *stream, const char *decider, int version,
                int64_t position, int64_t global, const char *state)
{
	struct tide_snapshot snap = {version, position, global, state, false};
	struct saved w = {0};
	int rc = tide_snapshot_save(s, stream, decider, &snap, on_save, &w);
	if (rc)
		return rc;
	test_wait(&w.done);
	if (w.status)
		fprintf(stderr, "save: %s\n", w.err);
	return w.status;
}

struct appended {
	bool done;
	int status;
	int64_t last_global;
};

static void on_append(int status, const char *err, const struct tide_append_result *r, void *arg)
{
	(void)err;
	struct appended *a = arg;
	a->done = true;
	a->status = status;
	if (r && r->count)
		a->last_global = r->global_positions[r->count - 1];
}

/* Appends n events to stream; the global position of the last. */
static int64_t append(struct tide_store *s, const char *stream, size_t n)
{
	struct tide_event e[8];
	CHECK(n <= 8);
	for (size_t i = 0; i < n; i++)
		e[i] = (struct tide_event){.type = "Deposited", .data = "{\"amount\":1}"};
	struct appended a = {0};
	CHECK(tide_store_append(s, stream, e, n, TIDE_EXPECT_ANY, on_append, &a) == 0);
	test_wait(&a.done);
	CHECK_EQ_I64(a.status, 0);
	return a.last_global;
}

static void round_trip(void)
{
	struct tide_store *s = test_store();
	struct loaded l = load(s, "acct-1", "account");
	CHECK_EQ_I64(l.status, 0);
	CHECK(!l.found);
	int64_t g = append(s, "acct-1", 3);
	CHECK_EQ_I64(save(s, "acct-1", "account", 2, 3, g, "{\"n\":3,\"tags\":[]}"), 0);
	l = load(s, "acct-1", "account");
	CHECK(l.found && l.s.current);
	CHECK_EQ_I64(l.s.version, 2);
	CHECK_EQ_I64(l.s.stream_position, 3);
	CHECK_EQ_I64(l.s.global_position, g);
	CHECK(strcmp(l.state, "{\"n\": 3, \"tags\": []}") == 0);
	/* Another decider's, another stream's: none. */
	CHECK(!load(s, "acct-1", "other").found);
	CHECK(!load(s, "acct-2", "account").found);
	/* Another partition's: none either. */
	CHECK(tide_store_set_partition(s, "tenant-b") == 0);
	CHECK(!load(s, "acct-1", "account").found);
	test_close(s);
}

static void newer_kept(void)
{
	struct tide_store *s = test_store();
	int64_t g2 = append(s, "acct-1", 2);
	int64_t g4 = append(s, "acct-1", 2);
	CHECK_EQ_I64(save(s, "acct-1", "account", 1, 4, g4, "{\"n\":4}"), 0);
	/* A slower writer with an older state: kept out. */
	CHECK_EQ_I64(save(s, "acct-1", "account", 1, 2, g2, "{\"n\":2}"), 0);
	struct loaded l = load(s, "acct-1", "account");
	CHECK_EQ_I64(l.s.stream_position, 4);
	/* Another version replaces it, whatever its position. */
	CHECK_EQ_I64(save(s, "acct-1", "account", 2, 2, g2, "{\"total\":2}"), 0);
	l = load(s, "acct-1", "account");
	CHECK_EQ_I64(l.s.version, 2);
	CHECK_EQ_I64(l.s.stream_position, 2);
	CHECK(l.s.current);
	test_close(s);
}

static void not_current(void)
{
	struct tide_store *s = test_store();
	int64_t g = append(s, "acct-1", 5);
	/* Past the stream's end. */
	CHECK_EQ_I64(save(s, "acct-1", "past", 1, 6, g + 1, "{}"), 0);
	struct loaded l = load(s, "acct-1", "past");
	CHECK(l.found && !l.s.current);
	/* The stream archived and begun again, longer: position 5 is another event now. */
	CHECK_EQ_I64(save(s, "acct-1", "account", 1, 5, g, "{}"), 0);
	CHECK(load(s, "acct-1", "account").s.current);
	PGconn *c = test_pg();
	PQclear(PQexec(c, "UPDATE emt_messages SET is_archived = true WHERE stream_id = 'acct-1'"));
	PQclear(PQexec(c, "UPDATE emt_streams SET is_archived = true WHERE stream_id = 'acct-1'"));
	PQfinish(c);
	CHECK(!load(s, "acct-1", "account").s.current);
	append(s, "acct-1", 8);
	l = load(s, "acct-1", "account");
	CHECK(l.found && !l.s.current);
	test_close(s);
}

static void on_begin(int status, const char *err, int64_t version, void *arg)
{
	(void)err;
	(void)version;
	struct saved *w = arg;
	w->done = true;
	w->status = status;
}

static void refused(void)
{
	struct tide_store *s = test_store();
	struct loaded l = {0};
	CHECK_EQ_I64(tide_snapshot_load(s, "acct-1", "", on_load, &l), TIDE_EINVAL);
	CHECK(strstr(tide_store_error(s), "decider name") != NULL);
	CHECK_EQ_I64(tide_snapshot_load(s, "", "account", on_load, &l), TIDE_EINVAL);
	CHECK(strstr(tide_store_error(s), "stream name") != NULL);
	CHECK_EQ_I64(save(s, "acct-1", "account", 1, 0, 1, "{}"), TIDE_EINVAL);
	/* More than TIDE_MAX_SNAPSHOT_BYTES: refused before anything is sent. */
	size_t big = TIDE_MAX_SNAPSHOT_BYTES + 16;
	char *text = malloc(big + 1);
	CHECK(text);
	memset(text, ' ', big);
	memcpy(text, "{}", 2);
	text[big] = '\0';
	CHECK_EQ_I64(save(s, "acct-1", "account", 1, 1, 1, text), TIDE_EINVAL);
	CHECK(strstr(tide_store_error(s), "too large for a snapshot") != NULL);
	free(text);
	/* Inside a transaction of the caller's: neither read nor written. */
	struct saved b = {0};
	CHECK(tide_store_begin(s, NULL, on_begin, &b) == 0);
	test_wait(&b.done);
	CHECK_EQ_I64(b.status, 0);
	CHECK_EQ_I64(tide_snapshot_load(s, "acct-1", "account", on_load, &l), TIDE_EINVAL);
	CHECK(strstr(tide_store_error(s), "outside a transaction") != NULL);
	CHECK_EQ_I64(save(s, "acct-1", "account", 1, 1, 1, "{}"), TIDE_EINVAL);
	struct saved r = {0};
	CHECK(tide_store_rollback(s, on_save, &r) == 0);
	test_wait(&r.done);
	CHECK(!load(s, "acct-1", "account").found);
	PGconn *c = test_pg();
	CHECK_EQ_I64(test_scalar(c, "SELECT count(*) FROM tide_snapshots"), 0);
	PQfinish(c);
	test_close(s);
}

int main(int argc, char **argv)
{
	static const struct test_case cases[] = {
	        {"round_trip", round_trip},
	        {"newer_kept", newer_kept},
	        {"not_current", not_current},
	        {"refused", refused},
	};
	return test_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]));
}
