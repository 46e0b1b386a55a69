-- Upcasters: events stored at schema version 1 are read at version 3 (through a chain of
-- two upcaster files) by the Lua module, `tide read`, a decider's aggregate and handle (the
-- CLI's), and a projection of `tide run`; a decider's new events are written at the version
-- it declares (3); a chain with a missing step is a load-time error naming the files; an
-- upcaster that raises fails the read (nil, err) or the batch (the failure policy); a changed
-- upcaster file reaches the running processors.
local S = require "spec.support"
local D = require "spec.daemon"
local H = require "spec.http"
local q = S.q
local tide = require "tide"

-- ItemAdded: v1 { product, qty }; v2 { sku, qty }; v3 { sku, quantity, unit }.
local UP_1_2 = [[
local tide = require "tide"
return tide.upcaster {
  type = "ItemAdded", from = 1, to = 2,
  upcast = function(data, metadata)
    return { sku = data.product, qty = data.qty }
  end,
}
]]
local function up_2_3(unit)
  return string.format([[
local tide = require "tide"
return tide.upcasters {
  tide.upcaster {
    type = "ItemAdded", from = 2, to = 3,
    upcast = function(data, metadata)
      metadata.upcast = (metadata.upcast or 0) + 1
      return { sku = data.sku, quantity = data.qty, unit = %q }, metadata
    end,
  },
}
]], unit)
end

