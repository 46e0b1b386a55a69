-- Sharded processors: `shards = N` splits a processor's work by a hash of the stream id into
-- N workers (APP/NAME#KofN), each with its own lease and checkpoint, spread over the daemons;
-- one stream's events stay in order; the read model equals a fold of the log; changing N
-- rebuilds it.
local S = require "spec.support"
local q = S.q

local why = S.missing()

local D = require "spec.daemon"
local H = require "spec.http"

-- Per stream: the sum of data.by, the number of events, and the last stream position seen.
-- An event that does not follow the last one of its stream stops the shard (on_error).
local function script(shards, version)
  return string.format([[
local tide = require "tide"
return tide.projection {
  shards = %d,
  version = %d,
  events = { "Added" },
  on_error = "stop",
  setup = function(sql)
    sql:exec("CREATE TABLE IF NOT EXISTS totals (id text PRIMARY KEY, n bigint NOT NULL, events bigint NOT NULL, last_pos bigint NOT NULL)")
  end,
  reset = function(sql) sql:exec("TRUNCATE totals") end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      local rows = sql:query("SELECT last_pos FROM totals WHERE id = $1", e.stream_id)
      local last = rows[1] and tonumber(rows[1].last_pos) or 0
      if e.stream_position ~= last + 1 then
        error("stream " .. e.stream_id .. ": position " .. e.stream_position .. " after " .. last)
      end
      sql:exec("INSERT INTO totals (id, n, events, last_pos) VALUES ($1, $2, 1, $3) ON CONFLICT (id) DO UPDATE SET n = totals.n + $2, events = totals.events + 1, last_pos = $3",
               e.stream_id, e.data.by, e.stream_position)
    end
  end,
}
]], shards, version or 1)
end

-- Workers of spec/totals: id → { owner pid, checkpoint }.
local function workers(url)
  local out = {}
  local rows = S.psql(url, [[SELECT t.processor_id, coalesce(t.owner, ''), coalesce(max(e.last_processed_checkpoint::bigint), -1)
    FROM tide_processors t LEFT JOIN emt_processors e USING (processor_id)
    WHERE t.processor_id LIKE 'spec/totals%' GROUP BY 1, 2]])
  for line in rows:gmatch("[^\n]+") do
    local id, owner, cp = line:match("^([^|]*)|([^|]*)|(.*)$")
    out[id] = { pid = owner:match("^tide:[^:]*:(%d+):"), checkpoint = tonumber(cp) }
  end
  return out
end

local function all_caught_up(url, ids)
  local last, w = D.last_position(url), workers(url)
  for _, id in ipairs(ids) do
    if not w[id] or w[id].checkpoint < last then return false end
  end
  return true
end

describe("sharded processors", function()
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

  it("split the streams over shards on two daemons, in order, and rebuild when N changes", function()
    D.load_events(url, 10000, 300)
    S.write(dir .. "/totals.lua", script(4))
    local opts = "--lease-ms 2000 --batch-size 200"
    local a = D.start(url, dir, opts)
    local http, b, log_b = H.start(url, dir, opts)
    local four = { "spec/totals#0of4", "spec/totals#1of4", "spec/totals#2of4", "spec/totals#3of4" }
    S.wait_for(function() return all_caught_up(url, four) end, 60, "the four shards to catch up")
    D.load_events(url, 2000, 300) -- while they run
    S.wait_for(function() return all_caught_up(url, four) end, 30, "the four shards to catch up again")
    assert.are.equal("0", D.rows_off_the_fold(url))
    assert.are.equal(0, D.scalar(url, "SELECT count(*) FROM totals t WHERE t.last_pos <> (SELECT max(stream_position) FROM emt_messages m WHERE m.stream_id = t.id)"))
    -- Four workers, two on each daemon, none of them failed (an event out of order would).
    S.wait_for(function()
      local per = {}
      for _, w in pairs(workers(url)) do per[w.pid or "-"] = (per[w.pid or "-"] or 0) + 1 end
      return per[a] == 2 and per[b] == 2
    end, 30, "two shards on each daemon")
    -- GET /processors names each worker's daemon and lists the daemons with their share.
    -- (A daemon's row says what it knew at its last heartbeat: wait for one after the move.)
    S.wait_for(function()
      local code, _, body = H.get(http .. "/processors")
      if code ~= 200 or not body or #body.daemons ~= 2 then return false end
      for _, d in ipairs(body.daemons) do
        if not (tostring(d.pid) == a or tostring(d.pid) == b) or d.held ~= 2 or d.share ~= 2
           or d.units ~= 4 then
          return false
        end
      end
      for _, p in ipairs(body.processors) do
        if p.id:find("#", 1, true) and not p.owner:find(":" .. a .. ":", 1, true)
           and not p.owner:find(":" .. b .. ":", 1, true) then
          return false
        end
      end
      return true
    end, 10, "GET /processors to show two daemons, two shards each")
    local st = D.status(url)
    for _, id in ipairs(four) do
      assert.truthy(st[id], id)
      assert.is_nil(st[id].last_error)
      assert.are.equal(0, st[id].dead_letters)
    end

    -- Not built beside itself: a sharded projection is rebuilt in place.
    local r = S.tide("rebuild spec/totals#1of4 --database " .. q(url))
    assert.are_not.equal(0, r.code)
    assert.truthy(r.err:find("spec/totals#1of4 is sharded (shards = 4)", 1, true), r.err)

    -- Two shards instead of four: the old workers stop, the targets are reset once, and the
    -- two new ones replay the log from the start.
    S.save(dir .. "/totals.lua", script(2))
    local two = { "spec/totals#0of2", "spec/totals#1of2" }
    S.wait_for(function()
      local w = workers(url)
      return w["spec/totals#0of4"] == nil and all_caught_up(url, two)
    end, 60, "the two new shards to replace the four")
    D.load_events(url, 500, 300)
    S.wait_for(function() return all_caught_up(url, two) end, 30, "the two shards to catch up")
    assert.are.equal("0", D.rows_off_the_fold(url))
    local resets = 0
    for _, log in ipairs({ dir .. "/daemon-1.log", log_b }) do
      resets = resets + select(2, D.read(log):gsub("event=processor.resharded ", ""))
    end
    assert.are.equal(1, resets)
    assert.are.equal(2, D.scalar(url, "SELECT count(*) FROM tide_processors WHERE processor_id LIKE 'spec/totals%'"))

    -- A new version of a sharded projection is rebuilt the same way, once.
    S.save(dir .. "/totals.lua", script(2, 2))
    S.wait_for(function()
      return D.scalar(url, "SELECT count(*) FROM tide_processors WHERE processor_id LIKE 'spec/totals#%of2' AND version = 2") == 2
        and D.scalar(url, "SELECT count(*) FROM emt_processors WHERE processor_id LIKE 'spec/totals#%of2' AND version = 2") == 2
        and all_caught_up(url, two)
    end, 60, "version 2 to catch up")
    resets = 0
    for _, log in ipairs({ dir .. "/daemon-1.log", log_b }) do
      resets = resets + select(2, D.read(log):gsub("event=processor.resharded ", ""))
    end
    assert.are.equal(2, resets)
    assert.are.equal("0", D.rows_off_the_fold(url))
  end)

  it("refuse a bad shard count, an inline one, and a sharded SQL projection without reset", function()
    S.write(dir .. "/a.lua", 'return tide.projection { shards = 65, handle = function() end, reset = function() end }')
    S.write(dir .. "/b.lua", 'return tide.projection { shards = 4, handle = function() end }')
    S.write(dir .. "/c.lua", 'return tide.projection { shards = 2, inline = true, collection = "x", evolve = function() end }')
    S.write(dir .. "/d.lua", 'return tide.reactor { shards = 1.5, handle = function() end }')
    S.write(dir .. "/e.lua", 'return tide.reactor { shards = 3, handle = function() end }')
    local r = S.tide("check " .. q(dir))
    assert.are.equal(1, r.code)
    assert.truthy(r.err:find("a.lua: tide.projection: 'shards' must be a whole number from 1 to 64, got 65", 1, true), r.err)
    assert.truthy(r.err:find("b.lua: tide.projection: a sharded SQL projection needs reset(sql)", 1, true), r.err)
    assert.truthy(r.err:find("c.lua: tide.projection: an inline projection cannot be sharded", 1, true), r.err)
    assert.truthy(r.err:find("d.lua: tide.reactor: 'shards' must be a whole number from 1 to 64, got 1.5", 1, true), r.err)
    assert.truthy(r.out:find("e.lua (reactor)", 1, true), r.out)
  end)
end)
