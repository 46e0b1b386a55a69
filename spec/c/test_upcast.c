/* test_upcast.c — upcasters among the scripts (engine/upcast.c), without a database: which
 * files of a directory are upcasters, their signature, a broken one or a gap in the chain
 * named, and a read's messages upcast in a VM (what `tide read --upcasters` and the HTTP API
 * print): changed ones re-encoded with their new version, the others left as they were. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "upcast.h"

static char dir[64];

static void write_file(const char *name, const char *text)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	CHECK(f);
	fputs(text, f);
	fclose(f);
}

static void make_dir(void)
{
	snprintf(dir, sizeof(dir), "/tmp/tide-upcast-%d", (int)getpid());
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -p %s", dir, dir);
	CHECK(system(cmd) == 0);
	write_file("a_up.lua", "return tide.upcaster { type = 'A', from = 1, to = 2,\n"
	                       "  upcast = function(d) return { n = d.n + 1 } end }\n");
	write_file("b_up.lua", "return tide.upcasters { tide.upcaster { type = 'A', from = 2, "
	                       "to = 3,\n"
	                       "  upcast = function(d, m) if d.n < 0 then error('negative') end\n"
	                       "    m.up = true; return { n = d.n * 10 }, m end } }\n");
	write_file("proj.lua", "return tide.projection { handle = function() end }\n");
	write_file("helpers.lua", "return { twice = function(x) return 2 * x end }\n");
	write_file("a_up_spec.lua", "this is busted's, never run");
}

static void clean(void)
{
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
}

static struct tide_upcasters find(void)
{
	const char *dirs[1] = {dir};
	struct tide_vm_opts opts = {0};
	struct tide_upcasters u;
	CHECK(tide_upcasters_find(dirs, 1, &opts, &u) == 0);
	return u;
}

static void finds(void)
{
	make_dir();
	struct tide_upcasters u = find();
	CHECK(!u.error);
	CHECK_EQ_I64(u.count, 2);
	char want[600];
	snprintf(want, sizeof(want), "%s/a_up.lua\n%s/b_up.lua", dir, dir);
	CHECK(strcmp(u.paths, want) == 0);
	uint64_t sig = u.signature;
	tide_upcasters_free(&u);
	u = find();
	CHECK(u.signature == sig); /* nothing changed */
	tide_upcasters_free(&u);

	/* A new content is a new signature; a gap names the files. */
	write_file("b_up.lua", "return tide.upcaster { type = 'A', from = 3, to = 4,\n"
	                       "  upcast = function(d) return d end }\n");
	u = find();
	CHECK(u.signature != sig);
	CHECK(u.error && strstr(u.error, "no step from version 2"));
	CHECK(strstr(u.error, "a_up.lua") && strstr(u.error, "b_up.lua"));
	tide_upcasters_free(&u);

	/* A file that means to be one and does not load. */
	write_file("b_up.lua", "return tide.upcaster { type = 'A', from = 2, to = 3,\n");
	u = find();
	CHECK(u.error && strstr(u.error, "an upcaster does not load") &&
	      strstr(u.error, "b_up.lua"));
	tide_upcasters_free(&u);
	clean();
	printf("ok finds\n");
}

static void upcasts_messages(void)
{
	make_dir();
	struct tide_upcasters u = find();
	CHECK(!u.error);
	struct tide_vm_opts opts = {0};
	struct tide_vm *vm;
	char err[2048];
	CHECK(tide_vm_open(&opts, &vm, err, sizeof(err)) == 0);
	CHECK(tide_upcasters_load(vm, u.paths, err, sizeof(err)) == 0);
	struct tide_message in[3] = {
	        {.stream_id = "s-1",
	         .stream_position = 1,
	         .global_position = 1,
	         .type = "A",
	         .data = "{\"n\":1}",
	         .metadata = "{}",
	         .message_id = "m1",
	         .created = "t",
	         .schema_version = "1"},
	        {.stream_id = "s-1",
	         .stream_position = 2,
	         .global_position = 2,
	         .type = "B",
	         .data = "{\"n\":1}",
	         .metadata = "{}",
	         .message_id = "m2",
	         .created = "t",
	         .schema_version = "1"},
	        {.stream_id = "s-1",
	         .stream_position = 3,
	         .global_position = 3,
	         .type = "A",
	         .data = "{\"n\":7}",
	         .metadata = "{}",
	         .message_id = "m3",
	         .created = "t",
	         .schema_version = "9"},
	};
	struct tide_upcast_result r;
	CHECK(tide_upcast_messages(vm, in, 3, &r, err, sizeof(err)) == 0);
	CHECK(strcmp(r.messages[0].data, "{\"n\":20}") == 0);
	CHECK(strcmp(r.messages[0].metadata, "{\"up\":true}") == 0);
	CHECK(strcmp(r.messages[0].schema_version, "3") == 0);
	CHECK(r.messages[1].data == in[1].data); /* no upcaster for B */
	CHECK(r.messages[2].data == in[2].data); /* newer than the chain */
	CHECK(strcmp(r.messages[2].schema_version, "9") == 0);
	tide_upcast_result_free(&r);

	/* An upcaster that raises: the read fails with its error. */
	in[0].data = "{\"n\":-5}";
	CHECK(tide_upcast_messages(vm, in, 1, &r, err, sizeof(err)) == TIDE_ESCRIPT);
	CHECK(strstr(err, "b_up.lua:2: negative"));
	tide_upcast_result_free(&r);

	/* A file that is gone is an error naming it. */
	tide_vm_close(vm);
	CHECK(tide_vm_open(&opts, &vm, err, sizeof(err)) == 0);
	CHECK(tide_upcasters_load(vm, "/nowhere/x.lua", err, sizeof(err)) == TIDE_ESCRIPT);
	CHECK(strstr(err, "/nowhere/x.lua"));
	tide_vm_close(vm);
	tide_upcasters_free(&u);
	clean();
	printf("ok upcasts_messages\n");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s finds|upcasts_messages\n", argv[0]);
		return 2;
	}
	if (strcmp(argv[1], "finds") == 0)
		finds();
	else if (strcmp(argv[1], "upcasts_messages") == 0)
		upcasts_messages();
	else
		return 2;
	return 0;
}
