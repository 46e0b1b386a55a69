-- A bug is not a rejection: only tide.reject refuses a command (exit 4, the message as given);
-- any other error of a decider, or a decide that returns something other than a list of
-- events, is a script error (exit 1, file:line, the stack) — through the CLI, the Lua host
-- module and tide.testing alike. And the JSON tide prints: compact, keys in a fixed order.
local S = require "spec.support"
local q = S.q

-- The decider under test. Its lines are found by content (line_of), not by number.
local LIBRARY = [[
local tide = require "tide"
return tide.decider {
  initial = function() return { lent = false } end,
  evolve = function(s, e)
    if e.type == "Broken" then return s.missing.field end
    if e.type == "RejectedInEvolve" then tide.reject("not here") end
    return { lent = e.type == "Lent" }
  end,
  decide = function(cmd, s)
    if cmd.type == "Borrow" and cmd.data.careless then return raise("the roof") end
    if cmd.type == "One" then return { type = "Lent", data = {} } end
    if cmd.type == "NoType" then return { { data = {} } } end
    if cmd.type == "TextData" then return { { type = "Lent", data = "text" } } end
    if cmd.type == "Text" then return "Lent" end
    if cmd.type == "Old" then error({ message = "the old way" }) end
    if cmd.type == "Nothing" then return nil end
    if s.lent then tide.reject("book is already lent", { book = cmd.data.book, by = "ada" }) end
    local data = {}
    local keys = cmd.data.reversed and { "zeta", "mid", "book", "alpha" } or { "alpha", "book", "mid", "zeta" }
    local values = { alpha = "a, b: c", book = cmd.data.book, mid = { y = 2, b = { 3, 4 } }, zeta = 1 }
    for _, k in ipairs(keys) do data[k] = values[k] end
    return { { type = "Lent", data = data } }
  end,
}
]]

local function line_of(text, needle)
  local n = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if line:find(needle, 1, true) then return n end
  end
  error("no line with " .. needle)
end

local BUG_LINE = line_of(LIBRARY, 'raise("the roof")')
local DECIDE_LINE = line_of(LIBRARY, "decide = function")
local EVOLVE_BUG_LINE = line_of(LIBRARY, "s.missing.field")

local function lines(text)
  local out = {}
  for l in text:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

-- Whether JSON text has whitespace outside its strings.
local function loose(text)
  local in_string, i = false, 1
  while i <= #text do
    local c = text:sub(i, i)
    if in_string then
      if c == "\\" then i = i + 1 elseif c == '"' then in_string = false end
    elseif c == '"' then
      in_string = true
    elseif c:match("%s") then
      return true
    end
    i = i + 1
  end
  return false
end

