-- spec/daemon.lua — what the specs that run `tide run` share: starting daemons as real
-- processes (and killing them afterwards), reading their logs, checkpoints, status and
-- tables, loading events, and a projection that records every event it sees once.
local S = require "spec.support"
local q = S.q

local D = {}
local daemons = {}

-- The app of the daemons D.start starts (unless extra names another, or a configuration
-- file that may): processor ids are spec/NAME.
D.APP = "spec"

-- A processor's id: NAME alone is D.APP's.
function D.id(name) return name:find("/", 1, true) and name or D.APP .. "/" .. name end

-- Starts `tide run DIR` against url; returns its pid and log path.
function D.start(url, dir, extra)
  local log = dir .. "/daemon-" .. (#daemons + 1) .. ".log"
  extra = extra or ""
  if not extra:find("--app", 1, true) and not extra:find("--config", 1, true) then
    extra = "--app " .. D.APP .. " " .. extra
  end
  local r = S.sh(string.format("%s run %s --database %s %s >%s 2>&1 & echo $!", q(S.bin), q(dir),
    q(url), extra, q(log)))
  local pid = r.out:match("%d+")
  daemons[#daemons + 1] = pid
  return pid, log
end

-- Remembers a daemon started another way, so that kill_all ends it too.
function D.track(pid) daemons[#daemons + 1] = pid end

function D.alive(pid) return S.sh("kill -0 " .. pid).code == 0 end

function D.read(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

function D.stop(pid)
  os.execute("kill -TERM " .. pid .. " 2>/dev/null")
  S.wait_for(function() return not D.alive(pid) end, 15, "the daemon to exit")
end

function D.kill9(pid) os.execute("kill -9 " .. pid .. " 2>/dev/null; sleep 0.05") end

-- For after_each: no daemon outlives its test.
function D.kill_all()
  for _, pid in ipairs(daemons) do D.kill9(pid) end
  daemons = {}
end

function D.scalar(url, sql) return tonumber(S.psql(url, sql)) end

-- Appends one event to a new stream the way Emmett (or psql) does: no NOTIFY from the writer.
function D.foreign_append(url, stream)
  S.psql(url, string.format([[
    INSERT INTO emt_streams (stream_id, stream_position, partition, stream_type, stream_metadata)
    VALUES ('%s', 1, 'emt:default', 'emmett', '{}');
    INSERT INTO emt_messages (stream_id, stream_position, partition, message_data, message_metadata,
      message_schema_version, message_type, message_id, transaction_id)
    VALUES ('%s', 1, 'emt:default', '{"by":1}', '{}', '1', 'Written', gen_random_uuid()::text, pg_current_xact_id())]],
    stream, stream))
end

-- The rows of a table, or nil while it does not exist (a processor creates it).
function D.count(url, table_)
  local ok, n = pcall(S.psql, url, "SELECT count(*) FROM " .. table_)
  return ok and tonumber(n) or nil
end

function D.checkpoint(url, id)
  return D.scalar(url, "SELECT coalesce(max(last_processed_checkpoint::bigint), -1) FROM emt_processors WHERE processor_id = '" .. D.id(id) .. "'")
end

function D.last_position(url)
  return D.scalar(url, "SELECT coalesce(max(global_position), 0) FROM emt_messages")
end

function D.caught_up(url, id, seconds)
  S.wait_for(function() return D.checkpoint(url, id) >= D.last_position(url) end, seconds or 60, D.id(id) .. " to catch up")
end

-- tide status --json by processor id (and by NAME for D.APP's); a null last_error becomes nil.
function D.status(url)
  local out = {}
  for _, row in ipairs(S.lines(S.tide("status --json --database " .. q(url)).out)) do
    if type(row.last_error) ~= "string" then row.last_error = nil end
    if type(row.traceback) ~= "string" then row.traceback = nil end
    out[row.id] = row
    if row.app == D.APP then out[row.id:sub(#D.APP + 2)] = row end
  end
  return out
end

-- n events in `streams` streams of type type_ (default Added), data { by = 1..3 }.
function D.load_events(url, n, streams, type_)
  S.psql(url, string.format([[SELECT count(*) FROM (SELECT tide_append('s-' || (i %% %d), 'any',
    jsonb_build_array(jsonb_build_object('type', '%s', 'data', jsonb_build_object('by', 1 + i %% 3))))
    FROM generate_series(1, %d) i) x]], streams, type_ or "Added", n))
end

-- A projection summing data.by and counting events per stream, of type Added, in totals.
D.TOTALS = [[
local tide = require "tide"
return tide.projection {
  events = { "Added" },
  setup = function(sql)
    sql:exec("CREATE TABLE IF NOT EXISTS totals (id text PRIMARY KEY, n bigint NOT NULL, events bigint NOT NULL)")
  end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      sql:exec("INSERT INTO totals (id, n, events) VALUES ($1, $2, 1) ON CONFLICT (id) DO UPDATE SET n = totals.n + $2, events = totals.events + 1",
               e.stream_id, e.data.by)
    end
  end,
}
]]

-- How many rows of totals differ from a fold of the log from scratch ("0": none).
function D.rows_off_the_fold(url)
  return S.psql(url, [[
    SELECT count(*) FROM (SELECT stream_id, sum((message_data->>'by')::bigint) AS n, count(*) AS events
                            FROM emt_messages WHERE message_type = 'Added' GROUP BY stream_id) f
    FULL JOIN totals t ON t.id = f.stream_id
    WHERE t.n IS DISTINCT FROM f.n OR t.events IS DISTINCT FROM f.events]])
end

-- One row per message, tagged: a duplicate would violate the primary key and fail the
-- batch. extra is inserted into the table (e.g. on_error settings).
function D.seen_script(tag, extra, table_)
  return string.format([[
local tide = require "tide"
return tide.projection {
  %s
  setup = function(sql) sql:exec("CREATE TABLE IF NOT EXISTS %s (message_id text PRIMARY KEY, pos bigint, tag text)") end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      sql:exec("INSERT INTO %s (message_id, pos, tag) VALUES ($1, $2, $3)", e.message_id, e.global_position, %q)
    end
  end,
}
]], extra or "", table_ or "seen", table_ or "seen", tag)
end

return D
