-- `tide run` as a real process against a real PostgreSQL: exactly-once processing, crash
-- and restart, wake-ups, hot reload, two daemons, reactors, documents, shutdown.
local S = require "spec.support"
local q = S.q

local why = S.missing()

local D = require "spec.daemon"
local start, alive, read, stop, kill9, scalar = D.start, D.alive, D.read, D.stop, D.kill9, D.scalar
local checkpoint, last_position, caught_up, status = D.checkpoint, D.last_position, D.caught_up, D.status
local load_events = D.load_events

local TOTALS = D.TOTALS
local seen_script = D.seen_script

local matches_fold = D.rows_off_the_fold

describe("tide run", function()
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

  it("processes 100,000 events in 1,000 streams exactly once", function()
    load_events(url, 100000, 1000)
    S.write(dir .. "/totals.lua", TOTALS)
    local pid, log = start(url, dir, "--batch-size 1000")
    caught_up(url, "totals", 120)
    -- The daemon reports the backlog it worked off, once.
    S.wait_for(function() return read(log):find("event=processor.caught_up processor=spec/totals events=100000 ", 1, true) end, 10, "the caught_up line")
    assert.are.equal(1000, scalar(url, "SELECT count(*) FROM totals"))
    assert.are.equal(100000, scalar(url, "SELECT sum(events) FROM totals"))
    assert.are.equal(scalar(url, "SELECT sum((message_data->>'by')::bigint) FROM emt_messages"),
      scalar(url, "SELECT sum(n) FROM totals"))
    assert.are.equal("0", matches_fold(url))
    stop(pid)
  end)

  it("survives kill -9 mid-stream: after a restart the read model equals a fold", function()
    S.write(dir .. "/totals.lua", TOTALS)
    -- Loaded first, so that the daemon is surely part-way when it is killed.
    for _ = 1, 5 do load_events(url, 10000, 100) end
    local pid = start(url, dir, "--batch-size 200 --lease-ms 1000")
    S.wait_for(function()
      local cp = checkpoint(url, "totals")
      return cp > 0 and cp < last_position(url)
    end, 60, "the checkpoint to be part-way")
    kill9(pid)
    local before = checkpoint(url, "totals")
    assert.is_true(before < last_position(url), "the daemon had finished before the kill")
    load_events(url, 5000, 100)
    start(url, dir, "--batch-size 200 --lease-ms 1000")
    caught_up(url, "totals", 120)
    assert.are.equal("0", matches_fold(url))
    assert.are.equal(55000, scalar(url, "SELECT sum(events) FROM totals"))
  end)

  local function foreign_append(stream) D.foreign_append(url, stream) end
  -- Without the WAL stream (wal_wake_spec.lua), which would deliver every one of these.
  local NO_POLL = "--poll-ms 600000 --probe-ms 600000 --wake notify"

  it("is woken by tide's appends with a NOTIFY sent after their commit, none in it", function()
    -- The default schema has no trigger on emt_messages: nothing notifies inside an append.
    assert.are.equal(0, scalar(url, "SELECT count(*) FROM pg_trigger WHERE tgname = 'tide_notify_messages'"))
    S.write(dir .. "/seen.lua", seen_script("a"))
    S.write(dir .. "/echo.lua", [[
return tide.reactor {
  events = { "Ping" },
  handle = function(e, ctx) ctx.append("echo-" .. e.stream_id, { { type = "Echo", data = {} } }) end,
}]])
    -- Polling and probing are ten minutes away: only the NOTIFY can deliver these.
    local pid, log = start(url, dir, NO_POLL)
    S.wait_for(function() return select(2, read(log):gsub("processor.started", "")) == 2 end, 20, "both processors to start")
    S.sleep(0.3)
    assert.are.equal(0, S.tide("append idle-1 Ping '{}' --database " .. q(url)).code)
    -- The CLI's append wakes the daemon; the reactor's ctx.append, committed with its batch,
    -- wakes it again for its own event.
    S.wait_for(function() return scalar(url, "SELECT count(*) FROM seen") == 2 end, 10, "both events to be handled")
    assert.are.equal("idle-1:Ping|echo-idle-1:Echo",
      S.psql(url, "SELECT string_agg(m.stream_id || ':' || m.message_type, '|' ORDER BY s.pos)"
        .. " FROM seen s JOIN emt_messages m USING (message_id)"))
    -- A foreign append is not seen while probing is off (this is what the probe is for).
    foreign_append("emmett-1")
    S.sleep(1)
    assert.are.equal(2, scalar(url, "SELECT count(*) FROM seen"))
    stop(pid)
  end)

  it("finds appends by clients that send no NOTIFY with its probe", function()
    S.write(dir .. "/seen.lua", seen_script("a"))
    local pid, log = start(url, dir, "--poll-ms 600000 --wake notify")
    S.wait_for(function() return read(log):find("processor.started", 1, true) end, 20, "the processor to start")
    S.sleep(0.3)
    foreign_append("emmett-1")
    -- Generous on purpose: polling alone would take ten minutes; scripts/bench measures it.
    S.wait_for(function() return scalar(url, "SELECT count(*) FROM seen") == 1 end, 10, "the Emmett-style row")
    -- A transaction that took a position and commits later is found when it ends.
    local slow = S.sh(string.format([[psql %s -qAt -c "BEGIN; INSERT INTO emt_streams (stream_id, stream_position, partition, stream_type, stream_metadata) VALUES ('slow-1', 1, 'emt:default', 'slow', '{}'); INSERT INTO emt_messages (stream_id, stream_position, partition, message_data, message_metadata, message_schema_version, message_type, message_id, transaction_id) VALUES ('slow-1', 1, 'emt:default', '{}', '{}', '1', 'Slow', gen_random_uuid()::text, pg_current_xact_id()); SELECT pg_sleep(1.5); COMMIT" >/dev/null 2>&1 & echo $!]], q(url))).out:match("%d+")
    S.sleep(0.5)
    foreign_append("emmett-2")
    S.wait_for(function() return scalar(url, "SELECT count(*) FROM seen") == 3 end, 10, "the rows of the slow transaction and the one behind it")
    assert.are.equal("emmett-1|slow-1|emmett-2",
      S.psql(url, "SELECT string_agg(m.stream_id, '|' ORDER BY s.pos) FROM seen s JOIN emt_messages m USING (message_id)"))
    S.wait_for(function() return not alive(slow) end, 10, "the slow writer")
    stop(pid)
  end)

  it("is woken by foreign appends through the opt-in trigger of tide migrate --notify-trigger", function()
    local on = S.tide("migrate --notify-trigger --database " .. q(url))
    assert.are.equal(0, on.code)
    assert.truthy(on.out:find("the NOTIFY trigger on emt_messages is on", 1, true))
    S.write(dir .. "/seen.lua", seen_script("a"))
    local pid, log = start(url, dir, NO_POLL)
    S.wait_for(function() return read(log):find("processor.started", 1, true) end, 20, "the processor to start")
    S.sleep(0.3)
    foreign_append("emmett-1")
    S.wait_for(function() return scalar(url, "SELECT count(*) FROM seen") == 1 end, 10, "the Emmett-style row")
    stop(pid)
    local off = S.tide("migrate --no-notify-trigger --database " .. q(url))
    assert.are.equal(0, off.code)
    assert.truthy(off.out:find("is off", 1, true))
    assert.are.equal(0, scalar(url, "SELECT count(*) FROM pg_trigger WHERE tgname = 'tide_notify_messages'"))
  end)

  it("hands a reactor the store's typed conflict from ctx.append", function()
    S.write(dir .. "/guard.lua", [[
return tide.reactor {
  events = { "Ping", "Boom" },
  on_error = "skip", max_attempts = 1,
  handle = function(e, ctx)
    if e.type == "Boom" then
      ctx.append("target-1", { { type = "Never", data = {} } }, { expected = 5 })
    end
    local ok, err = pcall(ctx.append, "target-1", { { type = "Taken", data = {} } }, { expected = "no_stream" })
    if ok then
      ctx.log("appended, next " .. err.next_expected_version .. " at " .. #err.global_positions)
    else
      ctx.log(string.format("caught %s expected=%s actual=%s: %s", err.kind, tostring(err.expected),
        tostring(err.actual), tostring(err)))
    end
  end,
}]])
    local pid, log = start(url, dir)
    for _, t in ipairs({ "Ping", "Ping", "Boom" }) do
      assert.are.equal(0, S.tide("append p-1 " .. t .. " '{}' --database " .. q(url)).code)
    end
    S.wait_for(function() return read(log):find("processor.skipped", 1, true) end, 20, "the Boom event to be skipped")
    local text = read(log)
    assert.truthy(text:find('message="appended, next 1 at 1"', 1, true), text)
    assert.truthy(text:find('message="caught conflict expected=no_stream actual=1: ctx.append to target-1: version conflict: expected no_stream, found version 1"', 1, true), text)
    -- Not caught, it fails the batch with its message (not "a table value").
    assert.truthy(text:find("event=batch.failed[^\n]*ctx.append to target%-1: version conflict: expected 5, found version 1"), text)
    -- Nothing of the failed tries was written; the caught conflict wrote nothing either.
    assert.are.equal("Taken", S.psql(url, "SELECT string_agg(message_type, ',') FROM emt_messages WHERE stream_id = 'target-1'"))
    stop(pid)
  end)

  it("reconnects and listens again after its connections are killed", function()
    S.write(dir .. "/seen.lua", seen_script("a"))
    local pid, log = start(url, dir, "--poll-ms 60000")
    S.tide("append k-1 T '{}' --database " .. q(url))
    caught_up(url, "seen")
    local killed = scalar(url, [[SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
      WHERE datname = current_database() AND pid <> pg_backend_pid()]])
    assert.is_true(killed >= 2, "expected the daemon's connections to be there")
    S.wait_for(function() return read(log):find("listen.ready.*listen.ready") end, 10, "a new LISTEN")
    S.tide("append k-1 T '{}' --database " .. q(url))
    -- Polling is a minute away: only the new connection and LISTEN can deliver this.
    S.wait_for(function() return scalar(url, "SELECT count(*) FROM seen") == 2 end, 10, "the event after the kill")
    assert.truthy(read(log):find("connection.lost", 1, true) or read(log):find("listen.lost", 1, true))
    stop(pid)
  end)

  it("reloads a script while events flow, losing and repeating nothing", function()
    S.write(dir .. "/seen.lua", seen_script("a"))
    local pid, log = start(url, dir, "--batch-size 50")
    local writer = S.sh(string.format("for i in $(seq 1 40); do %s append flow-$((i %% 4)) Tick '{}' --database %s >/dev/null; sleep 0.02; done >/dev/null 2>&1 & echo $!", q(S.bin), q(url))).out:match("%d+")
    -- The table appears with the first batch: until then, no events.
    S.wait_for(function() return (D.count(url, "seen") or 0) >= 10 end, 30, "some events")
    S.save(dir .. "/seen.lua", seen_script("b"))
    S.wait_for(function() return not alive(writer) end, 60, "the writer")
    -- However fast the writer was, a few more events after the reload must meet the new code.
    S.wait_for(function() return read(log):find("processor.reloaded", 1, true) end, 10, "the reload")
    for _ = 1, 5 do S.tide("append flow-9 Tick '{}' --database " .. q(url)) end
    caught_up(url, "seen")
    assert.is_true(scalar(url, "SELECT count(*) FROM seen WHERE tag = 'b'") >= 5)
    assert.are.equal(45, scalar(url, "SELECT count(*) FROM seen"))
    assert.are.equal(45, scalar(url, "SELECT count(DISTINCT message_id) FROM emt_messages"))
    assert.is_true(scalar(url, "SELECT count(*) FROM seen WHERE tag = 'a'") > 0)
    assert.are.equal(0, scalar(url, "SELECT count(*) FROM seen WHERE tag = 'a' AND pos > (SELECT min(pos) FROM seen WHERE tag = 'b')"))
    stop(pid)
  end)

  it("keeps the running generation when a save is broken, and shows why", function()
    S.write(dir .. "/seen.lua", seen_script("a"))
    local pid, log = start(url, dir)
    S.tide("append e-1 T '{}' --database " .. q(url))
    caught_up(url, "seen")
    for _, broken in ipairs({ "return tide.projection { handle = function( end }", "error('boom at load')" }) do
      S.save(dir .. "/seen.lua", broken)
      S.wait_for(function() return (status(url).seen or {}).last_error end, 10, "the error in status")
      local st = status(url).seen
      assert.truthy(st.last_error:find("seen.lua:1:", 1, true), st.last_error)
      assert.are.equal("running", st.state)
      S.tide("append e-1 T '{}' --database " .. q(url))
      caught_up(url, "seen")
      assert.are.equal("a", S.psql(url, "SELECT string_agg(DISTINCT tag, ',') FROM seen"))
    end
    assert.truthy(read(log):find("processor.reload_failed", 1, true))
    S.save(dir .. "/seen.lua", seen_script("c"))
    S.wait_for(function() return status(url).seen.last_error == nil and status(url).seen.generation == 2 end, 10, "the fix")
    S.tide("append e-1 T '{}' --database " .. q(url))
    S.wait_for(function() return scalar(url, "SELECT count(*) FROM seen WHERE tag = 'c'") == 1 end, 10, "new code")
    stop(pid)
  end)

  it("stops a processor whose file is deleted and starts one for a new file (specs aside)", function()
    S.write(dir .. "/one.lua", seen_script("one"))
    S.write(dir .. "/one_spec.lua", "describe('one', function() end)") -- a test, not a processor
    local pid, log = start(url, dir)
    S.tide("append d-1 T '{}' --database " .. q(url))
    caught_up(url, "one")
    assert.is_nil(status(url).one_spec)
    os.remove(dir .. "/one.lua")
    S.wait_for(function() return (status(url).one or {}).state == "stopped" end, 10, "one to stop")
    assert.truthy(read(log):find("processor.removed", 1, true))
    S.write(dir .. "/two.lua", seen_script("two"):gsub("seen", "seen2"))
    caught_up(url, "two")
    assert.are.equal(1, scalar(url, "SELECT count(*) FROM seen2"))
    stop(pid)
  end)

  it("never double-processes with two daemons, and the other takes over when one dies", function()
    S.write(dir .. "/seen.lua", seen_script("x"))
    local a = start(url, dir, "--lease-ms 2000")
    local b = start(url, dir, "--lease-ms 2000")
    for _ = 1, 3 do load_events(url, 2000, 50) end
    caught_up(url, "seen")
    assert.are.equal(6000, scalar(url, "SELECT count(*) FROM seen"))
    local owner = S.psql(url, "SELECT owner FROM tide_processors WHERE processor_id = 'spec/seen'")
    local dead, survivor = a, b
    if owner:find(":" .. b .. ":", 1, true) then dead, survivor = b, a end
    kill9(dead)
    load_events(url, 1000, 50)
    caught_up(url, "seen", 30)
    assert.are.equal(7000, scalar(url, "SELECT count(*) FROM seen"))
    assert.truthy(S.psql(url, "SELECT owner FROM tide_processors WHERE processor_id = 'spec/seen'"):find(":" .. survivor .. ":", 1, true))
    stop(survivor)
  end)

  it("takes its settings from a Lua configuration file, and logs JSON lines", function()
    local procs = dir .. "/procs"
    os.execute("mkdir -p " .. q(procs))
    S.write(procs .. "/seen.lua", seen_script("cfg"))
    S.write(dir .. "/tide.conf.lua", string.format([[
return { database = %q, app = "cfg", directories = { %q }, batch_size = 7, poll_interval_ms = 60000, log_format = "json" }
]], url, procs))
    local log = dir .. "/cfg.log"
    local pid = S.sh(string.format("env -u TIDE_DATABASE_URL -u DATABASE_URL %s run --config %s >%s 2>&1 & echo $!",
      q(S.bin), q(dir .. "/tide.conf.lua"), q(log))).out:match("%d+")
    D.track(pid)
    for i = 1, 20 do S.tide("append cfg-" .. (i % 3) .. " T '{}' --database " .. q(url)) end
    caught_up(url, "cfg/seen")
    assert.are.equal(20, scalar(url, "SELECT count(*) FROM seen WHERE tag = 'cfg'"))
    stop(pid)
    local lines = 0
    for line in read(log):gmatch("[^\n]+") do
      local entry = S.json(line)
      assert.truthy(entry.ts and entry.level and entry.event, line)
      lines = lines + 1
    end
    assert.is_true(lines >= 4)
    local r = S.tide("run --config " .. q(dir .. "/missing.lua"))
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find("cannot read " .. dir .. "/missing.lua", 1, true), r.err)
    assert.truthy(r.err:find("(the configuration file)", 1, true), r.err)
    S.write(dir .. "/bad.lua", "return { batch_size = -1 }")
    r = S.tide("run --config " .. q(dir .. "/bad.lua") .. " " .. q(procs))
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find("batch_size must be a positive number", 1, true), r.err)
  end)

  it("reloads every script on SIGHUP", function()
    S.write(dir .. "/seen.lua", seen_script("a"))
    local pid, log = start(url, dir)
    S.wait_for(function() return read(log):find("processor.started", 1, true) end, 20, "the start")
    os.execute("kill -HUP " .. pid)
    S.wait_for(function() return read(log):find("processor.reloaded", 1, true) end, 10, "the reload")
    assert.truthy(read(log):find("event=daemon.reload signal=SIGHUP", 1, true))
    S.wait_for(function() return (status(url).seen or {}).generation == 2 end, 10, "generation 2")
    assert.is_true(alive(pid))
    stop(pid)
  end)

  it("exits 0 on SIGTERM and releases its leases", function()
    S.write(dir .. "/seen.lua", seen_script("a"))
    local pid, log = start(url, dir)
    S.wait_for(function() return read(log):find("processor.started", 1, true) end, 20, "the start")
    os.execute("kill -TERM " .. pid)
    S.wait_for(function() return not alive(pid) end, 10, "the exit")
    assert.truthy(read(log):find("daemon.stopped", 1, true))
    assert.are.equal("stopped|true", S.psql(url, "SELECT status || '|' || (owner IS NULL) FROM tide_processors WHERE processor_id = 'spec/seen'"))
  end)

  it("runs reactors once per event, and holds a failing one where it failed (on_error = retry)", function()
    local reactor = [[
local tide = require "tide"
return tide.reactor {
  events = { "CartConfirmed" },
  on_error = "retry",
  handle = function(e, ctx)
    if e.data.bad and %s then error("cannot notify " .. e.stream_id) end
    ctx.append("notifications-" .. e.stream_id, { { type = "Notify", data = { cart = e.stream_id } } })
  end,
}
]]
    S.write(dir .. "/notify.lua", reactor:format("true"))
    local pid = start(url, dir)
    for i = 1, 3 do S.tide("append cart-" .. i .. " CartConfirmed '{}' --database " .. q(url)) end
    caught_up(url, "notify")
    assert.are.equal("3|3", S.psql(url, "SELECT count(*) || '|' || count(DISTINCT stream_id) FROM emt_messages WHERE stream_id LIKE 'notifications-%'"))
    S.tide("append cart-4 CartConfirmed '{\"bad\":true}' --database " .. q(url))
    local stuck = scalar(url, "SELECT max(global_position) FROM emt_messages WHERE stream_id = 'cart-4'")
    local failed = S.wait_for(function()
      local st = status(url).notify
      return st and st.state == "failed" and st.last_error and st
    end, 10, "the failure")
    assert.truthy(failed.last_error:find("cannot notify cart-4", 1, true), failed.last_error)
    assert.is_true(checkpoint(url, "notify") < stuck)
    S.save(dir .. "/notify.lua", reactor:format("false"))
    S.wait_for(function() return checkpoint(url, "notify") >= stuck end, 30, "the recovery")
    assert.are.equal(4, scalar(url, "SELECT count(*) FROM emt_messages WHERE stream_id LIKE 'notifications-%'"))
    stop(pid)
  end)

  it("logs which backend holds the log back, and when it lets go", function()
    S.write(dir .. "/totals.lua", TOTALS)
    local pid, log = start(url, dir, "--poll-ms 200")
    local backend, release = S.hold_transaction(url)
    finally(release)
    -- Appended after the holder began: held back until it ends.
    assert.are.equal(0, S.tide("append s-1 Added '{\"by\":2}' --database " .. q(url)).code)
    S.wait_for(function() return read(log):find("event=log.held_back backend_pid=" .. backend .. " ", 1, true) end, 15, "the warning")
    assert.are.equal(0, scalar(url, "SELECT count(*) FROM totals"))
    release()
    S.wait_for(function() return read(log):find("event=log.released backend_pid=" .. backend, 1, true) end, 10, "the release")
    caught_up(url, "totals")
    assert.are.equal(2, scalar(url, "SELECT n FROM totals WHERE id = 's-1'"))
    stop(pid)
  end)

  it("works off a backlog in full batches, reading ahead, while its reactor appends to the log", function()
    S.write(dir .. "/echo.lua", [[
local tide = require "tide"
return tide.reactor {
  events = { "Added" },
  handle = function(e, ctx) ctx.append("echo-" .. e.stream_id, { { type = "Echoed", data = { of = e.global_position } } }) end,
}
]])
    load_events(url, 3000, 30)
    local pid, log = start(url, dir, "--batch-size 100")
    S.wait_for(function() return read(log):find("event=processor.caught_up processor=spec/echo", 1, true) end, 60, "the backlog")
    caught_up(url, "echo")
    assert.are.equal("3000|3000", S.psql(url, "SELECT count(*) || '|' || count(DISTINCT message_data->>'of') FROM emt_messages WHERE message_type = 'Echoed'"))
    assert.are.equal("0", S.psql(url, [[SELECT count(*) FROM emt_messages a WHERE a.message_type = 'Added'
      AND NOT EXISTS (SELECT 1 FROM emt_messages e WHERE e.message_type = 'Echoed' AND (e.message_data->>'of')::bigint = a.global_position)]]))
    stop(pid)
  end)

  it("keeps documents equal to the fold, deletes on nil and rebuilds on a version change", function()
    local docs = [[
local tide = require "tide"
return tide.projection {
  collection = "sums",
  version = %d,
  initial = function() return { n = 0 } end,
  evolve = function(doc, e)
    if e.type == "Closed" then return nil end
    doc.n = doc.n + e.data.by * %d
    return doc
  end,
}
]]
    S.write(dir .. "/sums.lua", docs:format(1, 1))
    local pid, log = start(url, dir)
    load_events(url, 300, 10)
    caught_up(url, "sums")
    assert.are.equal("0", S.psql(url, [[SELECT count(*) FROM (SELECT stream_id, sum((message_data->>'by')::int) n FROM emt_messages GROUP BY stream_id) f
      FULL JOIN tide_documents d ON d.collection = 'sums' AND d.id = f.stream_id WHERE (d.doc->>'n')::int IS DISTINCT FROM f.n]]))
    S.tide("append s-3 Closed '{}' --database " .. q(url))
    caught_up(url, "sums")
    assert.are.equal(9, scalar(url, "SELECT count(*) FROM tide_documents WHERE collection = 'sums'"))
    S.save(dir .. "/sums.lua", docs:format(2, 10))
    S.wait_for(function() return read(log):find("processor.rebuild", 1, true) end, 10, "the rebuild")
    S.wait_for(function() return checkpoint(url, "sums") >= last_position(url) and scalar(url, "SELECT count(*) FROM emt_processors WHERE processor_id = 'spec/sums' AND version = 2 AND last_processed_checkpoint::bigint >= " .. last_position(url)) == 1 end, 30, "the replay")
    -- Built blue-green (spec/rebuild_spec.lua): readers find the new documents through
    -- tide_collection; the old ones are gone.
    S.wait_for(function() return read(log):find("processor.switched", 1, true) end, 10, "the switch")
    assert.are.equal(scalar(url, "SELECT 10 * sum((message_data->>'by')::int) FROM emt_messages WHERE stream_id = 's-0'"),
      scalar(url, "SELECT (doc->>'n')::int FROM tide_documents WHERE collection = tide_collection('sums') AND id = 's-0'"))
    assert.are.equal(0, scalar(url, "SELECT count(*) FROM tide_documents WHERE collection = 'sums'"))
    stop(pid)
  end)

  it("runs a processor in its own partition: reads, checkpoints and appends only there", function()
    S.write(dir .. "/tenant_seen.lua", [[
local tide = require "tide"
return tide.projection {
  partition = "tenant-a",
  events = { "Opened" },
  setup = function(sql) sql:exec("CREATE TABLE IF NOT EXISTS tenant_seen (message_id text PRIMARY KEY, stream text)") end,
  handle_event = function(e, sql)
    sql:exec("INSERT INTO tenant_seen (message_id, stream) VALUES ($1, $2)", e.message_id, e.stream_id)
  end,
}
]])
    S.write(dir .. "/welcome.lua", [[
local tide = require "tide"
return tide.reactor {
  partition = "tenant-a",
  events = { "Opened" },
  handle = function(e, ctx) ctx.append("welcome-" .. e.stream_id, { { type = "Welcomed", data = {} } }) end,
}
]])
    local pid = start(url, dir)
    for i = 1, 4 do
      assert.are.equal(0, S.tide("append acct-" .. i .. " Opened '{}' --partition tenant-a --database " .. q(url)).code)
      assert.are.equal(0, S.tide("append acct-" .. i .. " Opened '{}' --database " .. q(url)).code)
    end
    local function tenant_end()
      return scalar(url, "SELECT max(global_position) FROM emt_messages WHERE partition = 'tenant-a'")
    end
    S.wait_for(function()
      return scalar(url, "SELECT count(*) FROM emt_messages WHERE stream_id LIKE 'welcome-%'") == 4
        and checkpoint(url, "tenant_seen") >= tenant_end() and checkpoint(url, "welcome") >= tenant_end()
    end, 30, "the tenant's processors to catch up")
    assert.are.equal("4|tenant-a", S.psql(url, "SELECT count(*) || '|' || string_agg(DISTINCT m.partition, ',') FROM tenant_seen t JOIN emt_messages m ON m.message_id = t.message_id"))
    assert.are.equal("tenant-a", S.psql(url, "SELECT string_agg(DISTINCT partition, ',') FROM emt_messages WHERE stream_id LIKE 'welcome-%'"))
    assert.are.equal("tenant-a,tenant-a", S.psql(url, "SELECT string_agg(partition, ',' ORDER BY processor_id) FROM emt_processors WHERE processor_id IN ('spec/tenant_seen', 'spec/welcome')"))
    local st = status(url)
    assert.are.equal("tenant-a", st.tenant_seen.partition)
    assert.are.equal(0, st.tenant_seen.lag_events)
    assert.are.equal(0, st.welcome.lag_events)
    stop(pid)
  end)
end)
