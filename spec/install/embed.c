/* embed.c — a C host of libtide built only from what `cmake --install` put in a prefix:
 * spec/install_spec.lua compiles it with `cc embed.c $(pkg-config --cflags --libs tide)`.
 * usage: embed URL STREAM — prints tide_strerror(TIDE_ECONFLICT), connects, appends an
 * event to STREAM (expecting no stream), appends again with the same expectation (which
 * conflicts) and reads the stream back, one line each; exits 0, or 1 with the error. */
#include <stdio.h>
#include <tide.h>

struct host {
	struct tide_store *store;
	const char *stream;
	int rc;
};

static void fail(struct host *h, const char *what, int status, const char *err)
{
	printf("%s failed: %s: %s\n", what, tide_strerror(status), err ? err : "");
	h->rc = 1;
	tide_store_close(h->store);
}

static void on_read(int status, const char *err, const struct tide_read_result *res, void *arg)
{
	struct host *h = arg;
	if (status) {
		fail(h, "read", status, err);
		return;
	}
	for (size_t i = 0; i < res->count; i++) {
		const struct tide_message *m = &res->messages[i];
		printf("read %s %lld %s %s\n", m->stream_id, (long long)m->stream_position, m->type,
		       m->data);
	}
	tide_store_close(h->store);
}

static void on_second(int status, const char *err, const struct tide_append_result *res, void *arg)
{
	struct host *h = arg;
	if (status != TIDE_ECONFLICT) {
		fail(h, "the second append", status ? status : TIDE_EINVAL, err);
		return;
	}
	printf("%s: expected %lld, found %lld\n", tide_strerror(status), (long long)res->expected,
	       (long long)res->actual);
	if (tide_store_read_stream(h->store, h->stream, NULL, on_read, h) != 0)
		fail(h, "read", TIDE_EINVAL, tide_store_error(h->store));
}

static void on_first(int status, const char *err, const struct tide_append_result *res, void *arg)
{
	struct host *h = arg;
	if (status) {
		fail(h, "append", status, err);
		return;
	}
	printf("appended: version %lld\n", (long long)res->next_expected_version);
	struct tide_event e = {.type = "Embedded", .data = "{\"from\":\"C\"}"};
	if (tide_store_append(h->store, h->stream, &e, 1, TIDE_EXPECT_NO_STREAM, on_second, h) != 0)
		fail(h, "the second append", TIDE_EINVAL, tide_store_error(h->store));
}

static void on_open(struct tide_store *store, int status, const char *err, void *arg)
{
	struct host *h = arg;
	(void)store;
	if (status) {
		fail(h, "open", status, err);
		return;
	}
	struct tide_event e = {.type = "Embedded", .data = "{\"from\":\"C\"}"};
	if (tide_store_append(h->store, h->stream, &e, 1, TIDE_EXPECT_NO_STREAM, on_first, h) != 0)
		fail(h, "append", TIDE_EINVAL, tide_store_error(h->store));
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: embed URL STREAM\n");
		return 2;
	}
	printf("%s\n", tide_strerror(TIDE_ECONFLICT));
	struct host h = {.stream = argv[2]};
	uv_loop_t loop;
	uv_loop_init(&loop);
	int rc = tide_store_open(&loop, argv[1], on_open, &h, &h.store);
	if (rc != 0) {
		printf("open failed: %s\n", tide_strerror(rc));
		h.rc = 1;
	}
	uv_run(&loop, UV_RUN_DEFAULT);
	uv_loop_close(&loop);
	return h.rc;
}
