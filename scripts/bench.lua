-- scripts/bench.lua — tide's benchmarks, run by scripts/bench under LuaJIT against a
-- private PostgreSQL with durable settings. Every figure is printed next to the
-- PostgreSQL reference measured in the same run (pgbench on the same server and row
-- shape), as a ratio: ratios are what count on a shared, noisy machine.
-- usage: luajit scripts/bench.lua ADMIN_URL [--quick]
local ffi = require "ffi"
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } tide_timespec;
  int clock_gettime(int clk, tide_timespec *ts);
  int usleep(unsigned int usec);
]]

local root = arg[0]:match("^(.*)/scripts/") or "."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/lua/?.so;" .. package.cpath
local tide = require "tide"

local admin = assert(arg[1], "usage: bench.lua ADMIN_URL [--quick]")
local quick = arg[2] == "--quick"
local TIDE = root .. "/build/tide"
local DRIVER = root .. "/build/tide-bench"
local PGBENCH = io.popen("ls -d /usr/lib/postgresql/*/bin/pgbench | sort -V | tail -1"):read("*l")
local SECONDS = quick and 1 or 10
local PRELOAD = quick and 10000 or 100000
local STREAMS = quick and 100 or 1000
local LAT_EVENTS = quick and 100 or 1000
local RELOADS = quick and 3 or 10
local work = os.getenv("TIDE_BENCH_DIR") or (root .. "/build/bench")

