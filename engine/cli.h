/* cli.h — the `tide` command line. */
#ifndef TIDE_CLI_H
#define TIDE_CLI_H

/* Runs one tide command; returns the process exit code. */
int tide_cli_main(int argc, char **argv);

#endif
