/* daemon.h — `tide run`: the processors of a set of directories, kept running, woken by
 * LISTEN/NOTIFY (polling as the fallback) and reloaded when their files change. */
#ifndef TIDE_DAEMON_H
#define TIDE_DAEMON_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct tide_processor;

struct tide_daemon {
	uv_loop_t *loop;
	const char *url;
	char owner[128]; /* this daemon's lease owner id: host:pid:random */
	int batch_size;
	unsigned poll_ms, lease_ms, cpu_ms;
	struct tide_processor *procs;
	bool stopping;
	int running; /* processors not yet stopped */
};

/* Called by a processor once it has released its lease and closed its connection. */
void tide_daemon_processor_stopped(struct tide_daemon *d, struct tide_processor *p);

/* `tide run` from the command line; returns the exit code. */
int tide_daemon_main(int argc, char **argv);

#endif
