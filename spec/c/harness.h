/* harness.h — what the C tests share: a fresh migrated database per test on the private
 * PostgreSQL named by TIDE_TEST_DATABASE_URL, a loop, and checks that report file:line.
 * A test binary runs one named test per process (ctest passes the name). */
#ifndef TIDE_TEST_HARNESS_H
#define TIDE_TEST_HARNESS_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

#define SKIP_CODE 77

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

#define CHECK_EQ_I64(a, b)                                                                         \
	do {                                                                                       \
		long long a_ = (long long)(a), b_ = (long long)(b);                                \
		if (a_ != b_) {                                                                    \
			fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__,      \
			        __LINE__, #a, a_, #b, b_);                                         \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

struct test_case {
	const char *name;
	void (*fn)(void);
};

/* The URL of this test's fresh, migrated database. */
extern char test_url[1024];
extern uv_loop_t *test_loop;

/* Runs the loop until *flag becomes true (fails the test after 60 s). */
void test_wait(const bool *flag);

/* Opens a connected store on test_loop. */
struct tide_store *test_store(void);

/* Closes the store and lets its handles close. */
void test_close(struct tide_store *store);

/* A blocking libpq connection to the test database, for checks and held transactions. */
PGconn *test_pg(void);

/* Runs sql on a blocking connection and returns the first column of the first row as a
 * number (0 when there is no row). */
long long test_scalar(PGconn *c, const char *sql);

int test_main(int argc, char **argv, const struct test_case *cases, size_t n);

#endif
