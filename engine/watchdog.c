/* watchdog.c — one thread per process, started on first use, that waits on a condition
 * variable while nothing is armed and otherwise looks at the armed states every
 * TICK_MS: an armed state past its deadline gets its hook. The deadline is thus kept
 * to within a tick, and a script that behaves runs at full interpreter speed. */
#include "watchdog.h"

#include <dlfcn.h>
#include <pthread.h>
#include <time.h>

#define TICK_MS 5

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t armed_cv = PTHREAD_COND_INITIALIZER;
static struct tide_watch *armed; /* a list, under mu */
static bool started;

uint64_t tide_watchdog_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *watch_loop(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	for (;;) {
		while (!armed)
			pthread_cond_wait(&armed_cv, &mu);
		uint64_t now = tide_watchdog_now_ns();
		for (struct tide_watch *w = armed; w; w = w->next) {
			if (!w->hooked && now > w->deadline_ns) {
				lua_sethook(w->L, w->hook, LUA_MASKCOUNT, 1);
				w->hooked = true;
			}
		}
		pthread_mutex_unlock(&mu);
		struct timespec tick = {0, TICK_MS * 1000000L};
		nanosleep(&tick, NULL);
		pthread_mutex_lock(&mu);
	}
	return NULL;
}

/* The thread runs this file's code until the process ends. In a Lua host, that code is the
 * module tide.core (sandboxed VMs run there for inline projections), which LuaJIT unloads
 * at lua_close: the waiting thread would then wake in unmapped memory. Keep the module
 * mapped for good (the tide binary, linked statically, is the program itself). */
static void pin_module(void)
{
	Dl_info info;
	if (dladdr((void *)watch_loop, &info) && info.dli_fname)
		(void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

int tide_watchdog_arm(struct tide_watch *w, lua_State *L, lua_Hook hook, uint64_t deadline_ns)
{
	w->L = L;
	w->hook = hook;
	w->deadline_ns = deadline_ns;
	w->hooked = false;
	pthread_mutex_lock(&mu);
	if (!started) {
		pin_module();
		pthread_t t;
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		started = pthread_create(&t, &attr, watch_loop, NULL) == 0;
		pthread_attr_destroy(&attr);
		if (!started) {
			pthread_mutex_unlock(&mu);
			return -1;
		}
	}
	w->prev = NULL;
	w->next = armed;
	if (armed)
		armed->prev = w;
	armed = w;
	pthread_cond_signal(&armed_cv);
	pthread_mutex_unlock(&mu);
	return 0;
}

void tide_watchdog_disarm(struct tide_watch *w)
{
	pthread_mutex_lock(&mu);
	if (w->prev)
		w->prev->next = w->next;
	else if (armed == w)
		armed = w->next;
	if (w->next)
		w->next->prev = w->prev;
	w->prev = w->next = NULL;
	bool hooked = w->hooked;
	w->hooked = false;
	pthread_mutex_unlock(&mu);
	if (hooked)
		lua_sethook(w->L, NULL, 0, 0);
}
