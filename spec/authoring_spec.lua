-- The script author's loop, as a new user meets it: `tide check` beside specs, `tide test`
-- from any directory, tide.testing for SQL projections and reactors (a wrong expectation is a
-- busted failure, not an error), and `tide init` → `tide test` → `tide run` → `tide handle`.
local S = require "spec.support"
local D = require "spec.daemon"
local q = S.q

-- A directory holding files { name = text }; returns its path.
local function dir_with(files)
  local dir = S.mkdtemp()
  for name, text in pairs(files) do S.write(dir .. "/" .. name, text) end
  return dir
end

-- `tide ARGS` run from another working directory (/).
local function tide_elsewhere(args)
  return S.sh("cd / && " .. q(S.bin) .. " " .. args)
end

local GREETER = [[
local tide = require "tide"
return tide.reactor {
  events = { "Joined" },
  handle = function(e, ctx)
    ctx.append("greetings-" .. e.stream_id, { { type = "Greeted", data = { name = e.data.name } } })
  end,
}
]]

local GREETER_SPEC = [[
local testing = require "tide.testing"
local greeter = testing.reactor(require "greeter")
describe("greeter", function()
  it("greets who joined", function()
    greeter.given({ { type = "Joined", data = { name = "ada" } } }, "member-1").then_appends({
      { stream = "greetings-member-1", events = { { type = "Greeted", data = { name = %s } } } },
    })
  end)
  it("sees the global tide of the sandbox", function()
    assert.are.equal(require "tide", tide)
  end)
end)
]]

describe("tide check", function()
  if not S.bin then
    it("needs the tide binary", function() pending("TIDE_BIN is not set (run scripts/test)") end)
    return
  end

  it("skips the specs of a directory with a line each, and exits 0", function()
    local r = S.tide("check examples/cart")
    assert.are.equal(0, r.code, r.err)
    assert.truthy(r.err:find("tide check: skipping examples/cart/cart_spec.lua (a spec)\n", 1, true), r.err)
    for _, name in ipairs({ "cart.lua (decider)", "cart_snapshots.lua (projection)", "cart_summary.lua (projection)",
                            "notify_on_confirm.lua (reactor)", "product_sales.lua (projection)" }) do
      assert.truthy(r.out:find("ok examples/cart/" .. name, 1, true), r.out)
    end
  end)

  it("skips a spec that a glob brings along (the README's own command)", function()
    local r = S.sh(q(S.bin) .. " check examples/cart/*.lua")
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("tide check: skipping examples/cart/cart_spec.lua (a spec)\n", r.err)
    assert.are.equal(5, select(2, r.out:gsub("ok examples/cart/", "")), r.out)
  end)

  it("still fails on a broken script of a directory, and on a directory with no scripts", function()
    local dir = dir_with({ ["good.lua"] = GREETER, ["bad.lua"] = "return tide.reactor {}",
                           ["good_spec.lua"] = "this is not Lua" })
    local r = S.tide("check " .. q(dir))
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find(dir .. "/bad.lua", 1, true), r.err)
    assert.truthy(r.out:find("ok " .. dir .. "/good.lua (reactor)", 1, true), r.out)
    assert.truthy(r.err:find("skipping " .. dir .. "/good_spec.lua (a spec)", 1, true), r.err)
    r = S.tide("check " .. q(dir_with({ ["only_spec.lua"] = "" })))
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find("no scripts in", 1, true), r.err)
  end)
end)

describe("tide test", function()
  if not S.bin then
    it("needs the tide binary", function() pending("TIDE_BIN is not set (run scripts/test)") end)
    return
  end

  it("runs a directory's specs from another working directory, with no package.path", function()
    local dir = dir_with({ ["greeter.lua"] = GREETER, ["greeter_spec.lua"] = GREETER_SPEC:format('"ada"') })
    local r = tide_elsewhere("test " .. q(dir))
    assert.are.equal(0, r.code, r.out .. r.err)
    assert.truthy(r.out:find("2 successes / 0 failures / 0 errors", 1, true), r.out)
    r = tide_elsewhere("test " .. q(dir .. "/greeter_spec.lua") .. " -- --output=TAP")
    assert.are.equal(0, r.code, r.out .. r.err)
    assert.truthy(r.out:find("ok 1 - greeter greets who joined", 1, true), r.out)
  end)

  it("exits non-zero and shows the failure of a failing spec", function()
    local dir = dir_with({ ["greeter.lua"] = GREETER, ["greeter_spec.lua"] = GREETER_SPEC:format('"bob"') })
    local r = tide_elsewhere("test " .. q(dir))
    assert.are_not.equal(0, r.code)
    assert.truthy(r.out:find("1 success / 1 failure / 0 errors", 1, true), r.out)
    assert.truthy(r.out:find("the appends differ", 1, true), r.out)
    assert.truthy(r.out:find('name = "bob"', 1, true), r.out)
  end)

  it("exits 2 on a path that does not exist and 1 on a directory without specs", function()
    local r = S.tide("test /nonexistent/tide-dir")
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find("cannot find /nonexistent/tide-dir", 1, true), r.err)
    r = S.tide("test " .. q(dir_with({ ["greeter.lua"] = GREETER })))
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find("no specs", 1, true), r.err)
    assert.are.equal(2, S.tide("test --bogus").code)
    assert.are.equal(0, S.tide("test --help").code)
  end)
