-- Inline projections (inline = true) against the real database: run inside the appending
-- transaction by `tide append` and `tide handle` (--projections DIR), the Lua module
-- (tide.connect(url, { projections = DIR })) and reactors' ctx.append in a running daemon;
-- a projection that fails rolls the append back and hands its error to the caller; a
-- projection whose row in tide_processors has another version is not run; concurrent
-- appenders keep one document right.
local S = require "spec.support"
local D = require "spec.daemon"
local q = S.q

local why = S.missing()

-- A document per cart: the item count, and every event it folded (positions as given).
local CARTS = [[
local tide = require "tide"
return tide.projection {
  inline = true,
  collection = "carts",
  events = { "Added", "Removed" },
  initial = function() return { items = 0, seen = tide.array() } end,
  evolve = function(doc, e)
    if e.data.boom then error("boom: refusing " .. e.type) end
    doc.items = doc.items + (e.type == "Added" and e.data.n or -e.data.n)
    doc.seen[#doc.seen + 1] = { type = e.type, stream_position = e.stream_position,
      global_position = e.global_position, message_id = e.message_id, created = e.created }
    return doc
  end,
}
]]

-- An SQL projection into a table named through the handle; its setup makes the table.
local TOTALS = [[
local tide = require "tide"
return tide.projection {
  inline = true,
  events = { "Added" },
  setup = function(sql)
    sql:exec("CREATE TABLE IF NOT EXISTS " .. sql:table("totals") .. " (id text PRIMARY KEY, n bigint NOT NULL, events bigint NOT NULL)")
  end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      if e.data.sql_boom then sql:exec("INSERT INTO no_such_table VALUES (1)") end
      sql:exec("INSERT INTO " .. sql:table("totals") .. " AS t (id, n, events) VALUES ($1, $2, 1)"
        .. " ON CONFLICT (id) DO UPDATE SET n = t.n + $2, events = t.events + 1", e.stream_id, e.data.n)
    end
  end,
}
]]

-- A projection that is not inline: the appenders leave it alone.
local ASYNC = [[
local tide = require "tide"
return tide.projection {
  handle = function(events, sql) sql:exec("CREATE TABLE IF NOT EXISTS async_ran (x int)") end,
}
]]

-- A decider over carts, for `tide handle`.
local DECIDER = [[
local tide = require "tide"
return tide.decider {
  initial = function() return { items = 0 } end,
  evolve = function(s, e) s.items = s.items + (e.data.n or 0) return s end,
  decide = function(cmd, s) return { { type = "Added", data = { n = cmd.data.n, boom = cmd.data.boom } } } end,
}
]]

local function setup_dir(files)
  local root = S.mkdtemp()
  local dir = root .. "/shop"
  assert(os.execute("mkdir -p " .. q(dir)) == 0 or true)
  for name, text in pairs(files) do S.write(dir .. "/" .. name .. ".lua", text) end
  return dir
end

local function doc(url, collection, id)
  local text = S.psql(url, string.format("SELECT doc FROM tide_documents WHERE collection = '%s' AND id = '%s'", collection, id))
  return text ~= "" and S.json(text) or nil
end

local function scalar(url, sql) return S.psql(url, sql) end

