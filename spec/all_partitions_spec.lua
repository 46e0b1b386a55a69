-- Processors over every partition: partition = "*" reads the events of all partitions
-- (tenants) in one gap-safe order, each event naming its partition, with one checkpoint;
-- a reactor's ctx.append goes to the partition of the event it handles; "*" is refused
-- where one partition is meant; `tide read-all --partition '*'` reads them all.
local S = require "spec.support"
local q = S.q

local why = S.missing()

local D = require "spec.daemon"

-- Every event it sees, once (a duplicate breaks the primary key and fails the batch), with
-- its partition and whether its stream's positions came in order.
local EVERY = [[
local tide = require "tide"
return tide.projection {
  partition = "*",
  events = { "Added" },
  setup = function(sql)
    sql:exec("CREATE TABLE IF NOT EXISTS every (message_id text PRIMARY KEY, part text NOT NULL, stream text NOT NULL, pos bigint NOT NULL)")
  end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      local last = sql:query("SELECT coalesce(max(pos), 0) AS p FROM every WHERE part = $1 AND stream = $2", e.partition, e.stream_id)[1].p
      if e.stream_position ~= last + 1 then
        error("stream " .. e.stream_id .. " of " .. e.partition .. ": position " .. e.stream_position .. " after " .. last)
      end
      sql:exec("INSERT INTO every VALUES ($1, $2, $3, $4)", e.message_id, e.partition, e.stream_id, e.stream_position)
    end
  end,
}
]]

-- Answers every Ping in the partition it came from.
local ECHO = [[
local tide = require "tide"
return tide.reactor {
  partition = "*",
  events = { "Ping" },
  handle = function(e, ctx)
    ctx.append("pong-" .. e.stream_id, { { type = "Pong", data = { from = e.partition } } })
  end,
}
]]

local PARTS = { "emt:default", "tenant-a", "tenant-b" }

describe("a processor with partition = \"*\"", function()
  if why then
    it("needs the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local url, dir
  before_each(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
    for _, p in ipairs(PARTS) do
      local r = S.tide("append first Added '{}' --partition " .. q(p) .. " --database " .. q(url))
      assert.are.equal(0, r.code, r.err)
    end
  end)
  after_each(function()
    D.kill_all()
    if url then S.drop_db(url) end
  end)

  it("sees every partition's events once, in order per stream, under concurrent writers", function()
    S.write(dir .. "/every.lua", EVERY)
    local pid, log = D.start(url, dir, "--poll-ms 20")
    -- Three writers at once, one per partition, each 300 one-event transactions over 10
    -- streams: their commits interleave across partitions.
    local writers = {}
    for i, p in ipairs(PARTS) do
      local sql = S.tmpname(".sql")
      local f = io.open(sql, "w")
      for n = 1, 300 do
        f:write(string.format("SELECT tide_append('s-%d', 'any', '[{\"type\":\"Added\",\"data\":{}}]', '%s');\n", n % 10, p))
      end
      f:close()
      writers[i] = S.sh(string.format("psql -q -X -o /dev/null %s -f %s >/dev/null 2>&1 & echo $!", q(url), q(sql))).out:match("%d+")
    end
    S.wait_for(function()
      for _, w in ipairs(writers) do if D.alive(w) then return false end end
      return true
    end, 60, "the writers to finish")
    S.wait_for(function() return D.count(url, "every") == 3 * 301 end, 30,
      "the projection to see every partition's events")
    assert.are.equal("0", S.psql(url, [[
      SELECT count(*) FROM emt_messages m FULL JOIN every e ON e.message_id = m.message_id
       WHERE m.message_id IS NULL OR e.message_id IS NULL OR e.part <> m.partition]]))
    for _, p in ipairs(PARTS) do
      assert.are.equal("301", S.psql(url, "SELECT count(*) FROM every WHERE part = '" .. p .. "'"))
    end
    -- One processor row, one checkpoint: partition '*', at the end of the log.
    local status = D.status(url).every
    assert.are.equal("*", status.partition)
    assert.are.equal(0, status.lag_events)
    assert.are.equal("1", S.psql(url, "SELECT count(*) FROM emt_processors WHERE processor_id = 'spec/every'"))
    -- '*' got a partition for its checkpoint only: no tables for events or streams.
    assert.are.equal("emt_processors__,emt_projections__", S.psql(url, [[
      SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class
       WHERE relname LIKE 'emt\_%\_\_%' AND relkind IN ('r', 'p')]]))
    assert.is_nil(D.read(log):find("processor.failed", 1, true))
    D.stop(pid)
  end)

  it("answers through ctx.append in the partition of the event it handles", function()
    S.write(dir .. "/echo.lua", ECHO)
    D.start(url, dir, "--poll-ms 20")
    for _, p in ipairs(PARTS) do
      local r = S.tide("append ping Ping '{}' --partition " .. q(p) .. " --database " .. q(url))
      assert.are.equal(0, r.code, r.err)
    end
    S.wait_for(function()
      return tonumber(S.psql(url, "SELECT count(*) FROM emt_messages WHERE message_type = 'Pong'")) == 3
    end, 30, "a Pong per partition")
    assert.are.equal("emt:default=emt:default,tenant-a=tenant-a,tenant-b=tenant-b", S.psql(url, [[
      SELECT string_agg(partition || '=' || (message_data->>'from'), ',' ORDER BY partition)
        FROM emt_messages WHERE message_type = 'Pong' AND stream_id = 'pong-ping']]))
  end)

  it("parks a failing event with the partition it came from", function()
    S.write(dir .. "/picky.lua", [[
return tide.projection {
  partition = "*", on_error = "dead_letter", max_attempts = 1,
  handle = function(events)
    for _, e in ipairs(events) do
      if e.type == "Bad" then error("no Bad events from " .. e.partition) end
    end
  end,
}
]])
    D.start(url, dir, "--poll-ms 20")
    assert.are.equal(0, S.tide("append s Bad '{}' --partition tenant-b --database " .. q(url)).code)
    S.wait_for(function()
      return tonumber(S.psql(url, "SELECT count(*) FROM tide_dead_letters")) == 1
    end, 30, "the dead letter")
    assert.are.equal("*|tenant-b|no Bad events from tenant-b", S.psql(url, [[
      SELECT partition, message_partition, regexp_replace(last_error, '^.*: ', '')
        FROM tide_dead_letters]]))
  end)

  it("is read by `tide read-all --partition '*'`, and refused where one partition is meant", function()
    local r = S.tide("read-all --partition '*' --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    local seen = {}
    for _, e in ipairs(S.lines(r.out)) do seen[#seen + 1] = e.partition or "default" end
    table.sort(seen)
    assert.are.same({ "default", "tenant-a", "tenant-b" }, seen)

    local before = S.psql(url, "SELECT count(*) FROM emt_messages")
    r = S.tide("append s Added '{}' --partition '*' --database " .. q(url))
    assert.are_not.equal(0, r.code)
    assert.matches("'*' means every partition", r.err, 1, true)
    r = S.tide("read s --partition '*' --database " .. q(url))
    assert.are_not.equal(0, r.code)
    assert.matches("'*' means every partition", r.err, 1, true)
    assert.are.equal(before, S.psql(url, "SELECT count(*) FROM emt_messages"))
    assert.are.equal("0", S.psql(url, "SELECT count(*) FROM pg_class WHERE relname LIKE 'emt_messages\\_\\_%'"))

    local tide = require "tide"
    local store, err = tide.connect(url, { partition = "*" })
    assert.is_nil(store)
    assert.matches("'*' means every partition", tostring(err), 1, true)
  end)
end)