end)

describe("tide.testing for SQL projections and reactors", function()
  package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
  local tide = require "tide"
  local testing = require "tide.testing"

  -- f() must end in a busted failure (what a wrong expectation is), not an error; returns its text.
  local function fails(f)
    local ok, err = pcall(f)
    assert.is_false(ok, "expected a failure")
    assert.are.equal("failure", (debug.getmetatable(err) or {}).__type, "not a busted failure: " .. tostring(err))
    return tostring(err)
  end

  local totals = tide.projection {
    events = { "Added" },
    setup = function(sql) sql:exec("CREATE TABLE IF NOT EXISTS totals (id text PRIMARY KEY, n bigint)") end,
    handle = function(events, sql)
      for _, e in ipairs(events) do
        local rows = sql:query("SELECT n FROM totals WHERE id = $1", e.stream_id)
        local n = (rows[1] and rows[1].n or 0) + e.data.by
        sql:exec("INSERT INTO totals (id, n) VALUES ($1, $2)\n  ON CONFLICT (id) DO UPDATE SET n = $2", e.stream_id, n)
      end
    end,
  }
  local added = function(by) return { type = "Added", data = { by = by } } end

  it("records an SQL projection's statements and parameters, with canned query rows", function()
    local p = testing.sql_projection(totals)
    p.given({ added(2), { type = "Other" }, added(3) }, "t-1")
      .query_returns("SELECT n FROM totals", { { n = 10 } })
      .then_statements({
        { "SELECT n FROM totals WHERE id = $1", "t-1" },
        { "INSERT INTO totals (id, n) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET n = $2", "t-1", 12 },
        "SELECT n FROM totals",                                -- text only: parameters not compared
        { "^INSERT INTO totals .* SET n = %$2$", "t-1", 13 },  -- a Lua pattern
      })
    p.given({ added(1) }, "t-2").then_statements({ { "SELECT", "t-2" }, { "INSERT", "t-2", 1 } })
    p.given({ { type = "Other" } }).then_no_statements()
    p.setup().then_statements({ "CREATE TABLE IF NOT EXISTS totals" })
    local st = p.given({ added(1) }).statements()
    assert.are.same({ true, false }, { st[1].query, st[2].query })
  end)

  it("fails, as a busted failure, on other statements, parameters or counts", function()
    local p = testing.sql_projection(totals)
    local msg = fails(function()
      p.given({ added(2) }, "t-1").then_statements({ { "SELECT", "t-1" }, { "INSERT", "t-1", 3 } })
    end)
    assert.truthy(msg:find("the statements differ (from statement 2 on)", 1, true), msg)
    assert.truthy(msg:find('"INSERT INTO totals (id, n) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET n = $2"', 1, true), msg)
    fails(function() p.given({ added(2) }, "t-1").then_statements({ { "SELECT", "t-1" } }) end)
    fails(function() p.given({ added(2) }, "t-1").then_statements({ { "DELETE", "t-1" }, "INSERT" }) end)
    fails(function() p.given({ added(2) }).then_no_statements() end)
    fails(function() p.given({ added(2) }).then_fails("anything") end)
  end)

  it("tells a handler that raises from a failed expectation", function()
    local broken = tide.projection { handle = function(_, sql) sql:exec("SELECT $1", function() end) end }
    local p = testing.sql_projection(broken)
    p.given({ added(1) }).then_fails("a function cannot be a SQL parameter")
    local ok, err = pcall(function() p.given({ added(1) }).then_statements({}) end)
    assert.is_false(ok)
    assert.are_not.equal("failure", (debug.getmetatable(err) or {}).__type)
    assert.truthy(tostring(err):find("the batch raised: ", 1, true), tostring(err))
    assert.truthy(tostring(err):find("authoring_spec.lua:176: $1: a function cannot be a SQL parameter", 1, true), tostring(err))
    assert.has_error(function() testing.sql_projection(tide.projection { collection = "c", evolve = function() end }) end)
  end)

  local reactor = tide.reactor {
    events = { "Joined" },
    handle = function(e, ctx)
      local r = ctx.append("greetings-" .. e.stream_id, { { type = "Greeted", data = { name = e.data.name },
                                                           metadata = { causation_id = e.message_id } } },
                           { expected = "no_stream" })
      ctx.log("greeted " .. e.data.name .. " at version " .. r.next_expected_version)
    end,
  }
  local joined = function(name) return { type = "Joined", data = { name = name } } end

  it("records a reactor's appends and log lines", function()
    local r = testing.reactor(reactor)
    r.given({ joined("ada"), { type = "Left" } }, "m-1")
      .then_appends({ { stream = "greetings-m-1", expected = "no_stream",
                        events = { { type = "Greeted", data = { name = "ada" } } } } })
      .then_logs({ "greeted ada at version 1" })
    r.given({ { type = "Left" } }).then_no_appends().then_logs({})
    assert.are.equal("emt:default", r.given({ joined("ada") }).appends()[1].partition)
    -- ctx.append checks the expected version as the daemon does: a second greeting conflicts
    r.given({ joined("ada"), joined("ada") }, "m-1").then_fails("ctx.append to greetings%-m%-1: version conflict: expected no_stream, found version 1")
  end)

  it("fails, as a busted failure, on other appends, events, metadata or logs", function()
    local r = testing.reactor(reactor)
    local msg = fails(function()
      r.given({ joined("ada") }, "m-1").then_appends({ { stream = "greetings-m-1", events = { { type = "Greeted", data = { name = "bob" } } } } })
    end)
    assert.truthy(msg:find("the appends differ (from append 1 on)", 1, true), msg)
    fails(function() r.given({ joined("ada") }, "m-1").then_appends({ { stream = "greetings-m-2", events = { { type = "Greeted", data = { name = "ada" } } } } }) end)
    fails(function()
      r.given({ joined("ada") }, "m-1").then_appends({ { stream = "greetings-m-1",
        events = { { type = "Greeted", data = { name = "ada" }, metadata = { causation_id = "other" } } } } })
    end)
    fails(function() r.given({ joined("ada") }, "m-1").then_appends({}) end)
    fails(function() r.given({ joined("ada") }, "m-1").then_no_appends() end)
    fails(function() r.given({ joined("ada") }, "m-1").then_logs({ "greeted bob" }) end)
    fails(function() r.given({ joined("ada") }, "m-1").then_fails("conflict") end)
  end)

  it("reports a failed expectation through busted as a failure", function()
    if not S.bin then pending("TIDE_BIN is not set (run scripts/test)") end
    local dir = dir_with({ ["greeter.lua"] = GREETER, ["greeter_spec.lua"] = GREETER_SPEC:format('"bob"') })
    local r = S.tide("test " .. q(dir) .. " -- --output=TAP")
    assert.truthy(r.out:find("# Failure message:", 1, true), r.out)
    assert.falsy(r.out:find("# Error message:", 1, true), r.out)
  end)
end)

