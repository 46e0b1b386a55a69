/* cli_docs.h — `tide doc` and `tide docs`: documents as JSON lines (cli_docs.c). */
#ifndef TIDE_CLI_DOCS_H
#define TIDE_CLI_DOCS_H

#include "cli_common.h"

/* One of the options of `tide docs` ("where", "limit", "after") with its value, checked;
 * 0 or the usage exit code (the message printed). */
int tide_cli_docs_option(struct cli *cli, const char *name, const char *value);

/* The positional arguments (COLLECTION [ID]) and the options together, checked before
 * anything connects; 0 or the usage exit code. */
int tide_cli_docs_args(struct cli *cli, char **pos);

void tide_cli_run_doc(struct cli *cli);
void tide_cli_run_docs(struct cli *cli);

#endif
