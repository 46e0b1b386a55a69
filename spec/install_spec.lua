-- `cmake --install` of the build under test, into a temporary prefix and under DESTDIR: what
-- goes where, and that each kind of user finds it there — a C program built with pkg-config,
-- a LuaJIT host's `require "tide"` with no path but the install's, the installed `tide`,
-- man and systemd.
local S = require "spec.support"
local D = require "spec.daemon"
local q = S.q

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- A value of the build's CMakeCache.txt.
local function cache(key)
  local text = slurp(S.build .. "/CMakeCache.txt") or ""
  return text:match("\n" .. key:gsub("%p", "%%%0") .. ":[^=\n]*=([^\n]*)")
end

local function lines(text)
  local out = {}
  for l in text:gmatch("[^\n]+") do out[#out + 1] = l end
  table.sort(out)
  return out
end

local function has(cmd) return S.sh("command -v " .. cmd).code == 0 end

-- cmake --install into prefix (with env before it); the paths its manifest lists.
local function install(env, prefix)
  local r = S.sh(env .. " cmake --install " .. q(S.build) .. (prefix and (" --prefix " .. q(prefix)) or ""))
  assert(r.code == 0, "cmake --install failed: " .. r.out .. r.err)
  return lines(assert(slurp(S.build .. "/install_manifest.txt")))
end

describe("cmake --install", function()
  local why = S.missing()
  if why then
    it("needs the build and PostgreSQL", function() pending(why) end)
    return
  end

  local version = assert(cache("CMAKE_PROJECT_VERSION"), "no version in CMakeCache.txt")
  local major = version:match("^(%d+)")
  local configured = cache("CMAKE_INSTALL_PREFIX")
  local libdir = cache("CMAKE_INSTALL_LIBDIR")
  local sanitized = cache("TIDE_SANITIZE") == "ON"
  -- A sanitizer build's libtide needs the sanitizer runtime in the program that loads it:
  -- the host is then built by the same compiler with the same flags (its leaks count too).
  -- The installed tide carries its own; `luajit` is spec/sanitize/bin's, which preloads it
  -- for the installed core.so. Nothing else differs.
  local cc = sanitized and (cache("CMAKE_C_COMPILER") .. " -fsanitize=address,undefined -fno-sanitize-recover=all") or "cc"

  local prefix, destdir, manifest, dmanifest, luadir, cdir
  setup(function()
    -- Resolved: the installed tide finds its runtime from its own (resolved) path.
    local dir = S.tmpname(".prefix")
    prefix = S.sh("mkdir -p " .. q(dir) .. " && cd " .. q(dir) .. " && pwd -P").out:gsub("\n$", "")
    destdir = S.mkdtemp()
    manifest = install("", prefix)
    dmanifest = install("DESTDIR=" .. q(destdir))
    for _, f in ipairs(manifest) do
      luadir = luadir or f:match("^" .. prefix:gsub("%p", "%%%0") .. "/(.*)/tide/init%.lua$")
      cdir = cdir or f:match("^" .. prefix:gsub("%p", "%%%0") .. "/(.*)/tide/core%.so$")
    end
  end)
  teardown(function()
    os.execute("rm -rf " .. q(prefix) .. " " .. q(destdir))
  end)

  local url
  after_each(function()
    D.kill_all()
    if url then S.drop_db(url) end
    url = nil
  end)

  it("puts every file under the prefix, where C, LuaJIT, man and systemd look", function()
    local want = {
      "bin/tide", "include/tide.h",
      libdir .. "/libtide.a", libdir .. "/libtide.so", libdir .. "/libtide.so." .. major,
      libdir .. "/libtide.so." .. version, libdir .. "/pkgconfig/tide.pc",
      "share/man/man1/tide.1", "lib/systemd/system/tide.service", "share/doc/tide/REFERENCE.md",
    }
    assert.truthy(luadir, "no tide/init.lua installed")
    assert.truthy(cdir, "no tide/core.so installed")
    for f in S.sh("ls lua/tide/*.lua").out:gmatch("[^\n]+") do
      want[#want + 1] = luadir .. "/tide/" .. f:match("[^/]+$")
    end
    want[#want + 1] = cdir .. "/tide/core.so"
    for i, f in ipairs(want) do want[i] = prefix .. "/" .. f end
    table.sort(want)
    -- The manifest is everything the install wrote: nothing outside the prefix.
    assert.are.same(want, manifest)
    assert.are.same(want, lines(S.sh("find " .. q(prefix) .. " -type f -o -type l").out))

    -- The shared library's chain: libtide.so → libtide.so.N → libtide.so.VERSION (soname N).
    local lib = prefix .. "/" .. libdir
    assert.are.equal("libtide.so." .. major, S.sh("readlink " .. q(lib .. "/libtide.so")).out:gsub("\n$", ""))
    assert.are.equal("libtide.so." .. version, S.sh("readlink " .. q(lib .. "/libtide.so." .. major)).out:gsub("\n$", ""))
    local soname = S.sh("readelf -d " .. q(lib .. "/libtide.so." .. version)).out:match("Library soname: %[([^%]]+)%]")
    assert.are.equal("libtide.so." .. major, soname)
    assert.are.equal(0, S.sh("test -x " .. q(prefix .. "/bin/tide")).code)
  end)

  it("honours DESTDIR: the same files under DESTDIR, naming the prefix they will live in", function()
    local want, found = {}, {}
    for i, f in ipairs(manifest) do want[i] = configured .. f:sub(#prefix + 1) end
    assert.are.same(want, dmanifest)
    for i, f in ipairs(want) do found[i] = destdir .. f end
    assert.are.same(found, lines(S.sh("find " .. q(destdir) .. " -type f -o -type l").out))
    local pc = slurp(destdir .. configured .. "/" .. libdir .. "/pkgconfig/tide.pc")
    assert.truthy(pc:find("\nprefix=" .. configured .. "\n", 1, true), pc)
    assert.falsy(pc:find(destdir, 1, true), pc)
    local unit = slurp(destdir .. configured .. "/lib/systemd/system/tide.service")
    assert.truthy(unit:find("\nExecStart=" .. configured .. "/bin/tide run ", 1, true), unit)
    assert.falsy(unit:find(destdir, 1, true), unit)
  end)

  it("puts the Lua module where LuaJIT's own search finds it", function()
    -- LuaJIT's default package.path and cpath (no LUA_PATH), each absolute entry moved under
    -- DESTDIR and the relative ones ("./?.lua") dropped: what `require "tide"` finds after a
    -- plain `cmake --install build`, without writing to the configured prefix.
    local luajit_prefix = S.sh("pkg-config --variable=prefix luajit").out:gsub("\n$", "")
    if configured ~= "/usr/local" and configured ~= luajit_prefix then
      pending("configured for " .. configured .. ", which LuaJIT does not search (LUA_PATH must name it)")
      return
    end
    local r = S.sh("env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_1 -u LUA_CPATH_5_1 DESTDIR=" .. q(destdir) .. [[ luajit -e '
      local root = os.getenv("DESTDIR")
      local function under(path)
        local out = {}
        for t in path:gmatch("[^;]+") do
          if t:sub(1, 1) == "/" then out[#out + 1] = root .. t end
        end
        return table.concat(out, ";")
      end
      package.path, package.cpath = under(package.path), under(package.cpath)
      local tide = require "tide"
      assert(type(tide.connect) == "function" and type(tide.projection) == "function")
      print(package.searchpath("tide", package.path))
      print(package.searchpath("tide.core", package.cpath))']])
    assert.are.equal(0, r.code, r.err)
    assert.are.equal(destdir .. configured .. "/" .. luadir .. "/tide/init.lua\n" ..
      destdir .. configured .. "/" .. cdir .. "/tide/core.so\n", r.out)
  end)

  it("builds a C program with pkg-config --cflags --libs tide, which appends and reads", function()
    url = S.fresh_db()
    local pc = "PKG_CONFIG_PATH=" .. q(prefix .. "/" .. libdir .. "/pkgconfig") .. " pkg-config"
    assert.are.equal(prefix .. "\n", S.sh(pc .. " --variable=prefix tide").out)
    local exe = S.tmpname(".embed")
    local r = S.sh(cc .. " -Wall -Wextra -Werror -o " .. q(exe) .. " spec/install/embed.c $(" .. pc .. " --cflags --libs tide)")
    assert.are.equal(0, r.code, r.err)
    local ld = "LD_LIBRARY_PATH=" .. q(prefix .. "/" .. libdir)
    local run = ld .. " " .. q(exe)
    local libs = S.sh(ld .. " ldd " .. q(exe)).out
    assert.truthy(libs:find(prefix .. "/" .. libdir .. "/libtide.so." .. major, 1, true), libs)

    r = S.sh(run .. " " .. q(url) .. " embedded-1")
    assert.are.equal(0, r.code, r.out .. r.err)
    assert.are.equal('conflict\nappended: version 1\nconflict: expected -2, found 1\n' ..
      'read embedded-1 1 Embedded {"from": "C"}\n', r.out)
    assert.are.equal("Embedded|{\"from\": \"C\"}", S.psql(url, "SELECT message_type || '|' || message_data FROM emt_messages WHERE stream_id = 'embedded-1'"))

    -- A server that is not there: a failure with libpq's reason, and never the password.
    r = S.sh(run .. " 'postgresql://app:sekret@/nowhere?host=/nonexistent' embedded-1")
    assert.are.equal(1, r.code)
    assert.truthy(r.out:find("^conflict\nopen failed: connection: connection to server on socket \"/nonexistent/"), r.out)
    assert.falsy(r.out:find("sekret", 1, true), r.out)

    -- libtide.a: the same program with the library inside it. (`pkg-config --static` would
    -- also ask for libpq's own static dependencies — libpgcommon.a, Kerberos, LDAP — which
    -- Debian's libpq-dev does not ship: the dependencies stay shared here.)
    local static = S.sh(pc .. " --static --libs tide").out
    for _, l in ipairs({ "-ltide", "-luv", "-lpq", "-lcjson", "-lluajit-5.1" }) do
      assert.truthy((" " .. static .. " "):find("%s" .. l:gsub("%p", "%%%0") .. "%s"), l .. " in " .. static)
    end
    local exe_a = S.tmpname(".embed")
    r = S.sh(cc .. " -Wall -Wextra -Werror -o " .. q(exe_a) .. " spec/install/embed.c $(" .. pc ..
      " --cflags tide) $(" .. pc .. " --libs-only-L tide) -l:libtide.a $(pkg-config --libs libuv libpq libcjson luajit)")
    assert.are.equal(0, r.code, r.err)
    assert.falsy(S.sh("ldd " .. q(exe_a)).out:find("libtide", 1, true))
    r = S.sh(q(exe_a) .. " " .. q(url) .. " embedded-2")
    assert.are.equal(0, r.code, r.out .. r.err)
    assert.truthy(r.out:find("read embedded-2 1 Embedded", 1, true), r.out)
    os.remove(exe)
    os.remove(exe_a)
  end)

  it("lets LuaJIT require the installed module, with no path but the prefix's, and use it", function()
    url = S.fresh_db()
    S.psql(url, "SELECT 1") -- the database is there
    -- No ";;": LuaJIT's default directories (and this source tree's lua/) stay out of reach.
    local env = "TIDE_DATABASE_URL=" .. q(url) ..
      " LUA_PATH=" .. q(prefix .. "/" .. luadir .. "/?.lua;" .. prefix .. "/" .. luadir .. "/?/init.lua") ..
      " LUA_CPATH=" .. q(prefix .. "/" .. cdir .. "/?.so")
    local r = S.sh("env " .. env .. [[ luajit -e '
      local tide = require "tide"
      print(debug.getinfo(tide.connect, "S").source)
      print(debug.getinfo(tide.projection, "S").source)
      print(package.searchpath("tide.core", package.cpath))
      local store = assert(tide.connect(os.getenv("TIDE_DATABASE_URL")))
      local res = assert(store:append("lua-1", { { type = "FromLua", data = { n = 1 } } }, { expected = "no_stream" }))
      local _, err = store:append("lua-1", { { type = "FromLua", data = { n = 2 } } }, { expected = "no_stream" })
      local events = assert(store:read("lua-1"))
      print(res.next_expected_version, err.kind, #events, events[1].type, events[1].data.n)
      store:close()']])
    assert.are.equal(0, r.code, r.err)
    local p = prefix .. "/"
    assert.are.equal("@" .. p .. luadir .. "/tide/init.lua\n@" .. p .. luadir .. "/tide/model.lua\n" ..
      p .. cdir .. "/tide/core.so\n1\tconflict\t1\tFromLua\t1\n", r.out)
    assert.are.equal("1", S.psql(url, "SELECT count(*) FROM emt_messages WHERE stream_id = 'lua-1'"))
  end)

  it("runs the installed tide: --help, migrate, and tide test with its own runtime", function()
    local tide = q(prefix .. "/bin/tide")
    local r = S.sh(tide .. " --help")
    assert.are.equal(0, r.code)
    assert.truthy(r.out:find("usage: tide COMMAND", 1, true), r.out)

    url = S.fresh_db(true)
    r = S.sh(tide .. " migrate --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    assert.truthy(r.out:find("^applied %d+ migrations; the schema is current"), r.out)
    assert.are.equal("0", S.psql(url, "SELECT count(*) FROM emt_messages"))
    r = S.sh(tide .. " append cli-1 FromCli '{\"k\":1}' --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    assert.are.equal('{"next_expected_version":1,"global_positions":[1]}\n', r.out)

    -- tide test puts the runtime installed beside the binary on busted's path, not this
    -- source tree's (its fallback).
    local dir = S.mkdtemp()
    S.write(dir .. "/where_spec.lua", [[
describe("tide test", function()
  it("uses the installed runtime", function()
    local found = package.searchpath("tide.testing", package.path)
    assert.truthy(found:find(os.getenv("WANT"), 1, true) == 1, found)
  end)
end)
]])
    r = S.sh("env -u TIDE_LUA_DIR WANT=" .. q(prefix .. "/") .. " " .. tide .. " test " .. q(dir))
    os.execute("rm -rf " .. q(dir))
    assert.are.equal(0, r.code, r.out .. r.err)
    assert.truthy(r.out:find("1 success / 0 failures", 1, true), r.out)
  end)

  it("installs a man page that renders cleanly and names every command", function()
    if not has("groff") then
      pending("groff is not installed (scripts/setup installs groff-base)")
      return
    end
    local page = prefix .. "/share/man/man1/tide.1"
    local r = S.sh("groff -man -Tutf8 -ww -z " .. q(page))
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("", r.err)
    local text = S.sh("groff -man -Tascii -ww -P-cbou " .. q(page)).out
    local help = S.sh(q(prefix .. "/bin/tide") .. " --help").out
    local n = 0
    for line in help:match("commands:\n(.-)\n\n"):gmatch("[^\n]+") do
      local cmd = assert(line:match("^  (%S+)"), line)
      n = n + 1
      assert.truthy(text:find("\n       " .. cmd:gsub("%p", "%%%0") .. "[ \n]"), "tide(1) does not describe " .. cmd)
    end
    assert.truthy(n >= 15, help)
    for _, section in ipairs({ "SYNOPSIS", "ENVIRONMENT", "FILES", "EXIT STATUS", "SEE ALSO" }) do
      assert.truthy(text:find("\n" .. section .. "\n", 1, true), section)
    end
    assert.truthy(text:find("TIDE_DATABASE_URL", 1, true))
  end)

  it("installs a systemd unit that starts the installed tide, reloads on SIGHUP, stops on SIGTERM", function()
    local unit = prefix .. "/lib/systemd/system/tide.service"
    local text = slurp(unit)
    for _, l in ipairs({ "ExecStart=" .. prefix .. "/bin/tide run --config /etc/tide/tide.conf",
                         "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM", "Restart=on-failure",
                         "DynamicUser=yes", "ProtectSystem=strict" }) do
      assert.truthy(text:find("\n" .. l .. "\n", 1, true), l)
    end
    if not has("systemd-analyze") then
      pending("systemd-analyze is not installed: the unit's syntax was not verified")
      return
    end
    -- verify also checks that ExecStart's binary is executable and that man:tide(1) opens.
    local r = S.sh("MANPATH=" .. q(prefix .. "/share/man") .. " systemd-analyze verify " .. q(unit))
    assert.are.equal(0, r.code, r.out .. r.err)
    assert.are.equal("", r.err)
  end)

  it("runs as the unit says: ExecStart on a fresh database, ExecReload, and a clean stop on SIGTERM", function()
    local unit = slurp(prefix .. "/lib/systemd/system/tide.service")
    local dir = S.mkdtemp()
    local procs = dir .. "/procs"
    os.execute("mkdir -p " .. q(procs))
    S.write(procs .. "/seen.lua", D.seen_script("unit"))
    -- /etc/tide/tide.conf, here; its directories absolute, as the service's must be.
    S.write(dir .. "/tide.conf", string.format("return { app = \"unit\", directories = { %q } }\n", procs))
    local start = assert(unit:match("\nExecStart=([^\n]+)")):gsub("/etc/tide/tide%.conf", dir .. "/tide.conf")
    local reload = assert(unit:match("\nExecReload=([^\n]+)"))
    url = S.fresh_db(true) -- the daemon migrates it
    -- Started as systemd would (no shell between it and its pid); TIDE_DATABASE_URL as
    -- /etc/tide/tide.env would give it.
    local log, rc, pidfile = dir .. "/tide.log", dir .. "/rc", dir .. "/pid"
    S.write(dir .. "/start.sh", string.format([[
env -u DATABASE_URL TIDE_DATABASE_URL=%s %s >%s 2>&1 &
echo $! >%s
wait $!
echo $? >%s
]], q(url), start, q(log), q(pidfile), q(rc)))
    S.sh("sh " .. q(dir .. "/start.sh") .. " >/dev/null 2>&1 &")
    local pid = S.wait_for(function() return (slurp(pidfile) or ""):match("^%d+\n") end, 10, "the pid"):match("%d+")
    D.track(pid)
    S.wait_for(function() return D.count(url, "seen") end, 15, "the migration and the processor's table")
    for i = 1, 5 do
      local r = S.sh(q(prefix .. "/bin/tide") .. " append unit-" .. i .. " T '{}' --database " .. q(url))
      assert.are.equal(0, r.code, r.err)
    end
    D.caught_up(url, "unit/seen", 30)
    assert.are.equal(5, D.scalar(url, "SELECT count(*) FROM seen WHERE tag = 'unit'"))

    assert.are.equal(0, S.sh((reload:gsub("%$MAINPID", pid))).code)
    S.wait_for(function() return D.read(log):find("event=daemon.reload signal=SIGHUP", 1, true) end, 10, "the reload")

    os.execute("kill -TERM " .. pid) -- KillSignal
    S.wait_for(function() return (slurp(rc) or ""):find("\n") end, 30, "the daemon to stop (TimeoutStopSec)")
    assert.are.equal("0\n", slurp(rc), D.read(log))
    assert.truthy(D.read(log):find("event=daemon.stopped", 1, true), D.read(log))
    os.execute("rm -rf " .. q(dir))
  end)
end)