describe("script errors and rejections", function()
  local why = S.missing()
  if why then
    it("need the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local dir, library, url
  setup(function()
    dir = S.mkdtemp()
    library = dir .. "/library.lua"
    S.write(library, LIBRARY)
  end)
  teardown(function() os.execute("rm -rf " .. q(dir)) end)
  before_each(function() url = S.fresh_db() end)
  after_each(function()
    if url then S.drop_db(url) end
    url = nil
  end)

  local function tide(args) return S.tide(args .. " --database " .. q(url)) end
  local function handle(stream, cmd) return tide("handle " .. q(library) .. " " .. stream .. " " .. q(cmd)) end
  local function count(stream)
    return tonumber(S.psql(url, "SELECT count(*) FROM emt_messages WHERE stream_id = '" .. stream .. "'"))
  end

  describe("through the CLI", function()
    it("a bug in decide exits 1, names the command, file:line and the stack, and writes nothing", function()
      local r = handle("book-1", '{"type":"Borrow","data":{"book":"b-1","careless":true}}')
      assert.are.equal(1, r.code, r.err)
      assert.are.equal("", r.out)
      local l = lines(r.err)
      assert.truthy(l[1]:find("^tide handle: decide failed for command Borrow on stream book%-1: "), r.err)
      assert.truthy(l[1]:find("library.lua:" .. BUG_LINE .. ": undefined global 'raise'", 1, true), r.err)
      assert.are.equal("stack traceback:", l[2], r.err)
      assert.truthy(r.err:find("/library.lua:" .. BUG_LINE .. ": in function", 1, true), r.err)
      assert.falsy(r.err:find("tide runtime", 1, true), r.err)
      assert.are.equal(0, count("book-1"))
    end)

    it("tide.reject exits 4 with exactly its message, details on stdout, and writes nothing", function()
      assert.are.equal(0, handle("book-2", '{"type":"Borrow","data":{"book":"b-2"}}').code)
      local r = handle("book-2", '{"type":"Borrow","data":{"book":"b-2"}}')
      assert.are.equal(4, r.code, r.err)
      assert.are.equal("tide handle: book is already lent\n", r.err)
      assert.are.equal('{"error":{"kind":"rejected","message":"book is already lent","details":{"book":"b-2","by":"ada"}}}\n', r.out)
      assert.are.equal(1, count("book-2"))
    end)

    it("a decide that returns one event, not a list, exits 1 naming the script", function()
      local r = handle("book-3", '{"type":"One","data":{}}')
      assert.are.equal(1, r.code, r.err)
      assert.are.equal(1, #lines(r.err), r.err)
      assert.truthy(r.err:find("^tide handle: decide failed for command One on stream book%-3: "), r.err)
      assert.truthy(r.err:find("library.lua:" .. DECIDE_LINE .. ": decide returned one event, not a list of events", 1, true), r.err)
      assert.are.equal(0, count("book-3"))
    end)

    it("events without a type, data that is not a table, a string: exit 1, nothing written", function()
      for cmd, says in pairs({ NoType = "returned event 1 without a type",
                               TextData = "returned event 1 (Lent) whose data is a string, not a table",
                               Text = "must return a list of events (or nil), got a string" }) do
        local r = handle("book-4", '{"type":"' .. cmd .. '","data":{}}')
        assert.are.equal(1, r.code, cmd .. ": " .. r.err)
        assert.truthy(r.err:find("library.lua:" .. DECIDE_LINE .. ": decide " .. says, 1, true), r.err)
      end
      assert.are.equal(0, count("book-4"))
    end)

    it("error({ message = ... }) is a bug too, with a hint; nil is no events", function()
      local r = handle("book-5", '{"type":"Old","data":{}}')
      assert.are.equal(1, r.code, r.err)
      assert.truthy(r.err:find("the script raised a table value, not a message (to reject the command, call tide.reject", 1, true), r.err)
      r = handle("book-5", '{"type":"Nothing","data":{}}')
      assert.are.equal(0, r.code, r.err)
      assert.are.equal('{"events":[],"next_expected_version":0,"global_positions":[],"attempts":1,"locked":false}\n', r.out)
      assert.are.equal(0, count("book-5"))
    end)

    it("a bug in evolve names the event; tide.reject in evolve is a bug", function()
      assert.are.equal(0, tide("append book-6 Broken '{}'").code)
      local r = handle("book-6", '{"type":"Borrow","data":{"book":"b-6"}}')
      assert.are.equal(1, r.code, r.err)
      assert.truthy(r.err:find("^tide handle: evolve failed on event 1 %(Broken%) of stream book%-6: "), r.err)
      assert.truthy(r.err:find("library.lua:" .. EVOLVE_BUG_LINE .. ":", 1, true), r.err)
      r = tide("aggregate " .. q(library) .. " book-6")
      assert.are.equal(1, r.code, r.err)
      assert.truthy(r.err:find("^tide aggregate: evolve failed on event 1 %(Broken%)"), r.err)
      assert.are.equal(0, tide("append book-7 RejectedInEvolve '{}'").code)
      r = handle("book-7", '{"type":"Borrow","data":{"book":"b-7"}}')
      assert.are.equal(1, r.code, r.err)
      assert.truthy(r.err:find("tide.reject is for decide; it was called with: not here", 1, true), r.err)
      assert.are.equal(1, count("book-7"))
    end)
  end)

  describe("through the Lua host module", function()
    local tide_mod = require "tide"
    local store, decider
    before_each(function()
      store = assert(tide_mod.connect(url))
      decider = dofile(library)
    end)
    after_each(function() store:close() end)

    it("says script for a bug and a malformed result, rejected for tide.reject", function()
      local r, err = store:handle(decider, "book-1", { type = "Borrow", data = { book = "b-1", careless = true } })
      assert.is_nil(r)
      assert.are.equal("script", err.kind)
      assert.are.same({ "Borrow", "book-1" }, { err.command, err.stream })
      assert.truthy(err.message:find("decide failed for command Borrow on stream book-1: ", 1, true), err.message)
      assert.truthy(err.message:find("library.lua:" .. BUG_LINE .. ":", 1, true), err.message)
      assert.truthy(err.traceback:find("library.lua:" .. BUG_LINE .. ":", 1, true), err.traceback)

      r, err = store:handle(decider, "book-1", { type = "One", data = {} })
      assert.is_nil(r)
      assert.are.equal("script", err.kind)
      assert.truthy(err.message:find("decide returned one event, not a list of events", 1, true), err.message)

      r, err = store:handle(decider, "book-1", { type = "NoType", data = {} })
      assert.are.equal("script", err.kind)
      assert.are.equal(0, count("book-1"))

      assert(store:handle(decider, "book-1", { type = "Borrow", data = { book = "b-1" } }))
      r, err = store:handle(decider, "book-1", { type = "Borrow", data = { book = "b-1" } })
      assert.is_nil(r)
      assert.are.same({ "rejected", "book is already lent", { book = "b-1", by = "ada" } },
        { err.kind, err.message, err.details })
      assert.are.equal("book is already lent", tostring(err))
      assert.are.equal(1, count("book-1"))
    end)

    it("tells a rejection from any other error value", function()
      local ok, e = pcall(tide_mod.reject, "no", { n = 1 })
      assert.is_false(ok)
      assert.is_true(tide_mod.is_rejection(e))
      assert.are.same({ "no", { n = 1 } }, { e.message, e.details })
      assert.is_false(tide_mod.is_rejection({ message = "no" }))
      assert.is_false(tide_mod.is_rejection("no"))
      assert.are.equal("tide.rejection", getmetatable(e))   -- hidden: cannot be forged or changed
      assert.has_error(function() tide_mod.reject(42) end)
      assert.has_error(function() tide_mod.reject("x", "not a table") end)
    end)
  end)

  describe("JSON output", function()
    it("prints handle's and aggregate's results compact, keys in one order whatever the table's", function()
      local a = handle("order-1", '{"type":"Borrow","data":{"book":"b-1"}}')
      local b = handle("order-2", '{"type":"Borrow","data":{"book":"b-1","reversed":true}}')
      assert.are.equal(0, a.code, a.err)
      assert.are.equal(0, b.code, b.err)
      local events = '{"events":[{"type":"Lent","data":{"alpha":"a, b: c","book":"b-1","mid":{"b":[3,4],"y":2},"zeta":1}}],'
      local pos_a = tonumber(S.psql(url, "SELECT global_position FROM emt_messages WHERE stream_id = 'order-1'"))
      local pos_b = tonumber(S.psql(url, "SELECT global_position FROM emt_messages WHERE stream_id = 'order-2'"))
      assert.are.equal(events .. '"next_expected_version":1,"global_positions":[' .. pos_a .. '],"attempts":1,"locked":false}\n', a.out)
      assert.are.equal(events .. '"next_expected_version":1,"global_positions":[' .. pos_b .. '],"attempts":1,"locked":false}\n', b.out)
      local r = tide("aggregate " .. q(library) .. " order-2")
      assert.are.equal('{"state":{"lent":true},"version":1}\n', r.out)
    end)

    it("prints read and read-all lines with no space outside strings, data unchanged", function()
      assert.are.equal(0, handle("order-3", '{"type":"Borrow","data":{"book":"b 3, or: not"}}').code)
      assert.are.equal(0, tide("append order-3 Noted " .. q('{"list": [1, 2.5, -3e-7, 9007199254740993], "s": "x, y: z", "nested": {"k": {"a": null, "b": true}}}')
        .. " --metadata " .. q('{"by": "ada, lovelace"}')).code)
      for _, cmd in ipairs({ "read order-3", "read-all" }) do
        local out = tide(cmd).out
        local l = lines(out)
        assert.are.equal(2, #l, out)
        for _, line in ipairs(l) do assert.is_false(loose(line), line) end
        local first, second = S.json(l[1]), S.json(l[2])
        assert.are.equal("b 3, or: not", first.data.book)
        assert.are.equal("a, b: c", first.data.alpha)
        assert.are.same({ "x, y: z", "ada, lovelace" }, { second.data.s, second.metadata.by })
        assert.truthy(l[2]:find('"list":[1,2.5,-3e-7,9007199254740993]', 1, true)
          or l[2]:find('"list":[1,2.5,-0.0000003,9007199254740993]', 1, true), l[2])
        assert.truthy(l[1]:find('^{"stream_id":"order%-3","stream_position":1,"global_position":%d+,"type":"Lent","data":{'), l[1])
      end
    end)

    it("prints PostgreSQL's errors, detail and hint included, on one line", function()
      local raw = S.fresh_db(true)
      local r = S.tide("append s-1 T '{}' --database " .. q(raw))
      S.drop_db(raw)
      assert.are.equal(1, r.code)
      assert.are.equal(1, #lines(r.err), r.err)
      assert.truthy(r.err:find("^tide append: .*is the database migrated"), r.err)
    end)
  end)

  describe("through tide.testing", function()
    -- A spec of the library run by busted in a process of its own; its JSON report says which
    -- tests succeeded, failed (a failed expectation) or errored (a bug in the script).
    local function run_busted(body)
      local spec = dir .. "/library_spec.lua"
      S.write(spec, 'package.path = "' .. S.root .. '/lua/?.lua;' .. S.root .. '/lua/?/init.lua;" .. package.path\n'
        .. 'local testing = require "tide.testing"\n'
        .. 'local given = testing.decider(dofile(' .. string.format("%q", library) .. '))\n'
        .. 'describe("library", function()\n' .. body .. '\nend)\n')
      local r = S.sh("busted --lua=luajit -o json " .. q(spec))
      local report = S.json(r.out:match("{.*}") or error("no report: " .. r.out .. r.err))
      local by = {}
      for _, status in ipairs({ "successes", "failures", "errors" }) do
        for _, t in ipairs(report[status]) do by[t.element.name] = { status = status, message = t.message } end
      end
      return by
    end

    it("passes a rejection, fails a wrong expectation, and reports a bug as an error, not a rejection", function()
      local by = run_busted([[
  it("rejects", function()
    given({ { type = "Lent" } }).when({ type = "Borrow", data = { book = "b" } })
      .then_rejects("already lent", { book = "b", by = "ada" })
  end)
  it("bug", function()
    given({}).when({ type = "Borrow", data = { careless = true } }).then_rejects("roof")
  end)
  it("one event", function()
    given({}).when({ type = "One", data = {} }).then_events({ { type = "Lent", data = {} } })
  end)
  it("wrong message", function()
    given({ { type = "Lent" } }).when({ type = "Borrow", data = { book = "b" } }).then_rejects("is not here")
  end)
  it("no rejection", function()
    given({}).when({ type = "Borrow", data = { book = "b" } }).then_rejects("already lent")
  end)
  it("wrong details", function()
    given({ { type = "Lent" } }).when({ type = "Borrow", data = { book = "b" } }).then_rejects("lent", { book = "c" })
  end)
]])
      assert.are.equal("successes", by.rejects.status, by.rejects.message)
      assert.are.equal("errors", by.bug.status)
      assert.truthy(by.bug.message:find("decide failed for command Borrow: ", 1, true), by.bug.message)
      assert.truthy(by.bug.message:find("library.lua:" .. BUG_LINE .. ": attempt to call global 'raise'", 1, true), by.bug.message)
      assert.truthy(by.bug.message:find("a bug in the script, not a rejection", 1, true), by.bug.message)
      assert.are.equal("errors", by["one event"].status)
      assert.truthy(by["one event"].message:find("decide returned one event, not a list of events", 1, true), by["one event"].message)
      for _, name in ipairs({ "wrong message", "no rejection", "wrong details" }) do
        assert.are.equal("failures", by[name].status, name .. ": " .. tostring(by[name].message))
      end
      assert.truthy(by["wrong message"].message:find("the rejection 'book is already lent' does not match 'is not here'", 1, true))
    end)

    it("raises the same outcomes under pcall, outside busted's runner", function()
      local given = require("tide.testing").decider(dofile(library))
      given({ { type = "Lent" } }).when({ type = "Borrow", data = { book = "b" } }).then_rejects("already lent")
      local ok, err = pcall(function()
        given({}).when({ type = "Borrow", data = { careless = true } }).then_rejects("roof")
      end)
      assert.is_false(ok)
      assert.truthy(tostring(err):find("undefined global", 1, true) or tostring(err):find("attempt to call global 'raise'", 1, true), tostring(err))
    end)
  end)
end)
