/* cli_dlq.h — `tide dlq`: list, show, retry and discard dead letters. */
#ifndef TIDE_CLI_DLQ_H
#define TIDE_CLI_DLQ_H

/* argv[0] is "dlq"; returns the exit code. */
int tide_cli_dlq_main(int argc, char **argv);

#endif
