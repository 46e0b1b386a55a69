-- GET /log/subscribe (README "Live subscriptions (SSE)"): the gap-safe global log, live,
-- as Server-Sent Events, against a real daemon and real subscribers (spec/sse_client.mjs):
-- every event once and in cursor order across concurrent writers, a reconnect with
-- Last-Event-ID and a foreign writer; wake-ups; heartbeats; the type filter; bad input; a
-- slow subscriber dropped with a final event while the daemon's memory stays bounded; and
-- SIGTERM ending every subscription.
local S = require "spec.support"
local D = require "spec.daemon"
local H = require "spec.http"
local q = S.q

local why = S.missing()
if not why and S.sh("command -v node").code ~= 0 then
  why = "node is not installed (scripts/setup installs it)"
end

local HEARTBEAT_MS, STALL_MS = 200, 2000
local CONFIG = string.format([[
return { http = { heartbeat_ms = %d, stall_ms = %d, tokens = %s } }
]], HEARTBEAT_MS, STALL_MS, "%s")

-- A subscriber: node spec/sse_client.mjs in the background. opts: last (Last-Event-ID),
-- max (hang up after that many events), pause (read nothing until sub:resume()).
local outputs = {}
local function subscribe(base, query, opts)
  opts = opts or {}
  local out = S.tmpname(".sse")
  outputs[#outputs + 1] = out
  local args = { "node spec/sse_client.mjs", q(base .. "/log/subscribe" .. (query or "")), q(out) }
  if opts.last then args[#args + 1] = "--last-event-id " .. q(opts.last) end
  if opts.max then args[#args + 1] = "--max " .. opts.max end
  if opts.pause then args[#args + 1] = "--pause" end
  local pid = S.sh(table.concat(args, " ") .. " >/dev/null 2>&1 & echo $!").out:match("%d+")
  D.track(pid)
  local sub = { pid = pid, out = out }
  -- What it got so far, one table per whole line: {status, headers}, {id, event, data},
  -- {comment}, {closed}; an event's data decoded as .json when it is JSON.
  function sub.lines()
    local out_ = {}
    for line in D.read(out):gmatch("([^\n]*)\n") do
      local v = S.json(line)
      if v.data then
        local ok, decoded = pcall(S.json, v.data)
        v.json = ok and decoded or nil
      end
      out_[#out_ + 1] = v
    end
    return out_
  end
  -- Its log events (no event name), in the order they came.
  function sub.events()
    local evs = {}
    for _, v in ipairs(sub.lines()) do
      if v.data and not v.event then evs[#evs + 1] = v end
    end
    return evs
  end
  function sub.wait_events(n, seconds)
    return S.wait_for(function() local e = sub.events() return #e >= n and e end, seconds or 30,
      n .. " events at the subscriber (" .. out .. ")")
  end
  function sub.wait_open()
    return S.wait_for(function() local l = sub.lines() return l[1] and l[1].status and l[1] end,
      15, "the subscriber's response headers")
  end
  function sub.closed()
    local l = sub.lines()
    return l[#l] and l[#l].closed and l
  end
  function sub.resume() os.execute("kill -USR1 " .. pid) end
  function sub.stop() os.execute("kill " .. pid .. " 2>/dev/null") end
  return sub
end

-- Every event's cursor in the log's order (what a subscriber must get, in this order).
local function log_cursors(url, after_xid)
  local text = S.psql(url, "SELECT string_agg(transaction_id::text || ':' || global_position, ' '"
    .. " ORDER BY transaction_id, global_position) FROM emt_messages"
    .. (after_xid and (" WHERE transaction_id > '" .. after_xid .. "'") or ""))
  local out = {}
  for c in text:gmatch("%S+") do out[#out + 1] = c end
  return out
end

local function ids(events)
  local out = {}
  for i = 1, #events do out[i] = events[i].id end
  return out
end

local function slice(list, from, to)
  local out = {}
  for i = from, to do out[#out + 1] = list[i] end
  return out
end

-- The cursor after the whole log, for a subscriber that wants only what comes next.
local function log_end(url)
  local c = log_cursors(url)
  return c[#c] or "0:0"
end

-- Rows appended the way Emmett (or psql) appends: one transaction per row, no NOTIFY.
local function foreign_sql(stream, n)
  local sql = {}
  for i = 1, n do
    sql[#sql + 1] = string.format([[
      INSERT INTO emt_streams (stream_id, stream_position, partition, stream_type, stream_metadata)
      VALUES ('%s', %d, 'emt:default', 'emmett', '{}')
      ON CONFLICT (stream_id, partition, is_archived) DO UPDATE SET stream_position = EXCLUDED.stream_position;
      INSERT INTO emt_messages (stream_id, stream_position, partition, message_data, message_metadata,
        message_schema_version, message_type, message_id, transaction_id)
      VALUES ('%s', %d, 'emt:default', '{"i":%d}', '{}', '1', 'Written', gen_random_uuid()::text, pg_current_xact_id());]],
      stream, i, stream, i, i)
  end
  return table.concat(sql, "\n")
end

local function vm(pid, key)
  local f = io.open("/proc/" .. pid .. "/status")
  local text = f:read("*a")
  f:close()
  return tonumber(text:match(key .. ":%s*(%d+) kB"))
end

describe("GET /log/subscribe", function()
  if why then
    it("needs PostgreSQL and node", function() pending(why) end)
    return
  end
  local url, dir, base, pid, log
  setup(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
    S.write(dir .. "/tide.conf.lua", string.format(CONFIG, "{}"))
    base, pid, log = H.start(url, dir, "--poll-ms 60000 --config " .. q(dir .. "/tide.conf.lua"))
  end)
  teardown(function()
    D.kill_all()
    S.drop_db(url)
    for _, f in ipairs(outputs) do os.remove(f) end
  end)

  it("delivers every event once, in cursor order, across concurrent writers, a reconnect and a foreign writer", function()
    local a = subscribe(base, "")
    local b = subscribe(base, "?after=0:0", { max = 40 })
    a.wait_open()
    b.wait_open()
    -- Four writers at once: two over HTTP (the daemon's own appends), two through SQL
    -- (tide_append, each statement its own transaction); commits interleave.
    local function http_writer(prefix, n)
      return string.format([[for i in $(seq 1 %d); do curl -s -o /dev/null -X POST %s/streams/%s-$((i %% 5)) -d '{"events":[{"type":"Added","data":{"i":'$i'}},{"type":"Added","data":{"j":'$i'}}]}'; done]],
        n, base, prefix)
    end
    local function sql_writer(prefix, n)
      local sql = {}
      for i = 1, n do
        sql[#sql + 1] = string.format([[SELECT tide_append('%s-%d', 'any', '[{"type":"Added","data":{"i":%d}}]');]],
          prefix, i % 5, i)
      end
      local file = S.tmpname(".sql")
      S.write(file, table.concat(sql, "\n"))
      return "psql -qAtX " .. q(url) .. " -f " .. q(file) .. " >/dev/null"
    end
    local r = S.sh(string.format("(%s) & (%s) & (%s) & (%s) & wait", http_writer("h1", 40),
      http_writer("h2", 40), sql_writer("q1", 60), sql_writer("q2", 60)))
    assert.are.equal(0, r.code, r.err)
    -- b hung up after 40 events, while the writers were still at it; it comes back with the
    -- last id it got, as an EventSource does.
    local first = S.wait_for(function()
      local l = b.lines()
      return l[#l].hung_up and b.events()
    end, 15, "b to hang up")
    assert.are.equal(40, #first)
    local b2 = subscribe(base, "?after=0:0", { last = first[#first].id })
    -- More from a foreign writer (no NOTIFY: the daemon's log probe finds them) and HTTP.
    S.psql(url, foreign_sql("emmett-1", 10))
    S.sh(http_writer("h3", 10))

    local want = log_cursors(url)
    assert.are.equal(40 * 2 * 2 + 60 * 2 + 10 + 10 * 2, #want)
    local got_a = a.wait_events(#want)
    local got_b2 = b2.wait_events(#want - 40)
    assert.are.same(want, ids(got_a))
    local got_b = ids(first)
    for _, id in ipairs(ids(got_b2)) do got_b[#got_b + 1] = id end
    assert.are.same(want, got_b)
    -- Each event's data is the event as GET /log gives it, its cursor the SSE id.
    local _, _, page = H.get(base .. "/log?max=10000")
    for i, e in ipairs(page.events) do
      assert.are.same(e, got_a[i].json)
      assert.are.equal(e.cursor, got_a[i].id)
    end
    S.sleep(0.3) -- nothing more comes: no repeat
    assert.are.equal(#want, #a.events())
    a.stop()
    b2.stop()
  end)

  it("is woken by the daemon's appends and by its log probe for foreign ones", function()
    local sub = subscribe(base, "?after=" .. log_end(url))
    sub.wait_open()
    -- The daemon polls once a minute (--poll-ms 60000): only a wake-up brings these within
    -- the 10 s each may take.
    for i = 1, 3 do
      local n = #sub.events()
      H.post(base .. "/streams/wake-1", { events = { { type = "W", data = { i = i } } } })
      sub.wait_events(n + 1, 10)
      n = #sub.events()
      S.psql(url, foreign_sql("wake-emmett-" .. i, 1))
      sub.wait_events(n + 1, 10)
    end
    sub.stop()
  end)

  it("answers text/event-stream, uncached, and sends heartbeats while idle", function()
    local sub = subscribe(base, "?after=" .. log_end(url))
    local head = sub.wait_open()
    assert.are.equal(200, head.status)
    assert.are.equal("text/event-stream", head.headers["content-type"])
    assert.are.equal("no-cache", head.headers["cache-control"])
    S.wait_for(function()
      local pings = 0
      for _, l in ipairs(sub.lines()) do if l.comment == "ping" then pings = pings + 1 end end
      return pings >= 3
    end, 10, "three heartbeats")
    assert.are.equal(0, #sub.events())
    sub.stop()
  end)

  it("filters by type and goes on from a cursor, skipped events included", function()
    local from = log_end(url)
    for _, t in ipairs({ "X", "Y", "Z", "Y", "X" }) do
      assert.are.equal(200, (H.post(base .. "/streams/types-1", { events = { { type = t, data = {} } } })))
    end
    local sub = subscribe(base, "?types=X,Z&after=" .. from)
    local got = sub.wait_events(3)
    local types = {}
    for _, e in ipairs(got) do types[#types + 1] = e.json.type end
    assert.are.same({ "X", "Z", "X" }, types)
    local _, _, page = H.get(base .. "/log?after=" .. from)
    assert.are.same({ page.events[1].cursor, page.events[3].cursor, page.events[5].cursor }, ids(got))
    -- Last-Event-ID wins over ?after=.
    local again = subscribe(base, "?types=X,Z&after=0:0", { last = got[2].id })
    assert.are.same({ got[3].id }, ids(again.wait_events(1)))
    S.sleep(0.3)
    assert.are.equal(1, #again.events())
    sub.stop()
    again.stop()
  end)

  it("keeps its subscribers while the database connections are lost, and goes on without a gap", function()
    local from = log_end(url)
    local sub = subscribe(base, "?after=" .. from)
    sub.wait_open()
    S.psql(url, foreign_sql("outage-1", 3))
    sub.wait_events(3)
    S.psql(url, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'tide http'")
    S.psql(url, foreign_sql("outage-2", 3))
    local got = sub.wait_events(6, 30)
    local want = log_cursors(url)
    local start
    for i, c in ipairs(want) do if c == from then start = i end end
    assert.are.same(slice(want, (start or 0) + 1, #want), ids(got))
    assert.is_nil(sub.closed())
    sub.stop()
  end)

  it("refuses a bad cursor, Last-Event-ID, type list or partition with a 400", function()
    local code, _, body = H.get(base .. "/log/subscribe?after=12")
    assert.are.equal(400, code)
    assert.are.equal("invalid", body.error.kind)
    assert.truthy(body.error.message:find("after wants a cursor XID:POS", 1, true))
    code, _, body = H.get(base .. "/log/subscribe", { ["Last-Event-ID"] = "nope" })
    assert.are.equal(400, code)
    assert.truthy(body.error.message:find("Last-Event-ID wants a cursor", 1, true))
    code, _, body = H.get(base .. "/log/subscribe?types=A,,B")
    assert.are.equal(400, code)
    assert.truthy(body.error.message:find("none of them empty", 1, true))
    code, _, body = H.get(base .. "/log/subscribe?partition=" .. string.rep("p", 60))
    assert.are.equal(400, code)
    assert.truthy(body.error.message:find("partition", 1, true))
  end)

  it("drops a subscriber that reads nothing, with a final event, and keeps the daemon's memory bounded", function()
    local from = log_end(url)
    local slow = subscribe(base, "?after=" .. from, { pause = true })
    slow.wait_open()
    S.sleep(0.2)
    -- The peak RSS from here on (echo 5 > clear_refs resets it).
    local reset = S.sh("echo 5 > /proc/" .. pid .. "/clear_refs").code == 0
    local before = vm(pid, "VmRSS")
    -- 50,000 events of 1 kB (50 MB as SSE), in one transaction.
    S.psql(url, [[INSERT INTO emt_messages (stream_id, stream_position, partition, message_data,
      message_metadata, message_schema_version, message_type, message_id, transaction_id)
      SELECT 'big-1', i, 'emt:default', jsonb_build_object('pad', repeat('x', 1000)), '{}', '1',
             'Big', gen_random_uuid()::text, pg_current_xact_id() FROM generate_series(1, 50000) i]])
    S.wait_for(function() return D.read(log):find("event=http.slow_subscriber", 1, true) end, 30,
      "the daemon to find the slow subscriber")
    local after = vm(pid, reset and "VmHWM" or "VmRSS")
    -- It stopped reading at about 1 MiB waiting: the growth is that and a page, not 50 MB.
    -- (ASan's quarantine keeps what is freed: the plain build measures the bound.)
    if not os.getenv("TIDE_SANITIZER_DIR") then
      assert.is_true(after - before < 16 * 1024,
        string.format("RSS grew by %d kB (from %d kB)", after - before, before))
    end
    -- The client reads again within the grace (stall_ms after the final event was queued):
    -- it gets what it had not taken yet, in order, and then the final event.
    slow.resume()
    local lines = S.wait_for(slow.closed, 30, "the slow subscriber's response to end")
    local evs = slow.events()
    assert.is_true(#evs > 0 and #evs < 50000, #evs .. " events")
    local want = log_cursors(url)
    local start
    for i, c in ipairs(want) do if c == evs[1].id then start = i end end
    assert.truthy(start, "its first event is in the log")
    assert.are.same(slice(want, start, start + #evs - 1), ids(evs))
    local last = lines[#lines - 1]
    assert.are.equal("end", last.event)
    assert.are.equal("slow_consumer", last.json.reason)
    assert.truthy(last.json.message:find("Last-Event-ID", 1, true))
    assert.are.equal(evs[#evs].id, last.id)
    -- It goes on from there when it comes back.
    local back = subscribe(base, "?after=0:0", { last = last.id, max = 1 })
    assert.are.same({ want[start + #evs] }, ids(back.wait_events(1)))
  end)

  it("ends every subscription on SIGTERM, a stuck one too, and the daemon exits 0 within seconds", function()
    local sdir = S.mkdtemp()
    S.write(sdir .. "/tide.conf.lua", string.format(CONFIG,
      [[{ { name = "r", token = "read-token-0123456789", scopes = { "read" } },
          { name = "a", token = "append-token-0123456789", scopes = { "append" } } }]]))
    local slog, rc, pidfile = sdir .. "/daemon.log", sdir .. "/rc", sdir .. "/pid"
    S.sh(string.format("(%s run %s --database %s --config %s --http 127.0.0.1:0 >%s 2>&1 & echo $! >%s; wait $!; echo $? >%s) &",
      q(S.bin), q(sdir), q(url), q(sdir .. "/tide.conf.lua"), q(slog), q(pidfile), q(rc)))
    local spid = S.wait_for(function() return D.read(pidfile):match("%d+") end, 10, "the daemon's pid")
    D.track(spid)
    local address = S.wait_for(function() return D.read(slog):match("event=http%.listening address=(%S+)") end,
      15, "the daemon's HTTP server")
    local sbase = "http://" .. address
    -- The scope: read, as EventSource gives it (?access_token=); append is not enough.
    assert.are.equal(401, (H.get(sbase .. "/log/subscribe")))
    assert.are.equal(403, (H.get(sbase .. "/log/subscribe", H.bearer("append-token-0123456789"))))
    local subs = {
      subscribe(sbase, "?access_token=read-token-0123456789&after=" .. log_end(url)),
      subscribe(sbase, "?access_token=read-token-0123456789&after=" .. log_end(url)),
    }
    -- One that reads nothing with the whole log behind it: its queue is full.
    local stuck = subscribe(sbase, "?access_token=read-token-0123456789", { pause = true })
    for _, s in ipairs(subs) do s.wait_open() end
    stuck.wait_open()
    S.sleep(0.5)
    os.execute("kill -TERM " .. spid)
    S.wait_for(function() return D.read(rc):match("%d+") end, 10, "the daemon to exit")
    assert.are.equal("0", D.read(rc):match("%d+"))
    for _, s in ipairs(subs) do
      local lines = S.wait_for(s.closed, 5, "the subscriber's response to end")
      local last = lines[#lines - 1]
      assert.are.equal("end", last.event)
      assert.are.equal("stopping", last.json.reason)
    end
    stuck.stop()
  end)
end)
