-- Scripts in the sandbox, through `tide check`, `tide handle` and `tide aggregate`: what a
-- script cannot reach, the memory cap, the CPU guard on interpreted and JIT-able loops
-- (also inside the script's own pcall and coroutines), and errors that name file:line.
local S = require "spec.support"
local q = S.q

local dir
local function script(name, body)
  local path = dir .. "/" .. name .. ".lua"
  S.write(path, body)
  return path
end
local DECIDER_TAIL = "\nreturn tide.decider { initial = function() return {} end, evolve = function(s) return s end, decide = function() return {} end }\n"

describe("the sandbox", function()
  if not S.bin then
    it("needs the tide binary", function() pending("TIDE_BIN is not set (run scripts/test)") end)
    return
  end
  setup(function()
    dir = S.mkdtemp()
  end)

  local escapes = {
    { "io", "local f = io.open('%s', 'w') f:write('x') f:close()", "undefined global 'io'" },
    { "os.execute", "os.execute('touch %s')", "execute" },
    { "os.exit", "os.exit(3)", "exit" },
    { "os.getenv", "local x = os.getenv('HOME')", "getenv" },
    { "os.remove", "os.remove('%s')", "remove" },
    { "require ffi", "local ffi = require 'ffi'", "not available to scripts" },
    { "require jit", "local jit = require 'jit'", "not available to scripts" },
    { "require debug", "local d = require 'debug'", "not available to scripts" },
    { "require os", "local o = require 'os'", "not available to scripts" },
    { "debug", "debug.sethook()", "undefined global 'debug'" },
    { "load", "load('return 1')", "undefined global 'load'" },
    { "loadstring", "loadstring('return 1')", "undefined global 'loadstring'" },
    { "dofile", "dofile('/etc/hostname')", "undefined global 'dofile'" },
    { "loadfile", "loadfile('/etc/hostname')", "undefined global 'loadfile'" },
    { "string.dump", "string.dump(function() end)", "dump" },
    { "(\"\").dump", "local f = ('').dump f(function() end)", "nil value" },
    { "getfenv", "getfenv(1)", "undefined global 'getfenv'" },
    { "setfenv", "setfenv(1, {})", "undefined global 'setfenv'" },
    { "module", "module('x')", "undefined global 'module'" },
    { "newproxy", "newproxy(true)", "undefined global 'newproxy'" },
    { "collectgarbage", "collectgarbage('stop')", "undefined global 'collectgarbage'" },
    { "package", "package.loadlib('x', 'y')", "undefined global 'package'" },
    { "jit", "jit.off()", "undefined global 'jit'" },
    { "the string metatable", "getmetatable('').__index.upper = nil", "index" },
    { "rawget(_G, 'io')", "rawget(_G, 'io').open('%s', 'w')", "nil" },
  }
  for _, e in ipairs(escapes) do
    it("keeps scripts from " .. e[1], function()
      local victim = dir .. "/victim-" .. e[1]:gsub("%W", "_")
      local path = script("esc", e[2]:format(victim, victim) .. DECIDER_TAIL)
      local r = S.tide("check " .. q(path))
      assert.are.equal(1, r.code, r.out)
      assert.truthy(r.err:find(e[3], 1, true), r.err)
      assert.truthy(r.err:find("esc.lua:1:", 1, true), r.err)
      assert.is_nil(io.open(victim), "the escape had an effect")
    end)
  end

  it("hides the string metatable and keeps string methods working", function()
    local path = script("strings", "assert(getmetatable('') == false) assert(('ab'):upper() == 'AB')" .. DECIDER_TAIL)
    local r = S.tide("check " .. q(path))
    assert.are.equal(0, r.code, r.err)
  end)

  it("allows setting globals, and raises on reading undefined ones", function()
    local ok = script("globals", "helper = function() return 1 end assert(helper() == 1)" .. DECIDER_TAIL)
    assert.are.equal(0, S.tide("check " .. q(ok)).code)
    local bad = script("typo", "local x = totl + 1" .. DECIDER_TAIL)
    local r = S.tide("check " .. q(bad))
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find("typo.lua:1: undefined global 'totl'", 1, true), r.err)
  end)

  it("stops a memory bomb and goes on working", function()
    local bombs = {
      "local t = {} for i = 1, 1e9 do t[i] = {i} end",
      "local s = 'x' while true do s = s .. s end",
    }
    for _, b in ipairs(bombs) do
      local path = script("bomb", b .. DECIDER_TAIL)
      local r = S.tide("check " .. q(path) .. " --cpu-ms 20000")
      assert.are.equal(1, r.code)
      assert.truthy(r.err:find("memory", 1, true), r.err)
    end
    local good = script("good", DECIDER_TAIL)
    assert.are.equal(0, S.tide("check " .. q(good)).code)
  end)

  local loops = {
    { "an interpreted while loop", "while true do end" },
    { "a numeric for loop LuaJIT would compile", "local x = 0 for i = 1, 1e15 do x = x + i end" },
    { "a loop inside the script's own pcall", "pcall(function() while true do end end)" },
    { "pcall in a loop around a loop", "while true do pcall(function() while true do end end) end" },
    { "xpcall with a handler", "xpcall(function() while true do end end, function(m) return m end)" },
    { "a loop inside a coroutine", "local co = coroutine.create(function() while true do end end) coroutine.resume(co)" },
    { "a loop inside coroutine.wrap under pcall", "pcall(coroutine.wrap(function() while true do end end))" },
    { "xpcall whose message handler loops too", "xpcall(function() while true do end end, function() while true do end end)" },
    { "a backtracking pattern in string.find", "local s = ('a'):rep(300) s:find('.-.-.-.-.-b')" },
    { "a backtracking pattern in gsub through the string metatable", "local s = ('a'):rep(300) s:gsub('.-.-.-.-.-b', 'x')" },
    { "string.match with nested optional items", "string.match(('a'):rep(40), ('a?'):rep(40) .. ('a'):rep(40))" },
    { "gmatch over a long subject", "for _ in (('a'):rep(2000)):gmatch('a-a-a-a-b') do end" },
    { "a loop in a metamethod of the returned processor",
      "if true then return setmetatable({ kind = 'projection' }, { __index = function() while true do end end }) end" },
  }
  for _, l in ipairs(loops) do
    it("stops " .. l[1], function()
      local path = script("loop", l[2] .. DECIDER_TAIL)
      local r = S.tide("check " .. q(path) .. " --cpu-ms 200")
      assert.are.equal(1, r.code)
      assert.truthy(r.err:find("CPU time limit of 200 ms", 1, true), r.err)
    end)
  end

  it("keeps pcall and xpcall working for ordinary errors", function()
    local path = script("pcalls", [[
      local ok, e = pcall(error, "x", 0) assert(not ok and e == "x")
      local ok2, v = xpcall(function(a) return a + 1 end, function(m) return m end, 41) assert(ok2 and v == 42)
      local co = coroutine.wrap(function(a) local b = coroutine.yield(a + 1) return b * 2 end)
      assert(co(1) == 2 and co(5) == 10)
    ]] .. DECIDER_TAIL)
    local r = S.tide("check " .. q(path))
    assert.are.equal(0, r.code, r.err)
  end)

  it("keeps the runtime working when a script tampers with what tide gives it", function()
    -- A decider that rewires tide.* and the metatables of tide.null and tide.array: the
    -- runtime holds its own references and reads values raw, so none of it runs.
    local path = script("tamper", [[
local tide = require "tide"
local loop = function() while true do end end
local null, array = tide.null, tide.array
local null_mt, array_mt = getmetatable(tide.null), getmetatable(tide.array())
null_mt.__index, null_mt.__tostring, null_mt.__eq = loop, loop, loop
array_mt.__index, array_mt.__newindex, array_mt.__len = loop, loop, loop
local d = tide.decider {
  initial = function() return { n = 0 } end,
  evolve = function(s, e) return { n = s.n + 1 } end,
  decide = function(cmd, s) return { { type = "Tampered", data = { none = null, list = array() } } } end,
}
tide.decider, tide.projection, tide.array, tide.null = loop, loop, loop, loop
return d
]])
    local r = S.tide("check " .. q(path))
    assert.are.equal(0, r.code, r.err)
    local why = S.missing()
    if why then return pending(why) end
    local url = S.fresh_db()
    r = S.tide("handle " .. q(path) .. " t-1 '{\"type\":\"Go\"}' --cpu-ms 500 --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    assert.are.same({ none = nil, list = {} }, { none = nil, list = S.json(r.out).events[1].data.list })
    assert.are.equal('{"list": [], "none": null}', S.psql(url, "SELECT message_data::text FROM emt_messages"))
    S.drop_db(url)
  end)

  it("refuses precompiled bytecode and scripts that return no processor", function()
    local bc = dir .. "/bytecode.lua"
    assert.are.equal(0, S.sh("luajit -b -e 'return 1' " .. q(bc)).code)
    local r = S.tide("check " .. q(bc))
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find("bytecode", 1, true), r.err)
    r = S.tide("check " .. q(script("plain", "return { initial = 1 }")))
    assert.truthy(r.err:find("plain table", 1, true), r.err)
    r = S.tide("check " .. q(script("nothing", "local x = 1")))
    assert.truthy(r.err:find("returned nothing, not a processor", 1, true), r.err)
    r = S.tide("check " .. q(script("syntax", "return tide.decider {")))
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find("syntax.lua:1:", 1, true), r.err)
  end)
