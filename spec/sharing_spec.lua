-- Fair sharing across daemons: three `tide run` processes on one database divide twelve
-- SQL projections 4/4/4; one killed with -9, the two others take its four over (6/6) once
-- its leases lapse; a new one joins and gets its share back (4/4/4). A writer appends
-- 50,000 events all along, and every read model ends equal to a fold of the log.
local S = require "spec.support"
local q = S.q

local why = S.missing()

local D = require "spec.daemon"

local N = 12

-- Projection i: per stream, the sum of data.by and the number of events, in table t<i>.
local function script(i)
  return string.format([[
local tide = require "tide"
return tide.projection {
  events = { "Added" },
  setup = function(sql)
    sql:exec("CREATE TABLE IF NOT EXISTS t%d (id text PRIMARY KEY, n bigint NOT NULL, events bigint NOT NULL)")
  end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      sql:exec("INSERT INTO t%d (id, n, events) VALUES ($1, $2, 1) ON CONFLICT (id) DO UPDATE SET n = t%d.n + $2, events = t%d.events + 1",
               e.stream_id, e.data.by)
    end
  end,
}
]], i, i, i, i)
end

-- How many processors each daemon (by pid) holds a running lease on.
local function shares(url)
  local out = {}
  local rows = S.psql(url, [[SELECT owner FROM tide_processors
    WHERE processor_id LIKE 'spec/p%' AND owner IS NOT NULL AND lease_until >= now()]])
  for owner in rows:gmatch("[^\n]+") do
    local pid = owner:match("^tide:[^:]*:(%d+):")
    out[pid] = (out[pid] or 0) + 1
  end
  return out
end

-- True when the daemons pids hold exactly counts (pid → n) and nobody else holds any.
local function shared_as(url, want)
  local got = shares(url)
  for pid, n in pairs(got) do
    if want[pid] ~= n then return false end
  end
  for pid, n in pairs(want) do
    if got[pid] ~= n then return false end
  end
  return true
end

