/* test_import.c — what `tide import` makes of one line (engine/import.c's parser, without a
 * database): the fields it takes, the JSON escapes of names it decodes, and the one-line
 * message it gives for what it refuses; the binary COPY row of engine/copy.c; and the new
 * message ids of engine/input.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "copy.h"
#include "harness.h"
#include "import.h"
#include "input.h"

struct line_case {
	const char *line;
	const char *want; /* NULL: accepted; else a part of the message */
};

static void accepted(void)
{
	struct tide_import_event ev;
	char err[700] = "";
	const char *line = "  { \"type\" : \"Added\", \"data\":{\"a\":[1,{\"b\":\"}\"}]} ,"
	                   "\"metadata\":null, \"stream_id\":\"cart-\\u00e9\\ud83d\\ude00\\t\\\"\","
	                   "\"id\":\"3F2504E0-4F89-41D3-9A0C-0305E82C3301\" }\r";
	CHECK(tide_import_parse_line(line, strlen(line), &ev, err, sizeof(err)) == 0);
	CHECK(strcmp(ev.stream_id, "cart-\xc3\xa9\xf0\x9f\x98\x80\t\"") == 0);
	CHECK_EQ_I64(ev.stream_id_len, strlen("cart-\xc3\xa9\xf0\x9f\x98\x80\t\""));
	CHECK(strcmp(ev.type, "Added") == 0);
	CHECK(ev.data_len == strlen("{\"a\":[1,{\"b\":\"}\"}]}"));
	CHECK(strncmp(ev.data, "{\"a\":[1,{\"b\":\"}\"}]}", ev.data_len) == 0);
	CHECK(ev.metadata == NULL);
	CHECK(strcmp(ev.id, "3F2504E0-4F89-41D3-9A0C-0305E82C3301") == 0);

	line = "{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{},\"metadata\":{\"c\":1}}";
	CHECK(tide_import_parse_line(line, strlen(line), &ev, err, sizeof(err)) == 0);
	CHECK(ev.id[0] == '\0');
	CHECK(ev.schema_version[0] == '\0');
	CHECK(ev.metadata && ev.metadata_len == 7 && strncmp(ev.metadata, "{\"c\":1}", 7) == 0);
	const char *versioned =
	        "{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{},\"schema_version\": 12}";
	CHECK(tide_import_parse_line(versioned, strlen(versioned), &ev, err, sizeof(err)) == 0);
	CHECK(strcmp(ev.schema_version, "12") == 0);
	/* Lengths, not NULs, end a line. */
	CHECK(tide_import_parse_line(line, strlen(line) - 1, &ev, err, sizeof(err)) != 0);
	printf("ok accepted\n");
}

