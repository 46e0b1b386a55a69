-- scripts/bench.lua — tide's benchmarks, run by scripts/bench under LuaJIT against a
-- private PostgreSQL with durable settings. Every tide figure is printed next to the
-- references measured in the same run on the same server, each in a fresh database:
--   (a) PostgreSQL's own one-statement append (upsert the emt_streams row, insert the
--       emt_messages row at the position it returns), no trigger, via pgbench;
--   (b) the same for 100 rows in one statement; (c) COPY of the rows of a bulk import;
--   (d) Emmett 0.42 itself (scripts/bench_emmett.mjs), when Node.js and the package are there.
-- Ratios are what count on a shared, noisy machine; tide and its pgbench reference run
-- alternately in 2-second slices so that bursts of load from elsewhere fall on both.
-- Benchmarks assert nothing: a missing piece prints n/a.
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
local EMMETT = root .. "/scripts/bench_emmett.mjs"
local PGBENCH do
  local f = io.popen("ls -d /usr/lib/postgresql/*/bin/pgbench | sort -V | tail -1")
  PGBENCH = f:read("*l")
  f:close()
end
local SECONDS = quick and 1 or 10     -- per append benchmark, for tide and for each reference
local PRELOAD = quick and 10000 or 100000
local STREAMS = quick and 100 or 1000
local REF_STREAMS = 1000              -- the append benchmarks and the bulk load spread over these
local BULK = quick and 10000 or 100000 -- rows of the COPY reference and of `tide import`
local BULK_RUNS = quick and 1 or 2    -- of each, alternating
local READ_EVENTS = 10000
local LAT_EVENTS = quick and 100 or 1000
local RELOADS = quick and 3 or 10
local work = os.getenv("TIDE_BENCH_DIR") or (root .. "/build/bench")
-- scripts/bench says whether Emmett can run (node and spec/interop/node_modules), or why not.
local emmett_why = os.getenv("TIDE_BENCH_EMMETT_WHY")
if emmett_why == "" then emmett_why = nil end
if not emmett_why and os.getenv("TIDE_BENCH_EMMETT") ~= "1" then emmett_why = "not requested" end

