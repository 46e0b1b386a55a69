/* query.c — checks a conditional append's query and encodes it for the server: its types as a
 * text array, its data as the JSON object the events' data must contain. */
#include "query.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "input.h"
#include "json.h"
#include "pg.h"

void tide_query_params_free(struct tide_query_params *p)
{
	free(p->types);
	free(p->data);
	p->types = p->data = NULL;
}

/* The fields of the data object: each a string, a number or a boolean (jsonb's @> compares
 * them as the events' fields). 0, or TIDE_EINVAL with err. */
static int check_fields(const char *data, char *err, size_t errn)
{
	cJSON *doc = cJSON_Parse(data);
	if (!doc) {
		snprintf(err, errn, "out of memory");
		return TIDE_ENOMEM;
	}
	int rc = 0, count = 0;
	for (const cJSON *f = doc->child; f && !rc; f = f->next) {
		if (++count > TIDE_MAX_QUERY_FIELDS) {
			snprintf(err, errn,
			         "the query's data has more than %d fields; at most %d are allowed",
			         TIDE_MAX_QUERY_FIELDS, TIDE_MAX_QUERY_FIELDS);
			rc = TIDE_EINVAL;
		} else if (!cJSON_IsString(f) && !cJSON_IsNumber(f) && !cJSON_IsBool(f)) {
			char name[80];
			tide_snippet(name, sizeof(name), f->string, strlen(f->string), 40);
			snprintf(err, errn,
			         "the query's data field '%s' is %s: only strings, numbers and "
			         "booleans can be matched",
			         name,
			         cJSON_IsNull(f)    ? "null"
			         : cJSON_IsArray(f) ? "an array"
			                            : "an object");
			rc = TIDE_EINVAL;
		}
	}
	if (!rc && count == 0) {
		snprintf(err, errn,
		         "the query's data has no fields: give at least one field = value, or "
		         "leave data out");
		rc = TIDE_EINVAL;
	}
	cJSON_Delete(doc);
	return rc;
}

int tide_query_params(const struct tide_query *q, struct tide_query_params *out, char *err,
                      size_t errn)
{
	out->types = out->data = NULL;
	if (!q || (q->ntypes == 0 && !q->data)) {
		snprintf(err, errn,
		         "the query matches every event: give it types, data fields or both");
		return TIDE_EINVAL;
	}
	if (q->ntypes > TIDE_MAX_QUERY_TYPES) {
		snprintf(err, errn, "the query has %zu types; at most %d are allowed", q->ntypes,
		         TIDE_MAX_QUERY_TYPES);
		return TIDE_EINVAL;
	}
	if (q->ntypes && !q->types) {
		snprintf(err, errn, "the query has %zu types but no list of them", q->ntypes);
		return TIDE_EINVAL;
	}
	for (size_t i = 0; i < q->ntypes; i++) {
		char what[40];
		snprintf(what, sizeof(what), "type %zu of the query", i + 1);
		const char *t = q->types[i];
		if (tide_check_name(what, t, t ? strlen(t) : 0, TIDE_MAX_NAME_BYTES, err, errn))
			return TIDE_EINVAL;
	}
	if (q->data) {
		if (tide_json_check_object(q->data, "the query's data", err, errn))
			return TIDE_EINVAL;
		int rc = check_fields(q->data, err, errn);
		if (rc)
			return rc;
	}
	if ((q->ntypes && !(out->types = tide_pg_text_array(q->types, q->ntypes))) ||
	    (q->data && !(out->data = strdup(q->data)))) {
		tide_query_params_free(out);
		snprintf(err, errn, "out of memory");
		return TIDE_ENOMEM;
	}
	return 0;
}
