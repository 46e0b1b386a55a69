/* json.c — the one check that JSON text passes on its way in (tide_json_check_object_n:
 * what every later path — jsonb, the CLI, a script's VM — can carry, see the limits in
 * tide.h), UTF-8 validation, and exact-integer output for the store and the CLI. */
#include "json.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

/* PostgreSQL's numeric (which jsonb stores numbers in) keeps at most this many digits
 * after the decimal point; more is "value overflows numeric format". */
#define PG_NUMERIC_MAX_SCALE 16383

/* The length of the valid UTF-8 sequence at s[0..n), or 0. Rejects overlong forms,
 * surrogates (U+D800..U+DFFF) and code points above U+10FFFF, as PostgreSQL does. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
	if (!len || len > n)
		return 0;
	unsigned cp = len == 1 ? c : c & (0x7fu >> len);
	for (size_t k = 1; k < len; k++) {
		if ((s[k] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[k] & 0x3f);
	}
	if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
	    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

size_t tide_utf8_check(const char *text, size_t n)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t i = 0;
	while (i < n) {
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		size_t len = utf8_seq(s + i, n - i);
		if (!len)
			return i;
		i += len;
	}
	return n;
}

void tide_snippet(char *dst, size_t dstlen, const char *text, size_t len, size_t max)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t o = 0, i = 0;
	while (i < len && i < max && o + 5 < dstlen) {
		size_t seq = s[i] >= 0x20 && s[i] != 0x7f ? utf8_seq(s + i, len - i) : 0;
		if (seq) {
			memcpy(dst + o, s + i, seq);
			o += seq;
			i += seq;
		} else {
			dst[o++] = '?';
			i++;
		}
	}
	if (i < len && o + 4 < dstlen) {
		memcpy(dst + o, "...", 3);
		o += 3;
	}
	dst[o] = '\0';
}

struct scan {
	const unsigned char *s;
	size_t len, i;
	const char *what;
	char *err;
	size_t n;
};

static int scan_fail(struct scan *sc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int scan_fail(struct scan *sc, const char *fmt, ...)
{
	int o = snprintf(sc->err, sc->n, "%s ", sc->what);
	if (o < 0 || (size_t)o >= sc->n)
		return TIDE_EINVAL;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(sc->err + o, sc->n - (size_t)o, fmt, ap);
	va_end(ap);
	return TIDE_EINVAL;
}

/* "unexpected 'x' at byte 9", "unexpected end of text", in JSON-syntax messages. */
static int unexpected(struct scan *sc)
{
	if (sc->i >= sc->len)
		return scan_fail(sc, "is not valid JSON: it ends too early (after byte %zu)",
		                 sc->len);
	unsigned char c = sc->s[sc->i];
	if (c == 0)
		return scan_fail(sc, "contains a NUL byte at byte %zu", sc->i + 1);
	if (c >= 0x21 && c < 0x7f)
		return scan_fail(sc, "is not valid JSON: unexpected '%c' at byte %zu", c,
		                 sc->i + 1);
	return scan_fail(sc, "is not valid JSON: unexpected byte 0x%02x at byte %zu", c, sc->i + 1);
}

static void skip_ws(struct scan *sc)
{
	while (sc->i < sc->len && (sc->s[sc->i] == ' ' || sc->s[sc->i] == '\t' ||
	                           sc->s[sc->i] == '\n' || sc->s[sc->i] == '\r'))
		sc->i++;
}