local function now_ms()
  local ts = ffi.new("tide_timespec")
  ffi.C.clock_gettime(0, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local function sleep_ms(ms) ffi.C.usleep(ms * 1000) end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function sh(cmd)
  local f = assert(io.popen(cmd .. " 2>&1"))
  local out = f:read("*a")
  local ok, _, code = f:close()
  if ok ~= true and ok ~= 0 and code ~= 0 then error("failed: " .. cmd .. "\n" .. out) end
  return out
end
local function url_for(db) return (admin:gsub("^postgresql:///[^?]*", "postgresql:///" .. db)) end
local function psql(url, sql) return (sh("psql -qAtX " .. q(url) .. " -c " .. q(sql)):gsub("%s+$", "")) end
local function fresh_db(name)
  psql(admin, "DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
  psql(admin, "CREATE DATABASE " .. name)
  local url = url_for(name)
  sh(TIDE .. " migrate --database " .. q(url))
  return url
end
local function json_field(s, key) return tonumber(s:match('"' .. key .. '":([%d%.]+)')) end
local function median(t)
  table.sort(t)
  return t[math.ceil(#t / 2)]
end

local results, rows = {}, {}
local function record(key, label, value, unit, ref, target, better)
  results[key] = { value = value, unit = unit, reference = ref, target = target,
                   ratio = ref and value / ref or nil }
  rows[#rows + 1] = { label = label, value = value, unit = unit, ref = ref, target = target,
                      better = better }
  io.stderr:write(string.format("  %-46s %12.2f %s\n", label, value, unit))
end

sh("mkdir -p " .. q(work))
io.stderr:write(string.format("tide benchmarks (%s mode)\n", quick and "quick" or "full"))

-- 1. Appends, 1 event per call, 1 and 8 clients; pgbench's one-statement insert of the
-- same row shape as the reference.
local pgb_one = work .. "/pgbench-append.sql"
local f = assert(io.open(pgb_one, "w"))
f:write([[
INSERT INTO emt_messages (stream_id, stream_position, partition, message_data, message_metadata, message_schema_version, message_type, message_id, transaction_id) VALUES ('pgb-' || gen_random_uuid(), 1, 'emt:default', '{"amount":1,"note":"benchmark"}', '{}', '1', 'BenchEvent', gen_random_uuid()::text, pg_current_xact_id());
]])
f:close()
local function pgbench_tps(url, script, clients, extra)
  local out = sh(string.format("%s -n -f %s -c %d -j %d %s %s", PGBENCH, q(script), clients,
    math.min(clients, 2), extra or ("-T " .. SECONDS), q(url)))
  return tonumber(out:match("tps = ([%d%.]+)")), tonumber(out:match("latency average = ([%d%.]+) ms"))
end

for _, clients in ipairs({ 1, 8 }) do
  local url = fresh_db("bench_append_" .. clients)
  local out = sh(string.format("%s --database %s --clients %d --seconds %d --streams 100",
    DRIVER, q(url), clients, SECONDS))
  local ref = pgbench_tps(url, pgb_one, clients)
  record("append_1_c" .. clients, "append 1 ev/call, " .. clients .. " client(s)",
    json_field(out, "events_per_s"), "events/s", ref, 0.85 * ref, "higher")
  record("append_1_c" .. clients .. "_p50", "  latency p50", json_field(out, "p50_ms"), "ms")
  record("append_1_c" .. clients .. "_p99", "  latency p99", json_field(out, "p99_ms"), "ms")
end

-- 2. Appends, 100 events per call; reference: INSERT … SELECT of 100,000 rows.
do
  local url = fresh_db("bench_append_100")
  local out = sh(string.format("%s --database %s --clients 1 --events-per-call 100 --seconds %d --streams 100",
    DRIVER, q(url), SECONDS))
  local bulk = work .. "/pgbench-bulk.sql"
  local g = assert(io.open(bulk, "w"))
  g:write([[
INSERT INTO emt_messages (stream_id, stream_position, partition, message_data, message_metadata, message_schema_version, message_type, message_id, transaction_id) SELECT 'bulk-' || gen_random_uuid(), 1, 'emt:default', '{"amount":1,"note":"benchmark"}', '{}', '1', 'BenchEvent', gen_random_uuid()::text, pg_current_xact_id() FROM generate_series(1, 100000);
]])
  g:close()
  local _, lat = pgbench_tps(url, bulk, 1, "-t 3")
  local ref = 100000 / (lat / 1000)
  record("append_100", "append 100 ev/call, 1 client", json_field(out, "events_per_s"),
    "events/s", ref, 150000, "higher")
end

-- 3. Read and aggregate one 10,000-event stream, in process through the Lua module.
do
  local url = fresh_db("bench_read")
  sh(string.format("%s --database %s --clients 1 --events-per-call 100 --calls 100 --streams 1 --prefix big",
    DRIVER, q(url)))
  local store = assert(tide.connect(url))
  local summing = tide.decider {
    initial = function() return { sum = 0 } end,
    evolve = function(s, e) s.sum = s.sum + e.data.amount return s end,
    decide = function() return { { type = "Added", data = { amount = 1 } } } end,
  }
  -- One command: read the (new) stream, fold, decide, append with the read version.
  local handles = {}
  for i = 1, 50 do
    local t0 = now_ms()
    assert(store:handle(summing, "cmd-" .. i, { type = "Add", data = {} }))
    handles[i] = now_ms() - t0
  end
  local reads, aggs = {}, {}
  for i = 1, 6 do
    local t0 = now_ms()
    local events = assert(store:read("big-0-0"))
    local t1 = now_ms()
    local state, version = assert(store:aggregate(summing, "big-0-0"))
    local t2 = now_ms()
    assert(#events == 10000 and state.sum == 10000 and version == 10000)
    if i > 1 then reads[#reads + 1], aggs[#aggs + 1] = t1 - t0, t2 - t1 end -- first: warm-up
  end
  store:close()
  local ref_ms = tonumber(psql(url, "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM emt_messages WHERE stream_id = 'big-0-0' ORDER BY stream_position"):match('"Execution Time": ([%d%.]+)'))
  record("read_10k", "read a 10,000-event stream (median of 5)", median(reads), "ms", ref_ms)
  record("aggregate_10k", "aggregate a 10,000-event stream (median of 5)", median(aggs), "ms",
    ref_ms, 10, "lower")
  record("handle", "handle one command, in process (median of 50)", median(handles), "ms")
end

-- The daemon helpers.
local function write(path, text)
  local h = assert(io.open(path .. ".tmp", "w"))
  h:write(text)
  h:close()
  assert(os.rename(path .. ".tmp", path))
end
local function start_daemon(url, dir, extra)
  local log = dir .. "/daemon.log"
  local pid = sh(string.format("%s run %s --app bench --database %s %s >%s 2>&1 & echo $!", TIDE, q(dir),
    q(url), extra or "", q(log))):match("%d+")
  return pid
end
local function stop_daemon(pid)
  os.execute("kill -TERM " .. pid .. " 2>/dev/null")
  for _ = 1, 100 do
    if not io.open("/proc/" .. pid .. "/status") then return end
    sleep_ms(50)
  end
  os.execute("kill -9 " .. pid .. " 2>/dev/null")
end
local function fresh_dir(name)
  local dir = work .. "/" .. name
  sh("rm -rf " .. q(dir) .. " && mkdir -p " .. q(dir))
  return dir
end

-- 4. Processing 100,000 pre-loaded events in 1,000 streams: in-memory and SQL upserts.
local function preload(url, n, streams)
  psql(url, string.format([[SELECT count(*) FROM (SELECT tide_append('s-' || (i %% %d), 'any',
    jsonb_build_array(jsonb_build_object('type', 'Added', 'data', jsonb_build_object('amount', 1))))
    FROM generate_series(1, %d) i) x]], streams, n))
  -- Settle the table first: autovacuum visiting it mid-run would make the figures noise.
  psql(url, "VACUUM ANALYZE emt_messages")
end
local processors = {
  memory = [[
local tide = require "tide"
local sums = {}
return tide.projection { handle = function(events)
  for _, e in ipairs(events) do sums[e.stream_id] = (sums[e.stream_id] or 0) + e.data.amount end
end }
]],
  sql = [[
local tide = require "tide"
return tide.projection {
  setup = function(sql) sql:exec("CREATE TABLE IF NOT EXISTS totals (id text PRIMARY KEY, n bigint NOT NULL)") end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      sql:exec("INSERT INTO totals (id, n) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET n = totals.n + $2",
               e.stream_id, e.data.amount)
    end
  end,
}
]],
}
for _, kind in ipairs({ "memory", "sql" }) do
  local url = fresh_db("bench_process_" .. kind)
  preload(url, PRELOAD, STREAMS)
  local last = tonumber(psql(url, "SELECT max(global_position) FROM emt_messages"))
  local dir = fresh_dir("process-" .. kind)
  write(dir .. "/p.lua", processors[kind])
  local pid = start_daemon(url, dir, "--batch-size 1000")
  -- The daemon says when it has worked off a backlog, and how fast (from its first read to
  -- the commit of the last batch); polling with psql meanwhile would steal its CPU.
  local rate
  for _ = 1, 6000 do
    local log = io.open(dir .. "/daemon.log")
    local text = log and log:read("*a") or ""
    if log then log:close() end
    rate = tonumber(text:match("event=processor%.caught_up[^\n]*events_per_second=(%d+)"))
    if rate then break end
    sleep_ms(10)
  end
  stop_daemon(pid)
  assert(rate, "the daemon did not catch up; see " .. dir .. "/daemon.log")
  local cp = tonumber(psql(url, "SELECT max(last_processed_checkpoint::bigint) FROM emt_processors WHERE processor_id = 'bench/p'"))
  assert(cp == last, "the daemon stopped at " .. tostring(cp) .. " of " .. last)
  if kind == "sql" then
    assert(tonumber(psql(url, "SELECT sum(n) FROM totals")) == PRELOAD, "SQL projection miscounted")
  end
  local target = kind == "memory" and 250000 or 60000
  record("process_" .. kind, "daemon: " .. PRELOAD .. " events, " .. (kind == "memory" and "in-memory handler" or "SQL upsert per event"),
    rate, "events/s", nil, target, "higher")
end

-- 5. Append → handler latency on an idle daemon: events appended one by one, 5 ms apart,
-- measured from each append's commit (track_commit_timestamp) to the handler's insert.
do
  local url = fresh_db("bench_latency")
  local dir = fresh_dir("latency")
  write(dir .. "/lat.lua", [[
local tide = require "tide"
return tide.projection {
  setup = function(sql) sql:exec("CREATE TABLE IF NOT EXISTS lat (pos bigint PRIMARY KEY, at timestamptz NOT NULL)") end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      sql:exec("INSERT INTO lat (pos, at) VALUES ($1, clock_timestamp())", e.global_position)
    end
  end,
}
]])
  local pid = start_daemon(url, dir, "--poll-ms 60000")
  sleep_ms(1000)
  sh(string.format("%s --database %s --clients 1 --calls %d --interval-ms 5", DRIVER, q(url), LAT_EVENTS))
  for _ = 1, 500 do
    if tonumber(psql(url, "SELECT count(*) FROM lat")) >= LAT_EVENTS then break end
    sleep_ms(10)
  end
  stop_daemon(pid)
  local p50, p99 = psql(url, [[
    WITH l AS (SELECT 1000 * extract(epoch FROM lat.at - pg_xact_commit_timestamp(m.xmin)) AS ms
                 FROM lat JOIN emt_messages m ON m.global_position = lat.pos)
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) || ' ' ||
           percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FROM l]]):match("([%d%.e%-]+) ([%d%.e%-]+)")
  record("latency_p50", "append → handler latency p50 (idle daemon)", tonumber(p50), "ms", nil, 1, "lower")
  record("latency_p99", "append → handler latency p99", tonumber(p99), "ms", nil, 5, "lower")
end

-- 6. Hot reload: file rewritten → first event handled by the new code.
do
  local url = fresh_db("bench_reload")
  local dir = fresh_dir("reload")
  local function script(tag)
    return string.format([[
local tide = require "tide"
return tide.projection {
  setup = function(sql) sql:exec("CREATE TABLE IF NOT EXISTS seen (pos bigint PRIMARY KEY, tag text NOT NULL, at timestamptz NOT NULL)") end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      sql:exec("INSERT INTO seen (pos, tag, at) VALUES ($1, $2, clock_timestamp())", e.global_position, %q)
    end
  end,
}
]], tag)
  end
  write(dir .. "/r.lua", script("t0"))
  local pid = start_daemon(url, dir, "--poll-ms 60000")
  sleep_ms(1000)
  local appender = sh(string.format("%s --database %s --clients 1 --seconds 600 --interval-ms 5 >/dev/null 2>&1 & echo $!",
    DRIVER, q(url))):match("%d+")
  local times = {}
  for i = 1, RELOADS do
    sleep_ms(200)
    local tag = "t" .. i
    local t0 = now_ms()
    write(dir .. "/r.lua", script(tag))
    for _ = 1, 1000 do
      local at = tonumber(psql(url, "SELECT 1000 * extract(epoch FROM min(at)) FROM seen WHERE tag = '" .. tag .. "'"))
      if at then times[#times + 1] = at - t0 break end
      sleep_ms(5)
    end
  end
  os.execute("kill -TERM " .. appender)
  stop_daemon(pid)
  record("reload", "hot reload: save → new code live (median of " .. RELOADS .. ")", median(times), "ms",
    nil, 200, "lower")
end

-- 7. Daemon RSS with 10 idle processors.
do
  local url = fresh_db("bench_rss")
  local dir = fresh_dir("rss")
  for i = 1, 10 do write(dir .. "/p" .. i .. ".lua", processors.memory) end
  local pid = start_daemon(url, dir)
  sleep_ms(2000)
  local status = assert(io.open("/proc/" .. pid .. "/status")):read("*a")
  stop_daemon(pid)
  record("rss_10_idle", "daemon RSS, 10 idle processors", tonumber(status:match("VmRSS:%s+(%d+)")) / 1024,
    "MiB", nil, 20, "lower")
end

-- The table and the JSON file.
local function fmt(v) return v and (v >= 1000 and string.format("%.0f", v) or string.format("%.2f", v)) or "" end
print(string.format("\n%-48s %12s %-9s %12s %7s %10s  %s", "benchmark", "tide", "unit", "PostgreSQL", "ratio", "target", "met"))
for _, r in ipairs(rows) do
  local met = ""
  if r.target then
    local ok
    if r.better == "higher" then ok = r.value >= r.target else ok = r.value <= r.target end
    met = ok and "yes" or "NO"
  end
  print(string.format("%-48s %12s %-9s %12s %7s %10s  %s", r.label, fmt(r.value), r.unit,
    fmt(r.ref), r.ref and string.format("%.2f", r.value / r.ref) or "", fmt(r.target), met))
end
local machine = sh("nproc"):gsub("%s", "") .. " cores, " .. sh("uname -m"):gsub("%s", "") .. ", PostgreSQL " ..
  psql(admin, "SHOW server_version"):gsub("%s.*", "") .. ", fsync=" .. psql(admin, "SHOW fsync") ..
  ", synchronous_commit=" .. psql(admin, "SHOW synchronous_commit")
print("\nmachine: " .. machine)
local out = { mode = quick and "quick" or "full", machine = machine, date = os.date("!%Y-%m-%dT%H:%M:%SZ"), results = results }
local jf = assert(io.open(os.getenv("TIDE_BENCH_JSON") or (root .. "/bench-results.json"), "w"))
jf:write(tide.json.encode(out))
jf:write("\n")
jf:close()
