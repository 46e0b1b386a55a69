/* archive.c — where streams are archived: tide_store_archive sends one call of
 * tide_archive_stream() (sql/0016_tide_archive.sql), which moves the stream's rows to the
 * is_archived = true partitions in one transaction, and turns its outcome into a status.
 * How reads and appends then see the stream: store.c and append.c (tide_stream_version_sql). */
#include "store.h"

#include "json.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct tide_pg_stmt stmt_archive = {
        "tide_archive_stream",
        "SELECT outcome, version, moved FROM tide_archive_stream($1, $2)",
        2,
};

struct archive_call {
	tide_archive_cb cb;
	void *arg;
	char partition[TIDE_MAX_PARTITION_BYTES + 1];
	char stream[];
};

static void on_archive(const struct tide_pg_reply *reply, void *arg)
{
	struct archive_call *a = arg;
	char buf[640], shown[160], part[80];
	tide_snippet(shown, sizeof(shown), a->stream, strlen(a->stream), 100);
	tide_snippet(part, sizeof(part), a->partition, strlen(a->partition), 60);
	if (tide_append_lost(reply) && reply->sent) {
		snprintf(buf, sizeof(buf),
		         "the connection was lost after the archive of stream %s was sent, so it "
		         "may or may not have been archived (read the stream to find out): %s",
		         shown, reply->err);
		a->cb(TIDE_EUNKNOWN, buf, NULL, a->arg);
		free(a);
		return;
	}
	if (reply->status) {
		a->cb(reply->status, tide_pg_explain(reply, buf, sizeof(buf)), NULL, a->arg);
		free(a);
		return;
	}
	PGresult *res = reply->res;
	const char *outcome = PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "";
	if (strcmp(outcome, "archived") == 0) {
		struct tide_archive_result r = {strtoll(PQgetvalue(res, 0, 1), NULL, 10),
		                                strtoll(PQgetvalue(res, 0, 2), NULL, 10)};
		a->cb(0, NULL, &r, a->arg);
	} else if (strcmp(outcome, "missing") == 0) {
		snprintf(buf, sizeof(buf),
		         "stream %s does not exist in partition %s: nothing to archive (check the "
		         "name and --partition)",
		         shown, part);
		a->cb(TIDE_EINVAL, buf, NULL, a->arg);
	} else if (strcmp(outcome, "already_archived") == 0) {
		tide_archived_text(a->stream, " already: nothing changed", buf, sizeof(buf));
		a->cb(TIDE_EARCHIVED, buf, NULL, a->arg);
	} else if (strcmp(outcome, "archived_before") == 0) {
		snprintf(buf, sizeof(buf),
		         "stream %s cannot be archived: it was archived once and begun again, and "
		         "Emmett's tables keep one archived stream per stream id and partition; "
		         "nothing changed",
		         shown);
		a->cb(TIDE_EARCHIVED, buf, NULL, a->arg);
	} else {
		a->cb(TIDE_EDB, "tide_archive_stream() gave an answer this tide does not know",
		      NULL, a->arg);
	}
	free(a);
}

int tide_store_archive(struct tide_store *store, const char *stream, tide_archive_cb cb, void *arg)
{
	size_t len = stream ? strlen(stream) : 0;
	if (tide_check_name("stream name", stream, len, TIDE_MAX_NAME_BYTES, store->error,
	                    sizeof(store->error)))
		return TIDE_EINVAL;
	if (!tide_store_usable(store))
		return TIDE_ECONN;
	struct archive_call *a = calloc(1, sizeof(*a) + len + 1);
	if (!a)
		return tide_store_fail(store, TIDE_ENOMEM, "out of memory");
	a->cb = cb;
	a->arg = arg;
	memcpy(a->partition, store->partition, sizeof(a->partition));
	memcpy(a->stream, stream, len + 1);
	const char *values[2] = {a->stream, a->partition};
	if (tide_pg_exec(store->pg, &stmt_archive, values, on_archive, a) != 0) {
		free(a);
		return tide_store_fail(store, TIDE_ECONN, "cannot send the archive: %s",
		                       tide_pg_error(store->pg));
	}
	return 0;
}