static int hex4(const unsigned char *p)
{
	int v = 0;
	for (int k = 0; k < 4; k++) {
		int c = p[k], d = c >= '0' && c <= '9'   ? c - '0'
		                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
		                  : c >= 'A' && c <= 'F' ? c - 'A' + 10
		                                         : -1;
		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	return v;
}

/* A string (or key) starting at the opening quote: escapes as JSON and jsonb allow them,
 * raw bytes valid UTF-8. */
static int scan_string(struct scan *sc)
{
	const unsigned char *s = sc->s;
	size_t start = sc->i, i = sc->i + 1;
	for (;;) {
		if (i >= sc->len)
			return scan_fail(sc,
			                 "is not valid JSON: a string is not closed (it starts "
			                 "at byte %zu)",
			                 start + 1);
		unsigned char c = s[i];
		if (c == '"') {
			sc->i = i + 1;
			return 0;
		}
		if (c == '\\') {
			if (i + 1 >= sc->len) {
				sc->i = i + 1;
				return unexpected(sc);
			}
			unsigned char e = s[i + 1];
			if (e == 0) {
				sc->i = i + 1;
				return unexpected(sc);
			}
			if (strchr("\"\\/bfnrt", e)) {
				i += 2;
				continue;
			}
			if (e != 'u') {
				sc->i = i;
				return scan_fail(
				        sc, "is not valid JSON: unknown escape '\\%c' at byte %zu",
				        e >= 0x21 && e < 0x7f ? e : '?', i + 1);
			}
			int cp = i + 6 <= sc->len ? hex4(s + i + 2) : -1;
			if (cp < 0)
				return scan_fail(
				        sc, "is not valid JSON: bad \\u escape at byte %zu", i + 1);
			if (cp == 0)
				return scan_fail(sc,
				                 "contains \\u0000 at byte %zu, which PostgreSQL's "
				                 "jsonb cannot store",
				                 i + 1);
			if (cp >= 0xdc00 && cp <= 0xdfff)
				return scan_fail(
				        sc,
				        "contains an unpaired surrogate \\u%04x at byte %zu "
				        "(not a character)",
				        (unsigned)cp, i + 1);
			if (cp >= 0xd800 && cp <= 0xdbff) {
				int lo = i + 12 <= sc->len && s[i + 6] == '\\' && s[i + 7] == 'u'
				                 ? hex4(s + i + 8)
				                 : -1;
				if (lo < 0xdc00 || lo > 0xdfff)
					return scan_fail(
					        sc,
					        "contains an unpaired surrogate \\u%04x at byte "
					        "%zu (not a character)",
					        (unsigned)cp, i + 1);
				i += 12;
				continue;
			}
			i += 6;
			continue;
		}
		if (c < 0x20) {
			sc->i = i;
			if (c == 0)
				return unexpected(sc);
			return scan_fail(
			        sc,
			        "is not valid JSON: control character 0x%02x inside a string "
			        "at byte %zu (write it as \\u%04x)",
			        c, i + 1, c);
		}
		if (c >= 0x80) {
			size_t len = utf8_seq(s + i, sc->len - i);
			if (!len)
				return scan_fail(sc, "is not valid UTF-8 at byte %zu", i + 1);
			i += len;
			continue;
		}
		i++;
	}
}

static bool digit(const struct scan *sc, size_t i)
{
	return i < sc->len && sc->s[i] >= '0' && sc->s[i] <= '9';
}

/* A number as JSON writes them, that a double and PostgreSQL's numeric both hold: not
 * beyond a double's range (1e400 would read back as infinity), not so small that it reads
 * back as 0, and not more digits after the point than numeric keeps. */
static int scan_number(struct scan *sc)
{
	size_t start = sc->i, i = sc->i;
	if (i < sc->len && sc->s[i] == '-')
		i++;
	if (!digit(sc, i)) {
		sc->i = i;
		return unexpected(sc);
	}
	bool nonzero = false;
	if (sc->s[i] == '0') {
		i++;
	} else {
		while (digit(sc, i))
			i++;
		nonzero = true;
	}
	size_t frac = 0;
	if (i < sc->len && sc->s[i] == '.') {
		i++;
		if (!digit(sc, i)) {
			sc->i = i;
			return unexpected(sc);
		}
		for (; digit(sc, i); i++, frac++)
			nonzero |= sc->s[i] != '0';
	}
	bool has_exp = false;
	long long e10 = 0;
	if (i < sc->len && (sc->s[i] == 'e' || sc->s[i] == 'E')) {
		has_exp = true;
		i++;
		bool neg = i < sc->len && sc->s[i] == '-';
		if (i < sc->len && (sc->s[i] == '+' || sc->s[i] == '-'))
			i++;
		if (!digit(sc, i)) {
			sc->i = i;
			return unexpected(sc);
		}
		for (; digit(sc, i); i++)
			if (e10 < 1000000)
				e10 = e10 * 10 + (sc->s[i] - '0');
		if (neg)
			e10 = -e10;
	}
	sc->i = i;
	size_t len = i - start;
	char shown[48];
	if ((long long)frac - e10 > PG_NUMERIC_MAX_SCALE) {
		tide_snippet(shown, sizeof(shown), (const char *)sc->s + start, len, 24);
		return scan_fail(sc,
		                 "has a number with more than %d digits after the decimal point "
		                 "at byte %zu (%s), more than PostgreSQL's numeric keeps",
		                 PG_NUMERIC_MAX_SCALE, start + 1, shown);
	}
	/* Up to 300 characters without an exponent, a number is within 1e-300..1e300. */
	if (!has_exp && len <= 300)
		return 0;
	char small[64], *copy = len < sizeof(small) ? small : malloc(len + 1);
	if (!copy)
		return scan_fail(sc, "is too large to check: out of memory");
	memcpy(copy, sc->s + start, len);
	copy[len] = '\0';
	double v = strtod(copy, NULL);
	if (copy != small)
		free(copy);
	if (isinf(v) || (v == 0 && nonzero)) {
		tide_snippet(shown, sizeof(shown), (const char *)sc->s + start, len, 24);
		return scan_fail(sc,
		                 "has a number out of range at byte %zu: %s is %s for a double "
		                 "(it would read back as %s)",
		                 start + 1, shown, isinf(v) ? "too large" : "too small",
		                 isinf(v) ? "infinity" : "0");
	}
	return 0;
}

static int scan_literal(struct scan *sc, const char *word)
{
	size_t n = strlen(word);
	if (sc->i + n > sc->len || memcmp(sc->s + sc->i, word, n) != 0)
		return unexpected(sc);
	sc->i += n;
	return 0;
}

/* One JSON value with at most TIDE_MAX_JSON_DEPTH nested objects and arrays, iteratively:
 * the depth of the input never becomes the depth of the C stack. */
static int scan_value(struct scan *sc)
{
	char open[TIDE_MAX_JSON_DEPTH]; /* '{' or '[' for each open container */
	int depth = 0, rc;
	enum { VALUE, KEY, AFTER } state = VALUE;
	for (;;) {
		skip_ws(sc);
		if (state == KEY) {
			if (sc->i >= sc->len || sc->s[sc->i] != '"')
				return unexpected(sc);
			if ((rc = scan_string(sc)))
				return rc;
			skip_ws(sc);
			if (sc->i >= sc->len || sc->s[sc->i] != ':')
				return unexpected(sc);
			sc->i++;
			state = VALUE;
			continue;
		}
		if (state == AFTER) {
			if (depth == 0)
				return 0;
			char close = open[depth - 1] == '{' ? '}' : ']';
			if (sc->i < sc->len && sc->s[sc->i] == ',') {
				sc->i++;
				state = open[depth - 1] == '{' ? KEY : VALUE;
			} else if (sc->i < sc->len && sc->s[sc->i] == close) {
				sc->i++;
				depth--;
			} else {
				return unexpected(sc);
			}
			continue;
		}
		if (sc->i >= sc->len)
			return unexpected(sc);
		unsigned char c = sc->s[sc->i];
		if (c == '{' || c == '[') {
			if (depth == TIDE_MAX_JSON_DEPTH)
				return scan_fail(
				        sc,
				        "is nested too deeply: more than %d levels of objects "
				        "and arrays (at byte %zu)",
				        TIDE_MAX_JSON_DEPTH, sc->i + 1);
			open[depth++] = (char)c;
			sc->i++;
			skip_ws(sc);
			if (sc->i < sc->len && sc->s[sc->i] == (c == '{' ? '}' : ']')) {
				sc->i++;
				depth--;
				state = AFTER;
			} else {
				state = c == '{' ? KEY : VALUE;
			}
			continue;
		}
		if (c == '"')
			rc = scan_string(sc);
		else if (c == '-' || (c >= '0' && c <= '9'))
			rc = scan_number(sc);
		else if (c == 't')
			rc = scan_literal(sc, "true");
		else if (c == 'f')
			rc = scan_literal(sc, "false");
		else if (c == 'n')
			rc = scan_literal(sc, "null");
		else
			rc = unexpected(sc);
		if (rc)
			return rc;
		state = AFTER;
	}
}

int tide_json_check_object_n(const char *text, size_t len, const char *what, char *err, size_t n)
{
	if (!text) {
		snprintf(err, n, "%s is missing", what);
		return TIDE_EINVAL;
	}
	struct scan sc = {(const unsigned char *)text, len, 0, what, err, n};
	skip_ws(&sc);
	if (sc.i >= len) {
		snprintf(err, n, "%s is not valid JSON: it is empty", what);
		return TIDE_EINVAL;
	}
	size_t start = sc.i;
	int rc = scan_value(&sc);
	if (rc)
		return rc;
	size_t end = sc.i;
	skip_ws(&sc);
	if (sc.i < len && text[sc.i] == '\0')
		return unexpected(&sc);
	if (sc.i < len) {
		char shown[48];
		tide_snippet(shown, sizeof(shown), text + sc.i, len - sc.i, 20);
		return scan_fail(&sc,
		                 "is not valid JSON: unexpected text after the %s at byte %zu: %s",
		                 text[start] == '{' ? "object" : "value", sc.i + 1, shown);
	}
	if (text[start] != '{') {
		char shown[96];
		tide_snippet(shown, sizeof(shown), text + start, end - start, 60);
		snprintf(err, n, "%s must be a JSON object, got: %s", what, shown);
		return TIDE_EINVAL;
	}
	return 0;
}

int tide_json_check_object(const char *text, const char *what, char *err, size_t n)
{
	return tide_json_check_object_n(text, text ? strlen(text) : 0, what, err, n);
}

cJSON *tide_json_add_i64(cJSON *obj, const char *key, int64_t v)
{
	char buf[24];
	snprintf(buf, sizeof(buf), "%" PRId64, v);
	return cJSON_AddRawToObject(obj, key, buf);
}

size_t tide_json_compact(char *text)
{
	/* PostgreSQL prints jsonb as {"a": 1, "b": [1, 2]}: drop the spaces it adds, and any
	 * whitespace outside strings, keeping every other byte (numbers exactly as stored). */
	char *o = text;
	bool in_string = false;
	for (const char *p = text; *p; p++) {
		char c = *p;
		if (in_string) {
			*o++ = c;
			if (c == '\\' && p[1])
				*o++ = *++p;
			else if (c == '"')
				in_string = false;
		} else if (c == '"') {
			in_string = true;
			*o++ = c;
		} else if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
			*o++ = c;
		}
	}
	*o = '\0';
	return (size_t)(o - text);
}

cJSON *tide_json_add_compact(cJSON *obj, const char *key, const char *json)
{
	cJSON *item = cJSON_AddRawToObject(obj, key, json);
	if (item && item->valuestring)
		tide_json_compact(item->valuestring);
	return item;
}
