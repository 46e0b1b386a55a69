/* sharing.c — this daemon's heartbeat and its share of the units (see sharing.h). The beat
 * is one statement on a connection of its own, every lease_ms / 3, off the processors'
 * connections so that a busy batch never delays it. A daemon that has not heard back from
 * its first beat claims nothing: it does not know yet how many daemons share the work. */
#include "sharing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "pg.h"

enum unit_state { U_FREE, U_CLAIMING, U_HELD };

struct tide_sharing_unit {
	struct tide_sharing *s;
	struct tide_sharing_unit *next;
	char *id;
	enum unit_state state;
	void (*kick)(void *arg);
	void *arg;
};

struct tide_sharing {
	struct tide_sharing_opts o;
	char *owner;
	char host[64];
	struct tide_pg *pg;
	uv_timer_t timer;
	bool beat_out, stopping, told_failure;
	bool wakes_by_notify; /* tide's writers must NOTIFY for this daemon (no WAL stream) */
	bool beat_owed;       /* it changed while a beat was out */
	int live;  /* daemons live at the last beat (this one included); 0: not known yet */
	int share; /* as last logged */
	struct tide_sharing_unit *units;
	void (*done)(void *arg);
	void *done_arg;
};

static int count(const struct tide_sharing *s, bool claiming_too)
{
	int n = 0;
	for (const struct tide_sharing_unit *u = s->units; u; u = u->next)
		n += u->state == U_HELD || (claiming_too && u->state == U_CLAIMING);
	return n;
}

static int units(const struct tide_sharing *s)
{
	int n = 0;
	for (const struct tide_sharing_unit *u = s->units; u; u = u->next)
		n++;
	return n;
}

/* ceil(units / live daemons); 0 until the first beat has answered. */
static int share(const struct tide_sharing *s)
{
	return s->live > 0 ? (units(s) + s->live - 1) / s->live : 0;
}

/* Units not held may be claimed now: tell them (each asks tide_sharing_may_claim). */
static void kick_free(struct tide_sharing *s)
{
	int room = share(s) - count(s, true);
	for (struct tide_sharing_unit *u = s->units; u && room > 0; u = u->next)
		if (u->state == U_FREE && u->kick) {
			u->kick(u->arg);
			room--;
		}
}

/* --- the heartbeat ------------------------------------------------------------------------ */

static void beat(struct tide_sharing *s);

static void on_beat(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_sharing *s = arg;
	s->beat_out = false;
	if (reply->status == TIDE_ECLOSED || s->stopping)
		return;
	if (s->beat_owed) {
		s->beat_owed = false;
		beat(s);
	}
	if (reply->status) {
		if (!s->told_failure)
			tide_log("warn", "sharing.beat_failed", "error", reply->err, "effect",
			         "other daemons may count this one dead and take its processors",
			         (char *)NULL);
		s->told_failure = true;
		if (reply->status == TIDE_ECONN) {
			tide_pg_close(s->pg);
			s->pg = NULL;
		}
		return;
	}
	if (s->told_failure)
		tide_log("info", "sharing.beat_restored", (char *)NULL);
	s->told_failure = false;
	int live = atoi(PQgetvalue(reply->res, 0, 0));
	if (live < 1)
		live = 1;
	int before = share(s);
	s->live = live;
	int now = share(s);
	if (now != s->share) {
		char d[16], n[16], sh[16], held[16];
		snprintf(d, sizeof(d), "%d", live);
		snprintf(n, sizeof(n), "%d", units(s));
		snprintf(sh, sizeof(sh), "%d", now);
		snprintf(held, sizeof(held), "%d", count(s, false));
		tide_log("info", "sharing.share", "daemons", d, "units", n, "share", sh, "held",
		         held, (char *)NULL);
		s->share = now;
	}
	if (now > before || before == 0)
		kick_free(s);
}

static void beat(struct tide_sharing *s)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_daemon_beat",
	        "SELECT tide_daemon_beat($1, $2, $3::int, $4::int, $5::int, $6::int, $7::boolean)",
	        7};
	if (s->beat_out) {
		s->beat_owed = true;
		return;
	}
	if (s->stopping || !s->pg || !tide_pg_ready(s->pg))
		return;
	char pid[16], ttl[16], n[16], sh[16];
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	snprintf(ttl, sizeof(ttl), "%u", s->o.lease_ms);
	snprintf(n, sizeof(n), "%d", units(s));
	snprintf(sh, sizeof(sh), "%d", share(s));
	const char *v[7] = {s->owner, s->host, pid, ttl, n, sh, s->wakes_by_notify ? "t" : "f"};
	s->beat_out = tide_pg_exec(s->pg, &stmt, v, on_beat, s) == 0;
}

static void on_open(struct tide_pg *pg, int status, const char *err, void *arg)
{
	(void)pg;
	struct tide_sharing *s = arg;
	if (status) {
		if (!s->told_failure)
			tide_log("warn", "sharing.connect_failed", "error", err, (char *)NULL);
		s->told_failure = true;
		tide_pg_close(s->pg);
		s->pg = NULL;
		return;
	}
	beat(s);
}

static void connect_pg(struct tide_sharing *s)
{
	if (tide_pg_open(s->o.loop, s->o.url, "tide run: sharing", TIDE_PG_PIPELINE, on_open, s,
	                 &s->pg) != 0)
		s->pg = NULL;
}

