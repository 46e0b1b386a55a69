-- `tide replay SCRIPT STREAM`: a stream made with `tide handle` folded through the cart's
-- decider and through document projections, as JSON lines (stdout not a terminal) and as
-- the terminal view (under a pseudo-terminal from `script`); a script that fails part-way,
-- and scripts that have no state to fold.
local S = require "spec.support"
local q = S.q

local why = S.missing()

describe("tide replay", function()
  if why then
    it("needs the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local CART = S.root .. "/examples/cart/cart.lua"
  local SUMMARY = S.root .. "/examples/cart/cart_summary.lua"
  local url, dir, positions

  local function handle(stream, command, extra)
    local r = S.tide("handle " .. q(CART) .. " " .. q(stream) .. " " .. q(command) .. " "
      .. (extra or "") .. " --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
  end
  local function replay(args, env)
    return S.tide("replay " .. args .. " --database " .. q(url), env)
  end
  local function script(name, text)
    local path = dir .. "/" .. name .. ".lua"
    S.write(path, text)
    return path
  end

  -- One cart, built once: opened, tea and mug added, tea removed, confirmed.
  setup(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
    handle("cart-1", '{"type":"OpenCart","data":{"customer":"ada"}}')
    handle("cart-1", '{"type":"AddItem","data":{"sku":"tea","qty":2,"price":4.5}}')
    handle("cart-1", '{"type":"AddItem","data":{"sku":"mug","qty":1,"price":12}}')
    handle("cart-1", '{"type":"RemoveItem","data":{"sku":"tea"}}')
    handle("cart-1", '{"type":"ConfirmCart","data":{}}')
    positions = {}
    for p in S.psql(url, "SELECT global_position FROM emt_messages WHERE stream_id = 'cart-1'"
        .. " ORDER BY stream_position"):gmatch("%d+") do
      positions[#positions + 1] = tonumber(p)
    end
    assert.are.equal(5, #positions)
  end)
  teardown(function()
    if url then S.drop_db(url) end
  end)

  local tea = { sku = "tea", qty = 2, price = 4.5 }
  local mug = { sku = "mug", qty = 1, price = 12 }
  local events = {
    { "CartOpened", { customer = "ada" } },
    { "ItemAdded", tea },
    { "ItemAdded", mug },
    { "ItemRemoved", { sku = "tea" } },
    { "CartConfirmed", { total = 12, items = 1 } },
  }
  local states = {
    { status = "open", customer = "ada", items = {} },
    { status = "open", customer = "ada", items = { tea = { qty = 2, price = 4.5 } } },
    { status = "open", customer = "ada", items = { tea = { qty = 2, price = 4.5 }, mug = { qty = 1, price = 12 } } },
    { status = "open", customer = "ada", items = { mug = { qty = 1, price = 12 } } },
    { status = "confirmed", customer = "ada", items = { mug = { qty = 1, price = 12 } } },
  }

  -- The lines of a replay, each checked against event i of the cart; the decoded lines.
  local function check_events(out, n)
    local lines = S.lines(out)
    assert.are.equal(n, #lines, out)
    for i, l in ipairs(lines) do
      assert.are.equal(i, l.stream_position)
      assert.are.equal(positions[i], l.global_position)
      assert.are.equal(events[i][1], l.type)
      assert.are.same(events[i][2], l.data)
      assert.is_nil(l.metadata) -- tide handle wrote none
    end
    return lines
  end

  it("prints each event of a stream with the decider's state after it, as JSON lines", function()
    local r = replay(q(CART) .. " cart-1")
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("", r.err)
    local lines = check_events(r.out, 5)
    for i, l in ipairs(lines) do
      assert.are.same(states[i], l.state)
      assert.is_nil(l.id)
    end
    -- The keys in a fixed order, for programs that read the text.
    assert.truthy(r.out:find('^{"stream_position":1,"global_position":' .. positions[1]
      .. ',"type":"CartOpened","data":{"customer":"ada"},"state":{'), r.out)
    -- The state after the last event is what tide aggregate folds.
    local agg = S.tide("aggregate " .. q(CART) .. " cart-1 --database " .. q(url))
    assert.are.same(S.json(agg.out).state, lines[5].state)
  end)

  it("stops after stream position N with --to", function()
    local r = replay(q(CART) .. " cart-1 --to 3")
    assert.are.equal(0, r.code, r.err)
    local lines = check_events(r.out, 3)
    assert.are.same(states[3], lines[3].state)
    -- Past the end: the whole stream.
    assert.are.equal(5, #S.lines(replay(q(CART) .. " cart-1 --to 99").out))
  end)

  it("carries an event's metadata, and reads the partition it is given", function()
    local acct = script("account", [[
return tide.decider {
  initial = function() return { balance = 0 } end,
  evolve = function(s, e) return { balance = s.balance + e.data.amount } end,
  decide = function() return {} end,
}]])
    assert.are.equal(0, S.tide("append acct-1 Deposited '{\"amount\":5}' --metadata '{\"correlation_id\":\"c-1\"}'"
      .. " --partition t1 --database " .. q(url)).code)
    assert.are.equal(0, S.tide("append acct-1 Deposited '{\"amount\":7}' --partition t1 --database " .. q(url)).code)
    local r = replay(q(acct) .. " acct-1 --partition t1")
    assert.are.equal(0, r.code, r.err)
    local lines = S.lines(r.out)
    assert.are.equal(2, #lines)
    assert.are.same({ correlation_id = "c-1" }, lines[1].metadata)
    assert.are.same({ balance = 5 }, lines[1].state)
    assert.is_nil(lines[2].metadata)
    assert.are.same({ balance = 12 }, lines[2].state)
    -- Not in the default partition: nothing to replay, and it says so.
    r = replay(q(acct) .. " acct-1")
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("", r.out)
    assert.truthy(r.err:find("stream acct-1 has no events", 1, true), r.err)
  end)

  it("folds a document projection per document: the stream's, or id(event)'s", function()
    -- cart_summary: one document per cart (the stream), from initial().
    local r = replay(q(SUMMARY) .. " cart-1")
    assert.are.equal(0, r.code, r.err)
    local lines = check_events(r.out, 5)
    assert.are.equal("cart-1", lines[1].id)
    assert.are.same({ status = "open", customer = "ada", items = {}, total = 0 }, lines[1].state)
    assert.are.same({ status = "open", customer = "ada", total = 21,
      items = { tea = { qty = 2, price = 4.5 }, mug = { qty = 1, price = 12 } } }, lines[3].state)
    assert.are.same({ status = "confirmed", customer = "ada", total = 12,
      items = { mug = { qty = 1, price = 12 } } }, lines[5].state)

    -- Keyed by product across carts: only the events it takes, each with its document;
    -- evolve returning nil deletes (null), and the next event starts from initial() again.
    handle("cart-2", '{"type":"OpenCart","data":{"customer":"bob"}}')
    handle("cart-2", '{"type":"AddItem","data":{"sku":"tea","qty":1,"price":4}}')
    handle("cart-2", '{"type":"RemoveItem","data":{"sku":"tea"}}')
    handle("cart-2", '{"type":"AddItem","data":{"sku":"tea","qty":3,"price":4}}')
    handle("cart-2", '{"type":"AddItem","data":{"sku":"gift","qty":1,"price":0}}')
    local by_sku = script("by_sku", [[
return tide.projection {
  collection = "units_by_sku",
  events = { "ItemAdded", "ItemRemoved" },
  id = function(e) if e.data.sku == "gift" then return false end return e.data.sku end,
  initial = function() return { units = 0, carts = tide.array() } end,
  evolve = function(doc, e)
    if e.type == "ItemRemoved" then return nil end
    doc.units = doc.units + e.data.qty
    doc.carts[#doc.carts + 1] = e.stream_id
    return doc
  end,
}]])
    r = replay(q(by_sku) .. " cart-2")
    assert.are.equal(0, r.code, r.err)
    lines = S.lines(r.out)
    assert.are.equal(3, #lines, r.out)
    assert.are.same({ 2, 3, 4 }, { lines[1].stream_position, lines[2].stream_position, lines[3].stream_position })
    assert.are.same({ "tea", "tea", "tea" }, { lines[1].id, lines[2].id, lines[3].id })
    assert.are.same({ units = 1, carts = { "cart-2" } }, lines[1].state)
    local texts = {}
    for line in r.out:gmatch("[^\n]+") do texts[#texts + 1] = line end
    assert.truthy(texts[2]:find('"type":"ItemRemoved",.*"id":"tea","state":null}$'), texts[2])
    assert.are.same({ units = 3, carts = { "cart-2" } }, lines[3].state)
  end)

  it("folds a snapshot projection through its decider's evolve", function()
    local snap = script("snapshot", [[
local cart = tide.decider {
  initial = function() return { lines = 0 } end,
  evolve = function(s, e) if e.type == "ItemAdded" then return { lines = s.lines + 1 } end return s end,
  decide = function() return {} end,
}
return { kind = "projection", snapshot = cart, table = "cart_lines_snapshot" }]])
    local r = replay(q(snap) .. " cart-1")
    assert.are.equal(0, r.code, r.err)
    local lines = check_events(r.out, 5)
    assert.are.same({ 0, 1, 2, 2, 2 }, { lines[1].state.lines, lines[2].state.lines, lines[3].state.lines,
      lines[4].state.lines, lines[5].state.lines })
    assert.are.equal("cart-1", lines[5].id)
  end)

  it("stops at a failing evolve: the events before it printed, the event named, exit 1", function()
    local boom = script("boom", [[
return tide.decider {
  initial = function() return { n = 0 } end,
  evolve = function(s, e)
    if e.type == "ItemRemoved" then error("cannot fold a removal of " .. e.data.sku) end
    return { n = s.n + 1 }
  end,
  decide = function() return {} end,
}]])
    local r = replay(q(boom) .. " cart-1")
    assert.are.equal(1, r.code)
    local lines = check_events(r.out, 3)
    assert.are.same({ n = 3 }, lines[3].state)
    assert.truthy(r.err:find("tide replay: evolve failed on event 4 (ItemRemoved) of stream cart-1: "
      .. boom .. ":4: cannot fold a removal of tea", 1, true), r.err)
    assert.truthy(r.err:find("stack traceback:", 1, true), r.err)
    -- A state that cannot be JSON is named by its event too.
    local fn = script("fn", [[
return tide.decider {
  initial = function() return {} end,
  evolve = function(s, e) if e.stream_position == 2 then s.f = tostring end return s end,
  decide = function() return {} end,
}]])
    r = replay(q(fn) .. " cart-1")
    assert.are.equal(1, r.code)
    assert.are.equal(1, #S.lines(r.out))
    assert.truthy(r.err:find("the state after event 2 (ItemAdded) of stream cart-1 cannot be shown: state.f", 1, true), r.err)
    -- A runaway evolve is stopped by the CPU limit, named the same way.
    local spin = script("spin", [[
return tide.decider {
  initial = function() return {} end,
  evolve = function(s, e) if e.stream_position == 3 then while true do end end return s end,
  decide = function() return {} end,
}]])
    r = replay(q(spin) .. " cart-1 --cpu-ms 100")
    assert.are.equal(1, r.code)
    assert.are.equal(2, #S.lines(r.out))
    assert.truthy(r.err:find("evolve failed on event 3 (ItemAdded) of stream cart-1: script exceeded its CPU time limit", 1, true), r.err)
  end)

  it("refuses reactors and SQL projections, saying what it folds", function()
    for _, case in ipairs({ { "notify_on_confirm", "is a reactor" }, { "product_sales", "is an SQL projection" } }) do
      local path = S.root .. "/examples/cart/" .. case[1] .. ".lua"
      local r = replay(q(path) .. " cart-1")
      assert.are.equal(2, r.code, r.err)
      assert.are.equal("", r.out)
      assert.truthy(r.err:find("replay folds a decider (initial/evolve), a document projection", 1, true), r.err)
      assert.truthy(r.err:find(path .. " " .. case[2], 1, true), r.err)
    end
    -- Said before any database is asked: none is reachable here.
    local r = S.tide("replay " .. q(S.root .. "/examples/cart/notify_on_confirm.lua") .. " cart-1"
      .. " --database 'postgresql:///none?host=/nonexistent'")
    assert.are.equal(2, r.code, r.err)
    -- Help, and bad usage.
    r = S.tide("replay --help")
    assert.are.equal(0, r.code)
    assert.truthy(r.out:find("usage: tide replay SCRIPT STREAM [--to N] [--json]", 1, true), r.out)
    assert.truthy(S.tide("--help").out:find("\n  replay ", 1, true))
    r = replay(q(CART))
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find("missing arguments: usage is tide replay SCRIPT STREAM", 1, true), r.err)
    r = replay(q(CART) .. " cart-1 --to x")
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find("--to wants a non-negative number", 1, true), r.err)
  end)

  describe("on a terminal", function()
    local has_script = S.sh("command -v script").code == 0
    -- Runs the replay under a pseudo-terminal (util-linux's script), env first.
    local function on_tty(env, args)
      local cmd = string.format("env %s %s replay %s --database %s", env, q(S.bin), args, q(url))
      local r = S.sh("script -qec " .. q(cmd) .. " /dev/null")
      r.out = r.out:gsub("\r\n", "\n")
      return r
    end

    it("shows a readable view, coloured, with what changed marked", function()
      if not has_script then return pending("no `script` (util-linux) to give tide a terminal") end
      local r = on_tty("NO_COLOR=", q(CART) .. " cart-1")
      assert.are.equal(0, r.code, r.out)
      local esc = "\27["
      -- Position and type highlighted, data, the state as indented JSON.
      assert.truthy(r.out:find(esc .. "1m#3" .. esc .. "0m " .. esc .. "1;36mItemAdded" .. esc .. "0m", 1, true), r.out)
      assert.truthy(r.out:find('{"price":12,"qty":1,"sku":"mug"}', 1, true), r.out)
      assert.truthy(r.out:find("initial state", 1, true), r.out)
      -- Added (green +), changed (yellow ~), removed (red -).
      assert.truthy(r.out:find(esc .. '32m+     "mug": {', 1, true), r.out)
      assert.truthy(r.out:find(esc .. '33m~   "status": "confirmed"', 1, true), r.out)
      assert.truthy(r.out:find(esc .. '31m-     "tea": {"price":4.5,"qty":2}', 1, true), r.out)
      -- What did not change is not marked.
      assert.truthy(r.out:find('\n      "customer": "ada",\n', 1, true), r.out)
      assert.truthy(r.out:find("5 events of cart-1", 1, true), r.out)
    end)

    it("has no colour under NO_COLOR, and prints JSON lines with --json", function()
      if not has_script then return pending("no `script` (util-linux) to give tide a terminal") end
      local r = on_tty("NO_COLOR=1", q(CART) .. " cart-1")
      assert.are.equal(0, r.code, r.out)
      assert.is_nil(r.out:find("\27", 1, true), r.out)
      assert.truthy(r.out:find('\n  ~   "status": "confirmed"\n', 1, true), r.out)
      assert.truthy(r.out:find("#5 CartConfirmed", 1, true), r.out)
      r = on_tty("NO_COLOR=1", q(CART) .. " cart-1 --json --to 2")
      assert.are.equal(0, r.code, r.out)
      local lines = S.lines(r.out)
      assert.are.equal(2, #lines)
      assert.are.same(states[2], lines[2].state)
      -- A failure on a terminal: the events before it are shown first.
      local boom = script("boom_tty", [[
return tide.decider {
  initial = function() return {} end,
  evolve = function(s, e) if e.stream_position == 2 then error("no") end return s end,
  decide = function() return {} end,
}]])
      r = on_tty("NO_COLOR=1", q(boom) .. " cart-1")
      assert.are.equal(1, r.code, r.out)
      local shown, failed = r.out:find("#1 CartOpened", 1, true), r.out:find("evolve failed on event 2 (ItemAdded)", 1, true)
      assert.truthy(shown and failed and shown < failed, r.out)
    end)
  end)
end)
