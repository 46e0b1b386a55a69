/* cli_rebuild.h — `tide rebuild PROCESSOR`: a projection built again beside itself, then
 * switched to (cli_rebuild.c). */
#ifndef TIDE_CLI_REBUILD_H
#define TIDE_CLI_REBUILD_H

int tide_cli_rebuild_main(int argc, char **argv);

#endif