-- A decider that only understands the newest shape.
local CART = [[
local tide = require "tide"
return tide.decider {
  initial = function() return { items = 0, skus = {} } end,
  evolve = function(s, e)
    if e.type == "ItemAdded" then
      assert(e.schema_version == 3, "evolve got schema version " .. tostring(e.schema_version))
      s.items = s.items + e.data.quantity
      s.skus[#s.skus + 1] = e.data.sku .. "/" .. e.data.unit
    end
    return s
  end,
  decide = function(cmd, s)
    return { { type = "ItemAdded", data = { sku = cmd.data.sku, quantity = cmd.data.quantity, unit = "pcs" } },
             { type = "CartTouched", data = {} } }
  end,
}
]]

-- A projection that records the shape it sees.
local ITEMS = [[
local tide = require "tide"
return tide.projection {
  events = { "ItemAdded" },
  %s
  setup = function(sql)
    sql:exec("CREATE TABLE IF NOT EXISTS items_seen (pos bigint PRIMARY KEY, sku text, quantity int, unit text, version int, upcast int)")
  end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      sql:exec("INSERT INTO items_seen VALUES ($1, $2, $3, $4, $5, $6)", e.global_position,
        e.data.sku, e.data.quantity, e.data.unit, e.schema_version, e.metadata.upcast)
    end
  end,
}
]]

-- The chain's rules, in plain Lua (lua/tide/upcast.lua): no database needed.
describe("the upcaster chain", function()
  local up = require "tide.upcast"
  local function u(t, from, to, f)
    return { value = tide.upcaster { type = t, from = from, to = to, upcast = f or function(d) return d end },
             file = t .. from .. ".lua" }
  end
  local function chain_error(files)
    local ok, err = pcall(up.chain, files)
    assert.is_false(ok)
    return err
  end

  it("goes from 1 to the top, steps of more than one version included", function()
    local c = up.chain({ u("A", 3, 5), u("A", 1, 3), u("B", 1, 2) })
    assert.are.same({ 5, 2, 1 }, { up.declared(c, "A"), up.declared(c, "B"), up.declared(c, "C") })
    local ev = { { type = "A", data = { n = 1 }, metadata = {} }, { type = "A", data = {}, metadata = {}, schema_version = 3 } }
    up.apply(c, ev)
    assert.are.same({ 5, 5 }, { ev[1].schema_version, ev[2].schema_version })
  end)

  it("refuses a chain that starts above 1, has a gap, or two steps from one version", function()
    assert.matches("no step from version 1", chain_error({ u("A", 2, 3) }), 1, true)
    assert.matches("A2.lua", chain_error({ u("A", 2, 3) }), 1, true)
    assert.matches("no step from version 2 (it has 1→2 (A1.lua), 3→4 (A3.lua))",
      chain_error({ u("A", 1, 2), u("A", 3, 4) }), 1, true)
    local dup = u("A", 1, 3)
    dup.file = "other.lua"
    assert.matches("two upcasters of A read version 1: A1.lua and other.lua",
      chain_error({ u("A", 1, 2), dup }), 1, true)
    assert.matches("returns no upcaster", chain_error({ { value = { kind = "projection" }, file = "p.lua" } }), 1, true)
  end)

  it("checks what tide.upcaster is given and what upcast returns", function()
    assert.has_error(function() tide.upcaster { type = "A", from = 2, to = 2, upcast = function() end } end,
      "tide.upcaster: 'to' must be a whole number greater than 'from' (the version it makes)")
    assert.has_error(function() tide.upcaster { type = "", from = 1, to = 2, upcast = function() end } end)
    assert.has_error(function() tide.upcasters {} end)
    local c = up.chain({ u("A", 1, 2, function() return nil end) })
    local ok, err = pcall(up.apply, c, { { type = "A", data = {}, metadata = {} } })
    assert.is_false(ok)
    assert.matches("A1.lua: the upcaster of A from 1 to 2 returned no data", err, 1, true)
    c = up.chain({ u("A", 1, 2, function(d) return d, "meta" end) })
    ok, err = pcall(up.apply, c, { { type = "A", data = {}, metadata = {} } })
    assert.matches("returned metadata that is a string", err, 1, true)
  end)

  it("tide.testing.upcast gives a spec the events as readers get them", function()
    local testing = require "tide.testing"
    local events = testing.upcast({ u("A", 1, 2, function(d) return { n = d.n + 1 } end).value,
      tide.upcasters { u("A", 2, 3, function(d) return { n = d.n * 10 } end).value } },
      { { type = "A", data = { n = 1 } }, { type = "A", data = { n = 1 }, schema_version = 2 } }, "a-1")
    assert.are.same({ { n = 20 }, { n = 10 } }, { events[1].data, events[2].data })
    assert.are.same({ 3, "a-1", 1 }, { events[1].schema_version, events[1].stream_id, events[1].stream_position })
    assert.has_error(function() testing.upcast({ u("A", 2, 3).value }, {}) end)
  end)

  it("stamps appended events with the declared version, keeping one they have", function()
    local c = up.chain({ u("A", 1, 2), u("A", 2, 3) })
    local list = { { type = "A" }, { type = "A", schema_version = 2 }, { type = "B" } }
    up.stamp(c, list)
    assert.are.same({ 3, 2 }, { list[1].schema_version, list[2].schema_version })
    assert.is_nil(list[3].schema_version)
  end)
end)

-- An inline projection (it runs inside the appends) that keeps the shape it saw.
local INLINE = [[
local tide = require "tide"
return tide.projection {
  collection = "inline_items", inline = true, events = { "ItemAdded" },
  evolve = function(doc, e)
    doc = doc or { n = 0 }
    doc.n, doc.unit, doc.v = doc.n + e.data.quantity, e.data.unit, e.schema_version
    return doc
  end,
}
]]

-- A reactor whose ctx.append writes the newest shape.
local PINGED = [[
local tide = require "tide"
return tide.reactor {
  events = { "Ping" },
  handle = function(e, ctx)
    ctx.append("from-reactor", { { type = "ItemAdded", data = { sku = "r", quantity = 1, unit = "pcs" } } })
  end,
}
]]

describe("upcasters", function()
  local why = S.missing()
  if why then
    it("needs the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local url, dir, plain
  before_each(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
    S.write(dir .. "/item_added_1.lua", UP_1_2)
    S.write(dir .. "/item_added_2.lua", up_2_3("pcs"))
    S.write(dir .. "/cart.lua", CART)
    plain = assert(tide.connect(url))
    -- Written at version 1, as a store without upcasters writes them (and Emmett does).
    assert(plain:append("cart-1", {
      { type = "ItemAdded", data = { product = "apple", qty = 2 } },
      { type = "ItemAdded", data = { product = "pear", qty = 3 } },
    }))
  end)
  after_each(function()
    D.kill_all()
    if plain then plain:close() end
    if url then S.drop_db(url) end
    os.execute("rm -rf " .. q(dir))
    url, dir, plain = nil, nil, nil
  end)

  local function versions(stream)
    return S.psql(url, "SELECT string_agg(message_type || '@' || message_schema_version, ' ' ORDER BY stream_position)"
      .. " FROM emt_messages WHERE stream_id = '" .. stream .. "'")
  end

  it("a plain append writes version 1, and a store without upcasters reads it as it is", function()
    assert.are.equal("ItemAdded@1 ItemAdded@1", versions("cart-1"))
    local events = assert(plain:read("cart-1"))
    assert.are.same({ product = "apple", qty = 2 }, events[1].data)
    assert.are.equal(1, events[1].schema_version)
  end)

  it("the Lua module reads them at version 3 and writes the declared version", function()
    local store = assert(tide.connect(url, { upcasters = dir }))
    local events = assert(store:read("cart-1"))
    assert.are.same({ sku = "apple", quantity = 2, unit = "pcs" }, events[1].data)
    assert.are.same({ 3, 3 }, { events[1].schema_version, events[2].schema_version })
    assert.are.equal(1, events[2].metadata.upcast)
    local all = assert(store:read_all())
    assert.are.same({ sku = "pear", quantity = 3, unit = "pcs" }, all[2].data)
    assert.are.equal(3, all[2].schema_version)
    -- A decider through the module folds the newest shape; its events are written at 3.
    local cart = assert(loadfile(dir .. "/cart.lua"))()
    local state = assert(store:aggregate(cart, "cart-1"))
    assert.are.equal(5, state.items)
    assert(store:handle(cart, "cart-1", { type = "AddItem", data = { sku = "fig", quantity = 1 } }))
    assert.are.equal("ItemAdded@1 ItemAdded@1 ItemAdded@3 CartTouched@1", versions("cart-1"))
    -- Its own appends too; an explicit version is kept.
    assert(store:append("cart-2", { { type = "ItemAdded", data = { sku = "a", quantity = 1, unit = "kg" } },
      { type = "ItemAdded", data = { sku = "b", qty = 1 }, schema_version = 2 } }))
    assert.are.equal("ItemAdded@3 ItemAdded@2", versions("cart-2"))
    local two = assert(store:read("cart-2"))
    assert.are.same({ sku = "b", quantity = 1, unit = "pcs" }, two[2].data)
    -- A list of upcasters instead of a directory.
    local listed = assert(tide.connect(url, { upcasters = {
      tide.upcaster { type = "ItemAdded", from = 1, to = 2, upcast = function(d) return { n = d.qty } end } } }))
    assert.are.same({ n = 2 }, assert(listed:read("cart-1"))[1].data)
    listed:close()
    store:close()
  end)

  it("an event newer than every upcaster knows, or of a version that is no number, passes unchanged", function()
    S.psql(url, "UPDATE emt_messages SET message_schema_version = '7' WHERE stream_position = 1;"
      .. " UPDATE emt_messages SET message_schema_version = 'v2' WHERE stream_position = 2")
    local store = assert(tide.connect(url, { upcasters = dir }))
    local events = assert(store:read("cart-1"))
    assert.are.same({ product = "apple", qty = 2 }, events[1].data)
    assert.are.equal(7, events[1].schema_version)
    assert.are.same({ product = "pear", qty = 3 }, events[2].data)
    assert.are.equal("v2", events[2].schema_version)
    store:close()
  end)

  it("tide read and read-all hand on the newest shape with --upcasters; tide append --schema-version", function()
    local function tide_(args) return S.tide(args .. " --database " .. q(url)) end
    local r = tide_("read cart-1")
    assert.are.equal(0, r.code, r.err)
    local events = S.lines(r.out)
    assert.are.same({ { product = "apple", qty = 2 }, 1 }, { events[1].data, events[1].schema_version })
    r = tide_("read cart-1 --upcasters " .. q(dir))
    assert.are.equal(0, r.code, r.err)
    events = S.lines(r.out)
    assert.are.same({ sku = "pear", quantity = 3, unit = "pcs" }, events[2].data)
    assert.are.same({ 3, 1 }, { events[2].schema_version, events[2].metadata.upcast })
    r = tide_("read-all --upcasters " .. q(dir))
    assert.are.equal(0, r.code, r.err)
    events = S.lines(r.out)
    assert.are.same({ { sku = "apple", quantity = 2, unit = "pcs" }, 3 }, { events[1].data, events[1].schema_version })
    assert.truthy(events[1].cursor)
    r = tide_("append cart-9 ItemAdded '{\"sku\":\"x\",\"qty\":2}' --schema-version 2")
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("ItemAdded@2", versions("cart-9"))
    events = S.lines(tide_("read cart-9 --upcasters " .. q(dir)).out)
    assert.are.same({ { sku = "x", quantity = 2, unit = "pcs" }, 3 }, { events[1].data, events[1].schema_version })
    local file = S.tmpname(".ndjson")
    S.write(file, '{"stream_id":"cart-8","type":"ItemAdded","data":{"product":"a","qty":1}}\n'
      .. '{"stream_id":"cart-8","type":"ItemAdded","data":{"sku":"b","qty":2},"schema_version":2}\n')
    r = tide_("import " .. q(file))
    os.remove(file)
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("ItemAdded@1 ItemAdded@2", versions("cart-8"))
    events = S.lines(tide_("read cart-8 --upcasters " .. q(dir)).out)
    assert.are.same({ { sku = "a", quantity = 1, unit = "pcs" }, { sku = "b", quantity = 2, unit = "pcs" } },
      { events[1].data, events[2].data })
    r = tide_("append cart-9 ItemAdded '{}' --schema-version 0")
    assert.are.equal(2, r.code)
    assert.matches("schema version of event 1 must be a whole number", r.err, 1, true)
    assert.are.equal("ItemAdded@2", versions("cart-9"))
    -- An upcaster that raises fails the read, printing nothing.
    S.write(dir .. "/item_added_1.lua", [[
local tide = require "tide"
return tide.upcaster { type = "ItemAdded", from = 1, to = 2, upcast = function(d) error("broken") end }
]])
    r = tide_("read cart-1 --upcasters " .. q(dir))
    assert.are.equal(1, r.code)
    assert.are.equal("", r.out)
    assert.matches("item_added_1.lua:2: broken", r.err, 1, true)
    r = tide_("read cart-1 --upcasters " .. q(dir .. "/nowhere"))
    assert.are.equal(2, r.code)
  end)

  it("events Emmett wrote are read at version 3", function()
    if S.sh("command -v node").code ~= 0
      or not io.open("spec/interop/node_modules/@event-driven-io/emmett-postgresql/package.json") then
      pending("Emmett is not installed (spec.interop installs it into spec/interop/node_modules)")
      return
    end
    local r = S.sh("node spec/interop/emmett.mjs append " .. q(url) .. " cart-e ItemAdded "
      .. q('{"product":"plum","qty":6}'))
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("ItemAdded@1", versions("cart-e"))
    local events = S.lines(S.tide("read cart-e --upcasters " .. q(dir) .. " --database " .. q(url)).out)
    assert.are.same({ { sku = "plum", quantity = 6, unit = "pcs" }, 3 }, { events[1].data, events[1].schema_version })
    r = S.tide("aggregate " .. q(dir .. "/cart.lua") .. " cart-e --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    assert.are.same({ "plum/pcs" }, S.json(r.out).state.skus)
  end)

  it("tide handle and tide aggregate fold the newest shape and write the declared version", function()
    local r = S.tide("aggregate " .. q(dir .. "/cart.lua") .. " cart-1 --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    local out = S.json(r.out)
    assert.are.equal(5, out.state.items)
    assert.are.same({ "apple/pcs", "pear/pcs" }, out.state.skus)
    r = S.tide("handle " .. q(dir .. "/cart.lua") .. " cart-1 "
      .. q('{"type":"AddItem","data":{"sku":"fig","quantity":4}}') .. " --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("ItemAdded@1 ItemAdded@1 ItemAdded@3 CartTouched@1", versions("cart-1"))
    r = S.tide("aggregate " .. q(dir .. "/cart.lua") .. " cart-1 --database " .. q(url))
    assert.are.equal(9, S.json(r.out).state.items)
    -- tide replay folds the same shapes.
    r = S.tide("replay " .. q(dir .. "/cart.lua") .. " cart-1 --json --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    assert.truthy(r.out:find('"unit":"pcs"', 1, true), r.out)
    assert.falsy(r.out:find('"product"', 1, true), r.out)
  end)

  it("a chain with a missing step is a load-time error naming the files", function()
    S.write(dir .. "/item_added_2.lua", [[
local tide = require "tide"
return tide.upcaster { type = "ItemAdded", from = 3, to = 4, upcast = function(d) return d end }
]])
    local r0 = S.tide("check " .. q(dir))
    assert.are.equal(1, r0.code)
    assert.matches("no step from version 2", r0.err, 1, true)
    local store, err = tide.connect(url, { upcasters = dir })
    assert.is_nil(store)
    assert.are.equal("script", err.kind)
    assert.matches("no step from version 2", err.message, 1, true)
    assert.matches("item_added_1.lua", err.message, 1, true)
    assert.matches("item_added_2.lua", err.message, 1, true)
    local r = S.tide("aggregate " .. q(dir .. "/cart.lua") .. " cart-1 --database " .. q(url))
    assert.are_not.equal(0, r.code)
    assert.matches("no step from version 2", r.err, 1, true)
    assert.matches("item_added_2.lua", r.err, 1, true)
    -- Two upcasters of one type from one version.
    S.write(dir .. "/item_added_2.lua", UP_1_2)
    store, err = tide.connect(url, { upcasters = dir })
    assert.is_nil(store)
    assert.matches("two upcasters of ItemAdded read version 1", err.message, 1, true)
  end)

  it("an upcaster that raises fails the read with its error", function()
    S.write(dir .. "/item_added_2.lua", [[
local tide = require "tide"
return tide.upcaster { type = "ItemAdded", from = 2, to = 3, upcast = function(d)
  if d.sku == "pear" then error("no pears") end
  return { sku = d.sku, quantity = d.qty, unit = "pcs" }
end }
]])
    local store = assert(tide.connect(url, { upcasters = dir }))
    local events, err = store:read("cart-1")
    assert.is_nil(events)
    assert.are.equal("script", err.kind)
    assert.matches("item_added_2.lua:3: no pears", err.message, 1, true)
    assert.matches("event 2 (ItemAdded", err.message, 1, true)
    local r = S.tide("aggregate " .. q(dir .. "/cart.lua") .. " cart-1 --database " .. q(url))
    assert.are_not.equal(0, r.code)
    assert.matches("no pears", r.err, 1, true)
    store:close()
  end)

  it("a projection of tide run sees version 3; a changed upcaster reaches it; one that raises is dead-lettered", function()
    S.write(dir .. "/items.lua", string.format(ITEMS, "on_error = \"dead_letter\", max_attempts = 1,"))
    S.write(dir .. "/pinged.lua", PINGED)
    local _, log = D.start(url, dir)
    S.wait_for(function() return D.count(url, "items_seen") == 2 end, 20, "the projection")
    -- A reactor's ctx.append writes the version its upcasters declare.
    assert(plain:append("ping-1", { { type = "Ping", data = {} } }))
    S.wait_for(function() return versions("from-reactor") ~= "" end, 20, "the reactor's append")
    assert.are.equal("ItemAdded@3", versions("from-reactor"))
    S.wait_for(function() return D.count(url, "items_seen") == 3 end, 20, "the reactor's event")
    S.psql(url, "DELETE FROM items_seen WHERE sku = 'r'")
    assert.are.equal("apple 2 pcs 3 1|pear 3 pcs 3 1", S.psql(url,
      "SELECT string_agg(concat_ws(' ', sku, quantity, unit, version, upcast), '|' ORDER BY pos) FROM items_seen"))
    assert.matches("upcasters.loaded", D.read(log), 1, true)
    -- A new version of the second step: the processor loads again with it.
    S.save(dir .. "/item_added_2.lua", up_2_3("box"))
    S.wait_for(function() return D.read(log):find("every processor loads again", 1, true)
      and D.read(log):find("processor.reloaded processor=spec/items kind=projection generation=2", 1, true) end,
      20, "the processor to load again with the new upcasters")
    assert(plain:append("cart-3", { { type = "ItemAdded", data = { product = "kiwi", qty = 1 } } }))
    S.wait_for(function() return D.count(url, "items_seen") == 3 end, 20, "the new event")
    assert.are.equal("kiwi 1 box 3", S.psql(url,
      "SELECT concat_ws(' ', sku, quantity, unit, version) FROM items_seen ORDER BY pos DESC LIMIT 1"))
    -- An upcaster that raises: the event is dead-lettered by the processor's policy.
    S.save(dir .. "/item_added_2.lua", [[
local tide = require "tide"
return tide.upcaster { type = "ItemAdded", from = 2, to = 3, upcast = function(d)
  if d.sku == "plum" then error("no plums") end
  return { sku = d.sku, quantity = d.qty, unit = "bag" }
end }
]])
    S.wait_for(function()
      return D.read(log):find("processor.reloaded processor=spec/items kind=projection generation=3", 1, true)
    end, 20, "the processor to load again with the new upcasters")
    assert(plain:append("cart-4", { { type = "ItemAdded", data = { product = "plum", qty = 1 } } }))
    assert(plain:append("cart-5", { { type = "ItemAdded", data = { product = "lime", qty = 1 } } }))
    S.wait_for(function() return D.count(url, "items_seen") == 4 end, 20, "the event after the poison")
    assert.are.equal("lime 1 bag", S.psql(url,
      "SELECT concat_ws(' ', sku, quantity, unit) FROM items_seen ORDER BY pos DESC LIMIT 1"))
    local dead = S.psql(url, "SELECT count(*) || ' ' || bool_and(last_error LIKE '%no plums%') FROM tide_dead_letters")
    assert.are.equal("1 true", dead)
  end)

  it("the HTTP API reads (streams, log, live subscription) and commands through them", function()
    local base, _, log = H.start(url, dir)
    local status, body, doc
    S.wait_for(function() -- the request pool connects after the server listens
      status, body, doc = H.get(base .. "/streams/cart-1")
      return status ~= 503
    end, 20, "the HTTP API's connections")
    assert.are.equal(200, status, body)
    assert.are.same({ sku = "apple", quantity = 2, unit = "pcs" }, doc.events[1].data)
    assert.are.equal(3, doc.events[1].schema_version)
    status, body, doc = H.get(base .. "/log")
    assert.are.equal(200, status, body)
    assert.are.same({ sku = "pear", quantity = 3, unit = "pcs" }, doc.events[2].data)
    local sse = S.sh("curl -sN --max-time 1 " .. q(base .. "/log/subscribe")).out
    local first = S.json(assert(sse:match("\ndata: ([^\n]+)")))
    assert.are.same({ { sku = "apple", quantity = 2, unit = "pcs" }, 3 }, { first.data, first.schema_version })
    status, body = H.post(base .. "/commands/cart/cart-1", { type = "AddItem", data = { sku = "fig", quantity = 4 } })
    assert.are.equal(200, status, body)
    assert.are.equal("ItemAdded@1 ItemAdded@1 ItemAdded@3 CartTouched@1", versions("cart-1"))
    -- An append over HTTP says the shape it writes, or writes 1.
    status, body = H.post(base .. "/streams/cart-h", { events = {
      { type = "ItemAdded", data = { sku = "h", qty = 2 }, schema_version = 2 },
      { type = "ItemAdded", data = { product = "h", qty = 1 } } } })
    assert.are.equal(200, status, body)
    assert.are.equal("ItemAdded@2 ItemAdded@1", versions("cart-h"))
    status, body, doc = H.get(base .. "/streams/cart-h")
    assert.are.same({ sku = "h", quantity = 2, unit = "pcs" }, doc.events[1].data)
    status, body = H.post(base .. "/streams/cart-h", { events = {
      { type = "ItemAdded", data = {}, schema_version = 1.5 } } })
    assert.are.equal(400, status)
    assert.matches("events[0].schema_version must be a whole number", body, 1, true)
    -- A changed upcaster reaches reads and commands.
    S.save(dir .. "/item_added_2.lua", up_2_3("box"))
    S.wait_for(function() return D.read(log):find("every processor loads again", 1, true) end, 20,
      "the upcasters to load again")
    status, body, doc = H.get(base .. "/streams/cart-1")
    assert.are.equal("box", doc.events[1].data.unit)
    -- One that raises: the read fails with its error, and so does a command on the stream.
    S.save(dir .. "/item_added_2.lua", [[
local tide = require "tide"
return tide.upcaster { type = "ItemAdded", from = 2, to = 3, upcast = function(d) error("no way") end }
]])
    S.wait_for(function()
      local _, n = D.read(log):gsub("every processor loads again", "")
      return n >= 2
    end, 20, "the upcasters to load again")
    status, body = H.get(base .. "/streams/cart-1")
    assert.are.equal(422, status)
    assert.matches("item_added_2.lua:2: no way", body, 1, true)
    status, body = H.post(base .. "/commands/cart/cart-1", { type = "AddItem", data = { sku = "x", quantity = 1 } })
    assert.are.equal(422, status, body)
    assert.matches("no way", body, 1, true)
    assert.are.equal("ItemAdded@1 ItemAdded@1 ItemAdded@3 CartTouched@1", versions("cart-1"))
  end)

  it("inline projections read through the upcasters of their directory", function()
    local idir = S.mkdtemp()
    S.write(idir .. "/item_added_1.lua", UP_1_2)
    S.write(idir .. "/item_added_2.lua", up_2_3("kg"))
    S.write(idir .. "/inline_items.lua", INLINE)
    local store = assert(tide.connect(url, { projections = idir }))
    assert(store:append("cart-7", { { type = "ItemAdded", data = { product = "fig", qty = 5 } } }))
    assert.are.equal("ItemAdded@1", versions("cart-7"))
    assert.are.same({ n = 5, unit = "kg", v = 3 }, (assert(store:doc("inline_items", "cart-7"))))
    -- Written at 3 by a store that declares it: no upcasting, the same shape.
    local declared = assert(tide.connect(url, { projections = idir, upcasters = idir }))
    assert(declared:append("cart-7", { { type = "ItemAdded", data = { sku = "fig", quantity = 1, unit = "kg" } } }))
    assert.are.equal("ItemAdded@1 ItemAdded@3", versions("cart-7"))
    assert.are.same({ n = 6, unit = "kg", v = 3 }, (assert(store:doc("inline_items", "cart-7"))))
    declared:close()
    store:close()
    os.execute("rm -rf " .. q(idir))
  end)

  it("a broken chain at the start keeps every processor from running, and says why", function()
    S.write(dir .. "/item_added_2.lua", [[
local tide = require "tide"
return tide.upcaster { type = "ItemAdded", from = 3, to = 4, upcast = function(d) return d end }
]])
    S.write(dir .. "/items.lua", string.format(ITEMS, ""))
    local _, log = D.start(url, dir)
    S.wait_for(function() return D.read(log):find("upcasters.invalid", 1, true) end, 20, "the error")
    S.wait_for(function()
      local st = D.status(url).items
      return st and st.last_error and st.last_error:find("no step from version 2", 1, true)
    end, 20, "the processor's error")
    assert.is_nil(D.count(url, "items_seen"))
    -- Fixed: the processor starts and reads the newest shape.
    S.save(dir .. "/item_added_2.lua", up_2_3("pcs"))
    S.wait_for(function() return D.count(url, "items_seen") == 2 end, 20, "the projection")
    assert.are.equal("3", S.psql(url, "SELECT min(version) FROM items_seen"))
  end)
end)
