-- Wake-ups from the WAL stream: a daemon whose role may stream the server's WAL is woken by
-- every commit, whoever wrote it, and then tide's writers send no NOTIFY at all (it cost
-- concurrent writers 15-40 % of their rate); a daemon that may not stream says why, says
-- so in its heartbeat row, and tide's writers notify again. Polling and probing are ten
-- minutes away in these tests: only the stream or a NOTIFY can deliver the events.
local S = require "spec.support"
local q = S.q

local why = S.missing()

local D = require "spec.daemon"
local start, read, stop, scalar = D.start, D.read, D.stop, D.scalar

local NO_POLL = "--poll-ms 600000 --probe-ms 600000"

local foreign_append = D.foreign_append

-- A session that LISTENs on tide_messages for `seconds` in the background; the function it
-- returns waits for the end and gives how many NOTIFYs arrived meanwhile.
local function count_notifies(url, seconds)
  local out = S.tmpname(".listen")
  local pid = S.sh(string.format("psql -qAtX %s -c 'LISTEN tide_messages' -c 'SELECT pg_sleep(%g)' >%s 2>&1 & echo $!",
    q(url), seconds, q(out))).out:match("%d+")
  S.wait_for(function()
    return S.psql(url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%'") == "1"
  end, 10, "the listening session")
  return function()
    S.wait_for(function() return not D.alive(pid) end, seconds + 10, "the listening session to end")
    local _, n = read(out):gsub("Asynchronous notification \"tide_messages\"", "")
    os.remove(out)
    return n
  end
end

-- Appends n events, one per call and 50 ms apart, through one store of the Lua module.
local function append_from_lua(url, prefix, n)
  local tide = require "tide"
  local store = assert(tide.connect(url))
  for i = 1, n do
    assert(store:append(prefix .. "-" .. i, { { type = "Ping", data = { i = i } } }))
    S.sleep(0.05)
  end
  store:close()
end

describe("tide run: wake-ups", function()
  if why then
    it("needs the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local url, dir, role
  before_each(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
  end)
  after_each(function()
    D.kill_all()
    if url then S.drop_db(url) end
    if role then
      S.psql(S.url_for("postgres"), "DROP ROLE IF EXISTS " .. role)
      role = nil
    end
  end)

  it("streams the WAL: every writer's commit wakes it, and tide's writers send no NOTIFY", function()
    S.write(dir .. "/seen.lua", D.seen_script("a"))
    local pid, log = start(url, dir, NO_POLL)
    S.wait_for(function() return read(log):find("processor.started", 1, true) end, 20, "the processor to start")
    assert.truthy(read(log):find("event=wake.wal ", 1, true), read(log))
    -- Its heartbeat says it needs no NOTIFY, and that is what tide's writers are told.
    S.wait_for(function() return S.psql(url, "SELECT tide_wake_wanted()") == "f" end, 10, "the heartbeat")
    assert.are.equal("false", S.psql(url, "SELECT string_agg(wakes_by_notify::text, ',') FROM tide_daemons"))
    assert.are.equal("streaming", S.psql(url,
      "SELECT state FROM pg_stat_replication WHERE application_name = 'tide run: wake-up'"))
    -- tide status says how each daemon wakes.
    local st = S.tide("status --database " .. q(url))
    assert.truthy(st.out:find("WAKE", 1, true) and st.out:find(" wal *\n"), st.out)

    local notifies = count_notifies(url, 4)
    -- A writer that sends no NOTIFY (Emmett, psql): delivered with no probe.
    foreign_append(url, "emmett-1")
    S.wait_for(function() return scalar(url, "SELECT count(*) FROM seen") == 1 end, 10, "the Emmett-style row")
    -- tide's own writers: the CLI and a long-lived store of the Lua module.
    assert.are.equal(0, S.tide("append cli-1 Ping '{}' --database " .. q(url)).code)
    append_from_lua(url, "lua", 20)
    S.wait_for(function() return scalar(url, "SELECT count(*) FROM seen") == 22 end, 10, "tide's 21 events")
    -- A connection's first append cannot know yet (it asks as it goes): the CLI's one and
    -- the store's first notify; none after.
    assert.are.equal(2, notifies())
    assert.are.equal("emmett-1|cli-1|lua-1|lua-2", S.psql(url,
      "SELECT string_agg(m.stream_id, '|' ORDER BY s.pos) FROM (SELECT * FROM seen ORDER BY pos LIMIT 4) s JOIN emt_messages m USING (message_id)"))

    -- A transaction that took a position and commits later is delivered when it commits,
    -- after the one behind it that committed first: nothing skipped.
    local slow = S.sh(string.format([[psql %s -qAt -c "BEGIN; INSERT INTO emt_streams (stream_id, stream_position, partition, stream_type, stream_metadata) VALUES ('slow-1', 1, 'emt:default', 'slow', '{}'); INSERT INTO emt_messages (stream_id, stream_position, partition, message_data, message_metadata, message_schema_version, message_type, message_id, transaction_id) VALUES ('slow-1', 1, 'emt:default', '{}', '{}', '1', 'Slow', gen_random_uuid()::text, pg_current_xact_id()); SELECT pg_sleep(1.5); COMMIT" >/dev/null 2>&1 & echo $!]], q(url))).out:match("%d+")
    S.sleep(0.5)
    foreign_append(url, "emmett-2")
    S.wait_for(function() return scalar(url, "SELECT count(*) FROM seen") == 24 end, 10, "the slow row and the one behind it")
    assert.are.equal("slow-1|emmett-2", S.psql(url,
      "SELECT string_agg(m.stream_id, '|' ORDER BY s.pos) FROM (SELECT * FROM seen ORDER BY pos OFFSET 22) s JOIN emt_messages m USING (message_id)"))
    S.wait_for(function() return not D.alive(slow) end, 10, "the slow writer")

    -- Once it stops, its row goes, and writers notify again for whoever listens.
    stop(pid)
    assert.are.equal("t", S.psql(url, "SELECT NOT tide_wake_wanted() AND NOT EXISTS (SELECT 1 FROM tide_daemons)"))
  end)

  it("falls back to NOTIFY without the REPLICATION privilege, and says why", function()
    role = "tide_norepl_" .. math.random(1e6)
    S.psql(url, string.format([[
      CREATE ROLE %s LOGIN NOSUPERUSER NOREPLICATION;
      GRANT CREATE, USAGE ON SCHEMA public TO %s;
      GRANT ALL ON ALL TABLES IN SCHEMA public TO %s;
      GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO %s]], role, role, role, role))
    local as_role = url:gsub("user=[^&]*", "user=" .. role)
    S.write(dir .. "/seen.lua", D.seen_script("a"))
    local pid, log = start(as_role, dir, NO_POLL)
    S.wait_for(function() return read(log):find("processor.started", 1, true) end, 20, "the processor to start")
    S.wait_for(function() return read(log):find("event=wake.no_wal ", 1, true) end, 10, "the fallback")
    local line = read(log):match("[^\n]*event=wake.no_wal [^\n]*")
    assert.truthy(line:find("replication", 1, true), line)
    assert.truthy(line:find("fix=", 1, true), line)
    S.wait_for(function() return S.psql(url, "SELECT tide_wake_wanted()") == "t" end, 10, "the heartbeat")
    assert.truthy(S.tide("status --database " .. q(url)).out:find(" notify *\n"))

    local notifies = count_notifies(url, 3)
    assert.are.equal(0, S.tide("append cli-1 Ping '{}' --database " .. q(url)).code)
    append_from_lua(url, "lua", 10)
    S.wait_for(function() return scalar(url, "SELECT count(*) FROM seen") == 11 end, 10, "the events, by NOTIFY")
    -- One NOTIFY per append at most (those in flight at once fold into one more).
    local n = notifies()
    assert.is_true(n >= 6 and n <= 11, "NOTIFYs: " .. n)
    stop(pid)
  end)

  it("leaves the stream alone with --wake notify", function()
    S.write(dir .. "/seen.lua", D.seen_script("a"))
    local pid, log = start(url, dir, NO_POLL .. " --wake notify")
    S.wait_for(function() return read(log):find("processor.started", 1, true) end, 20, "the processor to start")
    assert.truthy(read(log):find("event=wake.notify ", 1, true))
    assert.falsy(read(log):find("wake.wal", 1, true))
    S.wait_for(function() return S.psql(url, "SELECT tide_wake_wanted()") == "t" end, 10, "the heartbeat")
    assert.are.equal("0", S.psql(url, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'tide run: wake-up'"))
    assert.are.equal(0, S.tide("append cli-1 Ping '{}' --database " .. q(url)).code)
    S.wait_for(function() return scalar(url, "SELECT count(*) FROM seen") == 1 end, 10, "the event, by NOTIFY")
    stop(pid)
    -- A wrong mode is refused before anything starts.
    local bad = S.tide("run " .. q(dir) .. " --wake sometimes --database " .. q(url))
    assert.are.equal(2, bad.code)
    assert.truthy(bad.err:find("wants wal or notify, got 'sometimes'", 1, true), bad.err)
  end)
end)
