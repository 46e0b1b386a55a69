-- Processors are APP/NAME, and a processor's row says which script claimed it: two apps
-- with the same file name share one database without sharing a checkpoint, a script that
-- claims another's id is refused (naming both) unless it takes the id over, and rows from
-- before app names are adopted. Also what `tide status` and the log say about a failure:
-- the event, the traceback, the script line and statement of a failed sql:exec; `tide
-- forget`. Real daemons against a real PostgreSQL.
local S = require "spec.support"
local D = require "spec.daemon"
local q = S.q

local why = S.missing()

-- An SQL projection recording each event once per tag: a second run over the same events
-- under one tag would violate the primary key.
local function tagged(tag, extra)
  return string.format([[
local tide = require "tide"
return tide.projection {
  %s
  setup = function(sql)
    sql:exec("CREATE TABLE IF NOT EXISTS seen_by (tag text, message_id text, PRIMARY KEY (tag, message_id))")
  end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      if e.data.bad then error("cannot take event " .. e.stream_position .. " of " .. e.stream_id) end
      sql:exec("INSERT INTO seen_by (tag, message_id) VALUES ($1, $2)", %q, e.message_id)
    end
  end,
}
]], extra or "", tag)
end

local function append(url, n, data)
  for i = 1, n do
    local r = S.tide(string.format("append s-%d Added %s --database %s", i % 3, q(data or '{"n":1}'), q(url)))
    assert(r.code == 0, r.err)
  end
end

-- Events seen under tag (0 while no processor has created the table).
local function seen(url, tag)
  if D.count(url, "seen_by") == nil then return 0 end
  return D.scalar(url, "SELECT count(*) FROM seen_by WHERE tag = '" .. tag .. "'")
end

local function run(url, dirs, extra)
  local log = S.tmpname(".log")
  local pid = S.sh(string.format("%s run %s --database %s %s >%s 2>&1 & echo $!", q(S.bin), dirs,
    q(url), extra or "", q(log))).out:match("%d+")
  D.track(pid)
  return pid, log
end

