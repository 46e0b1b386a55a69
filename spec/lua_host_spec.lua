-- `require "tide"` in a LuaJIT host: the store API, JSON round trips (property tests),
-- deciders with retry under a real concurrent writer, and a separate luajit process.
local S = require "spec.support"
local q = S.q
local tide = require "tide"

local function random_value(rng, depth)
  local kind = rng(depth > 4 and 6 or 9)
  if kind == 1 then return rng(2) == 1 end
  if kind == 2 then return tide.null end
  if kind == 3 then
    local n = rng(2) == 1 and rng(2 ^ 31) or math.floor(rng() * 2 ^ 53)
    return rng(2) == 1 and -n or n
  end
  if kind == 4 then return (rng() - 0.5) * 10 ^ rng(-5, 12) end
  if kind <= 6 then
    local pieces = { "plain", "with \"quotes\"", "back\\slash", "tab\there", "line\nbreak",
      "ünïcödé ✓", "\1\31 control", "日本語", "" }
    return pieces[rng(#pieces)] .. (rng(2) == 1 and tostring(rng(1000)) or "")
  end
  if kind == 7 or kind == 8 then
    local t = {}
    for i = 1, rng(0, 4) do t[i] = random_value(rng, depth + 1) end
    return #t == 0 and tide.array() or t
  end
  local t = {}
  for _ = 1, rng(0, 4) do t["k" .. rng(100)] = random_value(rng, depth + 1) end
  return next(t) == nil and tide.object() or t
end

-- Equal as JSON values: an empty array is not an empty object.
local function same(a, b)
  if a == tide.null or b == tide.null then return a == b end
  if type(a) ~= type(b) then return false end
  if type(a) == "number" then return a == b or math.abs(a - b) <= math.abs(a) * 1e-15 end
  if type(a) ~= "table" then return a == b end
  if (getmetatable(a) == getmetatable(tide.array())) ~= (getmetatable(b) == getmetatable(tide.array())) and (next(a) == nil) then
    return false
  end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

describe("JSON through tide.json", function()
  if not S.build then
    it("needs the built module", function() pending("TIDE_BUILD_DIR is not set (run scripts/test)") end)
    return
  end

  it("round-trips 1,000 generated values", function()
    local seed = os.time()
    math.randomseed(seed)
    local rng = math.random
    for i = 1, 1000 do
      local v = { value = random_value(rng, 0) }
      local text = assert(tide.json.encode(v))
      local back = assert(tide.json.decode(text))
      assert(same(v, back), "seed " .. seed .. ", value " .. i .. ": " .. text)
      assert(same(back, assert(tide.json.decode(assert(tide.json.encode(back))))), "seed " .. seed)
    end
  end)

  it("keeps the kind of empty arrays and objects", function()
    local text = tide.json.encode({ a = tide.array(), b = tide.object(), c = { tide.array() } })
    assert.truthy(text:find('"a":[]', 1, true) and text:find('"b":{}', 1, true) and text:find('"c":[[]]', 1, true), text)
    local back = tide.json.decode('{"a":[],"b":{}}')
    assert.are.equal('[]', tide.json.encode(back.a))
    assert.are.equal('{}', tide.json.encode(back.b))
  end)

  it("decodes JSON as RFC 8259 has it: numbers of any length, escapes, nothing looser", function()
    assert.are.equal(1 / 3, tide.json.decode("0." .. ("3"):rep(80)))
    assert.are.equal(1e300, tide.json.decode("1" .. ("0"):rep(300)))
    assert.are.equal(0.1, tide.json.decode("1e-1"))
    assert.are.equal("a\0b", tide.json.decode('"a\\u0000b"'))
    assert.are.equal("\240\159\152\128", tide.json.decode('"\\ud83d\\ude00"'))
    for _, bad in ipairs({ "01", "1.", "+1", ".5", "[1,]", '{"a":1,}', '"\\ud83d"', "nul", "[1 2]", "" }) do
      local v, err = tide.json.decode(bad)
      assert.is_nil(v, bad)
      assert.are.equal("invalid", err.kind)
    end
  end)

  it("keeps integers exact up to 2^53", function()
    for _, n in ipairs({ 2 ^ 53, -(2 ^ 53), 2 ^ 53 - 1, 123456789012345 }) do
      local back = tide.json.decode(tide.json.encode({ n = n }))
      assert.are.equal(n, back.n)
    end
    assert.are.equal('{"n":9007199254740992}', tide.json.encode({ n = 2 ^ 53 }))
  end)

  local bad = {
    { "NaN", { a = { b = { 1, 0 / 0 } } }, "a.b[2]: NaN" },
    { "infinity", { x = math.huge }, "x: infinity" },
    { "invalid UTF-8", { s = "\255" }, "s: string is not valid UTF-8" },
    { "a function", { f = print }, "f: a function cannot be encoded" },
    { "a sparse list", { l = { 1, nil, 3 } }, "l: a list with holes" },
    { "a mixed table", { m = { 1, a = 2 } }, "m: a table with both list items and named keys" },
  }
  for _, b in ipairs(bad) do
    it("refuses " .. b[1] .. " with a message naming where", function()
      local v, err = tide.json.encode(b[2])
      assert.is_nil(v)
      assert.truthy(tostring(err):find(b[3], 1, true), tostring(err))
    end)
  end

  it("refuses nesting deeper than 128", function()
    local deep = {}
    local t = deep
    for _ = 1, 200 do t.x = {} t = t.x end
    local v, err = tide.json.encode(deep)
    assert.is_nil(v)
    assert.truthy(tostring(err):find("nested too deeply", 1, true))
    assert.is_nil(tide.json.decode("{bad"))
  end)
end)

describe("the store from a LuaJIT host", function()
  local why = S.missing()
  if why then
    it("needs the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local url, store
  before_each(function()
    url = S.fresh_db()
    store = assert(tide.connect(url))
  end)
  after_each(function()
    if store then store:close() end
    if url then S.drop_db(url) end
    url, store = nil, nil
  end)

  it("reports a connection failure as nil, err without the password", function()
    local s, err = tide.connect("postgresql://who:H1ddenPw@127.0.0.1:1/x")
    assert.is_nil(s)
    assert.are.equal("connection", err.kind)
    assert.falsy(tostring(err):find("H1ddenPw", 1, true))
    assert.has_error(function() tide.connect(42) end)
  end)

  it("appends, reads and follows the global log", function()
    local r = assert(store:append("cart-1", { { type = "Opened", data = { who = "ada" } },
      { type = "Added", data = { n = 2 }, metadata = { correlation_id = "c1" } } }, { expected = "no_stream" }))
    assert.are.equal(2, r.next_expected_version)
    assert.are.equal(2, #r.global_positions)
    assert(store:append("cart-2", { { type = "Opened", data = {} } }))
    local events = assert(store:read("cart-1"))
    assert.are.same({ "Opened", "ada", 1 }, { events[1].type, events[1].data.who, events[1].stream_position })
    assert.are.equal("c1", events[2].metadata.correlation_id)
    assert.are.equal(1, #assert(store:read("cart-1", { backward = true, max = 1 })))
    local all, cursor = assert(store:read_all(nil, 2))
    assert.are.equal(2, #all)
    local rest, cursor2 = assert(store:read_all(cursor, 10))
    assert.are.equal(1, #rest)
    assert.are.equal("cart-2", rest[1].stream_id)
    assert.are.equal(0, #assert(store:read_all(cursor2, 10)))
  end)

  it("works in the partition given to connect, apart from the default one", function()
    local tenant = assert(tide.connect(url, { partition = "tenant-b" }))
    finally(function() tenant:close() end)
    assert.are.equal("tenant-b", tenant.partition)
    assert(tenant:append("cart-1", { { type = "Opened", data = { t = "b" } } }, { expected = "no_stream" }))
    assert(store:append("cart-1", { { type = "Opened", data = { t = "d" } } }, { expected = "no_stream" }))
    local d = tide.decider { initial = function() return "" end,
      evolve = function(s, e) return s .. e.data.t end, decide = function() end }
    assert.are.same({ "b", 1 }, { tenant:aggregate(d, "cart-1") })
    assert.are.same({ "d", 1 }, { store:aggregate(d, "cart-1") })
    local all = assert(tenant:read_all(nil, 10))
    assert.are.same({ 1, "b" }, { #all, all[1].data.t })
    assert.are.equal("tenant-b", S.psql(url, "SELECT partition FROM emt_messages WHERE message_data->>'t' = 'b'"))
    assert.has_error(function() tide.connect(url, { partition = "" }) end)
  end)

  it("reports conflicts as err.kind == 'conflict' with what was expected and found", function()
    assert(store:append("s-1", { { type = "A", data = {} } }))
    local r, err = store:append("s-1", { { type = "B", data = {} } }, { expected = 0 })
    assert.is_nil(r)
    assert.are.same({ "conflict", 0, 1 }, { err.kind, err.expected, err.actual })
    assert.truthy(tostring(err):find("expected 0, found version 1", 1, true))
    r, err = store:append("s-2", { { type = "B", data = {} } }, { expected = "stream_exists" })
    assert.are.same({ "conflict", "no_stream" }, { err.kind, err.actual })
    assert.are.equal(1, #assert(store:read("s-1")))
  end)

  it("raises on misuse, returns nil, err for data JSON cannot hold, and writes nothing", function()
    assert.has_error(function() store:append("s-1", {}) end)
    assert.has_error(function() store:append("s-1", { { type = "A", data = { f = print } } }) end)
    assert.has_error(function() store:append("s-1", { { type = "A", data = "text" } }) end)
    assert.has_error(function() store:append("s-1", { { type = "A" } }, { expected = "sometimes" }) end)
    assert.has_error(function() store:read_all("nonsense") end)
    local r, err = store:append("s-1", { { type = "A", data = { x = 0 / 0 } } })
    assert.is_nil(r)
    assert.are.same({ "invalid", "event 1 data.x: NaN cannot be encoded as JSON" }, { err.kind, err.message })
    assert.are.equal(0, #assert(store:read("s-1")))
  end)

  it("round-trips generated data through the database", function()
    math.randomseed(os.time())
    for i = 1, 50 do
      local data = { v = random_value(math.random, 1), i = i }
      assert(store:append("json-1", { { type = "J", data = data } }))
      local back = assert(store:read("json-1", { from = i, to = i }))[1].data
      assert(same(data, back), tide.json.encode(data) .. " vs " .. tide.json.encode(back))
    end
  end)

  it("reads every field as stored: exact numbers, escapes, kinds of empty values, created in UTC", function()
    local data = { big = 1.5e300, tiny = 5e-324, pi = math.pi, neg = -(2 ^ 53), third = 1 / 3,
      s = "\195\169\n\"\\/\t", u = "\240\159\152\128", list = { 1, tide.null, true, false },
      none = tide.array(), empty = tide.object() }
    assert(store:append("exact-1", { { type = "T", data = data, metadata = { k = "v" } } }))
    S.psql(url, "UPDATE emt_messages SET created = '0044-03-15 12:00:00.000001+00 BC' WHERE stream_id = 'exact-1'")
    assert(store:append("exact-1", { { type = "U", data = {} } }))
    local events = assert(store:read("exact-1"))
    local d = events[1].data
    for _, k in ipairs({ "big", "tiny", "pi", "neg", "third", "s", "u" }) do
      assert.are.equal(data[k], d[k], k)
    end
    assert.are.same({ 1, tide.null, true, false }, { d.list[1], d.list[2], d.list[3], d.list[4] })
    assert.are.equal('{"empty":{},"none":[]}', tide.json.encode({ none = d.none, empty = d.empty }))
    assert.are.same({ "T", "v", "exact-1", 1 }, { events[1].type, events[1].metadata.k, events[1].stream_id,
      events[1].stream_position })
    assert.are.equal("0044-03-15T12:00:00.000001Z", events[1].created)
    local rows = S.psql(url, "SELECT string_agg(message_id || ' ' || global_position || ' ' || to_char(created AT TIME ZONE "
      .. "'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), ',' ORDER BY stream_position) FROM emt_messages WHERE stream_id = 'exact-1'")
    local function fields(list)
      local out = {}
      for i, e in ipairs(list) do out[i] = e.message_id .. " " .. e.global_position .. " " .. e.created end
      return table.concat(out, ",")
    end
    assert.are.equal(rows, fields(events))
    assert.are.equal(rows, fields(assert(store:read_all(nil, 10))))
  end)

  local counter = tide.decider {
    initial = function() return { n = 0 } end,
    evolve = function(s, e) return { n = s.n + e.data.by } end,
    decide = function(cmd, s)
      if s.n + cmd.data.by > 10 then tide.reject("counter would pass 10") end
      return { { type = "Added", data = { by = cmd.data.by } } }
    end,
  }

  it("aggregates an empty stream to initial() and version 0, and rejects with the message", function()
    local state, version = store:aggregate(counter, "nothing-1")
    assert.are.same({ n = 0 }, state)
    assert.are.equal(0, version)
    assert(store:handle(counter, "c-1", { type = "Add", data = { by = 9 } }))
    local r, err = store:handle(counter, "c-1", { type = "Add", data = { by = 2 } })
    assert.is_nil(r)
    assert.are.same({ "rejected", "counter would pass 10" }, { err.kind, err.message })
    state, version = store:aggregate(counter, "c-1")
    assert.are.same({ { n = 9 }, 1 }, { state, version })
  end)

  it("retries after a concurrent writer moved the stream, and without the lock gives up after the limit", function()
    local other = assert(tide.connect(url))
    local sneaks = 0
    local sneaky = tide.decider {
      initial = counter.initial,
      evolve = counter.evolve,
      decide = function(cmd, s)
        if sneaks < cmd.data.sneak then
          -- Another writer appends between tide's read and its append.
          sneaks = sneaks + 1
          assert(other:append("race-1", { { type = "Added", data = { by = 100 } } }))
        end
        return { { type = "Added", data = { by = 1 } } }
      end,
    }
    local r = assert(store:handle(sneaky, "race-1", { type = "Add", data = { by = 1, sneak = 1 } }))
    assert.are.equal(2, r.attempts)
    assert.are.equal(2, r.next_expected_version)
    local events = assert(store:read("race-1"))
    assert.are.same({ 100, 1 }, { events[1].data.by, events[2].data.by })

    -- lock = false: the locked attempt would wait for ever here, since decide's own append
    -- (on another connection) waits for the lock that attempt holds.
    sneaks = 0
    local r2, err = store:handle(sneaky, "race-1", { type = "Add", data = { by = 1, sneak = 99 } },
      { retries = 2, backoff_ms = 1, lock = false })
    assert.is_nil(r2)
    assert.are.equal("conflict", err.kind)
    assert.truthy(err.message:find("after 3 attempts", 1, true), err.message)
    assert.are.equal(3, sneaks)
    other:close()
  end)

  it("works from a separate luajit process", function()
    local code = string.format([[
      package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
      package.cpath = %q .. "/lua/?.so;" .. package.cpath
      local tide = require "tide"
      local store = assert(tide.connect(%q))
      assert(store:append("host-1", { { type = "Hello", data = { from = "luajit" } } }))
      local events = assert(store:read("host-1"))
      io.write(events[1].type, " ", events[1].data.from, " ", events[1].stream_position)
      store:close()
    ]], S.build, url)
    local r = S.sh("luajit -e " .. q(code))
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("Hello luajit 1", r.out)
  end)
end)
