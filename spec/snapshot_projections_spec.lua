-- Snapshot projections (a decider's state per stream, or per id(event), in a table of its
-- own) run by `tide run`, checked row by row against `tide aggregate`; their reset on a
-- version change; their checks at load time and at batch time; and `require "name"` of a
-- script beside the one loaded, which they are written with.
local S = require "spec.support"
local D = require "spec.daemon"
local q = S.q

local why = S.missing()

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("*a")
  f:close()
  return s
end

local CART = read("examples/cart/cart.lua")
local CART_SNAPSHOTS = read("examples/cart/cart_snapshots.lua")

-- The events of cart i, in order: opened, items added and removed, some confirmed.
local function cart_events(i)
  local es = {
    { type = "CartOpened", data = { customer = "c" .. (i % 4) } },
    { type = "ItemAdded", data = { sku = "tea", qty = i % 3 + 1, price = 4.5 } },
  }
  if i % 2 == 0 then es[#es + 1] = { type = "ItemAdded", data = { sku = "mug", qty = 1, price = 12 } } end
  if i % 5 == 0 then es[#es + 1] = { type = "ItemRemoved", data = { sku = "tea" } } end
  if i % 3 == 0 then es[#es + 1] = { type = "ItemAdded", data = { sku = "tea", qty = 2, price = 5.25 } } end
  if i % 4 == 0 then es[#es + 1] = { type = "CartConfirmed", data = {} } end
  return es
end

local tide
-- Appends the events of carts first..last round by round (event 1 of each cart, then event
-- 2, ...), so that batches mix carts; from event `from` of each cart (default 1) to `to`.
local function load_carts(url, first, last, from, to)
  tide = tide or require "tide"
  local sql = {}
  for round = from or 1, to or 10 do
    for i = first, last do
      local e = cart_events(i)[round]
      if e then
        local json = assert(tide.json.encode({ e })):gsub("'", "''")
        sql[#sql + 1] = string.format("SELECT tide_append('cart-%d', 'any', '%s'::jsonb);", i, json)
      end
    end
  end
  S.psql(url, table.concat(sql, "\n"))
end

local function total(state)
  local sum = 0
  for _, item in pairs(state.items) do sum = sum + item.qty * item.price end
  return sum
end

describe("snapshot projections", function()
  if why then
    it("need the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local url, dir
  before_each(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
    S.write(dir .. "/cart.lua", CART)
  end)
  after_each(function()
    D.kill_all()
    if url then S.drop_db(url) end
  end)

  -- Every row of cart_snapshots against `tide aggregate` of its stream (and the log for the
  -- global position); returns the number of rows.
  local function check_rows(carts, extra)
    local rows = S.psql(url, [[SELECT id, partition, state::text, last_stream_id,
      last_stream_position, last_global_position, status, coalesce(customer, ''), total]]
      .. (extra and ", " .. extra or "") .. " FROM cart_snapshots ORDER BY id")
    local n = 0
    for line in rows:gmatch("[^\n]+") do
      n = n + 1
      local f = {}
      for v in (line .. "|"):gmatch("([^|]*)|") do f[#f + 1] = v end
      local id = f[1]
      local agg = S.tide("aggregate " .. q(dir .. "/cart.lua") .. " " .. q(id) .. " --database " .. q(url))
      assert.are.equal(0, agg.code, agg.err)
      local want = S.json(agg.out)
      local state = S.json(f[3])
      assert.are.same(want.state, state, id)
      assert.are.equal("emt:default", f[2], id)
      assert.are.equal(id, f[4], id)
      assert.are.equal(want.version, tonumber(f[5]), id)
      assert.are.equal(D.scalar(url, "SELECT max(global_position) FROM emt_messages WHERE stream_id = '" .. id .. "'"),
        tonumber(f[6]), id)
      assert.are.equal(state.status, f[7], id)
      assert.are.equal(state.customer or "", f[8], id)
      assert.are.equal(total(state), tonumber(f[9]), id)
      if extra then
        local count = 0
        for _ in pairs(state.items) do count = count + 1 end
        assert.are.equal(count, tonumber(f[10]), id)
      end
    end
    assert.are.equal(carts, n)
    return n
  end

  it("keep the decider's state per stream, row by row what tide aggregate folds", function()
    S.write(dir .. "/cart_snapshots.lua", CART_SNAPSHOTS)
    load_carts(url, 1, 20, 1, 3)
    S.psql(url, [[SELECT tide_append('notifications-1', 'any', '[{"type":"Notified","data":{}}]')]])
    local pid = D.start(url, dir, "--batch-size 5")
    D.caught_up(url, "cart_snapshots", 60)
    load_carts(url, 1, 20, 4) -- the rest, onto rows that exist, and carts 21..24 anew
    load_carts(url, 21, 24)
    D.caught_up(url, "cart_snapshots", 60)
    D.stop(pid)
    check_rows(24)
    -- The script's setup ran after tide made the table: its index is there.
    assert.are.equal(1, D.scalar(url, "SELECT count(*) FROM pg_indexes WHERE indexname = 'cart_snapshots_status'"))
    -- Confirmed carts, found by the column.
    assert.are.equal(6, D.scalar(url, "SELECT count(*) FROM cart_snapshots WHERE status = 'confirmed'"))
  end)

  it("are cleared and rebuilt on a version change, with the columns of the new version", function()
    S.write(dir .. "/cart_snapshots.lua", CART_SNAPSHOTS)
    load_carts(url, 1, 8)
    D.start(url, dir, "--batch-size 4")
    D.caught_up(url, "cart_snapshots", 60)
    check_rows(8)
    -- What a reset must throw away: a row gone wrong, and one of no stream at all.
    S.psql(url, [[UPDATE cart_snapshots SET state = '{"bogus": true}', total = -1 WHERE id = 'cart-3';
      INSERT INTO cart_snapshots (id, partition, state) VALUES ('ghost', 'emt:default', '{}')]])
    local v2 = CART_SNAPSHOTS
      :gsub('column_types = { status = "text", customer = "text", total = "numeric" },',
        'column_types = { status = "text", customer = "text", total = "numeric", items = "integer" },\n  version = 2,')
      :gsub("return { status = state.status, customer = state.customer, total = total }",
        "local n = 0 for _ in pairs(state.items) do n = n + 1 end\n"
        .. "    return { status = state.status, customer = state.customer, total = total, items = n }")
    assert.truthy(v2:find("version = 2", 1, true) and v2:find("items = n", 1, true))
    S.save(dir .. "/cart_snapshots.lua", v2)
    S.wait_for(function()
      local ok, n = pcall(D.scalar, url, [[SELECT count(*) FROM cart_snapshots
        WHERE items IS NULL OR id = 'ghost' OR total = -1]])
      return ok and n == 0 and D.scalar(url, "SELECT count(*) FROM cart_snapshots") == 8
    end, 60, "the rebuild")
    check_rows(8, "items")
    assert.are.equal(0, D.scalar(url, "SELECT count(*) FROM cart_snapshots WHERE id = 'ghost'"))
  end)

  it("keyed by id(event) fold every stream's events into one row per key", function()
    S.write(dir .. "/per_customer.lua", [[
local tide = require "tide"
local spend = tide.decider {
  initial = function() return { carts = 0, items = 0 } end,
  evolve = function(s, e)
    if e.type == "CartOpened" then s.carts = s.carts + 1 else s.items = s.items + e.data.qty end
    return s
  end,
  decide = function() return {} end,
}
return tide.projection {
  snapshot = spend, table = "per_customer",
  events = { "CartOpened", "ItemAdded" },
  id = function(e) return e.type == "CartOpened" and e.data.customer or e.stream_id:gsub("^cart%-", "c") end,
  columns = function(s) return { carts = s.carts } end,
  column_types = { carts = "bigint" },
}
]])
    -- Carts of c1 and c2 (their ItemAdded keyed by the cart's own c<number>).
    load_carts(url, 1, 2)
    D.start(url, dir, "--batch-size 3")
    D.caught_up(url, "per_customer", 60)
    local rows = S.psql(url, [[SELECT id, state->>'carts', state->>'items', carts, last_stream_id,
      last_stream_position, last_global_position FROM per_customer ORDER BY id]])
    local last = function(stream, type_)
      return S.psql(url, string.format([[SELECT stream_position || '|' || global_position FROM emt_messages
        WHERE stream_id = '%s' AND message_type = '%s' ORDER BY global_position DESC LIMIT 1]], stream, type_))
    end
    -- c1: cart-1 opened by c1 (1 % 4) and cart-1's items; c2: cart-2's. The last event of
    -- each key is the cart's last ItemAdded.
    local i1, i2 = 0, 0
    for _, e in ipairs(cart_events(1)) do if e.type == "ItemAdded" then i1 = i1 + e.data.qty end end
    for _, e in ipairs(cart_events(2)) do if e.type == "ItemAdded" then i2 = i2 + e.data.qty end end
    assert.are.equal(table.concat({
      "c1|1|" .. i1 .. "|1|cart-1|" .. last("cart-1", "ItemAdded"),
      "c2|1|" .. i2 .. "|1|cart-2|" .. last("cart-2", "ItemAdded"),
    }, "\n"), rows)
  end)

  it("refuse a table of that name made for something else, and leave it as it was", function()
    S.psql(url, "CREATE TABLE cart_snapshots (id text PRIMARY KEY, note text); INSERT INTO cart_snapshots VALUES ('x', 'mine')")
    S.write(dir .. "/cart_snapshots.lua", CART_SNAPSHOTS:gsub("return tide.projection {",
      'return tide.projection {\n  on_error = "stop", max_attempts = 1,'))
    load_carts(url, 1, 2)
    D.start(url, dir)
    local st = S.wait_for(function()
      local s = D.status(url).cart_snapshots
      return s and s.last_error and s
    end, 60, "the failure")
    assert.truthy(st.last_error:find("snapshot table cart_snapshots exists, but its column partition is missing", 1, true), st.last_error)
    assert.truthy(st.last_error:find("name another table", 1, true), st.last_error)
    assert.are.equal("id,note", S.psql(url, [[SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
      WHERE attrelid = 'cart_snapshots'::regclass AND attnum > 0 AND NOT attisdropped]]))
    assert.are.equal("x|mine", S.psql(url, "SELECT * FROM cart_snapshots"))
  end)

  it("fail the batch when columns() returns a column it did not declare, writing nothing", function()
    S.write(dir .. "/cart_snapshots.lua", CART_SNAPSHOTS
      :gsub("customer = state.customer, total = total }", "customer = state.customer, total = total, oops = 1 }")
      :gsub("return tide.projection {", 'return tide.projection {\n  on_error = "stop", max_attempts = 1,'))
    load_carts(url, 1, 3)
    D.start(url, dir)
    local st = S.wait_for(function()
      local s = D.status(url).cart_snapshots
      return s and s.last_error and s
    end, 60, "the failure")
    assert.truthy(st.last_error:find("cart_snapshots.lua:%d+: columns%(state%) returned the column oops, which column_types does not declare %(snapshot cart%-%d%)"), st.last_error)
    -- The batch rolled back whole: the table it made too.
    assert.are.equal(0, D.count(url, "cart_snapshots") or 0)
  end)

  describe("are checked when the script loads", function()
    local function check(body)
      S.write(dir .. "/snap.lua", "local tide = require 'tide'\nlocal cart = require 'cart'\n" .. body)
      return S.tide("check " .. q(dir .. "/snap.lua"))
    end
    local base = 'snapshot = cart, table = "snaps", '
    local cases = {
      { "return tide.projection { snapshot = cart }", "a snapshot projection wants 'table'" },
      { 'return tide.projection { snapshot = cart, table = "Snaps" }', "a lower-case SQL name" },
      { 'return tide.projection { snapshot = cart, table = "a-b" }', "a lower-case SQL name" },
      { 'return tide.projection { snapshot = cart, table = "' .. ("x"):rep(51) .. '" }', "at most 50 bytes" },
      { 'return tide.projection { snapshot = cart, table = "emt_messages" }', "must not start with emt_ or tide_" },
      { 'return tide.projection { snapshot = cart, table = "tide_documents" }', "must not start with emt_ or tide_" },
      { 'return tide.projection { snapshot = {}, table = "snaps" }', "'snapshot' must be a decider" },
      { 'return tide.projection { snapshot = "cart", table = "snaps" }', "'snapshot' must be a decider" },
      { "return tide.projection { " .. base .. "columns = function() end }", "'columns' wants 'column_types'" },
      { "return tide.projection { " .. base .. "column_types = { a = 'text' } }", "'column_types' without 'columns'" },
      { "return tide.projection { " .. base .. "columns = function() end, column_types = { ['a b'] = 'text' } }", "a column name must be a lower-case SQL name" },
      { "return tide.projection { " .. base .. "columns = function() end, column_types = { Total = 'text' } }", "a column name must be a lower-case SQL name" },
      { "return tide.projection { " .. base .. "columns = function() end, column_types = { total = 'money' } }", "column_types.total: the type must be one of bigint, boolean, date, double precision, integer, jsonb, numeric, text, timestamptz; got money" },
      { "return tide.projection { " .. base .. "columns = function() end, column_types = { state = 'text' } }", "'state' is a column every snapshot table has already" },
      { "return tide.projection { " .. base .. "columns = function() end, column_types = {} }", "declares no column" },
      { "return tide.projection { " .. base .. "columns = 1, column_types = { a = 'text' } }", "'columns' must be a function" },
      { "return tide.projection { " .. base .. "id = 'x' }", "'id' must be a function" },
      { "return tide.projection { " .. base .. "evolve = function() end }", "takes no 'evolve'" },
      { "return tide.projection { " .. base .. 'collection = "c" }', "takes no 'collection'" },
    }
    for _, c in ipairs(cases) do
      it("refuses " .. c[1]:sub(26, 90), function()
        local r = check(c[1])
        assert.are.equal(1, r.code, r.out)
        assert.truthy(r.err:find(c[2], 1, true), r.err)
        assert.truthy(r.err:find("/snap.lua: tide.projection: ", 1, true), r.err) -- the file
      end)
    end
    it("accepts a well-formed one", function()
      local r = check("return tide.projection { " .. base .. "columns = function(s) return { status = s.status } end, column_types = { status = 'text', n = 'double precision', at = 'timestamptz' } }")
      assert.are.equal(0, r.code, r.err)
    end)
  end)
end)

describe("require of a script beside the script", function()
  if not S.bin then
    it("needs the tide binary", function() pending("TIDE_BIN is not set (run scripts/test)") end)
    return
  end
  local dir
  before_each(function() dir = S.mkdtemp() end)
  local function check(name, files)
    for n, body in pairs(files) do S.write(dir .. "/" .. n .. ".lua", body) end
    return S.tide("check " .. q(dir .. "/" .. name .. ".lua"))
  end
  local TAIL = "\nreturn tide.projection { handle = function() end }\n"

  it("loads it once per script, in the same sandbox", function()
    local r = check("main", {
      helper = "loads = (rawget(_G, 'loads') or 0) + 1\nreturn { twice = function(x) return 2 * x end }\n",
      main = "local a = require 'helper'\nlocal b = require 'helper'\n"
        .. "assert(a == b and loads == 1 and a.twice(2) == 4, 'not once')" .. TAIL,
    })
    assert.are.equal(0, r.code, r.err)
    r = check("main2", {
      sneaky = "local f = io.open('/etc/hostname')\nreturn {}\n",
      main2 = "require 'sneaky'" .. TAIL,
    })
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find("sneaky.lua:1: undefined global 'io'", 1, true), r.err)
  end)

  it("says which file is missing or broken, and refuses paths", function()
    local r = check("main", { main = "require 'nothere'" .. TAIL })
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find("main.lua:1: require \"nothere\": cannot read " .. dir .. "/nothere.lua", 1, true), r.err)
    r = check("main", { broken = "local x = = 1\n", main = "require 'broken'" .. TAIL })
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find(dir .. "/broken.lua:1:", 1, true), r.err)
    for _, name in ipairs({ "../main", "sub/x", "x.lua", "", "ffi", "io" }) do
      r = check("main", { main = "require " .. string.format("%q", name) .. TAIL })
      assert.are.equal(1, r.code, name)
      assert.truthy(r.err:find("main.lua:1: module '" .. name .. "' is not available to scripts", 1, true), r.err)
    end
    r = check("a", { a = "require 'b'" .. TAIL, b = "require 'a'\nreturn {}\n" })
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find("a require loop", 1, true), r.err)
  end)
end)

describe("testing.projection of a snapshot projection", function()
  it("folds each id's events with the decider, as the daemon does", function()
    package.path = "examples/cart/?.lua;" .. package.path
    _G.tide = _G.tide or require "tide"
    local testing = require "tide.testing"
    local p = testing.projection(dofile("examples/cart/cart_snapshots.lua"))
    local opened = { type = "CartOpened", data = { customer = "ada" } }
    local tea = { type = "ItemAdded", data = { sku = "tea", qty = 2, price = 4.5 } }
    p.given({ opened, tea }, "cart-1")
      .then_document("cart-1", { status = "open", customer = "ada", items = { tea = { qty = 2, price = 4.5 } } })
      .then_no_document("cart-2")
    assert.has_error(function()
      p.given({ opened }, "cart-1").then_document("cart-1", { status = "confirmed", items = {} })
    end)
  end)
end)
