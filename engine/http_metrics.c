/* http_metrics.c — GET /metrics: what metrics.c keeps in memory, with what only the
 * database knows, asked at scrape time on a store of the pool: each processor's lag and
 * parked events (tide_stmt_status, the statement of `tide status`), then how long a
 * transaction has held the log back. With the database unreachable the page still comes,
 * without those: the counters matter most then. */
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "metrics.h"
#include "status.h"
#include "store.h"

/* What the status statement said of one processor: copied, as its result is cleared after
 * the callback. */
struct row {
	char *id;
	int64_t lag_events, dead_letters;
	double lag_seconds;
};

struct scrape {
	struct tide_store *store;
	struct row *rows;
	int nrows;
};

static void scrape_free(struct scrape *s)
{
	for (int i = 0; i < s->nrows; i++)
		free(s->rows[i].id);
	free(s->rows);
	free(s);
}

static bool lookup(void *arg, const char *id, int64_t *lag_events, double *lag_seconds,
                   int64_t *dead_letters)
{
	const struct scrape *s = arg;
	for (int i = 0; i < s->nrows; i++)
		if (strcmp(s->rows[i].id, id) == 0) {
			*lag_events = s->rows[i].lag_events;
			*lag_seconds = s->rows[i].lag_seconds;
			*dead_letters = s->rows[i].dead_letters;
			return true;
		}
	return false;
}

/* Replies with the page; db NULL: without the database's figures. */
static void reply(struct tide_http_call *c, const struct tide_metrics_db *db)
{
	size_t len;
	char *text = tide_metrics_render(db, &len);
	if (!text)
		tide_http_fail(c, 500, "memory", "out of memory");
	else
		tide_http_reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
	free(text);
}

static void on_held_back(const struct tide_pg_reply *r, void *arg)
{
	struct tide_http_call *c = arg;
	struct scrape *s = c->route_state;
	struct tide_metrics_db db = {.processor = lookup, .arg = s, .held_back_seconds = -1};
	if (!r->status)
		db.held_back_seconds = PQntuples(r->res) == 1 ? atof(PQgetvalue(r->res, 0, 4)) : 0;
	reply(c, &db);
	scrape_free(s);
}

static void on_status(const struct tide_pg_reply *r, void *arg)
{
	struct tide_http_call *c = arg;
	struct scrape *s = c->route_state;
	if (r->status) {
		reply(c, NULL);
		scrape_free(s);
		return;
	}
	int n = PQntuples(r->res);
	s->rows = calloc((size_t)n + 1, sizeof(*s->rows));
	for (int i = 0; s->rows && i < n; i++) {
		/* An inline projection has no lag: it is as far as the appends it ran in. */
		if (PQgetisnull(r->res, i, COL_LAG_EVENTS))
			continue;
		struct row *row = &s->rows[s->nrows];
		if (!(row->id = strdup(PQgetvalue(r->res, i, COL_ID))))
			break;
		row->lag_events = strtoll(PQgetvalue(r->res, i, COL_LAG_EVENTS), NULL, 10);
		row->lag_seconds = atof(PQgetvalue(r->res, i, COL_LAG_SECONDS));
		row->dead_letters = strtoll(PQgetvalue(r->res, i, COL_DEAD_LETTERS), NULL, 10);
		s->nrows++;
	}
	if (tide_pg_exec(s->store->pg, &tide_stmt_held_back, NULL, on_held_back, c) != 0) {
		struct tide_metrics_db db = {
		        .processor = lookup, .arg = s, .held_back_seconds = -1};
		reply(c, &db);
		scrape_free(s);
	}
}

void tide_http_metrics(struct tide_http_call *c)
{
	struct tide_store *store = tide_http_store_if_up(c->http);
	struct scrape *s = store ? calloc(1, sizeof(*s)) : NULL;
	if (!s) {
		reply(c, NULL);
		return;
	}
	s->store = store;
	c->route_state = s;
	if (tide_pg_exec(store->pg, &tide_stmt_status, NULL, on_status, c) != 0) {
		scrape_free(s);
		reply(c, NULL);
	}
}
