/* query.h — the queries of conditional appends (tide.h's struct tide_query): checked once,
 * and turned into the parameters the server's tide_read_query and tide_append_if_check take
 * (sql/0014_tide_conditional_append.sql). */
#ifndef TIDE_QUERY_H
#define TIDE_QUERY_H

#include <stddef.h>

#include "tide.h"

/* A query as statement parameters: types as a PostgreSQL text array (NULL: any type), data as
 * the JSON object's text (NULL: any data). Both malloc'd. */
struct tide_query_params {
	char *types;
	char *data;
};

/* Checks q (the rules of tide.h) and fills *out: 0; TIDE_EINVAL or TIDE_ENOMEM with one line
 * in err, and nothing to free. */
TIDE_MUST_CHECK int tide_query_params(const struct tide_query *q, struct tide_query_params *out,
                                      char *err, size_t errn);

void tide_query_params_free(struct tide_query_params *p);

#endif
