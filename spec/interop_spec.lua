-- One database shared with the real Emmett (@event-driven-io/emmett-postgresql 0.42.0,
-- installed from npm into spec/interop/node_modules): both creation orders, events both
-- ways, conflicts across the two writers, and processors of both side by side.
local S = require "spec.support"
local q = S.q

local INTEROP = "spec/interop"
local why = S.missing()
if not why and S.sh("command -v node && command -v npm").code ~= 0 then
  why = "node and npm are not installed (scripts/setup installs them)"
end
if not why and not io.open(INTEROP .. "/node_modules/@event-driven-io/emmett-postgresql/package.json") then
  local r = S.sh("cd " .. INTEROP .. " && npm ci --no-audit --no-fund --loglevel=error")
  if r.code ~= 0 then why = "npm could not install Emmett: " .. (r.err:match("[^\n]+") or "") end
end

local SUM_DECIDER = [[
return tide.decider {
  initial = function() return { n = 0 } end,
  evolve = function(s, e) return { n = s.n + (e.data.amount or 0) } end,
  decide = function(cmd) return { { type = "Deposited", data = { amount = cmd.data.amount } } } end,
}]]

-- node spec/interop/emmett.mjs COMMAND URL ARGS...
local function emmett(url, cmd, ...)
  local args = { "node", INTEROP .. "/emmett.mjs", cmd, url, ... }
  for i, a in ipairs(args) do args[i] = q(a) end
  return S.sh(table.concat(args, " "))
end

