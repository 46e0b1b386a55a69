-- Failures handled, not just survived: `tide run` as a real process against a real
-- PostgreSQL, with scripts that fail, hog memory, spin, yield where they must not, and an
-- event whose handling kills the daemon every time. Every other event must be processed
-- exactly once, the daemon must live on, and what it gave up on must be in
-- tide_dead_letters, where `tide dlq` manages it.
local S = require "spec.support"
local D = require "spec.daemon"
local q = S.q

local why = S.missing()

-- A projection that records every event in `seen` once, and fails on events whose data
-- has poison = true (unless cured). The settings go into the projection as they are.
local function poisoned(settings, cured)
  return string.format([[
local tide = require "tide"
return tide.projection {
  %s
  setup = function(sql) sql:exec("CREATE TABLE IF NOT EXISTS seen (message_id text PRIMARY KEY, pos bigint, stream text)") end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      if e.data.poison and not %s then error("poisoned event in " .. e.stream_id) end
      sql:exec("INSERT INTO seen (message_id, pos, stream) VALUES ($1, $2, $3)", e.message_id, e.global_position, e.stream_id)
    end
  end,
}
]], settings, cured and "true" or "false")
end

local function append(url, stream, type_, data)
  local r = S.tide(string.format("append %s %s %s --database %s", q(stream), q(type_), q(data), q(url)))
  assert(r.code == 0, r.err)
  return S.json(r.out).global_positions[1]
end

