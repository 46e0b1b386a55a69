/* cli_test.h — `tide test`: a directory's busted specs, run with tide's Lua runtime. */
#ifndef TIDE_CLI_TEST_H
#define TIDE_CLI_TEST_H

/* argv[0] is "test"; returns the exit code (busted's, once it runs). */
int tide_cli_test_main(int argc, char **argv);

#endif
