/* cli_docs.c — `tide doc COLLECTION ID` and `tide docs COLLECTION`: what document
 * projections wrote, read through tide_store_doc/tide_store_docs (documents.c), one JSON
 * object per document; `--where KEY=VALUE` options become one JSONB containment filter. */
#include "cli_docs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "json_out.h"
#include "pg.h"
#include "store.h"

#define MAX_WHERE ((int)(sizeof(((struct cli *)0)->where) / sizeof(const char *)))

int tide_cli_docs_option(struct cli *cli, const char *name, const char *value)
{
	if (strcmp(name, "after") == 0) {
		cli->docs.after = value;
		return 0;
	}
	if (strcmp(name, "limit") == 0) {
		char *end;
		errno = 0;
		long long n = strtoll(value, &end, 10);
		if (errno || end == value || *end || n < 1 || n > TIDE_DOCS_MAX_LIMIT)
			return tide_cli_usage_error(cli,
			                            "--limit wants a number from 1 to %d, got '%s'",
			                            TIDE_DOCS_MAX_LIMIT, value);
		cli->docs.limit = n;
		return 0;
	}
	/* where */
	size_t len = strlen(value);
	if (tide_utf8_check(value, len) != len) {
		char shown[200];
		tide_snippet(shown, sizeof(shown), value, len, 120);
		return tide_cli_usage_error(cli, "--where wants UTF-8 text, got '%s'", shown);
	}
	const char *eq = strchr(value, '=');
	if (!eq || eq == value)
		return tide_cli_usage_error(cli, "--where wants KEY=VALUE, got '%s'", value);
	if (cli->nwhere == MAX_WHERE)
		return tide_cli_usage_error(cli, "at most %d --where options", MAX_WHERE);
	cli->where[cli->nwhere++] = value;
	return 0;
}

/* True when v is exactly one strict JSON value (as jsonb reads it): checked inside an
 * object by tide's own checker, and alone by cJSON, so that "1,\"x\":2" is no value. */
static bool is_json_value(const char *v)
{
	size_t len = strlen(v);
	char *wrapped = malloc(len + 8);
	if (!wrapped)
		return false;
	snprintf(wrapped, len + 8, "{\"v\":%s}", v);
	char err[200];
	bool ok = tide_json_check_object(wrapped, "", err, sizeof(err)) == 0;
	free(wrapped);
	if (ok) {
		cJSON *parsed = cJSON_ParseWithOpts(v, NULL, true);
		ok = parsed != NULL;
		cJSON_Delete(parsed);
	}
	return ok;
}

/* The --where options as one JSON object {"KEY":VALUE,...} (malloc'd), or NULL when there
 * are none or on bad input (err set). */
static char *where_json(const struct cli *cli, char *err, size_t n)
{
	err[0] = '\0';
	if (cli->nwhere == 0)
		return NULL;
	cJSON *o = cJSON_CreateObject();
	char *text = NULL;
	if (!o)
		goto nomem;
	for (int i = 0; i < cli->nwhere; i++) {
		const char *arg = cli->where[i], *value = strchr(arg, '=') + 1;
		char *key = strndup(arg, (size_t)(value - 1 - arg));
		if (!key)
			goto nomem;
		if (cJSON_GetObjectItemCaseSensitive(o, key)) {
			char shown[120];
			tide_snippet(shown, sizeof(shown), key, strlen(key), 80);
			snprintf(err, n, "--where names the key '%s' twice", shown);
			free(key);
			goto fail;
		}
		cJSON *v =
		        is_json_value(value) ? cJSON_CreateRaw(value) : cJSON_CreateString(value);
		bool added = v && cJSON_AddItemToObject(o, key, v);
		free(key);
		if (!added) {
			cJSON_Delete(v);
			goto nomem;
		}
	}
	text = cJSON_PrintUnformatted(o);
	if (!text)
		goto nomem;
	cJSON_Delete(o);
	/* Keys and plain strings are the user's bytes: invalid UTF-8 or a NUL escape is
	 * refused here, as the store would. */
	if (tide_json_check_object(text, "--where", err, n)) {
		free(text);
		return NULL;
	}
	return text;
nomem:
	snprintf(err, n, "out of memory");
fail:
	cJSON_Delete(o);
	return NULL;
}

int tide_cli_docs_args(struct cli *cli, char **pos)
{
	char err[640];
	cli->collection = pos[0];
	if (tide_check_name("collection name", cli->collection, strlen(cli->collection),
	                    TIDE_MAX_NAME_BYTES, err, sizeof(err)))
		return tide_cli_usage_error(cli, "%s", err);
	if (cli->run == tide_cli_run_doc) {
		cli->doc_id = pos[1];
		if (tide_check_name("document id", cli->doc_id, strlen(cli->doc_id),
		                    TIDE_MAX_NAME_BYTES, err, sizeof(err)))
			return tide_cli_usage_error(cli, "%s", err);
		return 0;
	}
	if (cli->docs.after && tide_check_name("--after", cli->docs.after, strlen(cli->docs.after),
	                                       TIDE_MAX_NAME_BYTES, err, sizeof(err)))
		return tide_cli_usage_error(cli, "%s", err);
	char *where = where_json(cli, err, sizeof(err)); /* checked now, made again when run */
	free(where);
	if (err[0])
		return tide_cli_usage_error(cli, "%s", err);
	return 0;
}

static void on_docs(int status, const char *err, const struct tide_docs_result *r, void *arg)
{
	struct cli *cli = arg;
	if (status) {
		tide_cli_fail(cli, status, err);
	} else if (r->count == 0 && cli->run == tide_cli_run_doc) {
		char msg[700];
		snprintf(msg, sizeof(msg), "no document '%s' in collection '%s'", cli->doc_id,
		         cli->collection);
		tide_cli_fail(cli, TIDE_EDB, msg); /* exit 1, the message on one line */
	} else {
		for (size_t i = 0; i < r->count; i++)
			tide_cli_print_line(tide_json_document(&r->documents[i]));
	}
	tide_cli_done(cli);
}

void tide_cli_run_doc(struct cli *cli)
{
	int rc = tide_store_doc(cli->store, cli->collection, cli->doc_id, on_docs, cli);
	if (rc) {
		tide_cli_fail(cli, rc, tide_store_error(cli->store));
		tide_cli_done(cli);
	}
}

void tide_cli_run_docs(struct cli *cli)
{
	char err[640];
	char *where = where_json(cli, err, sizeof(err));
	int rc = TIDE_ENOMEM;
	if (!err[0]) {
		cli->docs.where = where;
		rc = tide_store_docs(cli->store, cli->collection, &cli->docs, on_docs, cli);
		cli->docs.where = NULL;
	}
	free(where);
	if (rc) {
		tide_cli_fail(cli, rc, err[0] ? err : tide_store_error(cli->store));
		tide_cli_done(cli);
	}
}
