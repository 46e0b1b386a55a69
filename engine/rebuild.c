/* rebuild.c — blue-green rebuilds: the builder's name and suffix, its progress, and the
 * statements of sql/0010 (see rebuild.h). */
#include "rebuild.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

bool tide_rebuild_builder_id(const char *id, char *out, size_t n)
{
	int len = snprintf(out, n, "%s" TIDE_REBUILD_TAG, id);
	return len > 0 && (size_t)len < n;
}

void tide_rebuild_suffix(int version, const char *current, char *out, size_t n)
{
	snprintf(out, n, "__v%d", version);
	for (int k = 2; current && strcmp(out, current) == 0; k++)
		snprintf(out, n, "__v%d_%d", version, k);
}

int tide_rebuild_check(struct tide_pg *pg, const char *id, tide_pg_reply_cb cb, void *arg)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_rebuild_check",
	        "SELECT version, target_suffix FROM tide_processors WHERE processor_id = $1", 1};
	const char *v[1] = {id};
	return tide_pg_exec(pg, &stmt, v, cb, arg);
}

int tide_rebuild_switch(struct tide_pg *pg, const char *id, const char *builder,
                        const char *partition, int version, const char *suffix, bool keep,
                        tide_pg_reply_cb cb, void *arg)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_rebuild_switch",
	        "SELECT old_version, old_suffix, targets"
	        " FROM tide_rebuild_switch($1, $2, $3, $4::int, $5, $6::boolean)",
	        6};
	char v4[16];
	snprintf(v4, sizeof(v4), "%d", version);
	const char *v[6] = {id, builder, partition, v4, suffix, keep ? "true" : "false"};
	return tide_pg_exec(pg, &stmt, v, cb, arg);
}

void tide_progress_update(struct tide_progress *p, uint64_t now_ns)
{
	if (p->total < p->done)
		p->total = p->done; /* the log grew meanwhile */
	double s = (double)(now_ns - p->started_ns) / 1e9;
	p->rate = s > 0 ? (double)p->done / s : 0;
	p->eta_s = p->rate > 0 ? (double)(p->total - p->done) / p->rate : -1;
}

/* 1234567 → "1,234,567". */
static void thousands(int64_t v, char *out, size_t n)
{
	char digits[24];
	int len = snprintf(digits, sizeof(digits), "%" PRId64, v < 0 ? -v : v);
	size_t o = 0;
	if (v < 0 && o + 1 < n)
		out[o++] = '-';
	for (int i = 0; i < len && o + 1 < n; i++) {
		out[o++] = digits[i];
		if ((len - i - 1) % 3 == 0 && i < len - 1 && o + 1 < n)
			out[o++] = ',';
	}
	out[o] = '\0';
}

void tide_progress_format(const struct tide_progress *p, char *out, size_t n)
{
	char done[32], total[32], rate[32], eta[32];
	thousands(p->done, done, sizeof(done));
	thousands(p->total, total, sizeof(total));
	thousands((int64_t)(p->rate + 0.5), rate, sizeof(rate));
	if (p->eta_s < 0)
		snprintf(eta, sizeof(eta), "time left unknown");
	else if (p->eta_s < 100)
		snprintf(eta, sizeof(eta), "%.0f s left", p->eta_s);
	else
		snprintf(eta, sizeof(eta), "%.0f min left", p->eta_s / 60);
	int pct = p->total > 0 ? (int)(100 * p->done / p->total) : 100;
	snprintf(out, n, "%s / %s events (%d%%), %s events/s, %s", done, total, pct, rate, eta);
}

static void on_reported(const struct tide_pg_reply *reply, void *arg)
{
	(void)arg;
	if (reply->status && reply->status != TIDE_ECLOSED && reply->status != TIDE_ECONN)
		tide_log("warn", "rebuild.report_failed", "error", reply->err, (char *)NULL);
}

void tide_rebuild_report(struct tide_pg *pg, const char *builder, const char *of,
                         const struct tide_progress *p)
{
	static const struct tide_pg_stmt stmt = {
	        "tide_rebuild_report",
	        "UPDATE tide_processors SET rebuild_of = $2, rebuild_done = $3::bigint,"
	        " rebuild_total = $4::bigint, rebuild_rate = $5::float8,"
	        " rebuild_started_at = coalesce(rebuild_started_at, now())"
	        " WHERE processor_id = $1",
	        5};
	if (!pg || !tide_pg_ready(pg))
		return;
	char done[24], total[24], rate[32];
	snprintf(done, sizeof(done), "%" PRId64, p->done);
	snprintf(total, sizeof(total), "%" PRId64, p->total);
	snprintf(rate, sizeof(rate), "%.1f", p->rate);
	const char *v[5] = {builder, of, done, total, rate};
	if (tide_pg_exec(pg, &stmt, v, on_reported, NULL) != 0)
		tide_log("warn", "rebuild.report_failed", "processor", builder, (char *)NULL);
}