describe("tide init", function()
  local why = S.missing()
  if not S.bin then
    it("needs the tide binary", function() pending("TIDE_BIN is not set (run scripts/test)") end)
    return
  end

  local FILES = { "README.txt", "account.lua", "account_spec.lua", "balances.lua", "balances_spec.lua",
                  "ledger.lua", "ledger_spec.lua", "tide.conf", "welcome.lua", "welcome_spec.lua" }

  it("writes a skeleton whose specs pass and whose scripts load, and says what to run next", function()
    local dir = S.mkdtemp() .. "/new/app"
    local r = S.tide("init " .. q(dir))
    assert.are.equal(0, r.code, r.err)
    for _, name in ipairs(FILES) do
      assert.truthy(r.out:find("wrote " .. dir .. "/" .. name .. "\n", 1, true), r.out)
    end
    assert.truthy(r.out:find("tide test " .. dir .. "\n", 1, true), r.out)
    assert.truthy(r.out:find("tide run --config " .. dir .. "/tide.conf " .. dir .. "\n", 1, true), r.out)
    assert.truthy(r.out:find("tide handle " .. dir .. "/account.lua account-1", 1, true), r.out)
    r = tide_elsewhere("test " .. q(dir))
    assert.are.equal(0, r.code, r.out .. r.err)
    assert.truthy(r.out:find("8 successes / 0 failures / 0 errors", 1, true), r.out)
    r = S.tide("check " .. q(dir))
    assert.are.equal(0, r.code, r.err)
    assert.are.equal(4, select(2, r.out:gsub("ok ", "")))
  end)

  it("refuses to overwrite any file, writing nothing, unless --force", function()
    local dir = S.mkdtemp()
    S.write(dir .. "/ledger.lua", "-- mine")
    local r = S.tide("init " .. q(dir))
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find(dir .. "/ledger.lua exists already", 1, true), r.err)
    assert.truthy(r.err:find("--force", 1, true), r.err)
    assert.are.equal("", S.sh("ls " .. q(dir) .. " | grep -v '^ledger.lua$'").out)
    r = S.tide("init " .. q(dir) .. " --force")
    assert.are.equal(0, r.code, r.err)
    assert.are_not.equal("-- mine", D.read(dir .. "/ledger.lua"))
    assert.are.equal(2, S.tide("init " .. q(dir .. "/ledger.lua")).code) -- not a directory
    assert.are.equal(2, S.tide("init").code)
    r = S.tide("init --help")
    assert.are.equal(0, r.code)
    assert.truthy(r.out:find("usage: tide init DIR", 1, true), r.out)
  end)

  describe("then tide run", function()
    if why then
      it("needs PostgreSQL", function() pending(why) end)
      return
    end
    local url
    after_each(function()
      D.kill_all()
      if url then S.drop_db(url) end
      url = nil
    end)

    it("runs the skeleton as it is: commands reach the document, the table and the reactor", function()
      url = S.fresh_db(true) -- tide run migrates it
      local dir = S.mkdtemp() .. "/app"
      assert.are.equal(0, S.tide("init " .. q(dir)).code)
      -- tide.conf names the app after the directory, once and for all.
      assert.truthy(D.read(dir .. "/tide.conf"):find('\n  app = "app",', 1, true))
      local pid, log = D.start(url, dir, "--config " .. q(dir .. "/tide.conf"))
      S.wait_for(function()
        local st = D.status(url)
        for _, id in ipairs({ "app/balances", "app/ledger", "app/welcome" }) do
          if not st[id] or st[id].state ~= "running" then return false end
        end
        return true
      end, 30, "the three processors to run")
      local account = q(dir .. "/account.lua")
      local function handle(cmd)
        return S.tide("handle " .. account .. " account-1 " .. q(cmd) .. " --database " .. q(url))
      end
      assert.are.equal(0, handle('{"type":"Open","data":{"owner":"ada"}}').code)
      assert.are.equal(0, handle('{"type":"Deposit","data":{"amount":10}}').code)
      assert.are.equal(0, handle('{"type":"Withdraw","data":{"amount":3}}').code)
      local r = handle('{"type":"Withdraw","data":{"amount":100}}')
      assert.are.equal(4, r.code)
      assert.truthy(r.err:find("insufficient funds: the balance is 7", 1, true), r.err)

      S.wait_for(function()
        return S.psql(url, "SELECT doc->>'owner', doc->>'balance', doc->>'movements' FROM tide_documents"
          .. " WHERE collection = 'balances' AND id = 'account-1'") == "ada|7|2"
      end, 30, "the balances document")
      S.wait_for(function()
        return D.count(url, "ledger") == 2
      end, 30, "the ledger rows")
      assert.are.equal("account-1|2|10\naccount-1|3|-3",
        S.psql(url, "SELECT account_id, position, amount FROM ledger ORDER BY position"))
      local welcome = S.wait_for(function()
        local events = S.lines(S.tide("read welcome-account-1 --database " .. q(url)).out)
        return #events > 0 and events
      end, 30, "the welcome")
      assert.are.equal(1, #welcome)
      assert.are.same({ "WelcomeQueued", "account-1", "ada" },
        { welcome[1].type, welcome[1].data.account, welcome[1].data.owner })
      for _, id in ipairs({ "app/balances", "app/ledger", "app/welcome" }) do D.caught_up(url, id, 30) end
      D.stop(pid)
      local text = D.read(log)
      assert.falsy(text:find("level=error", 1, true), text)
      assert.truthy(text:find("event=script.log processor=app/welcome message=\"queued a welcome for ada\"", 1, true), text)
    end)
  end)
end)
