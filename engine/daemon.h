/* daemon.h — `tide run`: the processors of a set of directories, kept running, woken by
 * LISTEN/NOTIFY (polling as the fallback) and reloaded when their files change. */
#ifndef TIDE_DAEMON_H
#define TIDE_DAEMON_H

/* `tide run` from the command line; returns the exit code. */
int tide_daemon_main(int argc, char **argv);

#endif
