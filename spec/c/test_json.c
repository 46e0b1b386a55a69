/* test_json.c — the JSON check every event passes on its way in (engine/json.c) and the
 * name check of the store, without a database: what is accepted, what is refused, and
 * that the message names the problem and its place. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "json.h"
#include "store.h"

struct json_case {
	const char *text;
	size_t len;       /* 0: strlen(text) */
	const char *want; /* NULL: accepted; else a part of the message */
};

static char *repeat(const char *open, const char *inner, const char *close, int n)
{
	size_t lo = strlen(open), li = strlen(inner), lc = strlen(close);
	char *s = malloc((size_t)n * (lo + lc) + li + 1);
	CHECK(s);
	char *p = s;
	for (int i = 0; i < n; i++, p += lo)
		memcpy(p, open, lo);
	memcpy(p, inner, li);
	p += li;
	for (int i = 0; i < n; i++, p += lc)
		memcpy(p, close, lc);
	*p = '\0';
	return s;
}

static void check_cases(const struct json_case *cases, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct json_case *c = &cases[i];
		char err[640] = "";
		size_t len = c->len ? c->len : strlen(c->text);
		int rc = tide_json_check_object_n(c->text, len, "DATA", err, sizeof(err));
		if (c->want ? rc != TIDE_EINVAL || !strstr(err, c->want) : rc != 0) {
			fprintf(stderr, "case %zu (%.60s): rc %d, message '%s', wanted %s\n", i,
			        c->text, rc, err, c->want ? c->want : "acceptance");
			exit(1);
		}
		CHECK(!strchr(err, '\n'));
		if (c->want)
			CHECK(strncmp(err, "DATA ", 5) == 0);
	}
}

static void json_check(void)
{
	static const struct json_case cases[] = {
	        {"{}", 0, NULL},
	        {" \t\r\n{ \"a\" : [ 1 , -0.5e-3 , true , false , null , \"x\" ] } \n", 0, NULL},
	        {"{\"q\":\"'\\\" \\\\ \\/ \\b\\f\\n\\r\\t \\u00e9 \\ud83d\\ude00\"}", 0, NULL},
	        {"{\"\xc3\xa9\xe2\x9c\x93\xf0\x9f\x98\x80\":\"\xe6\x97\xa5\"}", 0, NULL},
	        {"{\"n\":9223372036854775808,\"m\":1e308,\"s\":4.9e-324,\"z\":0e-999}", 0, NULL},
	        {"{\"a\":1e-16383}", 0, "too small for a double"},
	        {"", 0, "is not valid JSON: it is empty"},
	        {"   ", 0, "is not valid JSON: it is empty"},
	        {"[1]", 0, "must be a JSON object, got: [1]"},
	        {"\"x\"", 0, "must be a JSON object"},
	        {"null", 0, "must be a JSON object"},
	        {"{\"a\":", 0, "ends too early"},
	        {"{\"a\":1} x", 0, "unexpected text after the object at byte 9: x"},
	        {"{\"a\":1}{}", 0, "unexpected text after the object at byte 8"},
	        {"{\"a\":1,}", 0, "unexpected '}' at byte 8"},
	        {"{a:1}", 0, "unexpected 'a' at byte 2"},
	        {"{\"a\":01}", 0, "unexpected '1' at byte 7"},
	        {"{\"a\":1.}", 0, "unexpected '}' at byte 8"},
	        {"{\"a\":.5}", 0, "unexpected '.' at byte 6"},
	        {"{\"a\":+1}", 0, "unexpected '+' at byte 6"},
	        {"{\"a\":NaN}", 0, "unexpected 'N'"},
	        {"{\"a\":tru}", 0, "unexpected 't' at byte 6"},
	        {"{\"a\":\"x}", 0, "a string is not closed"},
	        {"{\"a\":\"\\x\"}", 0, "unknown escape '\\x' at byte 7"},
	        {"{\"a\":\"\\u12\"}", 0, "bad \\u escape at byte 7"},
	        {"{\"a\":\"\\u0000\"}", 0, "contains \\u0000 at byte 7"},
	        {"{\"\\u0000\":1}", 0, "contains \\u0000 at byte 3"},
	        {"{\"a\":\"\\ud800\"}", 0, "unpaired surrogate \\ud800 at byte 7"},
	        {"{\"a\":\"\\ud800\\u0041\"}", 0, "unpaired surrogate \\ud800"},
	        {"{\"a\":\"\\udc00\"}", 0, "unpaired surrogate \\udc00"},
	        {"{\"a\":\"\xff\"}", 0, "is not valid UTF-8 at byte 7"},
	        {"{\"\xc3\":1}", 0, "is not valid UTF-8 at byte 3"},
	        {"{\"a\":\"\xc0\xaf\"}", 0, "is not valid UTF-8"},         /* overlong '/' */
	        {"{\"a\":\"\xed\xa0\x80\"}", 0, "is not valid UTF-8"},     /* U+D800 */
	        {"{\"a\":\"\xf4\x90\x80\x80\"}", 0, "is not valid UTF-8"}, /* > U+10FFFF */
	        {"{\"a\":\"\xff\"}", 0, "is not valid UTF-8"},
	        {"{\"a\":\"x\ny\"}", 0, "control character 0x0a inside a string at byte 8"},
	        {"{\"a\":\"x\0y\"}", 10, "contains a NUL byte at byte 8"},
	        {"{\"a\":1}\0", 8, "contains a NUL byte at byte 8"},
	        {"{\"a\":1e400}", 0, "number out of range at byte 6: 1e400 is too large"},
	        {"{\"a\":-1e309}", 0, "too large for a double (it would read back as infinity)"},
	        {"{\"a\":1e-400}", 0, "1e-400 is too small for a double"},
	        {"{\"a\":1e-20000}", 0, "more than 16383 digits after the decimal point"},
	        {"{\"a\":1\xe2\x80\x8b}", 0, "unexpected byte 0xe2 at byte 7"},
	};
	check_cases(cases, sizeof(cases) / sizeof(cases[0]));

	/* A number of 400 digits is beyond a double; one of 300 is not. */
	char big[420] = "{\"n\":";
	memset(big + 5, '9', 400);
	strcpy(big + 405, "}");
	char err[640];
	CHECK(tide_json_check_object(big, "DATA", err, sizeof(err)) == TIDE_EINVAL);
	CHECK(strstr(err, "too large for a double"));
	strcpy(big + 305, "}");
	CHECK(tide_json_check_object(big, "DATA", err, sizeof(err)) == 0);

	/* Depth: exactly the limit is accepted, one more is not, and neither is 100,000. */
	char *ok = repeat("{\"a\":", "1", "}", TIDE_MAX_JSON_DEPTH);
	CHECK(tide_json_check_object(ok, "DATA", err, sizeof(err)) == 0);
	free(ok);
	char *mixed = repeat("{\"a\":[", "1", "]}", TIDE_MAX_JSON_DEPTH / 2);
	CHECK(tide_json_check_object(mixed, "DATA", err, sizeof(err)) == 0);
	free(mixed);
	char *deep = repeat("{\"a\":", "1", "}", TIDE_MAX_JSON_DEPTH + 1);
	CHECK(tide_json_check_object(deep, "DATA", err, sizeof(err)) == TIDE_EINVAL);
	CHECK(strstr(err, "nested too deeply: more than 128 levels"));
	free(deep);
	char *deeper = repeat("{\"a\":", "1", "}", 100000);
	CHECK(tide_json_check_object(deeper, "DATA", err, sizeof(err)) == TIDE_EINVAL);
	CHECK(strstr(err, "nested too deeply"));
	free(deeper);
	printf("ok json_check\n");
}