local function describe_shares(url)
  local parts = {}
  for pid, n in pairs(shares(url)) do parts[#parts + 1] = pid .. "=" .. n end
  table.sort(parts)
  return table.concat(parts, " ")
end

-- Seconds since the epoch, with milliseconds, from a log timestamp (ts=2026-...T..Z).
local function epoch_of(ts)
  return tonumber(S.sh("date -u -d " .. q(ts) .. " +%s.%3N").out)
end

describe("several daemons", function()
  if why then
    it("needs the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local url, dir, writer
  before_each(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
  end)
  after_each(function()
    if writer then os.execute("kill " .. writer .. " 2>/dev/null") end
    writer = nil
    D.kill_all()
    if url then S.drop_db(url) end
  end)

  it("share twelve processors 4/4/4, take a dead one's over, and hand some to a newcomer", function()
    for i = 1, N do S.write(string.format("%s/p%02d.lua", dir, i), script(i)) end
    -- The writer: 25 transactions of 2,000 events (4 in each of 500 streams), paced.
    local done = dir .. "/writer.done"
    writer = S.sh(string.format([[
      (for b in $(seq 1 25); do
         psql -qAtX -v ON_ERROR_STOP=1 %s -c "SELECT count(*) FROM (SELECT tide_append('s-' || s, 'any',
           (SELECT jsonb_agg(jsonb_build_object('type', 'Added', 'data', jsonb_build_object('by', 1 + (s + k + $b) %% 7)))
              FROM generate_series(1, 4) k))
           FROM generate_series(0, 499) s) x" >/dev/null || exit 1
         sleep 0.2
       done; touch %s) >/dev/null 2>&1 & echo $!]], q(url), q(done))).out:match("%d+")

    local opts = "--lease-ms 2000 --batch-size 500"
    local a, log_a = D.start(url, dir, opts)
    local b, log_b = D.start(url, dir, opts)
    local c, log_c = D.start(url, dir, opts)
    S.wait_for(function() return shared_as(url, { [a] = 4, [b] = 4, [c] = 4 }) end, 30,
      "4/4/4 (now " .. describe_shares(url) .. ")")

    -- tide status names the daemon of each processor and lists the live daemons.
    local st = S.tide("status --database " .. q(url))
    assert.are.equal(0, st.code, st.err)
    for _, pid in ipairs({ a, b, c }) do
      assert.truthy(st.out:find(":" .. pid .. " ", 1, true), st.out)
    end
    assert.truthy(st.out:find("DAEMON", 1, true), st.out)
    assert.are.equal(3, D.scalar(url, "SELECT count(*) FROM tide_daemons WHERE alive_until >= now()"))

    -- kill -9: its leases lapse, and the two others take its four over.
    local killed_at = tonumber(S.sh("date -u +%s.%3N").out)
    D.kill9(c)
    S.wait_for(function() return shared_as(url, { [a] = 6, [b] = 6 }) end, 30,
      "6/6 after the kill (now " .. describe_shares(url) .. ")")
    local last = 0
    for _, log in ipairs({ log_a, log_b }) do
      for ts in D.read(log):gmatch("ts=(%S+) level=info event=processor.taken_over") do
        local t = epoch_of(ts)
        if t > killed_at and t > last then last = t end
      end
    end
    assert.is_true(last > killed_at, "the survivors log their take-overs")
    io.stderr:write(string.format("\n[sharing] take-over after kill -9: %.2f s (lease 2 s)\n", last - killed_at))

    -- A newcomer: the two hand two each over, at a batch boundary.
    local d, log_d = D.start(url, dir, opts)
    S.wait_for(function() return shared_as(url, { [a] = 4, [b] = 4, [d] = 4 }) end, 30,
      "4/4/4 with the newcomer (now " .. describe_shares(url) .. ")")
    assert.truthy(D.read(log_a):find("event=processor.handed_over", 1, true) or
      D.read(log_b):find("event=processor.handed_over", 1, true))
    assert.truthy(D.read(log_d):find("event=processor.started", 1, true), D.read(log_d))

    -- Every event once: each read model equals a fold of the log.
    local t0 = os.time()
    S.wait_for(function() return D.alive(writer) == false end, 60, "the writer to finish")
    io.stderr:write(string.format("[sharing] writer done after %d s more\n", os.time() - t0))
    assert.truthy(io.open(done), "the writer appended everything")
    writer = nil
    assert.are.equal(50000, D.scalar(url, "SELECT count(*) FROM emt_messages"))
    local last_pos = D.last_position(url)
    S.wait_for(function()
      return D.scalar(url, "SELECT count(*) FROM emt_processors WHERE processor_id LIKE 'spec/p%' AND last_processed_checkpoint::bigint >= " .. last_pos) == N
    end, 60, "every projection to catch up")
    for i = 1, N do
      local off = S.psql(url, string.format([[
        SELECT count(*) FROM (SELECT stream_id, sum((message_data->>'by')::bigint) AS n, count(*) AS events
                                FROM emt_messages GROUP BY stream_id) f
        FULL JOIN t%d t ON t.id = f.stream_id
        WHERE t.n IS DISTINCT FROM f.n OR t.events IS DISTINCT FROM f.events]], i))
      assert.are.equal("0", off, "t" .. i .. " differs from the fold")
    end

    -- A clean stop takes the daemon's row away; its processors go to the others.
    D.stop(d)
    assert.are.equal(0, D.scalar(url, "SELECT count(*) FROM tide_daemons WHERE owner LIKE '%:" .. d .. ":%'"))
    S.wait_for(function() return shared_as(url, { [a] = 6, [b] = 6 }) end, 30,
      "6/6 after a clean stop (now " .. describe_shares(url) .. ")")
    D.stop(a)
    D.stop(b)
    -- Only the killed one's row is left (not live; tidied away after a minute).
    assert.are.equal("tide:%:" .. c .. ":%", "tide:%:" .. S.psql(url, "SELECT string_agg(pid::text, ',') FROM tide_daemons") .. ":%")
    assert.are.equal(0, D.scalar(url, "SELECT count(*) FROM tide_daemons WHERE alive_until >= now()"))
  end)
end)