end)

describe("deciders through the CLI", function()
  local why = S.missing()
  if why then
    it("needs the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local url
  local counter
  setup(function()
    dir = dir or S.mkdtemp()
  end)
  before_each(function()
    url = S.fresh_db()
    counter = script("counter", [[
local tide = require "tide"
return tide.decider {
  initial = function() return { n = 0 } end,
  evolve = function(s, e)
    if e.data.boom then error("cannot fold " .. e.type) end
    return { n = s.n + e.data.by }
  end,
  decide = function(cmd, s)
    if cmd.type == "Nothing" then return {} end
    if cmd.type == "Spin" then while true do end end
    if s.n + cmd.data.by > 10 then tide.reject("counter would pass 10") end
    return { { type = "Added", data = { by = cmd.data.by } } }
  end,
}
]])
  end)
  after_each(function()
    if url then S.drop_db(url) end
    url = nil
  end)
  local function tide(args) return S.tide(args .. " --database " .. q(url)) end

  it("handles commands and aggregates the stream", function()
    local r = tide("handle " .. q(counter) .. " c-1 '{\"type\":\"Add\",\"data\":{\"by\":3}}'")
    assert.are.equal(0, r.code, r.err)
    local out = S.json(r.out)
    assert.are.equal(1, out.next_expected_version)
    assert.are.equal(1, #out.global_positions)
    assert.are.same({ { type = "Added", data = { by = 3 } } }, out.events)
    assert.are.equal(0, tide("handle " .. q(counter) .. " c-1 '{\"type\":\"Add\",\"data\":{\"by\":4}}'").code)
    r = tide("aggregate " .. q(counter) .. " c-1")
    assert.are.equal(0, r.code, r.err)
    assert.are.same({ state = { n = 7 }, version = 2 }, S.json(r.out))
  end)

  it("rejects with the decider's message, exit 4, writing nothing", function()
    tide("handle " .. q(counter) .. " c-2 '{\"type\":\"Add\",\"data\":{\"by\":9}}'")
    local r = tide("handle " .. q(counter) .. " c-2 '{\"type\":\"Add\",\"data\":{\"by\":5}}'")
    assert.are.equal(4, r.code)
    assert.are.equal("tide handle: counter would pass 10\n", r.err)
    assert.are.equal("1", S.psql(url, "SELECT count(*) FROM emt_messages WHERE stream_id = 'c-2'"))
  end)

  it("appends nothing when decide returns no events", function()
    tide("handle " .. q(counter) .. " c-3 '{\"type\":\"Add\",\"data\":{\"by\":1}}'")
    local r = tide("handle " .. q(counter) .. " c-3 '{\"type\":\"Nothing\",\"data\":{}}'")
    assert.are.equal(0, r.code, r.err)
    assert.are.equal(1, S.json(r.out).next_expected_version)
    assert.are.equal("1", S.psql(url, "SELECT count(*) FROM emt_messages WHERE stream_id = 'c-3'"))
  end)

  it("stops a runaway decide and leaves the stream as it was", function()
    tide("handle " .. q(counter) .. " c-4 '{\"type\":\"Add\",\"data\":{\"by\":1}}'")
    local r = tide("handle " .. q(counter) .. " c-4 '{\"type\":\"Spin\",\"data\":{}}' --cpu-ms 200")
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find("CPU time limit of 200 ms", 1, true), r.err)
    assert.are.equal("1", S.psql(url, "SELECT count(*) FROM emt_messages WHERE stream_id = 'c-4'"))
  end)

  it("names the script file and line of an evolve error", function()
    S.tide("append c-5 Added '{\"boom\":true}' --database " .. q(url))
    local r = tide("aggregate " .. q(counter) .. " c-5")
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find("counter.lua:5: cannot fold Added", 1, true), r.err)
  end)

  it("refuses a projection where a decider is needed, and bad command JSON", function()
    local p = script("proj", "return tide.projection { handle = function() end }")
    local r = tide("handle " .. q(p) .. " c-6 '{\"type\":\"X\"}'")
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find("not a decider", 1, true), r.err)
    r = tide("handle " .. q(counter) .. " c-6 '[1]'")
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find("COMMAND_JSON must be a JSON object", 1, true), r.err)
  end)
end)
