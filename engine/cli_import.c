/* cli_import.c — `tide import FILE|-`: its arguments, the input file, a progress bar on
 * stderr when that is a terminal, and the outcome (one JSON line on stdout, or one error
 * line and the exit code). The import itself is import.c. */
#include "cli_import.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_common.h"
#include "import.h"
#include "store.h"

static const char usage[] =
        "usage: tide import FILE|- [--expected any|no_stream] [--partition P] [--database URL]\n"
        "\n"
        "Appends the events of FILE (- for stdin): newline-delimited JSON, one event a line,\n"
        "  {\"stream_id\":\"cart-1\",\"type\":\"ItemAdded\",\"data\":{...},\"metadata\":{...},"
        "\"id\":\"UUID\",\"schema_version\":N}\n"
        "(metadata, id and schema_version optional: N is the shape of data, default 1),\n"
        "into any number of streams, in one transaction: the\n"
        "events of a stream get the positions after its current one, in file order. Every\n"
        "line is checked as `tide append` checks an event; a bad line exits 2 naming it, and\n"
        "nothing is written. The input is streamed: memory stays flat whatever its size.\n"
        "Prints {\"events\":N,\"streams\":M,\"seconds\":S}; shows progress on stderr when it is\n"
        "a terminal. Until it commits, the import holds back consumers (tide run) and other\n"
        "writers of its streams.\n"
        "  --expected E   any (default), or no_stream: every stream of FILE must be new\n"
        "                 (exit 3, nothing written, when one exists)\n"
        "  --partition P  the Emmett partition (tenant) to import into (default emt:default)\n";

struct run {
	struct cli cli;
	struct tide_import *imp;
	uv_timer_t progress;
	bool show; /* stderr is a terminal */
	bool shown;
	uint64_t total; /* the input's size, 0 when unknown (a pipe) */
};

/* 1234567 as "1,234,567". */
static const char *thousands(char *buf, size_t n, uint64_t v)
{
	char digits[24];
	int len = snprintf(digits, sizeof(digits), "%" PRIu64, v);
	size_t o = 0;
	for (int i = 0; i < len && o + 2 < n; i++) {
		if (i > 0 && (len - i) % 3 == 0)
			buf[o++] = ',';
		buf[o++] = digits[i];
	}
	buf[o] = '\0';
	return buf;
}

static void draw(struct run *r)
{
	struct tide_import_stats s;
	tide_import_stats(r->imp, &s);
	char events[32], rate[32], line[200];
	double secs = s.seconds > 0 ? s.seconds : 1e-9;
	thousands(events, sizeof(events), s.events);
	thousands(rate, sizeof(rate), (uint64_t)((double)s.events / secs));
	double mib = (double)s.bytes / (1 << 20);
	if (r->total) {
		double frac = (double)s.bytes / (double)r->total;
		if (frac > 1)
			frac = 1;
		char bar[32];
		int width = 24, full = (int)(frac * width);
		for (int i = 0; i < width; i++)
			bar[i] = i < full ? '#' : '.';
		bar[width] = '\0';
		double left = s.bytes ? (double)(r->total - s.bytes) * secs / (double)s.bytes : 0;
		unsigned eta = (unsigned)(left + 0.5);
		snprintf(line, sizeof(line),
		         "[%s] %3d%%  %s events  %.1f/%.1f MiB  %s events/s  ETA %u:%02u:%02u", bar,
		         (int)(frac * 100), events, mib, (double)r->total / (1 << 20), rate,
		         eta / 3600, eta / 60 % 60, eta % 60);
	} else {
		snprintf(line, sizeof(line), "%s events  %.1f MiB  %s events/s", events, mib, rate);
	}
	fprintf(stderr, "\r%s\033[K", line);
	fflush(stderr);
	r->shown = true;
}

static void on_progress(uv_timer_t *t)
{
	draw(t->data);
}

static void on_imported(int status, const char *err, const struct tide_import_stats *s, void *arg)
{
	struct run *r = arg;
	if (r->show) {
		uv_timer_stop(&r->progress);
		if (status == 0) {
			draw(r); /* the final count stays on the screen */
			fputc('\n', stderr);
		} else if (r->shown) {
			fputs("\r\033[K", stderr);
		}
		uv_close((uv_handle_t *)&r->progress, NULL);
	}
	if (status) {
		tide_cli_fail(&r->cli, status, err);
	} else {
		printf("{\"events\":%" PRIu64 ",\"streams\":%" PRIu64 ",\"seconds\":%.3f}\n",
		       s->events, s->streams, s->seconds);
	}
	tide_import_close(r->imp);
	r->imp = NULL;
}

