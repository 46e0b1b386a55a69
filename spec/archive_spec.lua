-- Archiving a stream (tide archive, store:archive): its rows move to Emmett's is_archived
-- partitions in one transaction, reads say it is archived, the global log skips it, appends
-- expecting it are refused, and any/no_stream begin it again; bad input changes nothing; and
-- the real Emmett sees the archived stream as tide does.
local S = require "spec.support"
local q = S.q

local INTEROP = "spec/interop"

local function D_read(path)
  local f = io.open(path)
  if not f then return "" end
  local text = f:read("*a")
  f:close()
  return text
end

-- node spec/interop/emmett.mjs COMMAND URL ARGS...
local function emmett(url, cmd, ...)
  local args = { "node", INTEROP .. "/emmett.mjs", cmd, url, ... }
  for i, a in ipairs(args) do args[i] = q(a) end
  return S.sh(table.concat(args, " "))
end

local function emmett_missing()
  if S.sh("command -v node && command -v npm").code ~= 0 then
    return "node and npm are not installed (scripts/setup installs them)"
  end
  if not io.open(INTEROP .. "/node_modules/@event-driven-io/emmett-postgresql/package.json") then
    local r = S.sh("cd " .. INTEROP .. " && npm ci --no-audit --no-fund --loglevel=error")
    if r.code ~= 0 then return "npm could not install Emmett: " .. (r.err:match("[^\n]+") or "") end
  end
end

