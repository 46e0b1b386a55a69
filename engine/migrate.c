/* migrate.c — applies the migrations embedded from sql/ (see cmake/embed_sql.cmake),
 * recording each in tide_migrations, in one transaction under an advisory lock so that
 * two `tide migrate` processes run one after the other. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

extern const struct {
	const char *name;
	const char *sql;
} tide_migrations_embedded[];
extern const size_t tide_migrations_embedded_count;

/* Takes the lock (any constant will do, as long as it stays the same: "tide" in
 * ASCII) and the bookkeeping table, inside the one transaction of a migration run. */
#define PREAMBLE                                                                                   \
	"BEGIN;\n"                                                                                 \
	"SELECT pg_advisory_xact_lock(1953064037);\n"                                              \
	"CREATE TABLE IF NOT EXISTS tide_migrations (\n"                                           \
	"    name text PRIMARY KEY,\n"                                                             \
	"    applied_at timestamptz NOT NULL DEFAULT now());\n"

size_t tide_migration_count(void)
{
	return tide_migrations_embedded_count;
}

const char *tide_migration_name(size_t i)
{
	return i < tide_migrations_embedded_count ? tide_migrations_embedded[i].name : NULL;
}

const char *tide_migration_sql(size_t i)
{
	return i < tide_migrations_embedded_count ? tide_migrations_embedded[i].sql : NULL;
}

struct migration_run {
	struct tide_pg *pg;
	tide_migrate_cb cb;
	void *arg;
	size_t applied;
	char *script;
	char err[640];
	int status;
};

static void finish(struct migration_run *m)
{
	m->cb(m->status, m->status ? m->err : NULL, m->applied, m->arg);
	tide_pg_close(m->pg);
	free(m->script);
	free(m);
}

static void on_rolled_back(const struct tide_pg_reply *reply, void *arg)
{
	(void)reply;
	finish(arg);
}

static void on_applied(const struct tide_pg_reply *reply, void *arg)
{
	struct migration_run *m = arg;
	if (reply->status) {
		m->status = reply->status;
		snprintf(m->err, sizeof(m->err), "migration failed, nothing was changed: %s",
		         reply->err);
		m->applied = 0;
		if (reply->status == TIDE_EDB &&
		    tide_pg_script(m->pg, "ROLLBACK", on_rolled_back, m) == 0)
			return;
	}
	finish(m);
}

static int append_str(char **buf, size_t *len, size_t *cap, const char *s)
{
	size_t n = strlen(s);
	if (*len + n + 1 > *cap) {
		size_t ncap = (*cap + n + 1) * 2;
		char *nb = realloc(*buf, ncap);
		if (!nb)
			return TIDE_ENOMEM;
		*buf = nb;
		*cap = ncap;
	}
	memcpy(*buf + *len, s, n + 1);
	*len += n;
	return 0;
}

/* Names are tide's own (NNNN_word), so they are safe to inline. */
static int append_migration(char **buf, size_t *len, size_t *cap, size_t i)
{
	const char *name = tide_migrations_embedded[i].name;
	char line[256];
	snprintf(line, sizeof(line), "\n-- migration %s\n", name);
	int rc = append_str(buf, len, cap, line);
	rc = rc ? rc : append_str(buf, len, cap, tide_migrations_embedded[i].sql);
	snprintf(line, sizeof(line),
	         "\n;INSERT INTO tide_migrations (name) VALUES ('%s') ON CONFLICT DO NOTHING;\n",
	         name);
	return rc ? rc : append_str(buf, len, cap, line);
}

char *tide_migrate_script(void)
{
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int rc = append_str(&buf, &len, &cap,
	                    "-- tide schema: every migration, idempotent; "
	                    "apply with psql -v ON_ERROR_STOP=1 -f FILE\n" PREAMBLE);
	for (size_t i = 0; i < tide_migrations_embedded_count && !rc; i++)
		rc = append_migration(&buf, &len, &cap, i);
	rc = rc ? rc : append_str(&buf, &len, &cap, "COMMIT;\n");
	if (rc) {
		free(buf);
		return NULL;
	}
	return buf;
}

static void on_locked(const struct tide_pg_reply *reply, void *arg)
{
	struct migration_run *m = arg;
	if (reply->status) {
		m->status = reply->status;
		snprintf(m->err, sizeof(m->err), "cannot read applied migrations: %s", reply->err);
		if (reply->status == TIDE_EDB &&
		    tide_pg_script(m->pg, "ROLLBACK", on_rolled_back, m) == 0)
			return;
		finish(m);
		return;
	}
	PGresult *res = reply->res;
	size_t len = 0, cap = 0;
	int rc = 0;
	for (size_t i = 0; i < tide_migrations_embedded_count && !rc; i++) {
		const char *name = tide_migrations_embedded[i].name;
		bool done = false;
		for (int r = 0; r < PQntuples(res) && !done; r++)
			done = strcmp(PQgetvalue(res, r, 0), name) == 0;
		if (done)
			continue;
		rc = append_migration(&m->script, &len, &cap, i);
		m->applied++;
	}
	rc = rc ? rc : append_str(&m->script, &len, &cap, "COMMIT;");
	if (rc == 0)
		rc = tide_pg_script(m->pg, m->script, on_applied, m);
	if (rc) {
		m->status = rc;
		snprintf(m->err, sizeof(m->err), "cannot send the migrations: %s",
		         tide_strerror(rc));
		finish(m);
	}
}

static void on_connected(struct tide_pg *pg, int status, const char *err, void *arg)
{
	struct migration_run *m = arg;
	if (status) {
		m->status = status;
		snprintf(m->err, sizeof(m->err), "%s", err);
		finish(m);
		return;
	}
	int rc = tide_pg_script(pg,
	                        "SET client_min_messages = warning;\n" PREAMBLE
	                        "SELECT name FROM tide_migrations;",
	                        on_locked, m);
	if (rc) {
		m->status = rc;
		snprintf(m->err, sizeof(m->err), "cannot start migrating: %s", tide_strerror(rc));
		finish(m);
	}
}

int tide_store_migrate(struct tide_store *store, tide_migrate_cb cb, void *arg)
{
	struct migration_run *m = calloc(1, sizeof(*m));
	if (!m)
		return TIDE_ENOMEM;
	m->cb = cb;
	m->arg = arg;
	int rc = tide_pg_open(store->loop, store->url, store->application_name, TIDE_PG_SIMPLE,
	                      on_connected, m, &m->pg);
	if (rc) {
		free(m);
		return rc;
	}
	return 0;
}