describe("tide and Emmett on one database", function()
  if why then
    it("needs PostgreSQL, node and the Emmett package", function() pending(why) end)
    return
  end
  local url
  before_each(function() url = S.fresh_db(true) end)
  after_each(function()
    if url then S.drop_db(url) end
    url = nil
  end)
  local function tide(args) return S.tide(args .. " --database " .. q(url)) end

  local function both_write_and_read()
    local e = emmett(url, "append", "acct-1", "Deposited", '{"amount":5}')
    assert.are.equal(0, e.code, e.err)
    local t = tide("append acct-1 Deposited '{\"amount\":7}' --expected 1")
    assert.are.equal(0, t.code, t.err)
    local read = S.lines(emmett(url, "read", "acct-1").out)
    assert.are.equal(2, #read)
    assert.are.equal(2, #S.lines(tide("read acct-1").out))
  end

  it("works when Emmett creates the schema first, then tide migrates", function()
    local r = emmett(url, "migrate")
    assert.are.equal(0, r.code, r.err)
    r = tide("migrate")
    assert.are.equal(0, r.code, r.err)
    both_write_and_read()
  end)

  it("works when tide creates the schema first, then Emmett migrates", function()
    assert.are.equal(0, tide("migrate").code)
    local r = emmett(url, "migrate")
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("0", S.psql(url, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'tide\\_%' AND prosrc LIKE '%emt\\_append\\_to\\_stream%'"))
    both_write_and_read()
  end)

  describe("events both ways", function()
    before_each(function()
      assert.are.equal(0, emmett(url, "migrate").code)
      assert.are.equal(0, tide("migrate").code)
    end)

    it("shows Emmett's events to tide with the same positions, types, data and metadata", function()
      for _, amount in ipairs({ 5, 7, 11 }) do
        assert.are.equal(0, emmett(url, "append", "acct-9", "Deposited", '{"amount":' .. amount .. '}').code)
      end
      local theirs = S.lines(emmett(url, "read", "acct-9").out)
      local ours = S.lines(tide("read acct-9").out)
      local all = S.lines(tide("read-all").out)
      assert.are.equal(3, #ours)
      for i, e in ipairs(ours) do
        local t = theirs[i]
        assert.are.same({ t.metadata.streamPosition, t.metadata.globalPosition, t.type, t.data.amount, t.metadata.messageId },
          { e.stream_position, e.global_position, e.type, e.data.amount, e.message_id })
        assert.are.equal(e.global_position, all[i].global_position)
      end
      local dir = S.mkdtemp()
      S.write(dir .. "/sum.lua", SUM_DECIDER)
      local agg = S.json(tide("aggregate " .. q(dir .. "/sum.lua") .. " acct-9").out)
      local theirs_agg = S.json(emmett(url, "aggregate", "acct-9").out)
      assert.are.same({ theirs_agg.state.n, theirs_agg.currentStreamVersion }, { agg.state.n, agg.version })
    end)

    it("shows tide's events to Emmett identically", function()
      assert.are.equal(0, tide("append acct-2 Deposited '{\"amount\":3}' --metadata '{\"correlation_id\":\"c-1\"}'").code)
      local dir = S.mkdtemp()
      S.write(dir .. "/sum.lua", SUM_DECIDER)
      assert.are.equal(0, tide("handle " .. q(dir .. "/sum.lua") .. " acct-2 '{\"type\":\"Deposit\",\"data\":{\"amount\":4}}'").code)
      local ours = S.lines(tide("read acct-2").out)
      local theirs = S.lines(emmett(url, "read", "acct-2").out)
      assert.are.equal(2, #theirs)
      for i, t in ipairs(theirs) do
        local e = ours[i]
        assert.are.same({ e.stream_position, e.global_position, e.type, e.data.amount, e.message_id },
          { t.metadata.streamPosition, t.metadata.globalPosition, t.type, t.data.amount, t.metadata.messageId })
      end
      assert.are.equal("c-1", theirs[1].metadata.correlation_id)
      local agg = S.json(emmett(url, "aggregate", "acct-2").out)
      assert.are.same({ 7, 2 }, { agg.state.n, agg.currentStreamVersion })
    end)

    it("detects expected-version conflicts across the two writers", function()
      assert.are.equal(0, tide("append acct-3 Opened '{}'").code)
      -- Emmett first, then tide with the same expectation.
      assert.are.equal(0, emmett(url, "append", "acct-3", "Deposited", '{"amount":1}', "1").code)
      local t = tide("append acct-3 Deposited '{\"amount\":2}' --expected 1")
      assert.are.equal(3, t.code)
      assert.truthy(t.err:find("expected 1, found version 2", 1, true), t.err)
      -- tide first, then Emmett.
      assert.are.equal(0, tide("append acct-3 Deposited '{\"amount\":3}' --expected 2").code)
      assert.are.equal(3, emmett(url, "append", "acct-3", "Deposited", '{"amount":4}', "2").code)
      -- At the same time: exactly one wins.
      local out = S.sh(string.format(
        "(node %s/emmett.mjs append %s acct-3 Deposited '{\"amount\":5}' 3 >/dev/null 2>&1; echo e$? >> %s/race) & " ..
        "(%s append acct-3 Deposited '{\"amount\":6}' --expected 3 --database %s >/dev/null 2>&1; echo t$? >> %s/race) & wait; cat %s/race",
        INTEROP, q(url), "$TMPDIR_RACE", q(S.bin), q(url), "$TMPDIR_RACE", "$TMPDIR_RACE"):gsub("%$TMPDIR_RACE", S.mkdtemp()))
      local codes = out.out
      local wins = select(2, codes:gsub("[et]0", ""))
      local conflicts = select(2, codes:gsub("[et]3", ""))
      assert.are.same({ 1, 1 }, { wins, conflicts }, codes)
      assert.are.equal("4", S.psql(url, "SELECT stream_position FROM emt_streams WHERE stream_id = 'acct-3'"))
      assert.are.equal(4, #S.lines(tide("read acct-3").out))
    end)
  end)

  describe("processors side by side", function()
    before_each(function()
      assert.are.equal(0, emmett(url, "migrate").code)
      assert.are.equal(0, tide("migrate").code)
    end)

    it("lets a tide projection and an Emmett reactor each process every event once", function()
      local dir = S.mkdtemp()
      S.write(dir .. "/sums.lua", [[
return tide.projection {
  collection = "sums",
  evolve = function(doc, e) doc = doc or { n = 0, events = 0 } doc.n = doc.n + e.data.amount doc.events = doc.events + 1 return doc end,
}]])
      local log = dir .. "/daemon.log"
      local pid = S.sh(string.format("%s run %s --database %s --app bank --poll-ms 60000 >%s 2>&1 & echo $!", q(S.bin), q(dir), q(url), q(log))).out:match("%d+")
      for i = 1, 6 do
        assert.are.equal(0, emmett(url, "append", "acct-" .. (i % 2), "Deposited", '{"amount":' .. i .. '}').code)
      end
      -- Emmett sends no NOTIFY and tide's schema has no trigger: with polling a minute away,
      -- only the daemon's probe of the log can find these in time.
      assert.are.equal("0", S.psql(url, "SELECT count(*) FROM pg_trigger WHERE tgname = 'tide_notify_messages'"))
      S.wait_for(function()
        return S.psql(url, "SELECT coalesce(sum((doc->>'events')::int), 0) FROM tide_documents WHERE collection = 'sums'") == "6"
      end, 20, "the tide projection")
      assert.are.equal("acct-0:12|acct-1:9", S.psql(url, "SELECT string_agg(id || ':' || (doc->>'n'), '|' ORDER BY id) FROM tide_documents WHERE collection = 'sums'"))
      local seen = S.lines(emmett(url, "consume", "emmett-reactor", "6").out)
      assert.are.equal(6, #seen)
      local positions = {}
      for _, s in ipairs(seen) do positions[#positions + 1] = s.globalPosition end
      assert.are.same({ 1, 2, 3, 4, 5, 6 }, positions)
      os.execute("kill -TERM " .. pid)
      S.wait_for(function() return S.sh("kill -0 " .. pid).code ~= 0 end, 10, "the daemon to stop")
      local rows = S.psql(url, "SELECT processor_id || ':' || last_processed_checkpoint FROM emt_processors ORDER BY processor_id")
      assert.are.equal("bank/sums:0000000000000000006\nemmett-reactor:0000000000000000006", rows)
      assert.are.equal("0", S.psql(url, "SELECT count(*) FROM tide_documents WHERE collection <> 'sums'"))
    end)
  end)
end)
