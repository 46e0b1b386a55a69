-- Conditional appends (a dynamic consistency boundary): store:append_if appends only when no
-- event matching its query came after the position it was given. Writer processes race for
-- one seat per round across different streams and exactly one wins every round; the losers
-- get the typed conflict; bad queries raise; stream expectations and plain appends behave as
-- before; deciders may declare the query (consistency) instead of a stream.
local S = require "spec.support"
local q = S.q

local SEATS = [[
local tide = require "tide"
return tide.decider {
  consistency = function(cmd)
    return { types = { "SeatReserved", "SeatReleased" }, data = { seat = cmd.data.seat } }
  end,
  initial = function() return { taken = false } end,
  evolve = function(s, e) s.taken = e.type == "SeatReserved"; return s end,
  decide = function(cmd, s)
    if cmd.type == "Release" then
      return { { type = "SeatReleased", data = { seat = cmd.data.seat } } }
    end
    if s.taken then tide.reject("seat " .. cmd.data.seat .. " is taken") end
    return { { type = "SeatReserved", data = { seat = cmd.data.seat, by = cmd.data.by } } }
  end,
}
]]

describe("conditional appends", function()
  local why = S.missing()
  if why then
    it("needs the database", function() pending(why) end)
    return
  end
  local tide = require "tide"
  local url, dir, store

  setup(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
    store = assert(tide.connect(url))
  end)

  teardown(function()
    store:close()
    S.drop_db(url)
    os.execute("rm -rf " .. q(dir))
  end)

  local function count(sql) return tonumber(S.psql(url, sql)) end

  it("8 writer processes race for one seat per round over 1,000 rounds: exactly one wins each", function()
    local WRITERS, ROUNDS = 8, 1000
    local started = os.time()
    local pids = {}
    for w = 1, WRITERS do
      local out = dir .. "/race." .. w
      pids[w] = S.sh(string.format("TIDE_BUILD_DIR=%s luajit spec/dcb_writer.lua %s w%d %d %d %s %s"
        .. " >%s.err 2>&1 & echo $!", q(S.build), q(url), w, WRITERS, ROUNDS, q(dir .. "/barrier"),
        q(out), q(out))).out:match("%d+")
    end
    S.wait_for(function()
      for w = 1, WRITERS do
        if os.execute("kill -0 " .. pids[w] .. " 2>/dev/null") == 0 then return false end
      end
      return true
    end, 120, "the writers")

    -- What each writer saw, round by round.
    local wins, conflicts, winner = {}, 0, {}
    for w = 1, WRITERS do
      local n = 0
      for line in io.lines(dir .. "/race." .. w) do
        n = n + 1
        local kind, round, pos = line:match("^(%a+) (%d+) (%d+)$")
        assert.is_truthy(kind, "writer " .. w .. ": " .. line)
        round = tonumber(round)
        if kind == "ok" then
          wins[round] = (wins[round] or 0) + 1
          winner[round] = { writer = "w" .. w, position = pos }
        else
          conflicts = conflicts + 1
        end
      end
      assert.are.equal(ROUNDS, n, "writer " .. w .. " did not finish its rounds")
    end
    for round = 1, ROUNDS do
      assert.are.equal(1, wins[round], "round " .. round .. " had " .. tostring(wins[round])
        .. " winners")
    end
    assert.are.equal(ROUNDS * (WRITERS - 1), conflicts)

    -- The rows say the same: one SeatReserved per seat, by the writer that was told it won.
    local rows = S.psql(url, "SELECT message_data->>'seat', count(*), min(message_data->>'writer'),"
      .. " min(global_position) FROM emt_messages WHERE message_type = 'SeatReserved'"
      .. " AND message_data->>'seat' LIKE 'seat-%' GROUP BY 1")
    local seen = 0
    for seat, n, by, pos in rows:gmatch("seat%-(%d+)|(%d+)|([^|]+)|(%d+)") do
      seen = seen + 1
      local round = tonumber(seat)
      assert.are.equal("1", n, "seat " .. seat .. " was reserved " .. n .. " times")
      assert.are.same(winner[round], { writer = by, position = pos })
    end
    assert.are.equal(ROUNDS, seen)
    assert.are.equal(ROUNDS, count("SELECT count(DISTINCT stream_id) FROM emt_messages"
      .. " WHERE message_type = 'SeatReserved' AND stream_id LIKE 'booking-%'"))
    local by_writer = {}
    for _, win in pairs(winner) do by_writer[win.writer] = (by_writer[win.writer] or 0) + 1 end
    local dist = {}
    for w = 1, WRITERS do dist[#dist + 1] = string.format("w%d:%d", w, by_writer["w" .. w] or 0) end
    io.stderr:write(string.format("\n  dcb race: %d writers × %d rounds in %d s: 1 winner in"
      .. " every round, %d conflicts; wins %s\n", WRITERS, ROUNDS, os.time() - started, conflicts,
      table.concat(dist, " ")))
  end)

  it("a conflict is typed, says what it found, and writes nothing", function()
    local query = { types = { "Booked" }, data = { room = 7 } }
    local first = assert(store:append_if(query, 0, "room-a", { { type = "Booked", data = { room = 7 } } }))
    local before = count("SELECT count(*) FROM emt_messages")
    local res, err = store:append_if(query, 0, "room-b",
      { { type = "Booked", data = { room = 7 } }, { type = "Noted", data = {} } })
    assert.is_nil(res)
    assert.are.same({ kind = "conflict", found = first.global_positions[1], after = 0,
                      expected = "any",
                      message = "conflict: an event matching the query was appended after global"
                        .. " position 0 (the first at global position " .. first.global_positions[1]
                        .. "); nothing was written" },
      { kind = err.kind, found = err.found, after = err.after, expected = err.expected,
        message = err.message })
    assert.are.equal(err.message, tostring(err))
    assert.are.equal(before, count("SELECT count(*) FROM emt_messages"))
    assert.are.equal(0, count("SELECT count(*) FROM emt_streams WHERE stream_id = 'room-b'"))
    -- From the position of what was read, it goes through; 7.0 is the same value as 7.
    local seen = assert(store:read_query({ types = { "Booked" }, data = { room = 7.0 } }))
    assert.are.equal(1, #seen)
    local last = seen[#seen].global_position
    local ok = assert(store:append_if(query, last, "room-b", { { type = "Cancelled", data = { room = 7 } } }))
    assert.are.equal(1, ok.next_expected_version)
    -- Other values, other types and other partitions do not match.
    assert(store:append_if({ types = { "Booked" }, data = { room = 8 } }, 0, "room-c",
      { { type = "Booked", data = { room = 8 } } }))
    assert(store:append_if({ types = { "Booked" }, data = { room = "7" } }, 0, "room-c",
      { { type = "Booked", data = { room = "7" } } }))
    assert(store:append_if({ types = { "Cancelled" }, data = { room = 7 } }, ok.global_positions[1],
      "room-c", { { type = "Booked", data = { room = 7 } } }))
    local tenant = assert(tide.connect(url, { partition = "tenant-2" }))
    assert(tenant:append_if(query, 0, "room-a", { { type = "Booked", data = { room = 7 } } }))
    local again, terr = tenant:append_if(query, 0, "room-b", { { type = "Booked", data = { room = 7 } } })
    assert.is_nil(again)
    assert.are.equal("conflict", terr.kind)
    tenant:close()
    -- Types alone, data alone.
    local _, e1 = store:append_if({ types = { "Nope", "Booked" } }, 0, "room-d", { { type = "X" } })
    assert.are.equal(first.global_positions[1], e1.found)
    local _, e2 = store:append_if({ data = { room = 7 } }, last, "room-d", { { type = "X" } })
    assert.are.equal(ok.global_positions[1], e2.found)
  end)

  it("reads the events a query matches, in global order, after a position", function()
    local query = { types = { "Ticket", "Refund" }, data = { show = "s1" } }
    local positions = {}
    for i, t in ipairs({ "Ticket", "Ticket", "Refund", "Other", "Ticket" }) do
      local r = assert(store:append("show-" .. (i % 2), { { type = t, data = { show = i == 2 and "s2" or "s1", n = i } } }))
      positions[i] = r.global_positions[1]
    end
    local all, head = store:read_query(query)
    assert.are.equal(count("SELECT max(global_position) FROM emt_messages"), head)
    local got = {}
    for _, e in ipairs(all) do got[#got + 1] = { e.type, e.data.n, e.stream_id, e.global_position } end
    assert.are.same({ { "Ticket", 1, "show-1", positions[1] }, { "Refund", 3, "show-1", positions[3] },
                      { "Ticket", 5, "show-1", positions[5] } }, got)
    local tail, head2 = store:read_query(query, { after = positions[3] })
    assert.are.same({ 1, head }, { #tail, head2 })
    assert.are.equal(2, #assert(store:read_query(query, { max = 2 })))
    -- Nothing after the head: the head stays.
    local none, head3 = store:read_query(query, { after = head })
    assert.are.same({ 0, head }, { #none, head3 })
    -- The head is what append_if wants: it goes through, and then the same head conflicts.
    local done = assert(store:append_if(query, head, "show-1", { { type = "Ticket", data = { show = "s1" } } }))
    local _, err = store:append_if(query, head, "show-1", { { type = "Ticket", data = { show = "s1" } } })
    assert.are.equal(done.global_positions[1], err.found)
  end)

  -- The head a read gives is safe to append after: the read waits for an append_if writer of
  -- the boundary that is still in its transaction (it holds the query's key), so that writer's
  -- event, whose position is below the head, is in the read.
  it("a boundary read waits for the append_if writers in flight, and their events are in it", function()
    local query = { types = { "Enrolled" }, data = { course = "c9" } }
    assert.are.equal(true, store:begin())
    local mine = assert(store:append_if(query, 0, "student-1", { { type = "Enrolled", data = { course = "c9" } } }))
    -- Later events of others, committed while the writer is still open.
    local other = assert(tide.connect(url))
    local later = assert(other:append("noise-1", { { type = "Noted", data = {} } }))
    assert.is_true(later.global_positions[1] > mine.global_positions[1])
    local reader = dir .. "/reader.lua"
    S.write(reader, string.format([[
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = %q .. "/lua/?.so;" .. package.cpath
local store = assert(require("tide").connect(%q))
local events, head = assert(store:read_query({ types = { "Enrolled" }, data = { course = "c9" } }))
local f = assert(io.open(%q, "w"))
f:write(#events, " ", events[1] and string.format("%%d", events[1].global_position) or "-", " ",
  string.format("%%d", head), "\n")
f:close()
]], S.build, url, dir .. "/reader.out"))
    S.sh("luajit " .. q(reader) .. " >" .. q(dir .. "/reader.err") .. " 2>&1 &")
    S.wait_for(function()
      return S.psql(url, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        .. " AND wait_event = 'advisory' AND query LIKE '%tide_read_query%'") == "1"
    end, 20, "the reader waiting for the writer's key")
    assert.is_nil(io.open(dir .. "/reader.out"))
    assert(store:commit())
    local line = S.wait_for(function()
      local f = io.open(dir .. "/reader.out")
      local l = f and f:read("*l")
      if f then f:close() end
      return l
    end, 20, "the reader's result")
    local n, first, head = line:match("^(%d+) (%d+) (%d+)$")
    assert.are.same({ "1", tostring(mine.global_positions[1]) }, { n, first }, line)
    assert.is_true(tonumber(head) >= later.global_positions[1], line)
    other:close()
  end)

  it("bad queries and positions raise, naming what is wrong; content the store refuses is nil, err", function()
    local ev = { { type = "X" } }
    local cases = {
      { nil, "the query must be a table { types = { ... }, data = { field = value } }, got nil" },
      { {}, "the query needs types, data or both (it would match every event)" },
      { { types = {} }, "the query's types must be a list of event type names" },
      { { types = "SeatReserved" }, "the query's types must be a list of event type names" },
      { { types = { "A", 3 } }, "type 2 of the query must be a string, got number" },
      { { data = {} }, "the query's data has no fields: give at least one field = value, or leave data out" },
      { { data = { seat = { row = 1 } } }, "the query's data field 'seat' must be a string, a number or a boolean, got table" },
      { { data = { "12A" } }, "the query's data must be a table of field = value with string keys" },
      { { data = "seat=12A" }, "the query's data must be a table of field = value, got string" },
      { { type = { "A" } }, "the query has an unknown key type (it takes types and data)" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(store.append_if, store, c[1], 0, "bad-1", ev)
      assert.is_false(ok)
      assert.are.equal("append_if: " .. c[2], err:match("append_if: .*$"))
      ok, err = pcall(store.read_query, store, c[1])
      assert.is_false(ok)
      assert.are.equal("read_query: " .. c[2], err:match("read_query: .*$"))
    end
    local many = {}
    for i = 1, 65 do many[i] = "T" .. i end
    local ok, err = pcall(store.append_if, store, { types = many }, 0, "bad-1", ev)
    assert.is_false(ok)
    assert.truthy(err:find("the query has 65 types; at most 64 are allowed", 1, true), err)
    for _, after in ipairs({ -1, 1.5, "0" }) do
      ok, err = pcall(store.append_if, store, { types = { "A" } }, after, "bad-1", ev)
      assert.is_false(ok)
      assert.truthy(err:find("append_if: after must be", 1, true), err)
    end
    local res, ierr = store:append_if({ types = { "A\0B" } }, 0, "bad-1", ev)
    assert.is_nil(res)
    assert.are.equal("invalid", ierr.kind)
    assert.truthy(ierr.message:find("contains a NUL byte", 1, true), ierr.message)
    res, ierr = store:append_if({ data = { seat = "\255" } }, 0, "bad-1", ev)
    assert.is_nil(res)
    assert.are.equal("invalid", ierr.kind)
    assert.are.equal(0, count("SELECT count(*) FROM emt_streams WHERE stream_id = 'bad-1'"))
  end)

  it("keeps stream expectations, and plain appends behave as before", function()
    local query = { types = { "Parked" }, data = { bay = "b1" } }
    assert(store:append("lot-1", { { type = "Opened", data = {} } }))
    -- A version conflict has the shape of store:append's, and no `found`.
    local res, err = store:append_if(query, 0, "lot-1", { { type = "Parked", data = { bay = "b1" } } },
      { expected = "no_stream" })
    assert.is_nil(res)
    assert.are.same({ "conflict", "no_stream", 1 }, { err.kind, err.expected, err.actual })
    assert.is_nil(err.found)
    assert.truthy(tostring(err):find("^version conflict: expected no_stream, found version 1"))
    res = assert(store:append_if(query, 0, "lot-1", { { type = "Parked", data = { bay = "b1" } } },
      { expected = 1 }))
    assert.are.equal(2, res.next_expected_version)
    -- With a query that also fails, the query's conflict is what comes back.
    local _, both = store:append_if(query, 0, "lot-1", { { type = "Parked", data = { bay = "b1" } } },
      { expected = 7 })
    assert.are.same({ "conflict", res.global_positions[1] }, { both.kind, both.found })
    -- A plain append is not conditional: it appends whatever matches.
    local plain = assert(store:append("lot-2", { { type = "Parked", data = { bay = "b1" } } },
      { expected = "no_stream" }))
    assert.are.equal(1, plain.next_expected_version)
    -- and the next append_if from the older position sees it.
    local _, seen = store:append_if(query, res.global_positions[1], "lot-3",
      { { type = "Parked", data = { bay = "b1" } } })
    assert.are.equal(plain.global_positions[1], seen.found)
    -- Many events in one conditional append: one stream, contiguous versions.
    local list = {}
    for i = 1, 50 do list[i] = { type = "Parked", data = { bay = "b2", i = i } } end
    local many = assert(store:append_if({ types = { "Parked" }, data = { bay = "b2" } }, 0, "lot-4", list))
    assert.are.equal(50, many.next_expected_version)
    assert.are.equal(50, #many.global_positions)
  end)

  it("does not run inline projections: events one takes are refused, others go through", function()
    local pdir = dir .. "/inline"
    os.execute("mkdir -p " .. q(pdir))
    S.write(pdir .. "/bookings.lua", [[
local tide = require "tide"
return tide.projection {
  inline = true,
  collection = "bookings",
  events = { "Booked" },
  initial = function() return { n = 0 } end,
  evolve = function(doc) doc.n = doc.n + 1; return doc end,
}
]])
    local with = assert(tide.connect(url, { projections = pdir }))
    local res, err = with:append_if({ types = { "Booked" }, data = { room = 99 } }, 0, "room-99",
      { { type = "Booked", data = { room = 99 } } })
    assert.is_nil(res)
    assert.are.same({ "invalid", "append_if does not run inline projections, and an inline"
      .. " projection of this store takes these events" }, { err.kind, err.message })
    assert.are.equal(0, count("SELECT count(*) FROM emt_streams WHERE stream_id = 'room-99'"))
    assert(with:append_if({ types = { "Held" }, data = { room = 99 } }, 0, "room-99",
      { { type = "Held", data = { room = 99 } } }))
    with:close()
  end)

  describe("a decider with a consistency query", function()
    local script

    setup(function()
      script = dir .. "/seats.lua"
      S.write(script, SEATS)
    end)

    local function handle(stream, cmd)
      local r = S.tide("handle " .. q(script) .. " " .. q(stream) .. " " .. q(cmd) .. " --database " .. q(url))
      return r.code, r.out, r.err
    end

    it("folds the query's events across streams and decides on them", function()
      local before = count("SELECT max(global_position) FROM emt_messages")
      local code, out = handle("booking-ann", '{"type":"Reserve","data":{"seat":"40A","by":"ann"}}')
      assert.are.equal(0, code, out)
      local res = S.json(out)
      assert.are.same({ 1, 1, false }, { #res.events, res.attempts, res.locked })
      -- It decided on the log up to its head, and appended after it.
      assert.is_true(res.position >= before and res.position < res.global_positions[1],
        res.position .. " " .. before)
      code, out = handle("booking-bob", '{"type":"Reserve","data":{"seat":"40A","by":"bob"}}')
      assert.are.equal(4, code)
      assert.are.same({ error = { kind = "rejected", message = "seat 40A is taken" } }, S.json(out))
      assert.are.equal(0, handle("booking-ann", '{"type":"Release","data":{"seat":"40A"}}'))
      code, out = handle("booking-bob", '{"type":"Reserve","data":{"seat":"40A","by":"bob"}}')
      assert.are.equal(0, code, out)
      assert.are.same({ "SeatReserved", "bob" }, { S.json(out).events[1].type, S.json(out).events[1].data.by })
      assert.are.equal(0, handle("booking-cat", '{"type":"Reserve","data":{"seat":"40B","by":"cat"}}'))
      local mine = assert(store:read_query({ types = { "SeatReserved" }, data = { seat = "40A" } }))
      assert.are.same({ "booking-ann", "booking-bob" }, { mine[1].stream_id, mine[2].stream_id })
    end)

    it("8 tide handle processes for one seat: one reserves it, 7 are rejected", function()
      local run = dir .. "/race.sh"
      S.write(run, string.format([[
for p in $(seq 1 8); do
  %s handle %s "booking-p$p" "{\"type\":\"Reserve\",\"data\":{\"seat\":\"50C\",\"by\":\"p$p\"}}" \
    --database %s >%s/h.$p 2>/dev/null; echo $? >%s/hrc.$p &
done
wait
]], q(S.bin), q(script), q(url), dir, dir))
      assert.are.equal(0, S.sh("bash " .. q(run)).code)
      local codes = {}
      for p = 1, 8 do
        local f = assert(io.open(dir .. "/hrc." .. p))
        local c = tonumber(f:read("*l"))
        f:close()
        codes[c] = (codes[c] or 0) + 1
      end
      assert.are.same({ [0] = 1, [4] = 7 }, codes)
      assert.are.equal(1, count("SELECT count(*) FROM emt_messages WHERE message_type = 'SeatReserved'"
        .. " AND message_data->>'seat' = '50C'"))
    end)

    it("over HTTP: POST /commands for one seat from 8 clients at once, one reserves it", function()
      local D = require "spec.daemon"
      local app = dir .. "/hall"
      os.execute("mkdir -p " .. q(app))
      S.write(app .. "/seats.lua", SEATS)
      local _, log = D.start(url, app, "--http 127.0.0.1:0")
      local ok, err = pcall(function()
        local port = S.wait_for(function()
          return D.read(log):match("event=http%.listening address=127%.0%.0%.1:(%d+)")
        end, 20, "the daemon to listen")
        local run = dir .. "/curl.sh"
        S.write(run, string.format([[
for p in $(seq 1 8); do
  curl -s -o %s/c.$p -w '%%{http_code}\n' -X POST \
    --data-binary "{\"type\":\"Reserve\",\"data\":{\"seat\":\"70E\",\"by\":\"p$p\"}}" \
    http://127.0.0.1:%s/commands/seats/booking-h$p >%s/code.$p &
done
wait
]], dir, port, dir))
        assert.are.equal(0, S.sh("bash " .. q(run)).code)
        local codes, winner = {}, nil
        for p = 1, 8 do
          local f = assert(io.open(dir .. "/code." .. p))
          local c = f:read("*l")
          f:close()
          codes[c] = (codes[c] or 0) + 1
          f = assert(io.open(dir .. "/c." .. p))
          local body = S.json(f:read("*a"))
          f:close()
          if c == "200" then
            winner = "p" .. p
          else
            assert.are.same({ kind = "rejected", message = "seat 70E is taken" }, body.error)
          end
        end
        assert.are.same({ ["200"] = 1, ["422"] = 7 }, codes)
        assert.are.equal(winner, S.psql(url, "SELECT string_agg(message_data->>'by', ',') FROM"
          .. " emt_messages WHERE message_type = 'SeatReserved' AND message_data->>'seat' = '70E'"))
      end)
      D.kill_all()
      assert(ok, err)
    end)

    it("after a conflict folds what came since and decides again", function()
      local decider = dofile(script)
      -- A store whose first append_if finds that someone reserved the seat meanwhile.
      local raw = store.raw
      local sneaked = false
      local wrapper = setmetatable({
        append_if = function(self, ...)
          if not sneaked then
            sneaked = true
            assert(raw:append("booking-zed", { { type = "SeatReserved", data = { seat = "60D", by = "zed" } } }))
          end
          return raw:append_if(...)
        end,
      }, { __index = function(_, k)
        local f = raw[k]
        return type(f) == "function" and function(_, ...) return f(raw, ...) end or f
      end })
      local res, err = tide.handle(wrapper, decider, "booking-amy",
        { type = "Reserve", data = { seat = "60D", by = "amy" } }, { stats = true })
      assert.is_nil(res)
      assert.are.same({ "rejected", "seat 60D is taken" }, { err.kind, err.message })
      -- Without a rival, the retry goes through: a release sneaks in, then the seat is free.
      sneaked = false
      wrapper.append_if = function(self, ...)
        if not sneaked then
          sneaked = true
          assert(raw:append("booking-zed", { { type = "SeatReleased", data = { seat = "60D" } } }))
        end
        return raw:append_if(...)
      end
      res = assert(tide.handle(wrapper, decider, "booking-amy",
        { type = "Release", data = { seat = "60D" } }, { stats = true }))
      assert.are.same({ 2, 2 }, { res.attempts, res.stats.events_read })
      local events = assert(store:read_query({ types = { "SeatReleased" }, data = { seat = "60D" } }))
      assert.are.same({ "booking-zed", "booking-amy" }, { events[1].stream_id, events[2].stream_id })
    end)

    it("a decider's bad query is the script's failure; consistency and snapshot do not mix", function()
      local decider = tide.decider {
        consistency = function() return { types = "SeatReserved" } end,
        initial = function() return {} end,
        evolve = function(s) return s end,
        decide = function() return {} end,
      }
      local res, err = store:handle(decider, "booking-x", { type = "Reserve", data = {} })
      assert.is_nil(res)
      assert.are.equal("script", err.kind)
      assert.are.equal("consistency failed for command Reserve: it returned a bad query: the"
        .. " query's types must be a list of event type names", err.message)
      local ok, merr = pcall(tide.decider, { consistency = function() end,
        snapshot = { every = 10 }, initial = function() end, evolve = function() end,
        decide = function() end })
      assert.is_false(ok)
      assert.truthy(merr:find("tide.decider: 'snapshot' keeps the state of a stream; a decider"
        .. " with 'consistency' folds the events of its query instead, and takes none", 1, true), merr)
      ok, merr = pcall(store.aggregate, store, dofile(script), "booking-ann")
      assert.is_false(ok)
      assert.truthy(merr:find("aggregate: this decider folds the events of a consistency query,"
        .. " not a stream (handle it with a command)", 1, true), merr)
    end)
  end)
end)