static void on_timer(uv_timer_t *t)
{
	struct tide_sharing *s = t->data;
	if (!s->pg)
		connect_pg(s);
	else
		beat(s);
}

struct tide_sharing *tide_sharing_new(const struct tide_sharing_opts *o)
{
	struct tide_sharing *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->o = *o;
	s->wakes_by_notify = true;
	s->owner = strdup(o->owner);
	if (!s->owner) {
		free(s);
		return NULL;
	}
	snprintf(s->host, sizeof(s->host), "host");
	gethostname(s->host, sizeof(s->host) - 1);
	uv_timer_init(o->loop, &s->timer);
	s->timer.data = s;
	unsigned every = o->lease_ms / 3 ? o->lease_ms / 3 : 1;
	uv_timer_start(&s->timer, on_timer, every, every);
	connect_pg(s);
	return s;
}

/* --- stopping ---------------------------------------------------------------------------- */

static void timer_closed(uv_handle_t *h)
{
	struct tide_sharing *s = h->data;
	if (s->done)
		s->done(s->done_arg);
}

static void finish(struct tide_sharing *s)
{
	tide_pg_close(s->pg);
	s->pg = NULL;
	uv_close((uv_handle_t *)&s->timer, timer_closed);
}

static void on_left(const struct tide_pg_reply *reply, void *arg)
{
	struct tide_sharing *s = arg;
	if (reply->status == TIDE_ECLOSED)
		return; /* finish closed it */
	if (reply->status)
		tide_log("warn", "sharing.leave_failed", "error", reply->err, "effect",
		         "the other daemons count this one for one lease time more", (char *)NULL);
	finish(s);
}

void tide_sharing_stop(struct tide_sharing *s, void (*done)(void *arg), void *arg)
{
	static const struct tide_pg_stmt stmt = {"tide_daemon_leave",
	                                         "SELECT tide_daemon_leave($1)", 1};
	if (s->stopping)
		return;
	s->stopping = true;
	s->done = done;
	s->done_arg = arg;
	uv_timer_stop(&s->timer);
	const char *v[1] = {s->owner};
	if (!s->pg || !tide_pg_ready(s->pg) || tide_pg_exec(s->pg, &stmt, v, on_left, s) != 0)
		finish(s);
}

void tide_sharing_free(struct tide_sharing *s)
{
	if (!s)
		return;
	while (s->units)
		tide_sharing_leave(s->units);
	free(s->owner);
	free(s);
}

/* --- units -------------------------------------------------------------------------------- */

struct tide_sharing_unit *tide_sharing_join(struct tide_sharing *s, const char *id,
                                            void (*kick)(void *arg), void *arg)
{
	if (!s)
		return NULL;
	struct tide_sharing_unit *u = calloc(1, sizeof(*u));
	if (!u)
		return NULL;
	u->id = strdup(id);
	if (!u->id) {
		free(u);
		return NULL;
	}
	u->s = s;
	u->kick = kick;
	u->arg = arg;
	u->next = s->units;
	s->units = u;
	return u;
}

void tide_sharing_leave(struct tide_sharing_unit *u)
{
	if (!u)
		return;
	struct tide_sharing *s = u->s;
	for (struct tide_sharing_unit **p = &s->units; *p; p = &(*p)->next)
		if (*p == u) {
			*p = u->next;
			break;
		}
	free(u->id);
	free(u);
}

bool tide_sharing_may_claim(struct tide_sharing_unit *u)
{
	if (!u)
		return true;
	if (u->state != U_FREE)
		return true; /* held (a renewal), or a claim already counted */
	if (u->s->stopping || count(u->s, true) >= share(u->s))
		return false;
	u->state = U_CLAIMING;
	return true;
}

void tide_sharing_held(struct tide_sharing_unit *u, bool held)
{
	if (u)
		u->state = held ? U_HELD : U_FREE;
}

bool tide_sharing_surplus(const struct tide_sharing_unit *u)
{
	if (!u || u->state != U_HELD || u->s->live == 0)
		return false;
	int over = count(u->s, false) - share(u->s);
	if (over <= 0)
		return false;
	int after = 0; /* held units whose ids sort after this one's */
	for (const struct tide_sharing_unit *v = u->s->units; v; v = v->next)
		after += v->state == U_HELD && strcmp(v->id, u->id) > 0;
	return after < over;
}

void tide_sharing_set_wakes_by_notify(struct tide_sharing *s, bool yes)
{
	if (!s || s->wakes_by_notify == yes)
		return;
	s->wakes_by_notify = yes;
	beat(s);
}

void tide_sharing_kick(struct tide_sharing *s)
{
	if (s && !s->stopping)
		kick_free(s);
}

void tide_sharing_notify_handed_over(struct tide_pg *pg)
{
	static const struct tide_pg_stmt stmt = {"tide_share_notify",
	                                         "SELECT pg_notify('tide_share', '')", 0};
	if (pg && tide_pg_ready(pg) && tide_pg_exec(pg, &stmt, NULL, NULL, NULL) != 0)
		tide_log("warn", "sharing.notify_failed", "effect",
		         "the other daemons claim at their next try", (char *)NULL);
}

const char *tide_sharing_describe(const struct tide_sharing_unit *u, char *buf, size_t n)
{
	if (!u)
		snprintf(buf, n, "-");
	else
		snprintf(buf, n, "this daemon holds %d of its share of %d (%d units, %d daemons)",
		         count(u->s, false), share(u->s), units(u->s), u->s->live);
	return buf;
}
