/* cli_import.h — `tide import FILE|-`: bulk appends from newline-delimited JSON. */
#ifndef TIDE_CLI_IMPORT_H
#define TIDE_CLI_IMPORT_H

/* argv[0] is "import"; returns the exit code. */
int tide_cli_import_main(int argc, char **argv);

#endif