describe("tide run's processors", function()
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

  describe("ids", function()
    it("keeps two apps' processors of the same file name apart, and refuses a third script that claims one", function()
      for _, app in ipairs({ "shop", "crm", "other/shop" }) do
        os.execute("mkdir -p " .. q(dir .. "/" .. app))
        S.write(dir .. "/" .. app .. "/seen.lua", tagged(app))
      end
      append(url, 6)
      local pid, log = run(url, q(dir .. "/shop") .. " " .. q(dir .. "/crm"))
      D.caught_up(url, "shop/seen")
      D.caught_up(url, "crm/seen")
      assert.are.equal(6, seen(url, "shop"))
      assert.are.equal(6, seen(url, "crm"))
      local st = D.status(url)
      assert.are.equal("shop", st["shop/seen"].app)
      assert.are.equal(dir .. "/shop/seen.lua", st["shop/seen"].script)
      assert.are.equal("crm", st["crm/seen"].app)

      -- Another directory called shop: same id, another script. Refused, loudly, naming both.
      local pid2, log2 = run(url, q(dir .. "/other/shop"))
      S.wait_for(function() return D.read(log2):find("processor.refused", 1, true) end, 20, "the refusal")
      local said = D.read(log2)
      assert.truthy(said:find("processor shop/seen belongs to " .. dir .. "/shop/seen.lua (a projection), not to "
        .. dir .. "/other/shop/seen.lua", 1, true), said)
      assert.truthy(said:find("--take-over shop/seen", 1, true), said)
      append(url, 3)
      D.caught_up(url, "shop/seen")
      assert.are.equal(9, seen(url, "shop"))
      assert.are.equal(0, seen(url, "other/shop"))
      D.stop(pid)
      -- With the first daemon gone it is still refused: the id is not its script's.
      append(url, 2)
      S.sleep(1.5)
      assert.are.equal(0, seen(url, "other/shop"))
      assert.are.equal(dir .. "/shop/seen.lua", D.status(url)["shop/seen"].script)
      D.stop(pid2)

      -- --take-over: it goes on from the checkpoint, with the events after it only.
      local pid3, log3 = run(url, q(dir .. "/other/shop"), "--take-over shop/seen --take-over shop/typo")
      D.caught_up(url, "shop/seen")
      assert.are.equal(2, seen(url, "other/shop"))
      assert.are.equal(dir .. "/other/shop/seen.lua", D.status(url)["shop/seen"].script)
      assert.truthy(D.read(log3):find("event=daemon.take_over_unknown processor=shop/typo", 1, true))
      D.stop(pid3)
      assert.is_nil(D.read(log):find("processor.refused", 1, true))
    end)

    it("adopts a processor's rows from before app names when the same script claims them", function()
      S.write(dir .. "/seen.lua", tagged("legacy"))
      append(url, 4)
      local last = D.last_position(url)
      -- What an older tide left: id = file name, no app, the script's path as it was given.
      S.psql(url, string.format([[
        INSERT INTO tide_processors (processor_id, kind, script, status) VALUES ('seen', 'projection', %s, 'stopped');
        INSERT INTO emt_processors (processor_id, partition, version, last_processed_checkpoint, last_processed_transaction_id)
        SELECT 'seen', 'emt:default', 1, lpad(global_position::text, 19, '0'), transaction_id
          FROM emt_messages WHERE global_position = %d]], "'" .. dir .. "/seen.lua'", last))
      append(url, 2)
      local pid = D.start(url, dir, "--app shop")
      D.caught_up(url, "shop/seen")
      assert.are.equal(2, seen(url, "legacy"))
      assert.are.equal("0", S.psql(url, "SELECT count(*) FROM tide_processors WHERE processor_id = 'seen'"))
      assert.are.equal("0", S.psql(url, "SELECT count(*) FROM emt_processors WHERE processor_id = 'seen'"))
      D.stop(pid)
    end)

    it("refuses a legacy processor of another script until told, and forgets processors", function()
      S.write(dir .. "/seen.lua", tagged("new"))
      append(url, 3)
      S.psql(url, [[INSERT INTO tide_processors (processor_id, kind, script, status)
                    VALUES ('seen', 'projection', '/elsewhere/seen.lua', 'stopped')]])
      local pid, log = D.start(url, dir, "--lease-ms 2000")
      S.wait_for(function() return D.read(log):find("processor.refused", 1, true) end, 20, "the refusal")
      local said = D.read(log)
      assert.truthy(said:find("processor seen was run by /elsewhere/seen.lua (a projection) before processors had app names", 1, true), said)
      assert.truthy(said:find("tide forget seen", 1, true), said)
      assert.are.equal(0, seen(url, "new"))
      -- Forgetting the old one lets the new one start afresh (the claim is tried again).
      local r = S.tide("forget seen --database " .. q(url))
      assert.are.equal(0, r.code, r.err)
      assert.truthy(r.out:find("forgot processor seen: 1 status row, 0 checkpoint(s), 0 dead letter(s)", 1, true), r.out)
      D.caught_up(url, "seen", 30)
      assert.are.equal(3, seen(url, "new"))
      -- A running processor cannot be forgotten; a stopped one can; an unknown one is an error.
      r = S.tide("forget spec/seen --database " .. q(url))
      assert.are.equal(1, r.code)
      assert.truthy(r.err:find("processor spec/seen is running (held by tide:", 1, true), r.err)
      D.stop(pid)
      r = S.tide("forget spec/seen --database " .. q(url))
      assert.are.equal(0, r.code, r.err)
      assert.are.equal("0", S.psql(url, "SELECT (SELECT count(*) FROM tide_processors) + (SELECT count(*) FROM emt_processors)"))
      r = S.tide("forget spec/seen --database " .. q(url))
      assert.are.equal(2, r.code)
      assert.truthy(r.err:find("no processor 'spec/seen'", 1, true), r.err)
      assert.are.equal(2, S.tide("forget --database " .. q(url)).code)
    end)
  end)

  describe("what a failure says", function()
    it("names the failing event in the status and the log, with the traceback", function()
      S.write(dir .. "/seen.lua", tagged("t", 'on_error = "stop", max_attempts = 2, backoff_ms = 10,'))
      append(url, 4)
      local r = S.tide("append s-9 Added '{\"bad\":true}' --database " .. q(url))
      local bad_at = S.json(r.out).global_positions[1]
      append(url, 2)
      local pid, log = D.start(url, dir)
      S.wait_for(function() return (D.status(url).seen or {}).state == "halted" end, 30, "the halt")
      local st = D.status(url).seen
      assert.are.equal(string.format("event 1 of stream s-9 (global position %d, Added): %s/seen.lua:9: cannot take event 1 of s-9",
        bad_at, dir), st.last_error)
      assert.truthy(st.traceback:find("seen.lua:9: in function", 1, true), st.traceback)
      assert.are.equal(1, st.version)
      local table_ = S.tide("status --database " .. q(url)).out
      assert.truthy(table_:find("VER", 1, true) and table_:find("OWNER", 1, true), table_)
      assert.truthy(table_:find("seen.lua:9: in function", 1, true), table_)
      local said = D.read(log)
      assert.truthy(said:find(string.format('event=batch.failed processor=spec/seen attempt=2 stream=s-9 stream_position=1 global_position=%d type=Added', bad_at), 1, true), said)
      assert.truthy(said:find('traceback="' .. dir .. '/seen.lua:9: cannot take event 1 of s-9\\nstack traceback:', 1, true), said)
      D.stop(pid)
    end)

    it("names the script line and the statement of a failed sql:exec and sql:query", function()
      S.write(dir .. "/writes.lua", [[
  local tide = require "tide"
  return tide.projection {
    on_error = "stop", max_attempts = 1,
    handle = function(events, sql)
      for _, e in ipairs(events) do
        sql:exec("INSERT INTO no_such_table (id)\n VALUES ($1)", e.stream_id)
      end
    end,
  }]])
      S.write(dir .. "/reads.lua", [[
  local tide = require "tide"
  return tide.projection {
    on_error = "stop", max_attempts = 1,
    handle = function(events, sql)
      local ok = pcall(sql.query, sql, "SELECT missing_column FROM emt_messages")
    end,
  }]])
      append(url, 1)
      local pid = D.start(url, dir)
      S.wait_for(function()
        local st = D.status(url)
        return (st.writes or {}).state == "halted" and (st.reads or {}).state == "halted"
      end, 30, "both to halt")
      local st = D.status(url)
      assert.truthy(st.writes.last_error:find(dir .. '/writes.lua:6: sql:exec failed: relation "no_such_table" does not exist (statement: INSERT INTO no_such_table (id)  VALUES ($1))', 1, true), st.writes.last_error)
      -- A query's error caught by the script still fails the batch, and says what failed.
      assert.truthy(st.reads.last_error:find('sql:query failed: column "missing_column" does not exist (statement: SELECT missing_column FROM emt_messages)', 1, true), st.reads.last_error)
      D.stop(pid)
    end)

    it("fails an event whose document id is nil, and skips one whose id is false", function()
      S.write(dir .. "/by_owner.lua", [[
  local tide = require "tide"
  return tide.projection {
    collection = "by_owner", on_error = "stop", max_attempts = 1,
    id = function(e) if e.data.skip then return false end return e.data.owner end,
    evolve = function(doc, e) doc = doc or { n = 0 } doc.n = doc.n + 1 return doc end,
  }]])
      append(url, 2, '{"owner":"ada"}')
      append(url, 1, '{"skip":true}')
      append(url, 1, '{"nobody":true}')
      local pid = D.start(url, dir)
      S.wait_for(function() return (D.status(url).by_owner or {}).state == "halted" end, 30, "the halt")
      local err = D.status(url).by_owner.last_error
      assert.truthy(err:find("id(event) returned nil for event", 1, true), err)
      assert.truthy(err:find("return the document's id, or false to leave this event out", 1, true), err)
      assert.are.equal("ada:2", S.psql(url, "SELECT id || ':' || (doc->>'n') FROM tide_documents WHERE collection = 'by_owner'"))
      D.stop(pid)
    end)

    it("shows the generation the log names after a version bump", function()
      S.write(dir .. "/seen.lua", tagged("v", "version = 1,"))
      append(url, 2)
      local pid, log = D.start(url, dir)
      D.caught_up(url, "seen")
      S.save(dir .. "/seen.lua", tagged("v", "version = 2, reset = function(sql) sql:exec(\"DELETE FROM seen_by\") end,"))
      S.wait_for(function() return D.read(log):find("event=processor.rebuild", 1, true) end, 20, "the rebuild")
      assert.truthy(D.read(log):find("event=processor.reloaded processor=spec/seen kind=projection generation=2", 1, true))
      S.wait_for(function() local s = D.status(url).seen return s and s.generation == 2 and s.version == 2 end, 10, "generation 2 in the status")
      D.stop(pid)
    end)
  end)
end)