static int parse_expected(const char *v, bool *no_stream)
{
	if (strcmp(v, "any") == 0)
		*no_stream = false;
	else if (strcmp(v, "no_stream") == 0)
		*no_stream = true;
	else
		return tide_cli_usage("import", "--expected wants any or no_stream, got '%s'", v);
	return 0;
}

static int check_partition(const char *p)
{
	char err[200];
	if (tide_check_partition(p, strlen(p), err, sizeof(err)))
		return tide_cli_usage("import", "--partition wants a name of at most %d bytes: %s",
		                      TIDE_MAX_PARTITION_BYTES, err);
	return 0;
}

int tide_cli_import_main(int argc, char **argv)
{
	static const struct option opts[] = {
	        {"expected", required_argument, NULL, 'e'},
	        {"partition", required_argument, NULL, 'p'},
	        {"database", required_argument, NULL, 'd'},
	        {"help", no_argument, NULL, 'h'},
	        {NULL, 0, NULL, 0},
	};
	const char *url = NULL, *partition = NULL;
	bool no_stream = false;
	opterr = 0;
	optind = 1;
	int o, rc = 0;
	while (!rc && (o = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		switch (o) {
		case 'e': rc = parse_expected(optarg, &no_stream); break;
		case 'p':
			rc = check_partition(optarg) ? EXIT_USAGE : (partition = optarg, 0);
			break;
		case 'd': url = optarg; break;
		case 'h': fputs(usage, stdout); return 0;
		case ':':
			return tide_cli_usage("import", "option '%s' needs a value",
			                      argv[optind - 1]);
		default: return tide_cli_usage("import", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (rc)
		return rc;
	if (argc - optind < 1)
		return tide_cli_usage("import", "missing argument: FILE (or - for stdin)");
	if (argc - optind > 1)
		return tide_cli_usage("import", "unexpected argument '%s'", argv[optind + 1]);
	const char *path = argv[optind];
	url = tide_cli_database_url(url);
	if (!url)
		return tide_cli_usage("import", "no database given: pass --database URL or set "
		                                "TIDE_DATABASE_URL");

	struct run r = {.cli = {.cmd = "import"}};
	bool is_stdin = strcmp(path, "-") == 0;
	int fd = is_stdin ? 0 : open(path, O_RDONLY | O_CLOEXEC);
	char msg[600];
	if (fd < 0) {
		snprintf(msg, sizeof(msg), "cannot open %s: %s", path, strerror(errno));
		tide_cli_fail(&r.cli, TIDE_EINVAL, msg);
		return r.cli.exit_code;
	}
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
		snprintf(msg, sizeof(msg), "cannot read %s: it is a directory", path);
		tide_cli_fail(&r.cli, TIDE_EINVAL, msg);
		close(fd);
		return r.cli.exit_code;
	}
	if (S_ISREG(st.st_mode)) { /* what is left of it: stdin may be a file half read */
		off_t at = lseek(fd, 0, SEEK_CUR);
		r.total = st.st_size > at && at >= 0 ? (uint64_t)(st.st_size - at) : 0;
	}

	uv_loop_init(&r.cli.loop);
	struct tide_import_opts io = {
	        .url = url,
	        .application_name = "tide import", /* what pg_stat_activity and tide status show */
	        .partition = partition,
	        .no_stream = no_stream,
	        .fd = fd};
	if (tide_import_start(&r.cli.loop, &io, on_imported, &r, &r.imp) != 0) {
		fprintf(stderr, "tide import: out of memory\n");
		r.cli.exit_code = 1;
	} else {
		r.show = isatty(2);
		if (r.show) {
			uv_timer_init(&r.cli.loop, &r.progress);
			r.progress.data = &r;
			uv_timer_start(&r.progress, on_progress, 200, 200);
		}
	}
	uv_run(&r.cli.loop, UV_RUN_DEFAULT);
	uv_loop_close(&r.cli.loop);
	if (!is_stdin)
		close(fd);
	if (fflush(stdout) != 0 && r.cli.exit_code == 0) {
		fprintf(stderr, "tide import: cannot write the output: %s\n", strerror(errno));
		return 1;
	}
	return r.cli.exit_code;
}
