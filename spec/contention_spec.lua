-- Deciders never give up under contention: after a conflict `handle` reads only the events
-- after the version it had and folds them onto a copy of its state; after its optimistic
-- attempts it decides once more holding the stream's lock (store:begin), which cannot
-- conflict. Through the CLI (concurrent processes, a foreign writer holding the row) and a
-- Lua host (a store wrapper that counts what is read and writes between read and append).
local S = require "spec.support"
local q = S.q

local ACCOUNT = [[
local tide = require "tide"
return tide.decider {
  initial = function() return { balance = 0 } end,
  evolve = function(s, e) s.balance = s.balance + e.data.amount; return s end,
  decide = function(cmd, s)
    if cmd.data.amount <= 0 then tide.reject("amount must be positive") end
    return { { type = "Deposited", data = { amount = cmd.data.amount } } }
  end,
}
]]

describe("tide.model.copy", function()
  local model = require "tide.model"

  it("copies tables deeply and keeps tide's markers, metatables, shared parts and cycles", function()
    local mt = { __index = function() return "default" end }
    local shared = { n = 1 }
    local key = {}
    local v = {
      list = model.array(), doc = model.object(), none = model.null, nested = { { 1, 2 }, shared },
      again = shared, classy = setmetatable({ x = 1 }, mt), [key] = "by table", f = print,
    }
    v.self = v
    local c = model.copy(v)
    assert.are_not.equal(v, c)
    assert.are.equal(model.array_mt, getmetatable(c.list))
    assert.are.equal(model.object_mt, getmetatable(c.doc))
    assert.are.equal(model.null, c.none)
    assert.are.same({ 1, 2 }, c.nested[1])
    assert.are_not.equal(v.nested[1], c.nested[1])
    assert.are.equal(c.nested[2], c.again) -- shared stays shared, in the copy
    assert.are_not.equal(shared, c.again)
    assert.are.equal(c, c.self)            -- a cycle stays a cycle
    assert.are.equal("default", c.classy.missing)
    assert.are.equal("by table", c[key])
    assert.are.equal(print, c.f)
    c.nested[1][1] = 99
    c.again.n = 2
    assert.are.same({ 1, 2 }, v.nested[1])
    assert.are.equal(1, shared.n)
    assert.are.equal(7, model.copy(7))
    assert.are.equal("s", model.copy("s"))
  end)

  it("runs no metamethod of the value", function()
    local touched = false
    local sneaky = setmetatable({ a = 1 }, {
      __index = function() touched = true end,
      __newindex = function() touched = true end,
      __metatable = "hidden",
    })
    local c = model.copy({ s = sneaky })
    assert.are.equal(1, rawget(c.s, "a"))
    assert.are.equal("hidden", getmetatable(c.s))
    assert.is_false(touched)
  end)
end)

