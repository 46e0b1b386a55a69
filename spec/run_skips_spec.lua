-- `tide run DIR` runs only the files that return a projection or a reactor: specs are not
-- loaded, deciders and modules of helpers are loaded and skipped, each with one info line,
-- none of them a failed processor; a file that turns into a projection starts, one that
-- stops being one stops. `tide check` says the same.
local S = require "spec.support"
local q = S.q

local why = S.missing()

local D = require "spec.daemon"
local read, stop, status = D.read, D.stop, D.status

local function count(text, pattern)
  return select(2, text:gsub(pattern, ""))
end

local MODULE = [[
-- Helpers the scripts beside it could share.
local M = {}
function M.units(e) return e.data.qty or 0 end
return M
]]

local PROJECTION = [[
return tide.projection {
  collection = "units",
  events = { "ItemAdded" },
  initial = function() return { units = 0 } end,
  evolve = function(doc, e) doc.units = doc.units + e.data.qty return doc end,
}
]]

describe("tide run beside specs and modules", function()
  if why then
    it("needs the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local url, dir
  before_each(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
  end)
  after_each(function()
    D.kill_all()
    if url then S.drop_db(url) end
  end)

  local function handle(stream, command)
    local r = S.tide("handle " .. q(S.root .. "/examples/cart/cart.lua") .. " " .. stream .. " "
      .. q(command) .. " --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
  end

  it("runs examples/cart's projections and reactor and skips its spec and decider", function()
    -- The example directory itself, as the README's demo runs it; the log goes elsewhere.
    local examples = S.root .. "/examples/cart"
    local log = dir .. "/daemon.log"
    local pid = S.sh(string.format("%s run %s --app %s --database %s >%s 2>&1 & echo $!", q(S.bin),
      q(examples), D.APP, q(url), q(log))).out:match("%d+")
    D.track(pid)
    S.wait_for(function() return count(read(log), "event=processor.started ") == 4 end, 20,
      "the three projections and the reactor to start")
    local text = read(log)
    assert.are.equal(1, count(text, "event=script.skipped script=" .. examples:gsub("%p", "%%%0")
      .. "/cart_spec.lua reason=\"a spec %(busted's tests: run them with `tide test`%)\""), text)
    assert.are.equal(1, count(text, "event=script.skipped processor=spec/cart script=[^ ]*/cart.lua "
      .. "reason=\"a decider: it handles commands with `tide handle`\""), text)
    assert.are.equal(0, count(text, "level=error"), text)
    for _, name in ipairs({ "cart_summary", "product_sales", "cart_snapshots", "notify_on_confirm" }) do
      assert.truthy(text:find("event=processor.started processor=spec/" .. name .. " ", 1, true), text)
    end

    -- They run: a cart confirmed reaches its document, the sales table and the reactor.
    handle("cart-7", '{"type":"OpenCart","data":{"customer":"ada"}}')
    handle("cart-7", '{"type":"AddItem","data":{"sku":"tea","qty":2,"price":4.5}}')
    handle("cart-7", '{"type":"ConfirmCart","data":{}}')
    S.wait_for(function() return D.count(url, "emt_messages WHERE stream_id = 'notifications-cart-7'") == 1 end,
      20, "the reactor's notification")
    S.wait_for(function() return D.count(url, "product_sales WHERE sku = 'tea' AND units = 2") == 1 end,
      20, "the sales row")
    S.wait_for(function()
      return S.psql(url, "SELECT doc->>'status' FROM tide_documents WHERE collection = 'cart_summary' AND id = 'cart-7'") == "confirmed"
    end, 20, "the cart's document")

    -- tide status shows the three and nothing failed.
    local rows = status(url)
    for _, name in ipairs({ "cart_summary", "product_sales", "cart_snapshots", "notify_on_confirm" }) do
      assert.are.equal("running", rows[name] and rows[name].state, name)
    end
    assert.is_nil(rows.cart)
    assert.is_nil(rows.cart_spec)
    for id, row in pairs(rows) do assert.are_not.equal("failed", row.state, id) end
    -- No second line for a file seen again (a rescan: SIGHUP reloads all).
    os.execute("kill -HUP " .. pid)
    S.wait_for(function() return read(log):find("event=daemon.reload", 1, true) end, 10, "the reload")
    S.sleep(0.5)
    assert.are.equal(2, count(read(log), "event=script.skipped "))
    stop(pid)
  end)

  it("starts a module that becomes a projection and stops a projection that becomes a module", function()
    S.write(dir .. "/helpers.lua", MODULE)
    S.write(dir .. "/broken.lua", "return tide.projection { collection = 'x', evolve = 42 }")
    S.write(dir .. "/helpers_spec.lua", "describe('helpers', function() end)")
    local pid, log = D.start(url, dir)
    S.wait_for(function() return read(log):find("event=script.skipped processor=spec/helpers ", 1, true) end,
      20, "the module to be skipped")
    local text = read(log)
    assert.truthy(text:find("event=script.skipped processor=spec/helpers script=" .. dir
      .. "/helpers.lua reason=\"the script returned a plain table, not a processor built with "
      .. "tide.decider, tide.projection or tide.reactor\"", 1, true), text)
    assert.truthy(text:find("event=script.skipped script=" .. dir .. "/helpers_spec.lua ", 1, true), text)
    -- A file that fails to load is a failed processor, as before.
    S.wait_for(function() return (status(url).broken or {}).state == "failed" end, 10, "broken to fail")
    assert.truthy(status(url).broken.last_error:find("'evolve' must be a function", 1, true))
    assert.is_nil(status(url).helpers)

    handle("cart-1", '{"type":"OpenCart","data":{"customer":"ada"}}')
    handle("cart-1", '{"type":"AddItem","data":{"sku":"tea","qty":2,"price":4.5}}')
    -- The module becomes a projection: it starts, and catches up from the start.
    S.save(dir .. "/helpers.lua", PROJECTION)
    S.wait_for(function() return read(log):find("event=processor.started processor=spec/helpers ", 1, true) end,
      20, "the new projection to start")
    local function units()
      return S.psql(url, "SELECT doc->>'units' FROM tide_documents WHERE collection = 'units' AND id = 'cart-1'")
    end
    S.wait_for(function() return units() == "2" end, 20, "its document")
    assert.are.equal("running", status(url).helpers.state)

    -- Back to a module: it stops like a removed script, and is skipped again.
    S.save(dir .. "/helpers.lua", MODULE)
    S.wait_for(function() return read(log):find("event=processor.stopped processor=spec/helpers", 1, true) end,
      20, "the projection to stop")
    assert.truthy(read(log):find("event=processor.retired processor=spec/helpers reason=\"its script "
      .. "returns no projection or reactor any more\"", 1, true))
    S.wait_for(function() return count(read(log), "event=script.skipped processor=spec/helpers ") == 2 end,
      10, "the module to be skipped again")
    assert.are.equal("stopped", status(url).helpers.state)
    handle("cart-1", '{"type":"AddItem","data":{"sku":"tea","qty":1,"price":4.5}}')
    S.sleep(1)
    assert.are.equal("2", units())

    -- And a projection again: it starts from its checkpoint.
    S.save(dir .. "/helpers.lua", PROJECTION)
    S.wait_for(function() return units() == "3" end, 20, "the document to catch up")
    assert.are.equal("running", status(url).helpers.state)
    for line in read(log):gmatch("[^\n]+") do
      assert.is_nil(line:find("level=error", 1, true) and line:find("spec/helpers", 1, true), line)
    end
    stop(pid)
  end)

  it("is what tide check says: modules and specs skipped, not failed", function()
    S.write(dir .. "/helpers.lua", MODULE)
    S.write(dir .. "/nothing.lua", "local x = 1")
    S.write(dir .. "/units.lua", PROJECTION)
    S.write(dir .. "/units_spec.lua", "describe('units', function() end)")
    local r = S.tide("check " .. q(dir))
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("ok " .. dir .. "/units.lua (projection)\n", r.out)
    assert.truthy(r.err:find("tide check: skipping " .. dir .. "/helpers.lua (the script returned a "
      .. "plain table, not a processor", 1, true), r.err)
    assert.truthy(r.err:find("tide check: skipping " .. dir .. "/nothing.lua (the script returned "
      .. "nothing, not a processor", 1, true), r.err)
    assert.truthy(r.err:find("tide check: skipping " .. dir .. "/units_spec.lua (a spec)", 1, true), r.err)
    -- A script that does not load still fails the check.
    S.write(dir .. "/broken.lua", "return tide.projection {")
    r = S.tide("check " .. q(dir))
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find(dir .. "/broken.lua:1:", 1, true), r.err)
    r = S.tide("check " .. q(S.root .. "/examples/cart"))
    assert.are.equal(0, r.code, r.err)
  end)
end)