static void name_check(void)
{
	char err[640];
	CHECK(tide_check_name("stream name", "cart-1", 6, 1024, err, sizeof(err)) == 0);
	CHECK(tide_check_name("stream name", "\xf0\x9f\x98\x80'; DROP", 11, 1024, err,
	                      sizeof(err)) == 0);
	CHECK(tide_check_name("stream name", "", 0, 1024, err, sizeof(err)) == TIDE_EINVAL);
	CHECK(strcmp(err, "the stream name is empty") == 0);
	CHECK(tide_check_name("stream name", "a\0b", 3, 1024, err, sizeof(err)) == TIDE_EINVAL);
	CHECK(strcmp(err, "the stream name contains a NUL byte (at byte 2)") == 0);
	CHECK(tide_check_name("type of event 1", "a\xff", 2, 1024, err, sizeof(err)) ==
	      TIDE_EINVAL);
	CHECK(strcmp(err, "the type of event 1 is not valid UTF-8 (at byte 2)") == 0);
	char name[1026];
	memset(name, 'x', sizeof(name));
	CHECK(tide_check_name("stream name", name, 1024, 1024, err, sizeof(err)) == 0);
	CHECK(tide_check_name("stream name", name, 1025, 1024, err, sizeof(err)) == TIDE_EINVAL);
	CHECK(strcmp(err, "the stream name is 1025 bytes long; at most 1024 are allowed") == 0);
	printf("ok name_check\n");
}

/* tide_json_compact: PostgreSQL's jsonb output loses the spaces outside strings and
 * nothing else (numbers keep every digit, strings every byte, escapes included). */
static void compact(void)
{
	static const char *const cases[][2] = {
	        {"{}", "{}"},
	        {"{\"a\": 1, \"b\": [1, 2.50, -3e-7]}", "{\"a\":1,\"b\":[1,2.50,-3e-7]}"},
	        {"{\"n\": 9223372036854775808, \"f\": 0.1000000000000000055511151231257827}",
	         "{\"n\":9223372036854775808,\"f\":0.1000000000000000055511151231257827}"},
	        {"{\"s\": \"a, b: c\", \"t\": \"x\\\" , y\\\\\", \"u\": \" \"}",
	         "{\"s\":\"a, b: c\",\"t\":\"x\\\" , y\\\\\",\"u\":\" \"}"},
	        {" {\n\t\"k\" :\r\n {\"\": null} } ", "{\"k\":{\"\":null}}"},
	        {"{\"\xc3\xbc \xf0\x9f\x98\x80\": \"\\u00e9 \"}",
	         "{\"\xc3\xbc \xf0\x9f\x98\x80\":\"\\u00e9 \"}"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char buf[256];
		snprintf(buf, sizeof(buf), "%s", cases[i][0]);
		size_t n = tide_json_compact(buf);
		if (strcmp(buf, cases[i][1]) != 0 || n != strlen(cases[i][1])) {
			fprintf(stderr, "compact case %zu: got %s, want %s\n", i, buf, cases[i][1]);
			exit(1);
		}
	}
	printf("ok compact\n");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s json_check|name_check|compact\n", argv[0]);
		return 2;
	}
	if (strcmp(argv[1], "json_check") == 0)
		json_check();
	else if (strcmp(argv[1], "name_check") == 0)
		name_check();
	else if (strcmp(argv[1], "compact") == 0)
		compact();
	else
		return 2;
	return 0;
}