-- Every event of every benchmark carries this 100-byte payload: tide, pgbench, COPY, Emmett.
-- (No ':' before a letter: pgbench would take it for a variable.)
local DATA = '{"amount":1,"note":"' .. ("benchmark payload, the same ~100 bytes in every row of every run. "):rep(2):sub(1, 78) .. '"}'
assert(#DATA == 100 and not DATA:find(":%a"))

local function now_ms()
  local ts = ffi.new("tide_timespec")
  ffi.C.clock_gettime(0, ts) -- CLOCK_REALTIME: the reload benchmark compares it with the server's clock
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local function sleep_ms(ms) ffi.C.usleep(ms * 1000) end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function sh(cmd)
  local f = assert(io.popen(cmd .. " 2>&1"))
  local out = f:read("*a")
  local ok, _, code = f:close()
  if ok ~= true and ok ~= 0 and code ~= 0 then error("failed: " .. cmd .. "\n" .. out, 0) end
  return out
end
local function url_for(db) return (admin:gsub("^postgresql:///[^?]*", "postgresql:///" .. db)) end
local function psql(url, sql) return (sh("psql -qAtX -v ON_ERROR_STOP=1 " .. q(url) .. " -c " .. q(sql)):gsub("%s+$", "")) end
local function empty_db(name)
  psql(admin, "DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
  psql(admin, "CREATE DATABASE " .. name)
  return url_for(name)
end
-- A database with the schema as `tide migrate` creates it (with or without its trigger:
-- that is tide's business, and it is changing).
local function fresh_db(name)
  local url = empty_db(name)
  sh(TIDE .. " migrate --database " .. q(url))
  return url
end
-- The same tables for a PostgreSQL reference, with tide's NOTIFY trigger dropped if the
-- migration still creates it: the reference is the statement alone.
local function reference_db(name)
  local url = fresh_db(name)
  psql(url, "DROP TRIGGER IF EXISTS tide_notify_messages ON emt_messages")
  return url
end
local function json_field(s, key) return tonumber(s:match('"' .. key .. '":([%d%.eE%+%-]+)')) end
local function median(t)
  table.sort(t)
  return t[math.ceil(#t / 2)]
end
local function mean(t)
  local sum = 0
  for _, v in ipairs(t) do sum = sum + v end
  return sum / #t
end
local function commas(n)
  local t = string.format("%.0f", n)
  return (t:reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", ""))
end
-- A file's whole text, or nil; closed at once (leaked handles would be inherited by every
-- process the benchmarks start: wrk, for one, fails with descriptors above its table).
local function slurp(path)
  local f = io.open(path)
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  return text
end
local function alive(pid) return slurp("/proc/" .. pid .. "/status") ~= nil end
local function command_path(name)
  local f = io.popen("command -v " .. name)
  local path = f:read("*l")
  f:close()
  return path
end
local function write(path, text)
  local h = assert(io.open(path .. ".tmp", "w"))
  h:write(text)
  h:close()
  assert(os.rename(path .. ".tmp", path))
end
local function read_file(path)
  local h = io.open(path)
  if not h then return "" end
  local text = h:read("*a")
  h:close()
  return text
end

-- Results. A row has tide's figure and, where one matches, the PostgreSQL reference and
-- Emmett's figure; its target is the issue's: an absolute bound, a factor of the
-- reference, a factor of Emmett ("≥ 2.5× Emmett": 2.5 times the throughput, or 1/2.5 of
-- the time), all of which must hold.
local results, rows = {}, {}
local function record(key, label, value, unit, o)
  o = o or {}
  local higher = o.better ~= "lower"
  local function ok(v, bound) if higher then return v >= bound else return v <= bound end end
  local parts, failed = {}, {}
  local function check(text, bound)
    parts[#parts + 1] = text
    if value and not ok(value, bound) then failed[#failed + 1] = text end
  end
  local cmp = higher and "≥ " or "≤ "
  if o.target then
    check(cmp .. (o.target >= 1000 and commas(o.target) or tostring(o.target)), o.target)
  end
  if o.ref_factor and o.ref then check(cmp .. o.ref_factor .. "× " .. (o.ref_name or "PG"), o.ref_factor * o.ref) end
  if o.emmett_factor and o.emmett then
    check(higher and ("≥ " .. o.emmett_factor .. "× Emmett") or ("≤ Emmett ÷ " .. o.emmett_factor),
      higher and o.emmett_factor * o.emmett or o.emmett / o.emmett_factor)
  end
  local met = nil
  if #parts > 0 and value then met = #failed == 0 and "yes" or ("NO (" .. table.concat(failed, "; ") .. ")") end
  local emmett_x = value and o.emmett and (higher and value / o.emmett or o.emmett / value) or nil
  results[key] = { value = value, unit = unit, reference = o.ref, ratio = value and o.ref and value / o.ref or nil,
                   emmett = o.emmett, times_emmett = emmett_x, target = o.target,
                   target_rule = #parts > 0 and table.concat(parts, ", ") or nil, met = met, note = o.note }
  if o.row ~= false then
    rows[#rows + 1] = { label = label, value = value, show = o.show, ref = o.ref, ref_show = o.ref_show,
                        emmett = o.emmett, emmett_show = o.emmett_show, emmett_x = emmett_x,
                        target = table.concat(parts, ", "), met = met or "", note = o.note }
  end
  io.stderr:write(string.format("  %-58s %12s %s%s\n", label, value and string.format("%.2f", value) or "n/a", unit,
    o.note and ("  (" .. o.note .. ")") or ""))
end

sh("mkdir -p " .. q(work))
io.stderr:write(string.format("tide benchmarks (%s mode)%s\n", quick and "quick" or "full",
  emmett_why and ("; Emmett not measured: " .. emmett_why) or ""))

-- Runs a and b alternately in short slices, a b b a a b b a …, SECONDS in all for each
-- (one slice each in quick mode), and gives each one's results in a list: a burst of load
-- from elsewhere on the machine then falls on both.
local SLICE = quick and SECONDS or 2
local function alternate(a, b)
  local ra, rb = {}, {}
  for i = 1, 2 * math.max(1, math.floor(SECONDS / SLICE)) do
    local first = (math.ceil(i / 2) % 2 == 1) == (i % 2 == 1)
    if first then ra[#ra + 1] = a(SLICE) else rb[#rb + 1] = b(SLICE) end
  end
  return ra, rb
end

local function pgbench(url, script, clients, seconds)
  local out = sh(string.format("%s -n -M prepared -f %s -c %d -j %d -T %d %s", PGBENCH, q(script), clients,
    math.min(clients, 2), math.max(1, math.floor(seconds + 0.5)), q(url)))
  return { rate = tonumber(out:match("tps = ([%d%.]+)")), p50 = tonumber(out:match("latency average = ([%d%.]+) ms")) }
end
local function driver(url, args)
  local out = sh(string.format("%s --database %s --data %s %s", DRIVER, q(url), q(DATA), args))
  return { rate = json_field(out, "events_per_s"), p50 = json_field(out, "p50_ms"), p99 = json_field(out, "p99_ms") }
end
local function rates(list)
  local t = {}
  for i, r in ipairs(list) do t[i] = r.rate end
  return mean(t)
end
-- Each slice's rate, kept in bench-results.json: how far they spread shows the noise.
local function slices(list)
  local t = {}
  for i, r in ipairs(list) do t[i] = r.rate end
  return t
end

-- Emmett: each measurement in a database of its own, migrated by Emmett.
local emmett_dbs = 0
local function emmett(cmd, ...)
  if emmett_why then return nil end
  emmett_dbs = emmett_dbs + 1
  local url = empty_db("bench_emmett_" .. emmett_dbs)
  local args = { ... }
  local ok, out = pcall(function()
    sh("node " .. q(EMMETT) .. " migrate " .. q(url))
    if cmd.before then cmd.before(url) end
    local quoted = {}
    for i, a in ipairs(args) do quoted[i] = q(a) end
    return sh("node " .. q(EMMETT) .. " " .. cmd.name .. " " .. q(url) .. " " .. table.concat(quoted, " "))
  end)
  if not ok then
    io.stderr:write("  Emmett " .. cmd.name .. " failed: " .. tostring(out):gsub("\n", " ") .. "\n")
    return nil
  end
  return out
end

-- 1. Appends, 1 event per call, 1, 8 and 32 clients, over 1,000 streams. Reference (a):
-- pgbench running PostgreSQL's own one-statement append of the same row.
local pgb_one = work .. "/pgbench-append.sql"
write(pgb_one, [[
\set s random(1, ]] .. REF_STREAMS .. [[)
WITH s AS (
  INSERT INTO emt_streams (stream_id, stream_position, stream_type, stream_metadata)
  VALUES ('ref-' || :s, 1, 'ref', '{}')
  ON CONFLICT (stream_id, partition, is_archived)
  DO UPDATE SET stream_position = emt_streams.stream_position + 1
  RETURNING stream_id, stream_position)
INSERT INTO emt_messages (stream_id, stream_position, message_data, message_metadata,
                          message_schema_version, message_type, message_id, transaction_id)
SELECT s.stream_id, s.stream_position, ']] .. DATA .. [[', '{}', '1', 'BenchEvent',
       CAST(gen_random_uuid() AS text), pg_current_xact_id()
  FROM s;
]])

local trigger
for _, clients in ipairs({ 1, 8, 32 }) do
  local ref_url = reference_db("bench_ref_append_" .. clients)
  local url = fresh_db("bench_append_" .. clients)
  trigger = psql(url, "SELECT count(*) FROM pg_trigger WHERE tgname = 'tide_notify_messages'") ~= "0"
  local refs, tides = alternate(
    function(secs) return pgbench(ref_url, pgb_one, clients, secs) end,
    function(secs)
      return driver(url, string.format("--clients %d --seconds %g --stream-pool %d", clients, secs, REF_STREAMS))
    end)
  local ref = rates(refs)
  local e = clients <= 8 and emmett({ name = "append" }, clients, 1, SECONDS, REF_STREAMS, DATA) or nil
  local erate = e and json_field(e, "events_per_s")
  record("append_1_c" .. clients, string.format("append 1 event/call, %d client%s (events/s)", clients,
      clients > 1 and "s" or ""), rates(tides), "events/s",
    { ref = ref, ref_factor = 0.9, emmett = erate, emmett_factor = 2.5 })
  local p50, p99 = {}, {}
  for i, r in ipairs(tides) do p50[i], p99[i] = r.p50, r.p99 end
  results["append_1_c" .. clients .. "_p50"] = { value = mean(p50), unit = "ms" }
  results["append_1_c" .. clients .. "_p99"] = { value = mean(p99), unit = "ms" }
  results["append_1_c" .. clients].slices = { tide = slices(tides), reference = slices(refs) }
  local ep50, ep99 = e and json_field(e, "p50_ms"), e and json_field(e, "p99_ms")
  rows[#rows + 1] = { label = "— latency p50 / p99 (ms)", show = string.format("%.2f / %.2f", mean(p50), mean(p99)),
                      emmett_show = ep50 and string.format("%.2f / %.2f", ep50, ep99) or nil, target = "", met = "" }
end

-- 1b. Appends with one inline document projection (a document per stream, folded in the
-- append's transaction), 1 client, over 1,000 streams; its reference is tide's own plain
-- one-event append, measured alternately with it in the same run.
do
  local dir = work .. "/inline/bench"
  sh("rm -rf " .. q(dir) .. " && mkdir -p " .. q(dir))
  write(dir .. "/totals.lua", [[
local tide = require "tide"
return tide.projection {
  inline = true,
  collection = "bench_totals",
  initial = function() return { amount = 0, events = 0 } end,
  evolve = function(doc, e)
    doc.amount = doc.amount + e.data.amount
    doc.events = doc.events + 1
    return doc
  end,
}
]])
  local plain_url = fresh_db("bench_inline_ref")
  local url = fresh_db("bench_inline")
  local plains, inlines = alternate(
    function(secs)
      return driver(plain_url, string.format("--clients 1 --seconds %g --stream-pool %d", secs, REF_STREAMS))
    end,
    function(secs)
      return driver(url, string.format("--clients 1 --seconds %g --stream-pool %d --projections %s", secs,
        REF_STREAMS, q(dir)))
    end)
  local plain = rates(plains)
  local note
  local folded = tonumber(psql(url, "SELECT coalesce(sum((doc->>'events')::bigint), 0) FROM tide_documents WHERE collection = 'bench_totals'"))
  local appended = tonumber(psql(url, "SELECT count(*) FROM emt_messages"))
  if folded ~= appended then note = string.format("the projection folded %d of %d events", folded, appended) end
  record("append_inline_c1", "append 1 event/call with one inline document projection, 1 client (events/s)",
    rates(inlines), "events/s", { ref = plain, ref_show = commas(plain) .. " (plain append)", note = note })
  results.append_inline_c1.slices = { tide = slices(inlines), reference = slices(plains) }
end

-- 2. Appends, 100 events per call, 1 client, over 1,000 streams. Reference (b): the same
-- one statement for 100 rows (the stream row moves by 100, the rows take the positions
-- below its new version), each row's payload parsed from text as every append's must be
-- (the payload with 0 or 1 trailing space, cast per row). With the payload as one constant,
-- as this reference had it at first, PostgreSQL parses it once when the statement is
-- prepared and inserts the same value 100 times: measured in the same slices, shown beside.
do
  local function script(name, data)
    local path = work .. "/" .. name
    write(path, [[
\set s random(1, ]] .. REF_STREAMS .. [[)
WITH s AS (
  INSERT INTO emt_streams (stream_id, stream_position, stream_type, stream_metadata)
  VALUES ('ref-' || :s, 100, 'ref', '{}')
  ON CONFLICT (stream_id, partition, is_archived)
  DO UPDATE SET stream_position = emt_streams.stream_position + 100
  RETURNING stream_id, stream_position)
INSERT INTO emt_messages (stream_id, stream_position, message_data, message_metadata,
                          message_schema_version, message_type, message_id, transaction_id)
SELECT s.stream_id, s.stream_position - 100 + g, ]] .. data .. [[, '{}', '1', 'BenchEvent',
       CAST(gen_random_uuid() AS text), pg_current_xact_id()
  FROM s, generate_series(1, 100) AS g;
]])
    return path
  end
  local parsed = script("pgbench-append-100.sql", "CAST('" .. DATA .. "' || repeat(' ', g % 2) AS jsonb)")
  local constant = script("pgbench-append-100-constant.sql", "'" .. DATA .. "'")
  local ref_url = reference_db("bench_ref_append_100")
  local url = fresh_db("bench_append_100")
  local constants = {}
  local refs, tides = alternate(
    function(secs)
      local c = pgbench(ref_url, constant, 1, secs)
      c.rate = c.rate * 100
      constants[#constants + 1] = c
      local r = pgbench(ref_url, parsed, 1, secs)
      r.rate = r.rate * 100
      return r
    end,
    function(secs)
      return driver(url, string.format("--clients 1 --events-per-call 100 --seconds %g --stream-pool %d", secs, REF_STREAMS))
    end)
  local e = emmett({ name = "append" }, 1, 100, SECONDS, REF_STREAMS, DATA)
  local ref = rates(refs)
  record("append_100", "append 100 events/call, 1 client (events/s)", rates(tides), "events/s",
    { ref = ref, ref_factor = 0.9, emmett = e and json_field(e, "events_per_s"), emmett_factor = 2.5,
      ref_show = string.format("%s (one constant payload: %s)", commas(ref), commas(rates(constants))) })
  results.append_100.slices = { tide = slices(tides), reference = slices(refs), constant_payload = slices(constants) }
end

-- 3. Bulk load of BULK events into 1,000 streams. Reference (c): psql's \copy of the same
-- rows into emt_messages (and the 1,000 stream rows) in one transaction, from a file
-- written beforehand. tide: `tide import FILE --expected no_stream` of the same events as
-- NDJSON, when this build has the command.
do
  local function uuid(i)
    return string.format("%08x-0000-4000-8000-%012x", math.random(0, 0x7fffffff), i)
  end
  local rows_file, ndjson = work .. "/copy-rows.txt", work .. "/import.ndjson"
  local fr, fj = assert(io.open(rows_file, "w")), assert(io.open(ndjson, "w"))
  for i = 0, BULK - 1 do
    local stream = "imp-" .. (i % REF_STREAMS)
    fr:write(stream, "\t", math.floor(i / REF_STREAMS) + 1, "\t", DATA, "\t{}\t1\tBenchEvent\t", uuid(i), "\n")
    fj:write('{"stream_id":"', stream, '","type":"BenchEvent","data":', DATA, "}\n")
  end
  fr:close()
  fj:close()
  write(work .. "/copy.sql", string.format([[
BEGIN;
INSERT INTO emt_streams (stream_id, stream_position, stream_type, stream_metadata)
SELECT 'imp-' || k, (%d - 1 - k) / %d + 1, 'imp', '{}'
  FROM generate_series(0, %d) AS k;
\copy emt_messages (stream_id, stream_position, message_data, message_metadata, message_schema_version, message_type, message_id) FROM '%s'
COMMIT;
]], BULK, REF_STREAMS, REF_STREAMS - 1, rows_file))
  local copy_runs = 0
  local function copy_once()
    copy_runs = copy_runs + 1
    local url = reference_db("bench_ref_copy_" .. copy_runs)
    -- COPY cannot call pg_current_xact_id() per row; the column's default can, for this
    -- database only (the value is the one an append would write).
    psql(url, "ALTER TABLE emt_messages ALTER COLUMN transaction_id SET DEFAULT pg_current_xact_id()")
    psql(url, "CHECKPOINT")
    local t0 = now_ms()
    sh("psql -qX -v ON_ERROR_STOP=1 -f " .. q(work .. "/copy.sql") .. " " .. q(url))
    local secs = (now_ms() - t0) / 1000
    return { rate = BULK / secs }
  end
  local has_import = os.execute(TIDE .. " import --help >/dev/null 2>&1")
  has_import = has_import == true or has_import == 0
  local import_note
  local import_runs = 0
  local function import_once()
    if not has_import or import_note then return { rate = nil } end
    import_runs = import_runs + 1
    local url = fresh_db("bench_import_" .. import_runs)
    psql(url, "CHECKPOINT")
    local t0 = now_ms()
    local ok, err = pcall(sh, string.format("%s import %s --expected no_stream --database %s </dev/null",
      TIDE, q(ndjson), q(url)))
    local secs = (now_ms() - t0) / 1000
    if not ok then
      import_note = "tide import failed: " .. (tostring(err):match("\n([^\n]+)") or tostring(err))
      return { rate = nil }
    end
    local n = tonumber(psql(url, "SELECT count(*) FROM emt_messages"))
    if n ~= BULK then
      import_note = string.format("tide import wrote %d of %d events", n, BULK)
      return { rate = nil }
    end
    return { rate = BULK / secs }
  end
  local refs, tides = {}, {}
  for r = 1, BULK_RUNS do
    -- a b b a
    local first, second = copy_once, import_once
    if r % 2 == 0 then first, second = import_once, copy_once end
    local x, y = first(), second()
    if first == copy_once then refs[#refs + 1], tides[#tides + 1] = x, y else tides[#tides + 1], refs[#refs + 1] = x, y end
  end
  local ref = rates(refs)
  local value = nil
  if not has_import then import_note = "n/a: `tide import --help` does not exit 0 in this build"
  elseif not import_note then value = rates(tides) end
  record("import", string.format("tide import, %s events, 1,000 streams (events/s)", commas(BULK)),
    value, "events/s", { ref = ref, ref_show = commas(ref) .. " (COPY)", ref_factor = 0.8, note = import_note })
  results.import.slices = { tide = value and slices(tides) or nil, reference = slices(refs) }
  results.copy_reference = { value = ref, unit = "rows/s", rows = BULK, runs = BULK_RUNS }
end

-- 4. Read and aggregate one 10,000-event stream, in process through the Lua module. The
-- reference is PostgreSQL's own client doing the same read: pgbench running tide's stream
-- read (the same columns, a prepared statement) and dropping the rows, its average latency
-- in 1-second slices between tide's reads. The server's execution time alone (EXPLAIN
-- ANALYZE) is shown beside it: it leaves out turning the rows into what goes on the wire
-- (jsonb's text, most of the server's time here), which every client has to wait for.
do
  local url = fresh_db("bench_read")
  sh(string.format("%s --database %s --data %s --clients 1 --events-per-call 100 --calls %d --streams 1 --prefix big",
    DRIVER, q(url), q(DATA), READ_EVENTS / 100))
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
  local select_sql = "SELECT stream_position, global_position, message_type, message_data, message_metadata,"
    .. " message_id, created, message_schema_version FROM emt_messages WHERE stream_id = 'big-0-0'"
    .. " AND partition = 'emt' || chr(58) || 'default' AND NOT is_archived ORDER BY stream_position"
    -- (chr(58), the colon: pgbench would take ":default" for a variable)
  local script = work .. "/read.sql"
  local f = assert(io.open(script, "w"))
  f:write(select_sql, ";\n")
  f:close()
  local reads, aggs, refs = {}, {}, {}
  for i = 1, 6 do
    local t0 = now_ms()
    local events = assert(store:read("big-0-0"))
    local t1 = now_ms()
    local state, version = assert(store:aggregate(summing, "big-0-0"))
    local t2 = now_ms()
    assert(#events == READ_EVENTS and state.sum == READ_EVENTS and version == READ_EVENTS)
    events, state = nil, nil
    if i > 1 then -- the first: warm-up
      reads[#reads + 1], aggs[#aggs + 1] = t1 - t0, t2 - t1
      refs[#refs + 1] = pgbench(url, script, 1, 1).p50
    end
  end
  store:close()
  local ref_ms = median(refs)
  local exec_ms = tonumber(psql(url, "EXPLAIN (ANALYZE, FORMAT JSON) " .. select_sql):match('"Execution Time": ([%d%.]+)'))
  local e = emmett({ name = "read" }, READ_EVENTS, DATA)
  local ref_show = ref_ms and string.format("%.2f (pgbench; server execution alone %s)", ref_ms,
    exec_ms and string.format("%.2f", exec_ms) or "n/a")
  results.read_reference = { pgbench_ms = refs, execution_ms = exec_ms }
  record("read_10k", "read a 10,000-event stream into Lua (ms, median of 5)", median(reads), "ms",
    { ref = ref_ms, ref_show = ref_show, ref_factor = 2, better = "lower",
      emmett = e and json_field(e, "read_ms"), emmett_factor = 2.5 })
  record("aggregate_10k", "aggregate a 10,000-event stream (ms, median of 5)", median(aggs), "ms",
    { ref = ref_ms, ref_show = ref_show, target = 15, better = "lower",
      emmett = e and json_field(e, "aggregate_ms"), emmett_factor = 2.5 })
  record("handle", "handle one command in process: read, decide, append (ms, median of 50)", median(handles), "ms")
end

-- 4b. Aggregate a 100,000-event stream in process, without a snapshot (every event read and
-- folded) and with one (snapshot = { every = 1,000 }: a snapshot taken 500 events before the
-- stream's end, half the distance between two, so 500 events are read and folded).
do
  local url = fresh_db("bench_snapshot")
  local N, TAIL = 100000, 500
  psql(url, string.format([[
    INSERT INTO emt_streams (stream_id, stream_position, stream_type, stream_metadata)
    VALUES ('long-1', %d, 'long', '{}');
    INSERT INTO emt_messages (stream_id, stream_position, message_data, message_metadata,
                              message_schema_version, message_type, message_id, transaction_id)
    SELECT 'long-1', i, '%s', '{}', '1', 'Added', gen_random_uuid()::text, pg_current_xact_id()
      FROM generate_series(1, %d) AS i]], N - TAIL, DATA, N - TAIL))
  psql(url, "VACUUM ANALYZE emt_messages")
  local store = assert(tide.connect(url))
  local function summing(snapshot)
    return tide.decider {
      name = "summing", snapshot = snapshot,
      initial = function() return { sum = 0 } end,
      evolve = function(s, e) s.sum = s.sum + e.data.amount return s end,
      decide = function() end,
    }
  end
  local plain, snapped = summing(nil), summing({ every = 1000 })
  local _, _, first = assert(store:aggregate(snapped, "long-1", { stats = true }))
  assert(first.snapshot_saved == N - TAIL, "the first aggregate did not save a snapshot")
  local tail = {}
  for i = 1, 100 do tail[i] = { type = "Added", data = { amount = 1 } } end
  for _ = 1, TAIL / 100 do assert(store:append("long-1", tail)) end
  local without, with = {}, {}
  for i = 1, 6 do
    local t0 = now_ms()
    local s1, v1 = assert(store:aggregate(plain, "long-1"))
    local t1 = now_ms()
    local s2, v2, stats = assert(store:aggregate(snapped, "long-1", { stats = true }))
    local t2 = now_ms()
    assert(s1.sum == N and v1 == N and s2.sum == N and v2 == N and stats.events_read == TAIL)
    if i > 1 then without[#without + 1], with[#with + 1] = t1 - t0, t2 - t1 end -- first: warm-up
  end
  store:close()
  record("aggregate_100k", "aggregate a 100,000-event stream without snapshot (ms, median of 5)",
    median(without), "ms", { better = "lower" })
  record("aggregate_100k_snapshot", "aggregate a 100,000-event stream with snapshot (ms, median of 5)",
    median(with), "ms", { target = 5, better = "lower" })
end

-- The daemon helpers.
local function start_daemon(url, dir, extra)
  local log = dir .. "/daemon.log"
  local pid = sh(string.format("%s run %s --app bench --database %s %s >%s 2>&1 & echo $!", TIDE, q(dir),
    q(url), extra or "", q(log))):match("%d+")
  return pid
end
local function stop_daemon(pid)
  os.execute("kill -TERM " .. pid .. " 2>/dev/null")
  for _ = 1, 100 do
    if not alive(pid) then return end
    sleep_ms(50)
  end
  os.execute("kill -9 " .. pid .. " 2>/dev/null")
end
-- The rate the daemon logs once it has worked off its backlog (from its first read to the
-- commit of the last batch), waited for up to `seconds`; polling with psql meanwhile would
-- steal its CPU.
local function caught_up_rate(dir, seconds)
  for _ = 1, seconds * 100 do
    local text = read_file(dir .. "/daemon.log")
    local rate = tonumber(text:match("event=processor%.caught_up[^\n]*events_per_second=(%d+)"))
    if rate then return rate end
    sleep_ms(10)
  end
end
local function fresh_dir(name)
  local dir = work .. "/" .. name
  sh("rm -rf " .. q(dir) .. " && mkdir -p " .. q(dir))
  return dir
end

-- 5. Processing 100,000 pre-loaded events in 1,000 streams: in-memory and SQL upserts;
-- Emmett's PostgreSQL consumer with one reactor over the same events.
-- The preload is plain SQL into the emt_* tables (one transaction), the same for tide's
-- and Emmett's databases.
local function preload(url, n, streams)
  psql(url, string.format([[
    INSERT INTO emt_streams (stream_id, stream_position, stream_type, stream_metadata)
    SELECT 's-' || k, (%d - 1 - k) / %d + 1, 's', '{}' FROM generate_series(0, %d) AS k;
    INSERT INTO emt_messages (stream_id, stream_position, message_data, message_metadata,
                              message_schema_version, message_type, message_id, transaction_id)
    SELECT 's-' || (i %% %d), i / %d + 1, '%s', '{}', '1', 'Added', gen_random_uuid()::text,
           pg_current_xact_id()
      FROM generate_series(0, %d) AS i]], n, streams, streams - 1, streams, streams, DATA, n - 1))
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
  local rate = caught_up_rate(dir, 60)
  stop_daemon(pid)
  local note
  if not rate then
    note = "the daemon did not catch up; see " .. dir .. "/daemon.log"
  else
    local cp = tonumber(psql(url, "SELECT max(last_processed_checkpoint::bigint) FROM emt_processors WHERE processor_id = 'bench/p'"))
    if cp ~= last then note = "the daemon stopped at " .. tostring(cp) .. " of " .. last end
    if kind == "sql" and tonumber(psql(url, "SELECT sum(n) FROM totals")) ~= PRELOAD then note = "SQL projection miscounted" end
  end
  local e = kind == "memory" and emmett({ name = "consume", before = function(eurl) preload(eurl, PRELOAD, STREAMS) end },
    PRELOAD, 1000) or nil
  record("process_" .. kind, string.format("daemon, %s events, %s (events/s)", commas(PRELOAD),
      kind == "memory" and "in-memory Lua handler" or "SQL upsert per event"), rate, "events/s",
    { target = kind == "memory" and 250000 or 60000, emmett = e and json_field(e, "events_per_s"),
      emmett_factor = 2.5, note = note })
end

-- 5b. A document projection over the same preload (TIDE_BENCH_REBUILD_EVENTS overrides the
-- count): built by the daemon from scratch, then built again by `tide rebuild` beside it
-- (blue-green: into a collection of its own, then switched to), as `tide rebuild` reports it.
do
  local n = tonumber(os.getenv("TIDE_BENCH_REBUILD_EVENTS") or "") or PRELOAD
  local url = fresh_db("bench_rebuild")
  preload(url, n, STREAMS)
  local dir = fresh_dir("rebuild")
  write(dir .. "/docs.lua", [[
local tide = require "tide"
return tide.projection {
  collection = "sums",
  initial = function() return { n = 0, events = 0 } end,
  evolve = function(doc, e) doc.n = doc.n + e.data.amount; doc.events = doc.events + 1; return doc end,
}
]])
  local pid = start_daemon(url, dir, "--batch-size 1000")
  local built = caught_up_rate(dir, 600)
  local out = sh(string.format("%s rebuild bench/docs --database %s 2>%s", TIDE, q(url), q(dir .. "/rebuild.err")))
  stop_daemon(pid)
  local events, seconds = json_field(out, "events"), json_field(out, "seconds")
  local rebuilt = events and seconds and seconds > 0 and events / seconds or nil
  local note
  if not rebuilt then note = "tide rebuild failed; see " .. dir .. "/rebuild.err"
  elseif tonumber(psql(url, "SELECT sum((doc->>'n')::bigint) FROM tide_documents WHERE collection = tide_collection('sums')")) ~= n then
    note = "the rebuilt documents miscount"
  end
  record("documents_built", string.format("daemon, %s events, document projection (events/s)", commas(n)),
    built, "events/s", { note = not built and "the daemon did not catch up" or nil })
  record("documents_rebuilt", string.format("tide rebuild of that projection beside the daemon, %s events (events/s)", commas(n)),
    rebuilt, "events/s", { note = note })
end

-- 5c. Sharded processors: an SQL projection whose handler does real work (about 300 µs of
-- Lua per event, then an upsert), with 1, 2 and 4 shards, on one daemon and on two (sharing
-- the shards: README "Several daemons"). The daemons start on an empty log and settle first
-- (every worker claimed, the shards spread over the daemons); then the events are loaded in
-- one transaction, and the rate is the events over the time from that load until every shard
-- has caught up.
do
  local n = quick and 3000 or 30000
  local script = [[
local tide = require "tide"
return tide.projection {
  shards = %d,
  setup = function(sql) sql:exec("CREATE TABLE IF NOT EXISTS work (id text PRIMARY KEY, n bigint NOT NULL, h bigint NOT NULL)") end,
  reset = function(sql) sql:exec("TRUNCATE work") end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      local h = 0
      for i = 1, 15000 do h = (h * 31 + i) %% 1000003 end
      sql:exec("INSERT INTO work (id, n, h) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET n = work.n + $2, h = $3",
               e.stream_id, e.data.amount, h)
    end
  end,
}
]]
  for _, daemons in ipairs({ 1, 2 }) do
    for _, shards in ipairs({ 1, 2, 4 }) do
      local url = fresh_db("bench_shards")
      local dir = fresh_dir("shards")
      write(dir .. "/w.lua", string.format(script, shards))
      local pids = {}
      for d = 1, daemons do
        pids[d] = sh(string.format("%s run %s --app bench --database %s --batch-size 100 --lease-ms 3000 >%s 2>&1 & echo $!",
          TIDE, q(dir), q(url), q(dir .. "/daemon-" .. d .. ".log"))):match("%d+")
      end
      local settled
      for _ = 1, 600 do
        local held, owners = psql(url, [[SELECT count(*), count(DISTINCT owner) FROM tide_processors
          WHERE processor_id LIKE 'bench/w%' AND owner IS NOT NULL AND lease_until >= now()]]):match("(%d+)|(%d+)")
        if tonumber(held) == shards and tonumber(owners) == math.min(shards, daemons) then
          settled = true
          break
        end
        sleep_ms(50)
      end
      local t0, elapsed = now_ms(), nil
      preload(url, n, STREAMS)
      local last = tonumber(psql(url, "SELECT max(global_position) FROM emt_messages"))
      for _ = 1, 12000 do
        local done = tonumber(psql(url, string.format([[SELECT count(*) FROM emt_processors
          WHERE processor_id LIKE 'bench/w%%' AND last_processed_checkpoint::bigint >= %d]], last)))
        if done == shards then
          elapsed = now_ms() - t0
          break
        end
        sleep_ms(50)
      end
      for _, pid in ipairs(pids) do stop_daemon(pid) end
      local note
      if not settled then
        note = "the workers did not settle on the daemons; see " .. dir
      elseif not elapsed then
        note = "the shards did not catch up; see " .. dir
      elseif tonumber(psql(url, "SELECT coalesce(sum(n), 0) FROM work")) ~= n then
        note = "the projection miscounted"
      end
      record(string.format("shards_%d_daemons_%d", shards, daemons),
        string.format("SQL projection, ~300 µs Lua per event, %d shard%s on %d daemon%s, %s events (events/s)",
          shards, shards > 1 and "s" or "", daemons, daemons > 1 and "s" or "", commas(n)),
        elapsed and n / (elapsed / 1000) or nil, "events/s", { note = note })
    end
  end
end

-- 5d. What waking a daemon costs the writers: N clients append while a daemon with one
-- in-memory projection runs beside them, woken by the WAL stream (the default when its role
-- may stream: the writers send no NOTIFY) or by NOTIFY (`--wake notify`: each writer sends
-- one after its commits), in alternating slices, each with a daemon of its own.
for _, clients in ipairs({ 8, 32 }) do
  local url = fresh_db("bench_wake_c" .. clients)
  local dir = fresh_dir("wake-c" .. clients)
  write(dir .. "/count.lua", [[
local tide = require "tide"
local n = 0
return tide.projection { handle = function(events) n = n + #events end }
]])
  local function beside(mode)
    return function(secs)
      local pid = start_daemon(url, dir, "--wake " .. mode)
      for _ = 1, 200 do
        local text = read_file(dir .. "/daemon.log")
        if text:find("processor.started", 1, true) and text:find("event=wake.", 1, true) then break end
        sleep_ms(10)
      end
      sleep_ms(300) -- the writers' first answer comes with their first appends
      local r = driver(url, string.format("--clients %d --seconds %g --stream-pool %d", clients, secs, REF_STREAMS))
      stop_daemon(pid)
      return r
    end
  end
  local wal, notify = alternate(beside("wal"), beside("notify"))
  local note
  if not read_file(dir .. "/daemon.log"):find("event=wake.", 1, true) then note = "the daemon did not start; see " .. dir end
  record("append_wake_c" .. clients, string.format("append 1 event/call, %d clients, a daemon woken by the WAL stream beside (events/s)", clients),
    rates(wal), "events/s", { ref = rates(notify), ref_show = commas(rates(notify)) .. " (woken by NOTIFY)", note = note })
  results["append_wake_c" .. clients].slices = { tide = slices(wal), reference = slices(notify) }
end

-- 6. Append → handler latency on an idle daemon: events appended one by one, 5 ms apart,
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
  sh(string.format("%s --database %s --data %s --clients 1 --calls %d --interval-ms 5", DRIVER, q(url), q(DATA), LAT_EVENTS))
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
  p50, p99 = tonumber(p50), tonumber(p99)
  record("latency_p50", "append → handler latency p50 (idle daemon)", p50, "ms", { target = 1, better = "lower", row = false })
  record("latency_p99", "append → handler latency p99", p99, "ms", { target = 5, better = "lower", row = false })
  local ok = p50 and p99 and p50 <= 1 and p99 <= 5
  rows[#rows + 1] = { label = "append → handler latency on an idle daemon, p50 / p99 (ms)",
                      show = p50 and string.format("%.2f / %.2f", p50, p99 or 0) or "n/a",
                      target = "≤ 1 / ≤ 5", met = p50 and (ok and "yes" or "NO") or "" }
end

-- 7. Hot reload: file rewritten → first event handled by the new code.
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
  local appender = sh(string.format("%s --database %s --data %s --clients 1 --seconds 600 --interval-ms 5 >/dev/null 2>&1 & echo $!",
    DRIVER, q(url), q(DATA))):match("%d+")
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
  record("reload", "hot reload: save → new code live (ms, median of " .. RELOADS .. ")", median(times), "ms",
    { target = 200, better = "lower" })
end

-- 8. Daemon RSS with 10 idle processors.
do
  local url = fresh_db("bench_rss")
  local dir = fresh_dir("rss")
  for i = 1, 10 do write(dir .. "/p" .. i .. ".lua", processors.memory) end
  local pid = start_daemon(url, dir)
  sleep_ms(2000)
  local status = assert(slurp("/proc/" .. pid .. "/status"))
  stop_daemon(pid)
  record("rss_10_idle", "daemon RSS with 10 idle processors (MiB)", tonumber(status:match("VmRSS:%s+(%d+)")) / 1024,
    "MiB", { target = 20, better = "lower" })
end

-- A figure as the table shows it.
local function fmt(v)
  if not v then return "" end
  if v >= 1000 then return commas(v) end
  if v >= 10 then return string.format("%.1f", v) end
  return string.format("%.2f", v)
end

-- 9. The HTTP service: single-event appends over HTTP (wrk, keep-alive connections, 1,000
-- streams) at 8 and 64 connections; reference: the Lua module with 8 client processes,
-- each appending one event per call in a loop, measured alternately with HTTP at 8.
local WRK = command_path("wrk")
local function http_daemon(url, name)
  local dir = fresh_dir(name)
  local pid = start_daemon(url, dir, "--http 127.0.0.1:0")
  for _ = 1, 500 do
    local address = (slurp(dir .. "/daemon.log") or ""):match("event=http%.listening address=(%S+)")
    if address then return pid, "http://" .. address end
    sleep_ms(10)
  end
  stop_daemon(pid)
end
if WRK then
  local url = fresh_db("bench_http")
  local pid, base = http_daemon(url, "http")
  local wrk_script = work .. "/wrk-append.lua"
  write(wrk_script, string.format([[
local body = '{"events":[{"type":"BenchEvent","data":%s}]}'
local headers = { ["Content-Type"] = "application/json" }
request = function()
  return wrk.format("POST", "/streams/http-" .. math.random(1, %d), headers, body)
end
]], DATA, REF_STREAMS))
  local function wrk(connections, secs)
    local out = sh(string.format("%s -t2 -c%d -d%ds -s %s %s", WRK, connections, math.max(1, math.floor(secs + 0.5)),
      q(wrk_script), q(base)))
    local bad = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)") or "0")
    local rate = tonumber(out:match("Requests/sec:%s+([%d%.]+)"))
    if not rate or rate == 0 or bad > 0 then
      io.stderr:write("  wrk said: " .. out:gsub("\n", " ") .. "\n")
    end
    return { rate = rate, bad = bad }
  end
  local lua_client = work .. "/lua-append.lua"
  write(lua_client, string.format([[
package.path = %q .. "/lua/?.lua;" .. %q .. "/lua/?/init.lua;" .. package.path
package.cpath = %q .. "/build/lua/?.so;" .. package.cpath
local tide = require "tide"
local ffi = require "ffi"
ffi.cdef "typedef struct { long s; long ns; } ts_t; int clock_gettime(int, ts_t *);"
local ts = ffi.new("ts_t")
local function now() ffi.C.clock_gettime(1, ts) return tonumber(ts.s) + tonumber(ts.ns) / 1e9 end
local store = assert(tide.connect(arg[1]))
local data = tide.json.decode(%q)
local t0, n = now(), 0
while now() - t0 < tonumber(arg[2]) do
  assert(store:append("lua-" .. math.random(1, %d), { { type = "BenchEvent", data = data } }))
  n = n + 1
end
print(n / (now() - t0))
]], root, root, root, DATA, REF_STREAMS))
  local function lua_clients(clients, secs)
    secs = math.max(1, math.floor(secs + 0.5))
    local cmds = {}
    for i = 1, clients do cmds[i] = string.format("luajit %s %s %d", q(lua_client), q(url), secs) end
    local out = sh("(" .. table.concat(cmds, " & ") .. " & wait)")
    local rate = 0
    for r in out:gmatch("[%d%.]+") do rate = rate + tonumber(r) end
    return { rate = rate }
  end
  if pid then
    wrk(8, 1) -- warm-up: the pool's connections made, the daemon's pages touched
    local https, luas = alternate(function(secs) return wrk(8, secs) end,
      function(secs) return lua_clients(8, secs) end)
    local bad = 0
    for _, r in ipairs(https) do bad = bad + r.bad end
    local lua8 = rates(luas)
    record("http_append_c8", "HTTP append 1 event/request, 8 connections (events/s)", rates(https), "events/s",
      { ref = lua8, ref_show = fmt(lua8) .. " (Lua ×8)", ref_factor = 0.8, ref_name = "Lua",
        note = bad > 0 and (bad .. " non-2xx responses") or nil })
    local r64 = wrk(64, SECONDS)
    record("http_append_c64", "HTTP append 1 event/request, 64 connections (events/s)", r64.rate, "events/s",
      { ref = lua8, ref_show = fmt(lua8) .. " (Lua ×8)",
        note = r64.bad > 0 and (r64.bad .. " non-2xx responses") or nil })
    stop_daemon(pid)
  end
else
  io.stderr:write("  HTTP rows skipped: wrk is not installed (scripts/setup installs it)\n")
end

-- 9b. SSE fan-out: 100 subscribers of GET /log/subscribe, each reading SSE_EVENTS
-- pre-loaded events from the start of the log (scripts/bench_sse.mjs); events delivered in
-- all per second, and the daemon's peak RSS meanwhile.
local SSE_EVENTS = quick and 2000 or 20000
if command_path("node") then
  local url = fresh_db("bench_sse")
  preload(url, SSE_EVENTS, REF_STREAMS)
  local pid, base = http_daemon(url, "sse")
  if pid then
    local peak = 0
    local function rss()
      local status = slurp("/proc/" .. pid .. "/status")
      if not status then return end
      local kb = tonumber(status:match("VmRSS:%s+(%d+)"))
      if kb and kb > peak then peak = kb end
    end
    rss()
    local before = peak
    local out_file = work .. "/sse.json"
    local node = sh(string.format("node %s %s 100 %d > %s 2>&1 & echo $!", q(root .. "/scripts/bench_sse.mjs"), q(base),
      SSE_EVENTS, q(out_file))):match("%d+")
    while alive(node) do
      rss()
      sleep_ms(50)
    end
    local out = slurp(out_file) or ""
    stop_daemon(pid)
    local rate = json_field(out, "events_per_s")
    if not rate then io.stderr:write("  SSE fan-out failed: " .. out .. "\n") end
    record("sse_fanout_100", "SSE fan-out: 100 subscribers, events delivered in all (events/s)", rate, "events/s",
      { target = 100000, note = string.format("%d events each; daemon RSS %.1f → %.1f MiB at most", SSE_EVENTS,
        before / 1024, peak / 1024) })
  end
end

-- The table (in the README's markdown) and the JSON file.
local machine = sh("nproc"):gsub("%s", "") .. " cores, " .. sh("uname -m"):gsub("%s", "") .. ", PostgreSQL " ..
  psql(admin, "SHOW server_version"):gsub("%s.*", "") .. ", fsync=" .. psql(admin, "SHOW fsync") ..
  ", synchronous_commit=" .. psql(admin, "SHOW synchronous_commit")
print(string.format("\n%s run, %s UTC, %s; tide's schema %s the NOTIFY trigger on emt_messages", quick and "quick" or "full",
  os.date("!%Y-%m-%d %H:%M"), machine, trigger and "has" or "does not have"))
print("\n| benchmark | tide | PostgreSQL | ratio | Emmett | ×Emmett | target | met |")
print("|---|---:|---:|---:|---:|---:|---|:---:|")
local notes = {}
for _, r in ipairs(rows) do
  local tide_cell = r.show or (r.value and fmt(r.value) or "n/a")
  if r.note then
    notes[#notes + 1] = r.note
    tide_cell = tide_cell .. " [" .. #notes .. "]"
  end
  print(string.format("| %s | %s | %s | %s | %s | %s | %s | %s |", r.label, tide_cell,
    r.ref_show or fmt(r.ref), (r.value and r.ref) and string.format("%.2f", r.value / r.ref) or "",
    r.emmett_show or fmt(r.emmett), r.emmett_x and string.format("%.2f", r.emmett_x) or "",
    r.target or "", r.met or ""))
end
print("")
for i, n in ipairs(notes) do print(string.format("[%d] %s", i, n)) end
if emmett_why then print("Emmett was not measured: " .. emmett_why) end
local out = { mode = quick and "quick" or "full", machine = machine, date = os.date("!%Y-%m-%dT%H:%M:%SZ"),
              payload_bytes = #DATA, notify_trigger = trigger, emmett = emmett_why and { skipped = emmett_why } or { version = "0.42.0" },
              results = results }
local jf = assert(io.open(os.getenv("TIDE_BENCH_JSON") or (root .. "/bench-results.json"), "w"))
jf:write(tide.json.encode(out))
jf:write("\n")
jf:close()
