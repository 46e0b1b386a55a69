/* watchdog.h — stops runaway scripts without slowing the ones that behave: a thread that
 * sets a count hook on a Lua state whose deadline has passed. lua_sethook is the one Lua
 * call that may come from outside the running thread (lua.c does it from a signal
 * handler), so the script pays nothing until it overruns. */
#ifndef TIDE_WATCHDOG_H
#define TIDE_WATCHDOG_H

#include <lua.h>
#include <stdbool.h>
#include <stdint.h>

struct tide_watch {
	lua_State *L;
	lua_Hook hook;
	uint64_t deadline_ns; /* CLOCK_MONOTONIC */
	bool hooked;
	struct tide_watch *prev, *next;
};

/* From now until disarm, the watchdog sets hook (count mask) on L once deadline_ns passes.
 * Returns 0, or -1 when the watchdog thread cannot be started. */
int tide_watchdog_arm(struct tide_watch *w, lua_State *L, lua_Hook hook, uint64_t deadline_ns);

/* After this returns the watchdog no longer touches L, and any hook it set is cleared. */
void tide_watchdog_disarm(struct tide_watch *w);

uint64_t tide_watchdog_now_ns(void);

#endif