describe("deciders under contention", function()
  local why = S.missing()
  if why then
    it("needs the database", function() pending(why) end)
    return
  end
  local tide = require "tide"
  local url, dir, script

  setup(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
    script = dir .. "/account.lua"
    S.write(script, ACCOUNT)
  end)

  teardown(function()
    S.drop_db(url)
    os.execute("rm -rf " .. q(dir))
  end)

  local function aggregate(stream)
    local r = S.tide("aggregate " .. q(script) .. " " .. q(stream) .. " --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    return S.json(r.out)
  end

  it("8 tide handle processes × 50 deposits on one stream: none fails, the state is exact", function()
    local PROCS, EACH = 8, 50
    local run = dir .. "/run.sh"
    -- Process p deposits p each time: a deposit lost or applied twice shows in the sum.
    S.write(run, string.format([[
for p in $(seq 1 %d); do
  ( for i in $(seq 1 %d); do
      %s handle %s acct-1 "{\"type\":\"Deposit\",\"data\":{\"amount\":$p}}" --database %s \
        >>%s/out.$p 2>>%s/err.$p
      echo $? >>%s/rc.$p
    done ) &
done
wait
]], PROCS, EACH, q(S.bin), q(script), q(url), dir, dir, dir))
    local started = os.time()
    local r = S.sh("bash " .. q(run))
    assert.are.equal(0, r.code, r.err)
    local codes, outputs, errors = {}, {}, {}
    for p = 1, PROCS do
      for line in io.lines(dir .. "/rc." .. p) do codes[#codes + 1] = tonumber(line) end
      for line in io.lines(dir .. "/out." .. p) do outputs[#outputs + 1] = S.json(line) end
      for line in io.lines(dir .. "/err." .. p) do errors[#errors + 1] = line end
    end
    local failed = 0
    for _, c in ipairs(codes) do if c ~= 0 then failed = failed + 1 end end
    assert.are.equal(PROCS * EACH, #codes)
    assert.are.equal(0, failed, table.concat(errors, "\n"))
    assert.are.same({}, errors)
    assert.are.equal(PROCS * EACH, #outputs)

    local by_attempts, locked, versions = {}, 0, {}
    for _, o in ipairs(outputs) do
      by_attempts[o.attempts] = (by_attempts[o.attempts] or 0) + 1
      if o.locked then locked = locked + 1 end
      assert.is_true(o.attempts >= 1 and o.attempts <= 3 + 3, "attempts " .. o.attempts)
      assert.are.equal(o.locked, o.attempts > 3) -- 3 optimistic attempts (--retries 2), then the lock
      assert.is_nil(versions[o.next_expected_version])
      versions[o.next_expected_version] = true
    end
    for v = 1, PROCS * EACH do assert.is_true(versions[v], "no command ended at version " .. v) end

    local sum = 0
    for p = 1, PROCS do sum = sum + p * EACH end
    assert.are.same({ state = { balance = sum }, version = PROCS * EACH }, aggregate("acct-1"))
    assert.are.equal(tostring(PROCS * EACH), S.psql(url,
      "SELECT count(DISTINCT stream_position) FROM emt_messages WHERE stream_id = 'acct-1'"
      .. " AND stream_position BETWEEN 1 AND " .. PROCS * EACH))
    local dist = {}
    for a = 1, 6 do dist[#dist + 1] = a .. ":" .. (by_attempts[a] or 0) end
    io.stderr:write(string.format("\n  8×50 handle: %d s, attempts %s, locked %d\n",
      os.time() - started, table.concat(dist, " "), locked))
  end)

  -- A foreign writer (plain SQL, as Emmett or psql would append) holds the stream's row with
  -- an uncommitted event until tide's append waits for it, then commits: tide's first attempt
  -- conflicts for sure.
  local function hold_until_waited_for(stream, amount)
    local sql = dir .. "/hold-" .. stream .. ".sql"
    S.write(sql, string.format([[
\set ON_ERROR_STOP 1
BEGIN;
UPDATE emt_streams SET stream_position = stream_position + 1
 WHERE stream_id = '%s' AND partition = 'emt:default' AND NOT is_archived;
INSERT INTO emt_messages (stream_id, stream_position, partition, message_data, message_metadata,
  message_schema_version, message_type, message_kind, message_id, transaction_id, is_archived)
SELECT '%s', stream_position, 'emt:default', '{"amount": %d}', '{}', '1', 'Deposited', 'E',
       gen_random_uuid()::text, pg_current_xact_id(), false
  FROM emt_streams WHERE stream_id = '%s' AND partition = 'emt:default' AND NOT is_archived;
DO $$ BEGIN
  FOR i IN 1..3000 LOOP
    PERFORM pg_stat_clear_snapshot();
    EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()
                       AND wait_event_type = 'Lock');
    PERFORM pg_sleep(0.01);
  END LOOP;
END $$;
COMMIT;
]], stream, stream, amount, stream))
    S.sh("psql -qAtX " .. q(url) .. " -f " .. q(sql) .. " >/dev/null 2>&1 &")
    S.wait_for(function()
      return S.psql(url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        .. " AND query LIKE 'DO $$%pg_stat_clear_snapshot%'") == "1"
    end, 20, "the foreign writer's open transaction")
  end

  it("after a conflict takes the lock: the JSON says locked, with the attempts", function()
    for _ = 1, 3 do
      local r = S.tide("handle " .. q(script) .. " held-1 '{\"type\":\"Deposit\",\"data\":{\"amount\":1}}'"
        .. " --database " .. q(url))
      assert.are.equal(0, r.code, r.err)
    end
    hold_until_waited_for("held-1", 100)
    local r = S.tide("handle " .. q(script) .. " held-1 '{\"type\":\"Deposit\",\"data\":{\"amount\":1}}'"
      .. " --retries 0 --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    local out = S.json(r.out)
    assert.are.same({ 2, true, 5 }, { out.attempts, out.locked, out.next_expected_version })
    assert.truthy(r.out:find('"attempts":2,"locked":true}', 1, true), r.out)
    assert.are.same({ state = { balance = 104 }, version = 5 }, aggregate("held-1"))
  end)

  describe("from a Lua host", function()
    local raw, other

    setup(function()
      raw = assert(tide.connect(url)).raw
      other = assert(tide.connect(url))
    end)

    teardown(function()
      raw:close()
      other:close()
    end)

    -- The store handle sees: every read counted ({ from, count, locked }); after each of the
    -- first `sneaks` reads outside a transaction another connection appends a deposit of 1,
    -- as a concurrent writer between tide's read and its append.
    local function wrapper(sneaks)
      local w = { reads = {}, begins = 0, open = false }
      function w:read(stream, opts)
        local events, err = raw:read(stream, opts)
        if events then
          self.reads[#self.reads + 1] = { from = opts and opts.from or 1, count = #events, locked = self.open }
          if not self.open and sneaks > 0 then
            sneaks = sneaks - 1
            assert(other:append(stream, { { type = "Deposited", data = { amount = 1 } } }))
          end
        end
        return events, err
      end
      function w:append(...) return raw:append(...) end
      function w:sleep(ms) return raw:sleep(ms) end
      function w:begin(stream)
        self.begins = self.begins + 1
        local v, err = raw:begin(stream)
        self.open = v ~= nil
        return v, err
      end
      function w:commit() self.open = false return raw:commit() end
      function w:rollback() self.open = false return raw:rollback() end
      function w.events_read()
        local n = 0
        for _, r in ipairs(w.reads) do n = n + r.count end
        return n
      end
      return w
    end

    local function deposits(stream, n)
      local list = {}
      for i = 1, n do list[i] = { type = "Deposited", data = { amount = 1 } } end
      assert(other:append(stream, list, { expected = "no_stream" }))
    end

    -- decide sees the state folded so far (it records it) and then spoils it: an attempt
    -- after a conflict must fold onto a copy taken before, markers and all.
    local seen = {}
    local spoiler = tide.decider {
      initial = function() return { balance = 0, notes = tide.array(), none = tide.null } end,
      evolve = function(s, e) s.balance = s.balance + e.data.amount; return s end,
      decide = function(cmd, s)
        seen[#seen + 1] = { s.balance, getmetatable(s.notes) == getmetatable(tide.array()), s.none == tide.null }
        s.balance, s.notes, s.none = -1000, nil, nil
        return { { type = "Deposited", data = { amount = cmd.data.amount } } }
      end,
    }

    it("after a conflict reads only the events after its version, and folds them onto its state", function()
      deposits("tail-1", 10)
      seen = {}
      local w = wrapper(3)
      local res = assert(tide.handle(w, spoiler, "tail-1", { type = "Deposit", data = { amount = 5 } }))
      assert.are.same({ 4, true, 14 }, { res.attempts, res.locked, res.next_expected_version })
      assert.are.same({
        { from = 1, count = 10, locked = false },  -- the whole stream, once
        { from = 11, count = 1, locked = false },  -- then only what others appended
        { from = 12, count = 1, locked = false },
        { from = 13, count = 1, locked = true },   -- under the lock
      }, w.reads)
      assert.are.equal(13, w.events_read())
      assert.are.same({ { 10, true, true }, { 11, true, true }, { 12, true, true }, { 13, true, true } }, seen)
      local state, version = assert(other:aggregate(spoiler, "tail-1"))
      assert.are.same({ 18, 14 }, { state.balance, version })
    end)

    it("without a conflict reads once and never locks", function()
      deposits("calm-1", 3)
      local w = wrapper(0)
      local res = assert(tide.handle(w, spoiler, "calm-1", { type = "Deposit", data = { amount = 1 } }))
      assert.are.same({ 1, false, 4 }, { res.attempts, res.locked, res.next_expected_version })
      assert.are.same({ { from = 1, count = 3, locked = false } }, w.reads)
      assert.are.equal(0, w.begins)
    end)

    -- After the lock was taken: no open transaction on the server, and the row free at once.
    local function released(stream, version)
      assert.are.equal("0", S.psql(url, "SELECT count(*) FROM pg_stat_activity"
        .. " WHERE datname = current_database() AND state LIKE 'idle in transaction%'"))
      assert.are.equal(tostring(version), S.psql(url, "SET lock_timeout = '2s'; SELECT stream_position"
        .. " FROM emt_streams WHERE stream_id = '" .. stream .. "' FOR UPDATE"))
      local r = assert(other:append(stream, { { type = "Deposited", data = { amount = 1 } } },
        { expected = version }))
      assert.are.equal(version + 1, r.next_expected_version)
    end

    local limited = tide.decider {
      initial = function() return { balance = 0 } end,
      evolve = function(s, e) s.balance = s.balance + e.data.amount; return s end,
      decide = function(cmd, s)
        if s.balance + cmd.data.amount > 10 then
          if cmd.data.bug then error("the limit check broke") end
          tide.reject("the balance would pass 10", { balance = s.balance })
        end
        return { { type = "Deposited", data = { amount = cmd.data.amount } } }
      end,
    }

    it("a rejection under the lock writes nothing and releases the lock", function()
      deposits("limit-1", 9)
      local w = wrapper(1) -- 9 + 1 fits when first read; the other writer makes it 10
      local res, err = tide.handle(w, limited, "limit-1", { type = "Deposit", data = { amount = 1 } },
        { retries = 0 })
      assert.is_nil(res)
      assert.are.same({ "rejected", "the balance would pass 10", { balance = 10 } },
        { err.kind, err.message, err.details })
      assert.are.equal(1, w.begins)
      assert.are.same({ from = 10, count = 1, locked = true }, w.reads[2])
      assert.are.equal("10", S.psql(url, "SELECT count(*) FROM emt_messages WHERE stream_id = 'limit-1'"))
      released("limit-1", 10)
    end)

    it("a script error under the lock writes nothing and releases the lock", function()
      deposits("limit-2", 9)
      local w = wrapper(1)
      local res, err = tide.handle(w, limited, "limit-2", { type = "Deposit", data = { amount = 1, bug = true } },
        { retries = 0 })
      assert.is_nil(res)
      assert.are.equal("script", err.kind)
      assert.truthy(err.message:find("the limit check broke", 1, true), err.message)
      assert.are.equal(1, w.begins)
      released("limit-2", 10)
    end)

    it("a stream created between the lock (no row yet) and the append: the next locked attempt finds its row", function()
      local w = wrapper(0)
      -- The optimistic attempt is told of a conflict (the stream stays missing), so that the
      -- locked one finds no row to lock; another writer creates the stream right then.
      local append, begin, told = w.append, w.begin, false
      function w:append(stream, events, opts)
        if told then return append(self, stream, events, opts) end
        told = true
        return nil, setmetatable({ kind = "conflict", message = "version conflict: expected 0, found version 1" },
          { __tostring = function(e) return e.message end })
      end
      function w:begin(stream)
        local v, err = begin(self, stream)
        if v == "no_stream" then
          assert(other:append(stream, { { type = "Deposited", data = { amount = 2 } } }))
        end
        return v, err
      end
      local res = assert(tide.handle(w, spoiler, "born-1", { type = "Deposit", data = { amount = 5 } },
        { retries = 0 }))
      assert.are.same({ 3, true, 2, 2 }, { res.attempts, res.locked, res.next_expected_version, w.begins })
      assert.are.same({ from = 1, count = 1, locked = true }, w.reads[#w.reads]) -- all of it again
      local state, version = assert(other:aggregate(spoiler, "born-1"))
      assert.are.same({ 7, 2 }, { state.balance, version })
    end)

    it("store:begin/commit/rollback; a connection lost in a transaction takes it along", function()
      local s = assert(tide.connect(url))
      assert.are.equal("no_stream", s:begin("own-1"))
      assert.has_error(function() s:begin("own-2") end, "begin: a transaction is already open on this store")
      assert(s:append("own-1", { { type = "Deposited", data = { amount = 1 } } }, { expected = "no_stream" }))
      assert.is_true(s:commit())
      assert.has_error(function() s:commit() end, "commit: no transaction is open on this store")
      local function kill()
        S.psql(url, "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
          .. " WHERE datname = current_database() AND state = 'idle in transaction'")
      end
      assert.are.equal(1, s:begin("own-1"))
      assert(s:append("own-1", { { type = "Deposited", data = { amount = 1 } } }, { expected = 1 }))
      kill()
      assert.is_nil(s:read("own-1")) -- the call that finds the connection gone
      local res, err = s:append("own-1", { { type = "Deposited", data = { amount = 1 } } })
      assert.is_nil(res) -- not on a new connection, outside the transaction
      assert.are.same({ "connection", "the connection was lost, and the open transaction with it"
        .. " (nothing in it was committed)" }, { err.kind, err.message })
      assert.has_error(function() s:rollback() end) -- it is over already
      assert.are.equal(1, #assert(s:read("own-1"))) -- connected again, outside any transaction

      assert.are.equal(1, s:begin("own-1"))
      kill()
      local ok, cerr = s:rollback()
      assert.is_nil(ok)
      assert.are.equal("connection", cerr.kind)
      assert.are.equal(1, s:begin("own-1"))
      kill()
      ok, cerr = s:commit() -- sent before the store could know: the outcome is unknown
      assert.is_nil(ok)
      assert.are.equal("unknown", cerr.kind)
      assert.are.equal(1, #assert(s:read("own-1")))
      s:close()
    end)

    it("a store that cannot lock (no begin) gives up after the optimistic attempts", function()
      deposits("plain-1", 1)
      local w = wrapper(99)
      w.begin, w.commit, w.rollback = nil, nil, nil
      local res, err = tide.handle(w, limited, "plain-1", { type = "Deposit", data = { amount = 1 } },
        { retries = 1, backoff_ms = 1 })
      assert.is_nil(res)
      assert.are.equal("conflict", err.kind)
      assert.truthy(err.message:find("after 2 attempts", 1, true), err.message)
      assert.are.same({ 1, 2 }, { w.reads[1].from, w.reads[2].from })
    end)
  end)
end)
