/* main.c — the `tide` executable: everything happens in cli.c. */
#include "cli.h"

int main(int argc, char **argv)
{
	return tide_cli_main(argc, argv);
}
