-- Blue-green rebuilds: a new version of a projection (or `tide rebuild`) is built beside
-- the running one, which keeps serving readers and keeping up with new events, and readers
-- are switched to it in one transaction once it has caught up. Real daemons, real appends.
local S = require "spec.support"
local q = S.q

local why = S.missing()

local D = require "spec.daemon"
local start, read, stop, scalar = D.start, D.read, D.stop, D.scalar

-- A document projection (collection "totals") and an SQL one (table "sums", through
-- sql:table), both adding data.by times the factor; a version above 1 sleeps `nap` seconds
-- a batch, so that its build takes a while.
local TOTALS = [[
local tide = require "tide"
return tide.projection {
  version = %d,
  collection = "totals",
  events = { "Added" },
  initial = function() return { n = 0 } end,
  evolve = function(doc, e) doc.n = doc.n + %d * e.data.by; return doc end,
}
]]
local SUMS = [[
local tide = require "tide"
return tide.projection {
  version = %d,
  events = { "Added" },
  setup = function(sql)
    sql:exec("CREATE TABLE IF NOT EXISTS " .. sql:table("sums") .. " (id text PRIMARY KEY, n bigint NOT NULL)")
  end,
  handle = function(events, sql)
    local t = sql:table("sums")
    if %f > 0 then sql:query("SELECT pg_sleep(%f)") end
    for _, e in ipairs(events) do
      sql:exec("INSERT INTO " .. t .. " (id, n) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET n = " .. t .. ".n + $2",
               e.stream_id, %d * e.data.by)
    end
  end,
}
]]

local function sums(version, factor, nap)
  return SUMS:format(version, nap or 0, nap or 0, factor)
end

-- How many streams' sums (as readers see them: the view or table "sums") differ from
-- factor × the fold of the log.
local function sums_off(url, factor)
  return scalar(url, string.format([[
    SELECT count(*) FROM (SELECT stream_id, %d * sum((message_data->>'by')::bigint) AS n
                            FROM emt_messages WHERE message_type = 'Added' GROUP BY stream_id) f
    FULL JOIN sums s ON s.id = f.stream_id WHERE s.n IS DISTINCT FROM f.n]], factor))
end

-- The same for the documents of "totals", as readers find them (tide_collection).
local function totals_off(url, factor)
  return scalar(url, string.format([[
    SELECT count(*) FROM (SELECT stream_id, %d * sum((message_data->>'by')::bigint) AS n
                            FROM emt_messages WHERE message_type = 'Added' GROUP BY stream_id) f
    FULL JOIN (SELECT id, (doc->>'n')::bigint AS n FROM tide_documents
                WHERE collection = tide_collection('totals')) d ON d.id = f.stream_id
    WHERE d.n IS DISTINCT FROM f.n]], factor))
end

local function relkind(url, name)
  return S.psql(url, "SELECT coalesce((SELECT relkind::text FROM pg_class WHERE oid = to_regclass('" .. name .. "')), '-')")
end

local function append(url, stream, by)
  local r = S.tide(string.format("append %s Added '{\"by\":%d}' --database %s", stream, by, q(url)))
  assert.are.equal(0, r.code, r.err)
end