-- n events over 5 streams, with poison at the given indexes; returns the poison positions.
local function load(url, n, poison_at)
  local poison = {}
  for i = 1, n do
    local bad = poison_at[i]
    local pos = append(url, "acct-" .. (i % 5), "Added", bad and '{"poison":true}' or '{"n":' .. i .. '}')
    if bad then poison[#poison + 1] = pos end
  end
  return poison
end

local function count(url, sql) return D.scalar(url, "SELECT count(*) FROM " .. sql) end

describe("tide run when scripts fail", function()
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

  it("parks poison events in tide_dead_letters and processes every other event exactly once", function()
    local poison = load(url, 60, { [7] = true, [30] = true, [31] = true })
    S.write(dir .. "/seen.lua", poisoned('on_error = "dead_letter", max_attempts = 3, backoff_ms = 10,'))
    local pid, log = D.start(url, dir)
    D.caught_up(url, "seen", 60)
    assert.are.equal(57, count(url, "seen"))
    assert.are.equal(57, count(url, "(SELECT DISTINCT message_id FROM seen) x"))
    assert.are.equal(0, count(url, "seen WHERE pos IN (" .. table.concat(poison, ",") .. ")"))
    -- Each poison event is parked once, with what a person needs to fix it.
    local rows = S.lines(S.tide("dlq list --json --database " .. q(url)).out)
    assert.are.equal(3, #rows)
    for i, row in ipairs(rows) do
      assert.are.equal("spec/seen", row.processor)
      assert.are.equal(poison[i], row.global_position)
      assert.are.equal(3, row.attempts)
      assert.are.equal("parked", row.status)
      assert.truthy(row.last_error:find("poisoned event in acct-", 1, true), row.last_error)
    end
    local shown = S.json(S.tide("dlq show " .. rows[1].id .. " --database " .. q(url)).out)
    assert.are.same({ poison = true }, shown.data)
    assert.truthy(shown.traceback:find("seen.lua:7:", 1, true), shown.traceback)
    assert.truthy(D.read(log):find("event=processor.dead_lettered processor=spec/seen", 1, true))
    assert.truthy(D.read(log):find("event=processor.isolating", 1, true))
    local st = D.status(url).seen
    assert.are.equal(3, st.dead_letters)
    assert.are.equal("running", st.state)
    -- Fixed script, then a retry: each parked event is processed once and leaves the queue.
    S.save(dir .. "/seen.lua", poisoned('on_error = "dead_letter", max_attempts = 3, backoff_ms = 10,', true))
    S.wait_for(function() return D.read(log):find("processor.reloaded", 1, true) end, 10, "the reload")
    local r = S.tide("dlq retry --all --processor seen --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    assert.truthy(r.out:find("queued for a retry: 3 dead letters", 1, true), r.out)
    S.wait_for(function() return count(url, "seen") == 60 end, 20, "the retried events")
    S.wait_for(function() return count(url, "tide_dead_letters") == 0 end, 10, "an empty queue")
    assert.are.equal(3, count(url, "seen WHERE pos IN (" .. table.concat(poison, ",") .. ")"))
    D.stop(pid)
  end)

  it("skips with on_error = skip, halts with stop until the script is fixed, and retries forever with retry", function()
    local poison = load(url, 10, { [4] = true })[1]
    S.write(dir .. "/seen.lua", poisoned('on_error = "skip", max_attempts = 2, backoff_ms = 10,'))
    local pid, log = D.start(url, dir)
    D.caught_up(url, "seen")
    assert.are.equal(9, count(url, "seen"))
    assert.are.equal(0, count(url, "tide_dead_letters"))
    assert.truthy(D.read(log):find("event=processor.skipped processor=spec/seen", 1, true))
    D.stop(pid)

    S.psql(url, "DROP TABLE seen; DELETE FROM emt_processors; DELETE FROM tide_processors")
    S.write(dir .. "/seen.lua", poisoned('on_error = "stop", max_attempts = 2, backoff_ms = 10,'))
    pid, log = D.start(url, dir)
    S.wait_for(function() return (D.status(url).seen or {}).state == "halted" end, 20, "the halt")
    assert.are.equal(poison - 1, D.checkpoint(url, "seen"))
    append(url, "acct-9", "Added", "{}")
    S.sleep(0.5)
    assert.are.equal(3, count(url, "seen"), "a halted processor processed past the event")
    local st = D.status(url).seen
    assert.truthy(st.last_error:find("poisoned event", 1, true), st.last_error)
    assert.truthy(D.read(log):find("event=processor.halted", 1, true))
    S.save(dir .. "/seen.lua", poisoned('on_error = "stop", max_attempts = 2, backoff_ms = 10,', true))
    D.caught_up(url, "seen")
    assert.are.equal(11, count(url, "seen"))
    assert.are.equal("running", D.status(url).seen.state)
    D.stop(pid)

    S.psql(url, "DROP TABLE seen; DELETE FROM emt_processors; DELETE FROM tide_processors")
    S.write(dir .. "/seen.lua", poisoned('on_error = "retry", max_attempts = 1, backoff_ms = 10,'))
    pid = D.start(url, dir)
    S.wait_for(function()
      return D.scalar(url, "SELECT coalesce(max(attempts), 0) FROM tide_processors") >= 4
    end, 20, "several tries")
    assert.are.equal(poison - 1, D.checkpoint(url, "seen"))
    assert.are.equal(0, count(url, "tide_dead_letters"))
    D.stop(pid)
  end)

  it("counts an event whose handling kills the daemon, and parks it after max_attempts deaths", function()
    -- The handler makes the test kill the daemon: on the fatal event it waits in
    -- pg_sleep, which the test sees in pg_stat_activity.
    S.write(dir .. "/seen.lua", [[
local tide = require "tide"
return tide.projection {
  on_error = "dead_letter", max_attempts = 3,
  setup = function(sql) sql:exec("CREATE TABLE IF NOT EXISTS seen (message_id text PRIMARY KEY, pos bigint)") end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      if e.data.fatal then sql:query("SELECT pg_sleep(60) AS fatal_event") end
      sql:exec("INSERT INTO seen (message_id, pos) VALUES ($1, $2)", e.message_id, e.global_position)
    end
  end,
}
]])
    local fatal
    for i = 1, 40 do
      local pos = append(url, "acct-" .. (i % 4), "Added", i == 17 and '{"fatal":true}' or "{}")
      if i == 17 then fatal = pos end
    end
    local kills = 0
    while true do
      local pid = D.start(url, dir, "--lease-ms 1000 --cpu-ms 120000")
      local outcome = S.wait_for(function()
        local sleeper = S.psql(url, "SELECT pid FROM pg_stat_activity WHERE query LIKE '%fatal_event%' AND pid <> pg_backend_pid()")
        if sleeper ~= "" then return sleeper end
        if D.checkpoint(url, "seen") >= D.last_position(url) then return "done" end
      end, 60, "the fatal event or the end")
      if outcome == "done" then
        D.stop(pid)
        break
      end
      D.kill9(pid)
      S.psql(url, "SELECT pg_terminate_backend(" .. outcome .. ")")
      kills = kills + 1
      assert.is_true(kills <= 4, "the event was delivered after " .. kills .. " deaths")
    end
    -- The fatal event sat in the middle of the first batch: that batch died once, then the
    -- event alone died max_attempts (3) times.
    assert.are.equal(4, kills)
    local parked = S.lines(S.tide("dlq list --json --database " .. q(url)).out)
    assert.are.equal(1, #parked)
    assert.are.equal(fatal, parked[1].global_position)
    assert.are.equal(3, parked[1].attempts)
    assert.truthy(parked[1].last_error:find("process ended", 1, true), parked[1].last_error)
    assert.are.equal(39, count(url, "seen"))
    assert.are.equal(0, count(url, "seen WHERE pos = " .. fatal))
  end)

  it("lives on when a processor hits its memory cap, and keeps the others going", function()
    -- Keeps 1 MB per event in a global: soon every batch of `hog` fails, even its start.
    S.write(dir .. "/hog.lua", [[
local tide = require "tide"
kept = {}
return tide.projection {
  max_attempts = 2, backoff_ms = 10,
  handle = function(events, sql)
    for _, e in ipairs(events) do kept[#kept + 1] = string.rep("x", 1000000) .. e.global_position end
  end,
}
]])
    S.write(dir .. "/seen.lua", D.seen_script("ok"))
    for i = 1, 30 do append(url, "m" .. i % 10 .. "-x", "Added", "{}") end
    local pid = D.start(url, dir, "--memory-mb 16 --batch-size 5")
    D.caught_up(url, "seen")
    D.caught_up(url, "hog", 60)
    assert.is_true(D.alive(pid), "the daemon died")
    assert.are.equal(30, count(url, "seen"))
    local parked = count(url, "tide_dead_letters WHERE processor_id = 'spec/hog'")
    assert.is_true(parked > 0, "hog never ran out of memory")
    local errors = S.psql(url, "SELECT string_agg(DISTINCT last_error, ' | ') FROM tide_dead_letters")
    assert.truthy(errors:find("memory", 1, true), errors)
    append(url, "after-1", "Added", "{}")
    D.caught_up(url, "seen")
    assert.are.equal(31, count(url, "seen"))
    D.stop(pid)
  end)

  local runaways = {
    { "an xpcall whose handler loops", "xpcall(function() while true do end end, function() while true do end end)" },
    { "an error object with a looping __tostring", "error(setmetatable({}, { __tostring = function() while true do end end }))" },
    { "coroutine.yield at the top of the handler", "coroutine.yield()" },
    { "a query that fails on the server (then the batch must still roll back)",
      "sql:query('SELECT 1/0 AS x')" },
    { "sql:query inside a coroutine the handler made",
      "local co = coroutine.wrap(function() return sql:query('SELECT 1 AS x') end) local rows = co() if rows then error('no') end" },
    { "tide.reject in a projection (a bug there: only a decider rejects)", "tide.reject('no')",
      "bad.lua:7: tide.reject is for a decider's decide; it was called with: no" },
  }
  for _, r in ipairs(runaways) do
    it("stops " .. r[1] .. " and keeps the daemon responsive", function()
      S.write(dir .. "/bad.lua", string.format([[
local tide = require "tide"
return tide.projection {
  max_attempts = 2, backoff_ms = 10,
  handle = function(events, sql)
    sql:exec("CREATE TEMP TABLE IF NOT EXISTS scratch (x int)")
    sql:exec("INSERT INTO scratch VALUES (1)")
    %s
  end,
}
]], r[2]))
      S.write(dir .. "/seen.lua", D.seen_script("ok"))
      for i = 1, 3 do append(url, "r-" .. i, "Added", "{}") end
      local pid, log = D.start(url, dir, "--cpu-ms 200")
      D.caught_up(url, "bad", 30)
      D.caught_up(url, "seen", 30)
      assert.are.equal(3, count(url, "tide_dead_letters WHERE processor_id = 'spec/bad'"))
      if r[3] then
        local errors = S.psql(url, "SELECT string_agg(DISTINCT last_error, ' | ') FROM tide_dead_letters")
        assert.truthy(errors:find(r[3], 1, true), errors)
      end
      -- No transaction of the daemon stays open (it would hold every consumer back).
      S.wait_for(function()
        return count(url, "pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'") == 0
      end, 5, "no open transaction")
      append(url, "r-4", "Added", "{}")
      D.caught_up(url, "seen", 10)
      assert.are.equal(4, count(url, "seen"))
      D.stop(pid)
      -- A clean drain, not the 15 s deadline that ends a daemon whose loop is stuck.
      assert.truthy(D.read(log):find("event=daemon.stopped", 1, true))
      assert.is_nil(D.read(log):find("daemon.drain_timeout", 1, true))
      assert.truthy(D.read(log):find("event=batch.failed processor=spec/bad", 1, true))
    end)
  end

  it("filters by type on the server, so an event too big for a script only troubles those that take it", function()
    S.write(dir .. "/typed.lua", [[
local tide = require "tide"
return tide.projection {
  events = { "Added" },
  setup = function(sql) sql:exec("CREATE TABLE IF NOT EXISTS typed (pos bigint PRIMARY KEY)") end,
  handle = function(events, sql)
    for _, e in ipairs(events) do sql:exec("INSERT INTO typed VALUES ($1)", e.global_position) end
  end,
}
]])
    S.write(dir .. "/seen.lua", D.seen_script("all", "max_attempts = 2, backoff_ms = 10,"))
    for i = 1, 5 do append(url, "big-" .. i, "Added", "{}") end
    -- 40 MB of data, as a foreign writer (or Emmett) could store it; the scripts get 16 MB.
    S.psql(url, [[SELECT tide_append('big-x', 'any', jsonb_build_array(jsonb_build_object('type', 'Huge',
      'data', jsonb_build_object('blob', repeat('x', 40000000)))))]])
    for i = 6, 10 do append(url, "big-" .. i, "Added", "{}") end
    local pid = D.start(url, dir, "--memory-mb 16")
    D.caught_up(url, "typed", 60)
    D.caught_up(url, "seen", 60)
    assert.are.equal(10, count(url, "typed"))
    assert.are.equal(10, count(url, "seen"))
    local parked = S.lines(S.tide("dlq list --json --processor seen --database " .. q(url)).out)
    assert.are.equal(1, #parked)
    assert.are.equal("Huge", parked[1].type)
    assert.truthy(parked[1].last_error:find("memory", 1, true), parked[1].last_error)
    assert.are.equal(0, count(url, "tide_dead_letters WHERE processor_id = 'spec/typed'"))
    D.stop(pid)
  end)

  it("shows a dead daemon's processors as expired, and a removed processor as stopped", function()
    S.write(dir .. "/seen.lua", D.seen_script("a"))
    S.write(dir .. "/broken.lua", "return tide.projection {")
    local pid = D.start(url, dir, "--lease-ms 1000")
    append(url, "st-1", "Added", "{}")
    D.caught_up(url, "seen")
    S.wait_for(function() return (D.status(url).broken or {}).state == "failed" end, 10, "broken to show")
    os.remove(dir .. "/broken.lua")
    S.wait_for(function() return (D.status(url).broken or {}).state == "stopped" end, 10, "broken to stop")
    D.kill9(pid)
    S.wait_for(function() return (D.status(url).seen or {}).state == "expired" end, 5, "seen to expire")
    local r = S.tide("status --database " .. q(url))
    assert.truthy(r.out:find("seen%s+projection%s+expired"), r.out)
  end)
end)

describe("tide dlq", function()
  if why then
    it("needs the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local url
  before_each(function() url = S.fresh_db() end)
  after_each(function() if url then S.drop_db(url) end end)

  it("explains its usage and refuses bad arguments", function()
    local r = S.tide("dlq --help")
    assert.are.equal(0, r.code)
    assert.truthy(r.out:find("tide dlq retry", 1, true))
    for _, args in ipairs({ "dlq", "dlq nope", "dlq show", "dlq show 1 2", "dlq retry", "dlq retry x",
                            "dlq discard 1 --all", "dlq list 3", "dlq retry 1 --json" }) do
      r = S.tide(args .. " --database " .. q(url))
      assert.are.equal(2, r.code, args)
      assert.truthy(r.err:find("tide dlq", 1, true), r.err)
    end
  end)

  it("lists nothing, and says so for ids it does not know", function()
    local r = S.tide("dlq list --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    assert.truthy(r.out:find("no dead letters", 1, true), r.out)
    r = S.tide("dlq show 42 --database " .. q(url))
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find("no dead letter 42", 1, true), r.err)
    r = S.tide("dlq discard 42 --database " .. q(url))
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find("no dead letter", 1, true), r.err)
  end)

  it("discards what it is asked to, and only that", function()
    S.tide("append d-1 T '{}' --database " .. q(url))
    S.psql(url, [[INSERT INTO tide_dead_letters (processor_id, partition, version, stream_id, stream_position,
      global_position, transaction_id, message_id, message_type, message_data, message_metadata, created,
      attempts, last_error)
      SELECT p, partition, 1, stream_id, stream_position, global_position, transaction_id, message_id,
             message_type, message_data, message_metadata, created, 5, 'boom'
        FROM emt_messages, (VALUES ('a'), ('b')) v(p)]])
    local r = S.tide("dlq discard --all --processor a --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    assert.truthy(r.out:find("discarded 1 dead letter", 1, true), r.out)
    assert.are.equal("b", S.psql(url, "SELECT string_agg(processor_id, ',') FROM tide_dead_letters"))
  end)
end)
