/* cli_init.h — `tide init DIR`: a runnable skeleton of scripts, specs and settings. */
#ifndef TIDE_CLI_INIT_H
#define TIDE_CLI_INIT_H

/* argv[0] is "init"; returns the exit code. */
int tide_cli_init_main(int argc, char **argv);

#endif