static void refused(void)
{
	static const struct line_case cases[] = {
	        {"", "where an event object"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{},\"schema_version\":0}",
	         "\"schema_version\" at byte 56 must be a whole number"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{},\"schema_version\":1.5}",
	         "must be a whole number from 1 to 999999999"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{},\"schema_version\":\"2\"}",
	         "must be a whole number"},
	        {"[]", "'[' at byte 1 where an event object"},
	        {"{}", "\"stream_id\" is missing"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\"}", "\"data\" is missing"},
	        {"{\"stream_id\":\"s\",\"data\":{}}", "\"type\" is missing"},
	        {"{\"stream_id\":1,\"type\":\"T\",\"data\":{}}", "\"stream_id\" must be a string"},
	        {"{\"stream_id\":\"s\",\"type\":\"\",\"data\":{}}", "the event type is empty"},
	        {"{\"stream_id\":\"s\\u0000\",\"type\":\"T\",\"data\":{}}", "contains a NUL byte"},
	        {"{\"stream_id\":\"\xff\",\"type\":\"T\",\"data\":{}}", "not valid UTF-8"},
	        {"{\"stream_id\":\"\\ud800\",\"type\":\"T\",\"data\":{}}", "unpaired surrogate"},
	        {"{\"stream_id\":\"\\udc00x\",\"type\":\"T\",\"data\":{}}", "unpaired surrogate"},
	        {"{\"stream_id\":\"a\\x\",\"type\":\"T\",\"data\":{}}",
	         "unknown escape at byte 16"},
	        {"{\"stream_id\":\"a\\u12\",\"type\":\"T\",\"data\":{}}", "bad \\u escape"},
	        {"{\"stream_id\":\"a\tb\",\"type\":\"T\",\"data\":{}}", "control character 0x09"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{\"a\":}}",
	         "data is not valid JSON"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{\"a\":1}", "where ',' or '}'"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{\"a\":\"}",
	         "data is not valid JSON"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\",\"data\":null}",
	         "\"data\" must be a JSON object"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{},\"metadata\":[]}",
	         "\"metadata\" must be a JSON object"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{},\"id\":5}",
	         "\"id\" must be a string"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{},\"id\":\"3f2504e0\"}",
	         "\"id\" is not a UUID"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{},\"Data\":{}}",
	         "unknown key \"Data\""},
	        {"{\"stream_id\":\"s\",\"stream_id\":\"s\",\"type\":\"T\",\"data\":{}}",
	         "\"stream_id\" appears twice"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{},}", "where a key"},
	        {"{\"stream_id\":\"s\" \"type\":\"T\",\"data\":{}}", "where ',' or '}'"},
	        {"{\"stream_id\":\"s\",\"type\"=\"T\",\"data\":{}}", "where ':'"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{}}}",
	         "unexpected text after the event"},
	        {"{\"stream_id\":\"s\",\"type\":\"T\",\"data\":{}}\x01", "unexpected text after"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct line_case *c = &cases[i];
		struct tide_import_event ev;
		char err[700] = "";
		int rc = tide_import_parse_line(c->line, strlen(c->line), &ev, err, sizeof(err));
		if (rc != TIDE_EINVAL || !strstr(err, c->want) || strchr(err, '\n')) {
			fprintf(stderr, "case %zu (%s): rc %d, message '%s', wanted '%s'\n", i,
			        c->line, rc, err, c->want);
			exit(1);
		}
	}
	/* A name one byte too long, written with escapes: its decoded length counts. */
	char line[8000];
	int n = snprintf(line, sizeof(line), "{\"stream_id\":\"");
	for (int i = 0; i < TIDE_MAX_NAME_BYTES + 1; i++)
		n += snprintf(line + n, sizeof(line) - (size_t)n, "\\u0061");
	n += snprintf(line + n, sizeof(line) - (size_t)n, "\",\"type\":\"T\",\"data\":{}}");
	struct tide_import_event ev;
	char err[700] = "";
	CHECK(tide_import_parse_line(line, (size_t)n, &ev, err, sizeof(err)) == TIDE_EINVAL);
	CHECK(strstr(err, "the stream name is 1025 bytes long; at most 1024 are allowed"));
	printf("ok refused\n");
}

static uint64_t be(const unsigned char *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

static void copy_row(void)
{
	CHECK(memcmp(tide_copy_header, "PGCOPY\n\377\r\n\0", 11) == 0);
	char id[37];
	tide_uuid_v4(id);
	CHECK(strlen(id) == 36 && id[14] == '4' && strchr("89ab", id[19]));
	struct tide_copy_row r = {.stream_id = "cart-1",
	                          .stream_id_len = 6,
	                          .partition = "emt:default",
	                          .partition_len = 11,
	                          .type = "T",
	                          .type_len = 1,
	                          .data = "{\"a\":1}",
	                          .data_len = 7,
	                          .message_id = id};
	size_t size = tide_copy_row_size(&r);
	unsigned char *buf = malloc(size);
	CHECK(buf);
	size_t at = tide_copy_row_write((char *)buf, &r);
	tide_copy_set((char *)buf + at, 42, 1234567890123ull);
	CHECK_EQ_I64(be(buf, 2), 9);           /* fields */
	CHECK_EQ_I64(be(buf + at, 4), 8);      /* stream_position */
	CHECK_EQ_I64(be(buf + at + 4, 8), 42); /* its value */
	CHECK_EQ_I64(be(buf + at + 12, 4), 8); /* transaction_id */
	CHECK_EQ_I64(be(buf + at + 16, 8), 1234567890123ll);
	const unsigned char *p = buf + at + 24;
	CHECK_EQ_I64(be(p, 4), 6); /* stream_id */
	CHECK(memcmp(p + 4, "cart-1", 6) == 0);
	p += 10 + 4 + 11 + 4 + 1;  /* partition, type */
	CHECK_EQ_I64(be(p, 4), 8); /* data: the jsonb version byte, then the text */
	CHECK(p[4] == 1 && memcmp(p + 5, "{\"a\":1}", 7) == 0);
	p += 12;
	CHECK_EQ_I64(be(p, 4), 3); /* metadata {} */
	CHECK(p[4] == 1 && memcmp(p + 5, "{}", 2) == 0);
	p += 7;
	CHECK_EQ_I64(be(p, 4), 36);
	CHECK(memcmp(p + 4, id, 36) == 0);
	p += 40;
	CHECK_EQ_I64(be(p, 4), 1);
	CHECK(p[4] == '1');
	CHECK((size_t)(p + 5 - buf) == size);
	free(buf);
	printf("ok copy_row\n");
}

/* New message ids are random version 4 UUIDs, and a forked child does not repeat its
 * parent's: each draws from a pool of random bytes, which a child must not inherit. */
static void new_ids(void)
{
	char first[37], mine[37], theirs[37] = "";
	tide_uuid_v4(first); /* the parent's pool is filled */
	int fds[2];
	CHECK(pipe(fds) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		char id[37];
		tide_uuid_v4(id);
		_exit(write(fds[1], id, 37) == 37 ? 0 : 1);
	}
	close(fds[1]);
	CHECK(read(fds[0], theirs, 37) == 37);
	close(fds[0]);
	int status;
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
	tide_uuid_v4(mine);
	CHECK(tide_uuid_valid(mine) && tide_uuid_valid(theirs));
	CHECK(strcmp(mine, theirs) != 0 && strcmp(first, mine) != 0);
	printf("ok new_ids\n");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s accepted|refused|copy_row|new_ids\n", argv[0]);
		return 2;
	}
	if (strcmp(argv[1], "accepted") == 0)
		accepted();
	else if (strcmp(argv[1], "refused") == 0)
		refused();
	else if (strcmp(argv[1], "copy_row") == 0)
		copy_row();
	else if (strcmp(argv[1], "new_ids") == 0)
		new_ids();
	else
		return 2;
	return 0;
}