describe("archiving a stream", function()
  local why = S.missing()
  if why then
    it("needs PostgreSQL", function() pending(why) end)
    return
  end
  local url
  before_each(function() url = S.fresh_db() end)
  after_each(function()
    if url then S.drop_db(url) end
    url = nil
  end)
  local function tide(args) return S.tide(args .. " --database " .. q(url)) end
  local function append(stream, n, extra)
    for i = 1, n do
      local r = tide(("append %s Deposited '{\"amount\":%d}' %s"):format(q(stream), i, extra or ""))
      assert.are.equal(0, r.code, r.err)
    end
  end
  -- "archived:position" of a stream's rows, in position order.
  local function rows(stream, partition)
    return S.psql(url, ([[SELECT coalesce(string_agg(is_archived || ':' || stream_position, ','
      ORDER BY is_archived, stream_position), '') FROM emt_messages
      WHERE stream_id = '%s' AND partition = '%s']]):format(stream, partition or "emt:default"))
  end
  local function stream_rows(stream)
    return S.psql(url, ([[SELECT coalesce(string_agg(is_archived || ':' || stream_position, ','
      ORDER BY is_archived), '') FROM emt_streams WHERE stream_id = '%s']]):format(stream))
  end

  it("moves the stream's rows to is_archived, and reads, read-all and appends say so", function()
    append("acct-1", 3)
    append("acct-2", 1)
    local positions = S.psql(url, "SELECT string_agg(global_position::text, ',' ORDER BY 1)"
      .. " FROM emt_messages WHERE stream_id = 'acct-1'")

    local r = tide("archive acct-1")
    assert.are.equal(0, r.code, r.err)
    local out = S.json(r.out)
    assert.are.same({ stream_id = "acct-1", archived = true, version = 3, events = 3 }, out)

    -- The rows moved, positions and global positions kept; the other stream untouched.
    assert.are.equal("true:1,true:2,true:3", rows("acct-1"))
    assert.are.equal("true:3", stream_rows("acct-1"))
    assert.are.equal("false:1", rows("acct-2"))
    assert.are.equal(positions, S.psql(url, "SELECT string_agg(global_position::text, ',' ORDER BY 1)"
      .. " FROM emt_messages WHERE stream_id = 'acct-1' AND is_archived"))
    assert.are.equal("3", S.psql(url, "SELECT count(*) FROM emt_messages_emt_default_archived"))

    -- A read says it is archived (exit 6), not an empty stream.
    r = tide("read acct-1")
    assert.are.equal(6, r.code)
    assert.are.equal("", r.out)
    assert.matches("stream acct%-1 is archived", r.err)

    -- The global log no longer has its events.
    local all = S.lines(tide("read-all").out)
    assert.are.equal(1, #all)
    assert.are.equal("acct-2", all[1].stream_id)

    -- Appends expecting the stream are conflicts that say it is archived; nothing written.
    for _, expected in ipairs({ "stream_exists", "3" }) do
      r = tide("append acct-1 Deposited '{\"amount\":9}' --expected " .. expected)
      assert.are.equal(3, r.code, r.err)
      assert.matches("stream acct%-1 is archived", r.err)
      assert.matches("no_stream or any", r.err)
    end
    assert.are.equal("true:1,true:2,true:3", rows("acct-1"))

    -- Archiving it again is refused; nothing changes.
    r = tide("archive acct-1")
    assert.are.equal(6, r.code)
    assert.matches("stream acct%-1 is archived already", r.err)
    assert.are.equal("true:1,true:2,true:3", rows("acct-1"))

    -- Expecting no stream begins it again at 1, beside the archived events (as Emmett does).
    r = tide("append acct-1 Opened '{}' --expected no_stream")
    assert.are.equal(0, r.code, r.err)
    assert.are.equal(1, S.json(r.out).next_expected_version)
    local read = S.lines(tide("read acct-1").out)
    assert.are.equal(1, #read)
    assert.are.equal("Opened", read[1].type)
    assert.are.equal("false:1,true:1,true:2,true:3", rows("acct-1"))

    -- That new stream cannot be archived: Emmett's keys hold one archived stream per id.
    r = tide("archive acct-1")
    assert.are.equal(6, r.code)
    assert.matches("archived once and begun again", r.err)
    assert.are.equal("false:1,true:1,true:2,true:3", rows("acct-1"))
  end)

  it("refuses bad input with a clear error and changes nothing", function()
    append("acct-1", 2)
    local before = rows("acct-1")

    local r = tide("archive nope-1")
    assert.are.equal(2, r.code)
    assert.matches("stream nope%-1 does not exist in partition emt:default", r.err)

    -- The stream exists, but not in that partition.
    r = tide("archive acct-1 --partition tenant-b")
    assert.are.equal(2, r.code)
    assert.matches("does not exist in partition tenant%-b", r.err)

    r = tide("archive acct-1 --partition " .. string.rep("p", 42))
    assert.are.equal(2, r.code)
    assert.matches("%-%-partition wants at most 41 bytes", r.err)

    r = tide("archive")
    assert.are.equal(2, r.code)
    assert.matches("missing arguments", r.err)

    r = tide("archive acct-1 acct-2")
    assert.are.equal(2, r.code)
    assert.matches("unexpected argument 'acct%-2'", r.err)

    r = tide("archive '' ")
    assert.are.equal(2, r.code)
    assert.matches("stream name", r.err)

    r = tide("archive acct-1 --expected 2")
    assert.are.equal(2, r.code)
    assert.matches("unknown option '%-%-expected'", r.err)

    assert.are.equal(before, rows("acct-1"))
    assert.are.equal(2, #S.lines(tide("read acct-1").out))

    r = S.tide("archive --help")
    assert.are.equal(0, r.code)
    assert.matches("usage: tide archive STREAM", r.out)
  end)

  it("archives in a partition of its own, leaving the same stream id elsewhere alone", function()
    append("acct-1", 2, "--partition tenant-a")
    append("acct-1", 1)
    local r = tide("archive acct-1 --partition tenant-a")
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("true:1,true:2", rows("acct-1", "tenant-a"))
    assert.are.equal("false:1", rows("acct-1"))
    assert.are.equal(6, tide("read acct-1 --partition tenant-a").code)
    assert.are.equal(1, #S.lines(tide("read acct-1").out))
    assert.are.equal("2", S.psql(url, "SELECT count(*) FROM emt_messages_tenant_a_archived"))
  end)

  it("races concurrent writers: each append lands before the archive or in the stream begun again", function()
    -- 4 writer processes append one event at a time until told to stop, two expecting
    -- nothing and two expecting the stream, while the stream is archived under them: none
    -- fails but with "archived", none is lost, and both generations count from 1.
    local dir = S.mkdtemp()
    local stop = dir .. "/stop"
    S.write(dir .. "/writer.lua", [[
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = arg[3] .. "/lua/?.so;" .. package.cpath
local store = assert(require("tide").connect(arg[1]))
local f = assert(io.open(arg[2], "w"))
local opts = { expected = arg[5] }
while not io.open(arg[4]) do
  local res, err = store:append("race-1", { { type = "Added", data = {} } }, opts)
  if res then
    f:write("ok\n")
  elseif err.kind == "conflict" and err.archived then
    f:write("archived\n") -- stream_exists between the archive and the next any
  else
    f:write("failed " .. tostring(err) .. "\n")
  end
end
f:write("done\n")
f:close()
]])
    local writers = {}
    for w = 1, 4 do
      writers[w] = dir .. "/out-" .. w
      S.sh(("luajit %s %s %s %s %s %s >%s.log 2>&1 &"):format(q(dir .. "/writer.lua"), q(url),
        q(writers[w]), q(S.build), q(stop), w <= 2 and "any" or "stream_exists", q(writers[w])))
    end
    local function count(flag)
      return tonumber(S.psql(url, "SELECT count(*) FROM emt_messages WHERE stream_id = 'race-1'"
        .. " AND is_archived = " .. flag))
    end
    S.wait_for(function() return count("false") >= 100 end, 30, "the writers to append")
    local r = tide("archive race-1")
    assert.are.equal(0, r.code, r.err)
    local archived = S.json(r.out)
    -- The same writers go on: the stream begins again under them.
    S.wait_for(function() return count("false") >= 100 end, 30, "the writers to begin the stream again")
    S.write(stop, "")
    local ok = 0
    S.wait_for(function()
      ok = 0
      local done = 0
      for _, out in ipairs(writers) do
        local text = D_read(out)
        assert.is_nil(text:find("failed"), text)
        for _ in text:gmatch("ok\n") do ok = ok + 1 end
        if text:find("done\n") then done = done + 1 end
      end
      return done == 4
    end, 60, "the writers to finish")
    -- Every event is kept, once, in one generation or the other, each contiguous from 1.
    local function generation(flag)
      return S.psql(url, ([[SELECT count(*) || ':' || min(stream_position) || '-' ||
        max(stream_position) FROM emt_messages WHERE stream_id = 'race-1'
        AND is_archived = %s]]):format(flag))
    end
    local n = archived.events
    assert.is_true(n >= 100)
    assert.are.equal(n, archived.version)
    assert.are.equal(("%d:1-%d"):format(n, n), generation("true"))
    local rest = ok - n
    assert.is_true(rest >= 100)
    assert.are.equal(("%d:1-%d"):format(rest, rest), generation("false"))
    assert.are.equal(tostring(rest), S.psql(url, "SELECT stream_position FROM emt_streams"
      .. " WHERE stream_id = 'race-1' AND NOT is_archived"))
  end)

  it("works from Lua: store:archive, read errors, conflicts and a decider beginning again", function()
    local tide_lua = require "tide"
    local store = assert(tide_lua.connect(url))
    assert(store:append("cart-1", { { type = "Added", data = { n = 1 } }, { type = "Added", data = { n = 2 } } }))
    assert.is_true(store:archive("cart-1"))
    assert.are.equal("true:1,true:2", rows("cart-1"))

    local events, err = store:read("cart-1")
    assert.is_nil(events)
    assert.are.equal("archived", err.kind)
    assert.matches("stream cart%-1 is archived", tostring(err))

    local all = assert(store:read_all())
    assert.are.equal(0, #all)

    local res
    res, err = store:append("cart-1", { { type = "Added", data = { n = 3 } } }, { expected = 2 })
    assert.is_nil(res)
    assert.are.equal("conflict", err.kind)
    assert.is_true(err.archived)
    assert.are.equal("no_stream", err.actual)

    res, err = store:archive("cart-1")
    assert.is_nil(res)
    assert.are.equal("archived", err.kind)
    res, err = store:archive("nope")
    assert.is_nil(res)
    assert.are.equal("invalid", err.kind)
    assert.matches("does not exist", tostring(err))
    assert.has_error(function() store:archive({}) end)

    -- A decider's command on the archived stream sees no stream, as Emmett's would, and
    -- begins it again.
    local decider = tide_lua.decider {
      initial = function() return { n = 0 } end,
      evolve = function(s, e) return { n = s.n + e.data.n } end,
      decide = function(cmd, s) return { { type = "Added", data = { n = cmd.data.n + s.n } } } end,
    }
    res = assert(store:handle(decider, "cart-1", { type = "Add", data = { n = 5 } }))
    assert.are.equal(1, res.next_expected_version)
    events = assert(store:read("cart-1"))
    assert.are.equal(1, #events)
    assert.are.equal(5, events[1].data.n)
    store:close()
  end)

  it("is seen by the real Emmett as tide sees it", function()
    local missing = emmett_missing()
    if missing then return pending(missing) end
    local r = emmett(url, "append", "acct-9", "Deposited", '{"amount":5}')
    assert.are.equal(0, r.code, r.err)
    append("acct-9", 1)
    r = tide("archive acct-9")
    assert.are.equal(0, r.code, r.err)
    assert.are.equal(2, S.json(r.out).events)

    -- Emmett reads nothing and folds the initial state: to it the stream does not exist.
    r = emmett(url, "read", "acct-9")
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("", r.out)
    r = emmett(url, "aggregate", "acct-9")
    assert.are.equal(0, r.code, r.err)
    assert.are.equal(0, S.json(r.out).state.n)

    -- Expecting the archived version, Emmett conflicts too; without an expectation it begins
    -- the stream again at 1, which tide reads.
    r = emmett(url, "append", "acct-9", "Deposited", '{"amount":1}', "2")
    assert.are.equal(3, r.code, r.err)
    r = emmett(url, "append", "acct-9", "Deposited", '{"amount":7}')
    assert.are.equal(0, r.code, r.err)
    assert.are.equal(1, S.json(r.out).nextExpectedStreamVersion)
    local read = S.lines(tide("read acct-9").out)
    assert.are.equal(1, #read)
    assert.are.equal(7, read[1].data.amount)
    assert.are.equal("false:1,true:1,true:2", rows("acct-9"))
  end)
end)

describe("archiving with a daemon running", function()
  if S.missing() then return end
  local D = require "spec.daemon"
  local H = require "spec.http"
  local READER, WRITER = "reader-secret-0123456789", "writer-secret-0123456789"
  local url, dir
  before_each(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
  end)
  after_each(function()
    D.kill_all()
    if url then S.drop_db(url) end
    url = nil
  end)
  local function tide(args) return S.tide(args .. " --database " .. q(url)) end

  it("a processor behind never sees what was archived; POST /streams/{id}/archive", function()
    for _, a in ipairs({ "acct-1 A", "acct-1 A", "acct-1 A", "acct-2 A" }) do
      local r = tide("append " .. a .. " '{}'")
      assert.are.equal(0, r.code, r.err)
    end
    -- Archived before the processor (new: at the start of the log) got to its events.
    assert.are.equal(0, tide("archive acct-1").code)
    S.write(dir .. "/seen.lua", D.seen_script("s"))
    S.write(dir .. "/tide.conf", string.format([[
return { app = "spec", http = { tokens = {
  { name = "reader", token = %q, scopes = { "read" } },
  { name = "writer", token = %q, scopes = { "append" } },
} } }]], READER, WRITER))
    local base = H.start(url, dir, "--config " .. q(dir .. "/tide.conf"))
    D.caught_up(url, "seen")
    assert.are.equal("4", S.psql(url, "SELECT string_agg(pos::text, ',') FROM seen"))

    -- Over HTTP: the append scope archives, the read scope may not.
    local code, _, body = H.post(base .. "/streams/acct-2/archive", "", H.bearer(READER))
    assert.are.equal(403, code)
    assert.are.equal("false:1", S.psql(url, "SELECT is_archived || ':' || stream_position"
      .. " FROM emt_messages WHERE stream_id = 'acct-2'"))
    code, _, body = H.post(base .. "/streams/acct-2/archive", "", H.bearer(WRITER))
    assert.are.equal(200, code)
    assert.are.same({ stream_id = "acct-2", archived = true, version = 1, events = 1 }, body)
    assert.are.equal("true:1", S.psql(url, "SELECT is_archived || ':' || stream_position"
      .. " FROM emt_messages WHERE stream_id = 'acct-2'"))

    code, _, body = H.post(base .. "/streams/acct-2/archive", "", H.bearer(WRITER))
    assert.are.equal(410, code)
    assert.are.equal("archived", body.error.kind)
    code, _, body = H.post(base .. "/streams/nope/archive", "", H.bearer(WRITER))
    assert.are.equal(404, code)
    assert.matches("does not exist", body.error.message)

    code, _, body = H.get(base .. "/streams/acct-2", H.bearer(READER))
    assert.are.equal(410, code)
    assert.are.equal("archived", body.error.kind)
    assert.matches("stream acct%-2 is archived", body.error.message)

    code, _, body = H.post(base .. "/streams/acct-2", { events = { { type = "A", data = {} } }, expected = 1 },
      H.bearer(WRITER))
    assert.are.equal(409, code)
    assert.is_true(body.error.archived)

    -- What a processor already did stays done: archiving moves events, not read models.
    assert.are.equal("4", S.psql(url, "SELECT string_agg(pos::text, ',') FROM seen"))
  end)
end)