describe("inline projections", function()
  if why then
    it("needs the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local url, dir
  before_each(function()
    url = S.fresh_db()
    dir = setup_dir({ carts = CARTS, totals = TOTALS, async = ASYNC, decider = DECIDER })
  end)
  after_each(function()
    D.kill_all()
    if url then S.drop_db(url) end
    url = nil
  end)

  local function tide(args) return S.tide(args .. " --database " .. q(url)) end

  describe("tide append --projections", function()
    it("updates a document and an SQL projection in the append's transaction", function()
      for i, n in ipairs({ 2, 3 }) do
        local r = tide("append cart-1 Added '{\"n\":" .. n .. "}' --projections " .. q(dir))
        assert.are.equal(0, r.code, r.err)
        assert.are.equal(i, S.json(r.out).next_expected_version)
      end
      local d = doc(url, "carts", "cart-1")
      assert.are.equal(5, d.items)
      local rows = S.lines(tide("read cart-1").out)
      for i, seen in ipairs(d.seen) do
        assert.are.equal(i, seen.stream_position)
        assert.are.equal(rows[i].global_position, seen.global_position)
        assert.are.equal(rows[i].message_id, seen.message_id)
        assert.are.equal(rows[i].created, seen.created)
      end
      assert.are.equal("cart-1|5|2", scalar(url, "SELECT id || '|' || n || '|' || events FROM totals"))
      -- Their rows: created by the appender, status inline, the directory's name as app.
      local app = dir:match("([^/]+)$")
      assert.are.equal(app .. "/carts|projection|1|inline|" .. app .. "\n" .. app .. "/totals|projection|1|inline|" .. app,
        scalar(url, "SELECT string_agg(processor_id || '|' || kind || '|' || version || '|' || status || '|' || app, E'\\n' ORDER BY processor_id) FROM tide_processors"))
      -- The projection that is not inline did not run, nor got a row.
      assert.are.equal("", scalar(url, "SELECT to_regclass('async_ran')::text"))
      -- Without --projections, an append runs nothing.
      assert.are.equal(0, tide("append cart-1 Added '{\"n\":10}'").code)
      assert.are.equal(5, doc(url, "carts", "cart-1").items)
    end)

    it("respects a projection's events: an event it does not want reaches neither", function()
      assert.are.equal(0, tide("append cart-1 Added '{\"n\":2}' --projections " .. q(dir)).code)
      assert.are.equal(0, tide("append cart-1 Removed '{\"n\":1}' --projections " .. q(dir)).code)
      assert.are.equal(0, tide("append cart-1 Checked '{\"n\":50}' --projections " .. q(dir)).code)
      local d = doc(url, "carts", "cart-1")
      assert.are.equal(1, d.items)
      assert.are.equal(2, #d.seen)
      assert.are.equal("2|1", scalar(url, "SELECT n || '|' || events FROM totals"))
      assert.are.equal("3", scalar(url, "SELECT stream_position FROM emt_streams WHERE stream_id = 'cart-1'"))
    end)

    it("rolls the append back when a projection raises: exit 1, its error and stack, nothing written", function()
      assert.are.equal(0, tide("append cart-1 Added '{\"n\":2}' --projections " .. q(dir)).code)
      local before = scalar(url, "SELECT count(*) || '|' || max(global_position) FROM emt_messages")
      local r = tide("append cart-1 Added '{\"n\":3,\"boom\":true}' --projections " .. q(dir))
      assert.are.equal(1, r.code)
      assert.are.equal("", r.out)
      assert.truthy(r.err:find("inline projection [^:]+/carts: [^\n]*carts%.lua:%d+: boom: refusing Added"), r.err)
      assert.truthy(r.err:find("stack traceback:\n.*carts%.lua:%d+: in function 'evolve'"), r.err)
      assert.are.equal(before, scalar(url, "SELECT count(*) || '|' || max(global_position) FROM emt_messages"))
      assert.are.equal("1", scalar(url, "SELECT stream_position FROM emt_streams WHERE stream_id = 'cart-1'"))
      assert.are.equal(2, doc(url, "carts", "cart-1").items)
      assert.are.equal("2|1", scalar(url, "SELECT n || '|' || events FROM totals"))
      -- A new stream: neither the stream nor a document.
      r = tide("append cart-2 Added '{\"n\":3,\"boom\":true}' --projections " .. q(dir))
      assert.are.equal(1, r.code)
      assert.are.equal("0", scalar(url, "SELECT count(*) FROM emt_streams WHERE stream_id = 'cart-2'"))
      assert.is_nil(doc(url, "carts", "cart-2"))
    end)

    it("rolls the append back when a projection's SQL fails, naming the script's line", function()
      local r = tide("append cart-1 Added '{\"n\":3,\"sql_boom\":true}' --projections " .. q(dir))
      assert.are.equal(1, r.code)
      assert.truthy(r.err:find("inline projection [^:]+/totals: [^\n]*totals%.lua:%d+: sql:exec failed: [^\n]*no_such_table"), r.err)
      assert.are.equal("0", scalar(url, "SELECT count(*) FROM emt_messages"))
      assert.is_nil(doc(url, "carts", "cart-1"))
    end)

    it("refuses a directory with a script that does not load, naming the file, and writes nothing", function()
      S.write(dir .. "/broken.lua", "local tide = require 'tide'\nreturn tide.projection { inline = true, handle = 42 }\n")
      local r = tide("append cart-1 Added '{\"n\":1}' --projections " .. q(dir))
      assert.are.equal(1, r.code)
      assert.truthy(r.err:find("broken.lua", 1, true), r.err)
      assert.truthy(r.err:find("'handle' must be a function", 1, true), r.err)
      os.remove(dir .. "/broken.lua")
      r = tide("append cart-1 Added '{\"n\":1}' --projections " .. q(dir .. "/nowhere"))
      assert.are.equal(2, r.code)
      assert.truthy(r.err:find("nowhere", 1, true), r.err)
      assert.are.equal("0", scalar(url, "SELECT count(*) FROM emt_messages"))
    end)

    it("does not run a projection whose row has another version, and writes nothing to its targets", function()
      assert.are.equal(0, tide("append cart-1 Added '{\"n\":2}' --projections " .. q(dir)).code)
      -- A rebuild to version 2 is under way (the lead's blue-green rebuild sets the row so).
      S.psql(url, "UPDATE tide_processors SET version = 2, target_suffix = '__v2'")
      local r = tide("append cart-1 Added '{\"n\":3}' --projections " .. q(dir))
      assert.are.equal(0, r.code, r.err)
      assert.truthy(r.err:find("event=inline.not_run", 1, true), r.err)
      assert.are.equal("2", scalar(url, "SELECT stream_position FROM emt_streams WHERE stream_id = 'cart-1'"))
      assert.are.equal(2, doc(url, "carts", "cart-1").items)
      assert.are.equal("2|1", scalar(url, "SELECT n || '|' || events FROM totals"))
      assert.are.equal("", scalar(url, "SELECT to_regclass('totals__v2')::text"))
      assert.are.equal("0", scalar(url, "SELECT count(*) FROM tide_documents WHERE collection <> 'carts'"))
    end)

    it("writes into the targets of the row's suffix when the row has its version", function()
      S.psql(url, [[INSERT INTO tide_processors (processor_id, kind, version, status, target_suffix, app)
        SELECT a || '/' || n, 'projection', 1, 'inline', '__v1', a FROM (VALUES ('carts'), ('totals')) AS v(n),
        (SELECT ']] .. dir:match("([^/]+)$") .. [['::text AS a) x]])
      assert.are.equal(0, tide("append cart-1 Added '{\"n\":4}' --projections " .. q(dir)).code)
      assert.are.equal(4, doc(url, "carts__v1", "cart-1").items)
      assert.is_nil(doc(url, "carts", "cart-1"))
      assert.are.equal("4", scalar(url, "SELECT n FROM totals__v1"))
      assert.are.equal("", scalar(url, "SELECT to_regclass('totals')::text"))
    end)
  end)

  describe("tide handle --projections", function()
    it("runs them in the decision's append, and a failing one rolls it back with exit 1", function()
      local r = tide("handle " .. q(dir .. "/decider.lua") .. " cart-7 '{\"type\":\"Add\",\"data\":{\"n\":6}}' --projections " .. q(dir))
      assert.are.equal(0, r.code, r.err)
      assert.are.equal(6, doc(url, "carts", "cart-7").items)
      assert.are.equal("6", scalar(url, "SELECT n FROM totals WHERE id = 'cart-7'"))
      r = tide("handle " .. q(dir .. "/decider.lua") .. " cart-7 '{\"type\":\"Add\",\"data\":{\"n\":1,\"boom\":true}}' --projections " .. q(dir))
      assert.are.equal(1, r.code)
      assert.truthy(r.err:find("carts.lua:%d+: boom: refusing Added"), r.err)
      assert.truthy(r.err:find("stack traceback:", 1, true), r.err)
      assert.are.equal("1", scalar(url, "SELECT count(*) FROM emt_messages"))
      assert.are.equal(6, doc(url, "carts", "cart-7").items)
    end)
  end)

  describe("the Lua module", function()
    local tide_lua = require "tide"
    if not S.build then
      it("needs the built module", function() pending("TIDE_BUILD_DIR is not set (run scripts/test)") end)
      return
    end

    it("runs them in store:append, several events at once, and reports a failure as the projection's error", function()
      local store = assert(tide_lua.connect(url, { projections = dir }))
      local res = assert(store:append("cart-3", { { type = "Added", data = { n = 1 } }, { type = "Checked", data = {} },
        { type = "Added", data = { n = 4 } }, { type = "Removed", data = { n = 2 } } }))
      assert.are.equal(4, res.next_expected_version)
      local d = doc(url, "carts", "cart-3")
      assert.are.equal(3, d.items)
      assert.are.same({ 1, 3, 4 }, { d.seen[1].stream_position, d.seen[2].stream_position, d.seen[3].stream_position })
      assert.are.same({ res.global_positions[1], res.global_positions[3], res.global_positions[4] },
        { d.seen[1].global_position, d.seen[2].global_position, d.seen[3].global_position })
      assert.are.equal("5|2", scalar(url, "SELECT n || '|' || events FROM totals WHERE id = 'cart-3'"))

      local r, err = store:append("cart-3", { { type = "Added", data = { n = 1 } }, { type = "Added", data = { n = 1, boom = true } } })
      assert.is_nil(r)
      assert.are.equal("script", err.kind)
      assert.truthy(err.processor:match("/carts$"), err.processor)
      assert.truthy(err.message:find("carts.lua:%d+: boom"), err.message)
      assert.truthy(err.traceback:find("in function 'evolve'", 1, true), err.traceback)
      r, err = store:append("cart-3", { { type = "Added", data = { n = 1, sql_boom = true } } })
      assert.is_nil(r)
      assert.are.equal("database", err.kind)
      assert.truthy(err.processor:match("/totals$"), err.processor)
      assert.are.equal(4, #assert(store:read("cart-3")))
      assert.are.equal(3, doc(url, "carts", "cart-3").items)
      -- A conflict is the append's own error; the projections do not run.
      r, err = store:append("cart-3", { { type = "Added", data = { n = 1 } } }, { expected = 1 })
      assert.are.equal("conflict", err.kind)
      assert.are.equal(4, err.actual)
      assert.are.equal(3, doc(url, "carts", "cart-3").items)
      store:close()
      local bad, berr = tide_lua.connect(url, { projections = dir .. "/nowhere" })
      assert.is_nil(bad)
      assert.are.equal("invalid", berr.kind)
    end)

    it("makes a projection's row again when it went missing (tide forget) while the store was open", function()
      local store = assert(tide_lua.connect(url, { projections = dir }))
      assert(store:append("cart-5", { { type = "Added", data = { n = 1 } } }))
      S.psql(url, "DELETE FROM tide_processors")
      assert(store:append("cart-5", { { type = "Added", data = { n = 2 } } }))
      assert.are.equal(3, doc(url, "carts", "cart-5").items)
      assert.are.equal("2", scalar(url, "SELECT count(*) FROM tide_processors WHERE status = 'inline'"))
      store:close()
    end)

    it("in a transaction of the caller's, a failing projection undoes its own append only", function()
      local store = assert(tide_lua.connect(url, { projections = dir }))
      assert.are.equal("no_stream", store:begin("cart-4"))
      assert(store:append("cart-4", { { type = "Added", data = { n = 2 } } }))
      local r, err = store:append("cart-4", { { type = "Added", data = { n = 9, boom = true } } })
      assert.is_nil(r)
      assert.are.equal("script", err.kind)
      assert(store:append("cart-4", { { type = "Added", data = { n = 5 } } }))
      assert(store:commit())
      assert.are.equal(7, doc(url, "carts", "cart-4").items)
      assert.are.equal("2", scalar(url, "SELECT stream_position FROM emt_streams WHERE stream_id = 'cart-4'"))
      store:close()
    end)

    it("keeps one document right under two concurrent appenders (real processes)", function()
      -- A document per product across every cart: appenders to different streams share it.
      S.write(dir .. "/products.lua", [[
local tide = require "tide"
return tide.projection {
  inline = true,
  collection = "products",
  events = { "Added" },
  id = function(e) return e.data.product end,
  initial = function() return { sold = 0 } end,
  evolve = function(doc, e) doc.sold = doc.sold + e.data.n return doc end,
}
]])
      local N = 150
      local writer = S.tmpname(".lua")
      S.write(writer, string.format([[
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = %q .. "/lua/?.so;" .. package.cpath
local tide = require "tide"
local store = assert(tide.connect(arg[1], { projections = arg[2] }))
for i = 1, tonumber(arg[4]) do
  -- One shared cart, and a cart of this writer's own: both write product p-1.
  local stream = i %% 2 == 0 and "cart-shared" or ("cart-" .. arg[3])
  assert(store:append(stream, { { type = "Added", data = { n = 1, product = "p-1" } } }))
end
store:close()
]], S.build))
      local pids = {}
      for w = 1, 2 do
        pids[w] = S.sh(string.format("luajit %s %s %s w%d %d >%s.%d 2>&1 & echo $!", q(writer), q(url), q(dir), w, N,
          q(writer), w)).out:match("%d+")
      end
      S.wait_for(function()
        for _, pid in ipairs(pids) do if S.sh("kill -0 " .. pid).code == 0 then return false end end
        return true
      end, 120, "the writers")
      assert.are.equal(tostring(2 * N), scalar(url, "SELECT count(*) FROM emt_messages"),
        S.sh("cat " .. q(writer) .. ".1 " .. q(writer) .. ".2").out)
      assert.are.equal(2 * N, doc(url, "products", "p-1").sold)
      assert.are.equal(N, doc(url, "carts", "cart-shared").items)
      assert.are.equal(N / 2, doc(url, "carts", "cart-w1").items)
      assert.are.equal(tostring(N), scalar(url, "SELECT n FROM totals WHERE id = 'cart-shared'"))
      assert.are.equal(#doc(url, "carts", "cart-shared").seen, N)
    end)
  end)

  describe("tide run", function()
    it("runs them in a reactor's ctx.append, not as processors of their own", function()
      S.write(dir .. "/confirm.lua", [[
local tide = require "tide"
return tide.reactor {
  events = { "Ordered" },
  handle = function(e, ctx)
    ctx.append("cart-" .. e.data.cart, { { type = "Added", data = { n = e.data.n } }, { type = "Removed", data = { n = 1 } } })
  end,
}
]])
      local pid, log = D.start(url, dir)
      S.wait_for(function() return D.read(log):find("event=daemon.inline_projections", 1, true) end, 20, "the daemon")
      assert.truthy(D.read(log):find("processors=spec/carts,spec/totals ", 1, true), D.read(log))
      assert.are.equal(0, tide("append order-1 Ordered '{\"cart\":\"8\",\"n\":5}'").code)
      S.wait_for(function() return doc(url, "carts", "cart-8") end, 30, "the reactor's append")
      local d = doc(url, "carts", "cart-8")
      assert.are.equal(4, d.items)
      assert.are.same({ 1, 2 }, { d.seen[1].stream_position, d.seen[2].stream_position })
      assert.are.equal("5|1", scalar(url, "SELECT n || '|' || events FROM totals WHERE id = 'cart-8'"))
      D.stop(pid)
      local log_text = D.read(log)
      assert.falsy(log_text:find("processor=spec/carts", 1, true), log_text)
      assert.are.equal("0", scalar(url, "SELECT count(*) FROM emt_processors WHERE processor_id IN ('spec/carts', 'spec/totals')"))
      assert.are.equal("spec/carts|inline\nspec/totals|inline",
        scalar(url, "SELECT string_agg(processor_id || '|' || status, E'\\n' ORDER BY processor_id) FROM tide_processors WHERE processor_id IN ('spec/carts', 'spec/totals')"))
    end)

    it("takes a saved inline projection at once, and stops a processor whose script becomes inline", function()
      S.write(dir .. "/confirm.lua", [[
local tide = require "tide"
return tide.reactor {
  events = { "Ordered" },
  handle = function(e, ctx) ctx.append("cart-" .. e.data.cart, { { type = "Added", data = { n = 1 } } }) end,
}
]])
      os.remove(dir .. "/totals.lua")
      S.write(dir .. "/later.lua", D.seen_script("async"))
      local pid, log = D.start(url, dir)
      S.wait_for(function() return D.read(log):find("event=processor.started processor=spec/later", 1, true) end, 20, "the processor")
      assert.are.equal(0, tide("append order-1 Ordered '{\"cart\":\"1\"}'").code)
      S.wait_for(function() return doc(url, "carts", "cart-1") end, 30, "the first append")
      S.save(dir .. "/carts.lua", (CARTS:gsub("e%.data%.n or", "10 * e.data.n or")))
      S.save(dir .. "/later.lua", (CARTS:gsub('"carts"', '"later"')))
      S.wait_for(function() return D.read(log):find("event=processor.inline processor=spec/later", 1, true) end, 20, "the processor to stop")
      S.wait_for(function() return D.read(log):find("processors=spec/carts,spec/later", 1, true) end, 20, "the new scripts")
      assert.are.equal(0, tide("append order-2 Ordered '{\"cart\":\"1\"}'").code)
      S.wait_for(function() return #doc(url, "carts", "cart-1").seen == 2 end, 30, "the second append")
      assert.are.equal(11, doc(url, "carts", "cart-1").items)
      assert.are.equal(1, doc(url, "later", "cart-1").items)
      D.stop(pid)
    end)

    it("fails the reactor's batch when a projection fails: neither its append nor the checkpoint moves", function()
      S.write(dir .. "/confirm.lua", [[
local tide = require "tide"
return tide.reactor {
  events = { "Ordered" },
  max_attempts = 1, on_error = "dead_letter", backoff_ms = 10,
  handle = function(e, ctx)
    ctx.append("cart-" .. e.data.cart, { { type = "Added", data = { n = 1, boom = e.data.boom } } })
  end,
}
]])
      local pid = D.start(url, dir)
      assert.are.equal(0, tide("append order-1 Ordered '{\"cart\":\"5\",\"boom\":true}'").code)
      S.wait_for(function()
        return scalar(url, "SELECT count(*) FROM tide_dead_letters") == "1"
      end, 30, "the dead letter")
      assert.truthy(scalar(url, "SELECT last_error FROM tide_dead_letters"):find("boom: refusing Added", 1, true))
      assert.are.equal("0", scalar(url, "SELECT count(*) FROM emt_messages WHERE stream_id = 'cart-5'"))
      assert.is_nil(doc(url, "carts", "cart-5"))
      assert.are.equal(0, tide("append order-2 Ordered '{\"cart\":\"6\"}'").code)
      S.wait_for(function() return doc(url, "carts", "cart-6") end, 30, "the next one")
      D.stop(pid)
    end)
  end)
end)

describe("tide.projection { inline }", function()
  local tide = require "tide.model"
  it("takes true or false, and only for projections", function()
    assert.is_true(tide.projection({ inline = true, handle = function() end }).inline)
    assert.has_error(function() tide.projection({ inline = "yes", handle = function() end }) end,
      "tide.projection: 'inline' must be true or false, got yes")
    assert.has_error(function() tide.reactor({ inline = true, handle = function() end }) end,
      "tide.reactor: 'inline' is for projections (a reactor runs in the daemon)")
    assert.is_true(tide.settings(tide.projection({ inline = true, handle = function() end })).inline)
    assert.is_false(tide.settings(tide.projection({ handle = function() end })).inline)
  end)
end)