describe("blue-green rebuilds", function()
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

  it("builds a new version beside the running one, which keeps serving, then switches readers at once", function()
    D.load_events(url, 3000, 30)
    S.write(dir .. "/sums.lua", sums(1, 1))
    S.write(dir .. "/totals.lua", TOTALS:format(1, 1))
    local pid, log = start(url, dir, "--batch-size 100")
    D.caught_up(url, "sums")
    D.caught_up(url, "totals")
    assert.are.equal(0, sums_off(url, 1))
    assert.are.equal("r", relkind(url, "sums"))

    -- Version 2 takes 30 batches of 0.2 s to build.
    S.save(dir .. "/sums.lua", sums(2, 10, 0.2))
    S.save(dir .. "/totals.lua", TOTALS:format(2, 10))
    S.wait_for(function() return read(log):find("event=processor.rebuild processor=spec/sums", 1, true) end, 10, "the sums rebuild")
    -- Meanwhile readers see version 1, kept up to date with new events.
    append(url, "s-1", 3)
    S.wait_for(function() return sums_off(url, 1) == 0 end, 10, "version 1 to take the new event")
    local builder = S.wait_for(function()
      local b = D.status(url)["spec/sums@rebuild"]
      return b and b.rebuild and b
    end, 10, "the builder's progress")
    assert.are.equal("rebuilding", builder.state)
    assert.are.equal("spec/sums", builder.rebuild.of)
    assert.is_true(builder.rebuild.total >= 3000)
    assert.is_false(read(log):find("processor.switched processor=spec/sums", 1, true) ~= nil)

    -- Then the switch: readers see version 2, with every event (those appended during the
    -- build too), and the old table is gone.
    S.wait_for(function() return read(log):find("event=processor.switched processor=spec/sums", 1, true) end, 60, "the sums switch")
    S.wait_for(function() return read(log):find("event=processor.switched processor=spec/totals", 1, true) end, 60, "the totals switch")
    append(url, "s-2", 2)
    S.wait_for(function() return sums_off(url, 10) == 0 and totals_off(url, 10) == 0 end, 20, "version 2 to be what readers see")
    assert.are.equal("v", relkind(url, "sums"))
    assert.are.equal("r", relkind(url, "sums__v2"))
    assert.are.equal(0, scalar(url, "SELECT count(*) FROM tide_documents WHERE collection = 'totals'"))
    assert.are.equal("totals__v2", S.psql(url, "SELECT tide_collection('totals')"))
    local st = D.status(url)
    assert.is_nil(st["spec/sums@rebuild"])
    assert.are.equal(2, st.sums.version)
    assert.is_truthy(read(log):find("event=rebuild.caught_up processor=spec/sums progress=", 1, true))

    -- Version 3: from a rebuilt table to another; the previous one is dropped.
    S.save(dir .. "/sums.lua", sums(3, 100))
    S.wait_for(function() return read(log):find("event=processor.switched processor=spec/sums version=3", 1, true) end, 60, "the second switch")
    S.wait_for(function() return sums_off(url, 100) == 0 end, 20, "version 3")
    assert.are.equal("-", relkind(url, "sums__v2"))
    assert.are.equal(0, scalar(url, "SELECT count(*) FROM tide_dead_letters"))
    stop(pid)
  end)

  it("builds a version changed while no daemon ran, the old targets serving until the switch", function()
    D.load_events(url, 500, 10)
    S.write(dir .. "/sums.lua", sums(1, 1))
    local pid = start(url, dir)
    D.caught_up(url, "sums")
    stop(pid)
    S.write(dir .. "/sums.lua", sums(2, 10, 0.3))
    local log
    pid, log = start(url, dir, "--batch-size 100")
    S.wait_for(function() return read(log):find("event=processor.rebuild processor=spec/sums", 1, true) end, 10, "the rebuild")
    assert.are.equal(0, sums_off(url, 1)) -- still version 1's, though no daemon runs it
    S.wait_for(function() return read(log):find("event=processor.switched processor=spec/sums", 1, true) end, 60, "the switch")
    append(url, "s-1", 1)
    S.wait_for(function() return sums_off(url, 10) == 0 end, 20, "version 2")
    stop(pid)
  end)

  it("builds a new version saved over a script that was broken since the daemon started", function()
    D.load_events(url, 300, 10)
    S.write(dir .. "/sums.lua", sums(1, 1))
    local pid = start(url, dir)
    D.caught_up(url, "sums")
    stop(pid)
    S.write(dir .. "/sums.lua", "return tide.projection {") -- a syntax error
    local log
    pid, log = start(url, dir)
    S.wait_for(function() return read(log):find("event=processor.load_failed processor=spec/sums", 1, true) end, 10, "the failed load")
    S.save(dir .. "/sums.lua", sums(2, 10))
    S.wait_for(function() return read(log):find("event=processor.switched processor=spec/sums version=2", 1, true) end, 30, "the switch")
    S.wait_for(function() return sums_off(url, 10) == 0 end, 20, "version 2")
    assert.are.equal("v", relkind(url, "sums"))
    stop(pid)
  end)

  it("tide rebuild builds the same version again, beside a running daemon, and --keep keeps the old targets", function()
    D.load_events(url, 2000, 20)
    S.write(dir .. "/sums.lua", sums(1, 1))
    S.write(dir .. "/totals.lua", TOTALS:format(1, 1))
    local pid, log = start(url, dir)
    D.caught_up(url, "sums")
    D.caught_up(url, "totals")
    -- A wrong read model: tide rebuild puts it right.
    S.psql(url, "UPDATE sums SET n = 0")
    S.psql(url, "UPDATE tide_documents SET doc = '{\"n\": 0}'")
    local appender = S.sh(string.format("(for i in $(seq 1 30); do %s append s-$((i %% 20)) Added '{\"by\":1}' --database %s >/dev/null; sleep 0.02; done) >/dev/null 2>&1 & echo $!",
      q(S.bin), q(url))).out:match("%d+")
    local r = S.tide("rebuild spec/sums --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    local out = S.json(r.out)
    assert.are.equal("spec/sums", out.processor)
    assert.are.equal(1, out.version)
    assert.are.equal(1, out.old_version)
    assert.are.equal(1, out.targets)
    assert.is_true(out.events >= 2000)
    r = S.tide("rebuild spec/totals --keep --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    S.wait_for(function() return not D.alive(appender) end, 30, "the appender")
    append(url, "s-3", 1)
    S.wait_for(function() return sums_off(url, 1) == 0 and totals_off(url, 1) == 0 end, 20, "the rebuilt models")
    assert.are.equal("v", relkind(url, "sums")) -- the plain table it was is dropped
    assert.are.equal("r", relkind(url, "sums__v1"))
    -- --keep: the old documents stay under their physical name, not what readers see.
    assert.are.equal("totals__v1", S.psql(url, "SELECT tide_collection('totals')"))
    -- (the daemon kept them up until the switch: the streams appended to since are not 0)
    assert.are.equal(20, scalar(url, "SELECT count(*) FROM tide_documents WHERE collection = 'totals'"))
    -- The daemon went on from the rebuilt checkpoint: nothing parked, nothing failed.
    assert.are.equal(0, scalar(url, "SELECT count(*) FROM tide_dead_letters"))
    assert.are.equal("running", D.status(url).sums.state)
    stop(pid)
  end)

  it("tide rebuild builds an inline projection again while appenders write through it, losing and repeating nothing", function()
    local app = dir .. "/shop"
    os.execute("mkdir -p " .. q(app))
    S.write(app .. "/totals.lua", TOTALS:format(1, 1):gsub("version = 1,", "version = 1,\n  inline = true,"))
    D.load_events(url, 500, 5) -- before the projection: only a rebuild folds these in
    local function append_inline(stream)
      local r = S.tide(string.format("append %s Added '{\"by\":1}' --projections %s --database %s", stream, q(app), q(url)))
      assert.are.equal(0, r.code, r.err)
    end
    for i = 1, 10 do append_inline("s-" .. (i % 5)) end
    assert.are.equal(5, scalar(url, "SELECT count(*) FROM tide_documents WHERE collection = 'totals'"))
    assert.are.equal("inline", S.psql(url, "SELECT status FROM tide_processors WHERE processor_id = 'shop/totals'"))
    -- tide status: no checkpoint nor lag for it (it is as far as the appends it ran in)
    local line = S.tide("status --json --database " .. q(url)).out:match('[^\n]*"shop/totals"[^\n]*')
    assert.is_truthy(line and line:find('"state":"inline"', 1, true), line)
    assert.is_truthy(line:find('"checkpoint":null,"lag_events":null,"lag_seconds":null', 1, true), line)
    local appender = S.sh(string.format("(for i in $(seq 1 40); do %s append s-$((i %% 5)) Added '{\"by\":1}' --projections %s --database %s >/dev/null || echo failed >>%s; done) >/dev/null 2>&1 & echo $!",
      q(S.bin), q(app), q(url), q(dir .. "/failed"))).out:match("%d+")
    local r = S.tide("rebuild shop/totals --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    S.wait_for(function() return not D.alive(appender) end, 60, "the appender")
    assert.are.equal("", D.read(dir .. "/failed"))
    -- Every event of the log, each once: those before the projection, those appended
    -- through it before, during and after the rebuild.
    assert.are.equal(0, totals_off(url, 1))
    assert.are.equal(scalar(url, "SELECT sum((message_data->>'by')::bigint) FROM emt_messages"),
      scalar(url, "SELECT sum((doc->>'n')::bigint) FROM tide_documents WHERE collection = tide_collection('totals')"))
    assert.are.equal("totals__v1", S.psql(url, "SELECT tide_collection('totals')"))
  end)

  it("tide rebuild refuses what it cannot rebuild, with a reason, and changes nothing", function()
    S.write(dir .. "/sums.lua", sums(1, 1))
    S.write(dir .. "/fixed.lua", D.TOTALS:gsub("setup =", "reset = function(sql) sql:exec('TRUNCATE totals') end,\n  setup ="))
    S.write(dir .. "/ping.lua", [[
local tide = require "tide"
return tide.reactor { handle = function() end }
]])
    D.load_events(url, 10, 2)
    local pid = start(url, dir)
    D.caught_up(url, "sums")
    D.caught_up(url, "fixed")
    D.caught_up(url, "ping")
    local function refused(args, pattern)
      local r = S.tide("rebuild " .. args .. " --database " .. q(url))
      assert.are.equal(2, r.code, r.err)
      assert.is_truthy(r.err:find(pattern), r.err)
    end
    refused("spec/nope", "no processor spec/nope")
    refused("spec/ping", "is a reactor")
    refused("spec/fixed", "has reset%(%)")
    refused("", "missing argument: PROCESSOR")
    refused("spec/sums --bogus", "unknown option '%-%-bogus'")
    assert.are.equal(0, scalar(url, "SELECT count(*) FROM tide_targets"))
    assert.are.equal("r", relkind(url, "sums"))
    local help = S.tide("rebuild --help")
    assert.are.equal(0, help.code)
    assert.is_truthy(help.out:find("usage: tide rebuild PROCESSOR", 1, true))
    stop(pid)
  end)
end)
