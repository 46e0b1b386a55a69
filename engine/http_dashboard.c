/* http_dashboard.c — the dashboard: GET / serves the page (dashboard/index.html, embedded in
 * the binary at build time), GET /live the Server-Sent Events it draws from. The page holds
 * no data, so it is public; /live wants the read scope. */
#include <string.h>

#include "http.h"

extern const struct {
	const char *name;
	const char *content;
} tide_dashboard_files[];
extern const size_t tide_dashboard_files_count;

static void add_header(h2o_req_t *req, const char *name, const char *value)
{
	h2o_add_header_by_str(&req->pool, &req->res.headers, name, strlen(name), 1, NULL, value,
	                      strlen(value));
}

void tide_http_dashboard(struct tide_http_call *c)
{
	const char *page = NULL;
	for (size_t i = 0; i < tide_dashboard_files_count; i++)
		if (strcmp(tide_dashboard_files[i].name, "index.html") == 0)
			page = tide_dashboard_files[i].content;
	if (!page) {
		tide_http_fail(c, 404, "not_found", "this build has no dashboard page");
		return;
	}
	if (c->req) {
		/* The page runs its own inline script and style, talks to this server only, and
		 * is framed by no one. */
		add_header(c->req, "content-security-policy",
		           "default-src 'none'; script-src 'unsafe-inline'; "
		           "style-src 'unsafe-inline'; img-src data:; connect-src 'self'; "
		           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
		add_header(c->req, "x-content-type-options", "nosniff");
		add_header(c->req, "cache-control", "no-cache");
		add_header(c->req, "referrer-policy", "no-referrer");
	}
	tide_http_reply(c, 200, "text/html; charset=utf-8", page, strlen(page));
}
