-- Aggregate snapshots: a decider with snapshot = { every = N, version = V } folds a stream
-- from its latest snapshot and reads only the events after it (counted, not timed), through
-- the Lua module and the CLI; another version is ignored or upgraded; a snapshot the stream
-- no longer matches is never folded onto; a snapshot that cannot be read or saved never
-- fails the call.
local S = require "spec.support"
local q = S.q
local tide = require "tide"

-- n Deposited events (amount = position % 7) in one stream, written by SQL in the store's
-- own layout (as Emmett's or tide's appends leave them), in one transaction.
local function load(url, stream, n)
  S.psql(url, string.format([[
    INSERT INTO emt_streams (stream_id, stream_position, stream_type, stream_metadata)
    VALUES ('%s', %d, 'acct', '{}');
    INSERT INTO emt_messages (stream_id, stream_position, message_data, message_metadata,
                              message_schema_version, message_type, message_id, transaction_id)
    SELECT '%s', i, jsonb_build_object('amount', i %% 7), '{}', '1', 'Deposited',
           gen_random_uuid()::text, pg_current_xact_id()
      FROM generate_series(1, %d) AS i]], stream, n, stream, n))
end

-- What folding positions 1..n (amount = position % 7) gives.
local function sum_to(n)
  local sum = 0
  for i = 1, n do sum = sum + i % 7 end
  return sum
end

local function account(extra)
  local spec = {
    name = "account",
    initial = function() return { balance = 0, count = 0, tags = tide.array(), none = tide.null } end,
    evolve = function(s, e)
      s.balance = s.balance + e.data.amount
      s.count = s.count + 1
      return s
    end,
    decide = function(cmd) return { { type = "Deposited", data = { amount = cmd.data.amount } } } end,
  }
  for k, v in pairs(extra or {}) do spec[k] = v end
  return tide.decider(spec)
end

local function deposits(store, stream, n)
  local list = {}
  for i = 1, n do list[i] = { type = "Deposited", data = { amount = 1 } } end
  assert(store:append(stream, list))
end

describe("aggregate snapshots", function()
  local why = S.missing()
  if why then
    it("needs the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local url, store
  before_each(function()
    url = S.fresh_db()
    store = assert(tide.connect(url))
  end)
  after_each(function()
    if store then store:close() end
    if url then S.drop_db(url) end
    url, store = nil, nil
  end)

  local function row(stream, decider)
    return S.psql(url, string.format("SELECT version || ' ' || stream_position || ' ' || (state->>'balance')"
      .. " FROM tide_snapshots WHERE stream_id = '%s' AND decider = '%s'", stream, decider or "account"))
  end

  it("on a 100,000-event stream: handle reads only the events after the snapshot", function()
    load(url, "big-1", 100000)
    local d = account { snapshot = { every = 1000 } }
    -- The first aggregate folds everything and leaves a snapshot at 100,000.
    local state, version, stats = assert(store:aggregate(d, "big-1", { stats = true }))
    assert.are.same({ 100000, 100000, 100000 }, { version, state.count, stats.events_read })
    assert.are.equal(100000, stats.snapshot_saved)
    assert.is_nil(stats.snapshot_position)
    assert.are.equal("1 100000 " .. sum_to(100000), row("big-1"))

    deposits(store, "big-1", 250)
    local res = assert(store:handle(d, "big-1", { type = "Deposit", data = { amount = 5 } }, { stats = true }))
    assert.are.equal(100251, res.next_expected_version)
    assert.are.same({ 250, 100000 }, { res.stats.events_read, res.stats.snapshot_position })
    assert.is_nil(res.stats.snapshot_saved) -- 250 events past it: not due yet

    -- The state equals a full fold by the same decider without snapshots.
    local plain = account()
    local full, full_version, full_stats = assert(store:aggregate(plain, "big-1", { stats = true }))
    assert.are.equal(100251, full_stats.events_read)
    local snapped, snapped_version, snapped_stats = assert(store:aggregate(d, "big-1", { stats = true }))
    assert.are.same({ 251, 100000 }, { snapped_stats.events_read, snapped_stats.snapshot_position })
    assert.are.same(full, snapped)
    assert.are.same({ 100251, 100251 }, { full_version, snapped_version })
    assert.are.equal(sum_to(100000) + 250 + 5, snapped.balance)
    -- The markers survive the snapshot: an empty list stays a list, null stays null.
    assert.are.equal(getmetatable(tide.array()), getmetatable(snapped.tags))
    assert.are.equal(tide.null, snapped.none)

    -- The CLI: the script's file name is the decider's name; it reads the same tail.
    local dir = S.mkdtemp()
    S.write(dir .. "/account.lua", [[
local tide = require "tide"
return tide.decider {
  snapshot = { every = 1000 },
  initial = function() return { balance = 0, count = 0, tags = tide.array(), none = tide.null } end,
  evolve = function(s, e) s.balance = s.balance + e.data.amount; s.count = s.count + 1; return s end,
  decide = function(cmd) return { { type = "Deposited", data = { amount = cmd.data.amount } } } end,
}
]])
    local r = S.tide("aggregate " .. q(dir .. "/account.lua") .. " big-1 --stats --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    local out = S.json(r.out)
    assert.are.same({ 100251, sum_to(100000) + 255 }, { out.version, out.state.balance })
    assert.are.same({ events_read = 251, snapshot_position = 100000 }, out.stats)
    r = S.tide("handle " .. q(dir .. "/account.lua") .. " big-1 '{\"type\":\"Deposit\",\"data\":{\"amount\":1}}'"
      .. " --stats --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    out = S.json(r.out)
    assert.are.same({ 100252, 251, 100000 }, { out.next_expected_version, out.stats.events_read, out.stats.snapshot_position })
    assert.truthy(r.out:find('"locked":false,"stats":{"events_read":251,"snapshot_position":100000}}', 1, true), r.out)
    -- Without --stats the output is as before.
    r = S.tide("aggregate " .. q(dir .. "/account.lua") .. " big-1 --database " .. q(url))
    assert.are.equal('{"state":{"balance":' .. (sum_to(100000) + 256) .. ',"count":100252,"none":null,"tags":[]},'
      .. '"version":100252}\n', r.out)
  end)

  it("saves a new snapshot once the fold is `every` events past the last one", function()
    load(url, "acct-1", 2500)
    local d = account { snapshot = { every = 1000 } }
    local _, _, stats = assert(store:aggregate(d, "acct-1", { stats = true }))
    assert.are.equal(2500, stats.snapshot_saved)
    deposits(store, "acct-1", 999)
    _, _, stats = assert(store:aggregate(d, "acct-1", { stats = true }))
    assert.are.same({ 999, 2500 }, { stats.events_read, stats.snapshot_position })
    assert.is_nil(stats.snapshot_saved)
    deposits(store, "acct-1", 1)
    _, _, stats = assert(store:aggregate(d, "acct-1", { stats = true }))
    assert.are.same({ 1000, 2500, 3500 }, { stats.events_read, stats.snapshot_position, stats.snapshot_saved })
    assert.are.equal("1 3500 " .. (sum_to(2500) + 1000), row("acct-1"))
    -- A stream shorter than `every` gets none.
    deposits(store, "short-1", 999)
    _, _, stats = assert(store:aggregate(d, "short-1", { stats = true }))
    assert.is_nil(stats.snapshot_saved)
    assert.are.equal("", row("short-1"))
  end)

  it("ignores a snapshot of another version, or upgrades it with the decider's upgrade", function()
    load(url, "acct-2", 3000)
    assert(store:aggregate(account { snapshot = { every = 1000, version = 1 } }, "acct-2"))
    assert.are.equal("1 3000 " .. sum_to(3000), row("acct-2"))
    deposits(store, "acct-2", 10)

    -- Version 2 without upgrade: a full fold, and a snapshot of version 2 replaces the old one.
    local v2 = account { snapshot = { every = 1000, version = 2 } }
    local state, version, stats = assert(store:aggregate(v2, "acct-2", { stats = true }))
    assert.are.same({ 3010, 3010 }, { version, stats.events_read })
    assert.is_nil(stats.snapshot_position)
    assert.truthy(stats.snapshot_ignored:find("version 1, the decider's is 2", 1, true), stats.snapshot_ignored)
    assert.are.equal(sum_to(3000) + 10, state.balance)
    assert.are.equal("2 3010 " .. (sum_to(3000) + 10), row("acct-2"))
    deposits(store, "acct-2", 5)

    -- Version 3 with upgrade: the old state goes through it, only the tail is read, and the
    -- upgraded state is saved at once (as version 3).
    local calls = {}
    local v3 = account {
      snapshot = { every = 1000, version = 3 },
      initial = function() return { balance = 0, count = 0, bonus = 0 } end,
      upgrade = function(old, old_version)
        calls[#calls + 1] = old_version
        return { balance = old.balance, count = old.count, bonus = 100 * old_version }
      end,
    }
    state, version, stats = assert(store:aggregate(v3, "acct-2", { stats = true }))
    assert.are.same({ 2 }, calls)
    assert.are.same({ 3015, 5, 3010, 2, 3015 },
      { version, stats.events_read, stats.snapshot_position, stats.snapshot_upgraded_from, stats.snapshot_saved })
    assert.are.same({ sum_to(3000) + 15, 3015, 200 }, { state.balance, state.count, state.bonus })
    assert.are.equal("3 3015 " .. (sum_to(3000) + 15), row("acct-2"))
    -- Now of its own version: no upgrade.
    state, _, stats = assert(store:aggregate(v3, "acct-2", { stats = true }))
    assert.are.same({ 2 }, calls)
    assert.are.same({ 0, 3015, 200 }, { stats.events_read, stats.snapshot_position, state.bonus })

    -- upgrade returning nil: the old snapshot is ignored (a full fold from initial()).
    local v4 = account {
      snapshot = { every = 1000, version = 4 },
      upgrade = function() return nil end,
    }
    state, _, stats = assert(store:aggregate(v4, "acct-2", { stats = true }))
    assert.are.same({ 3015, sum_to(3000) + 15 }, { stats.events_read, state.balance })
    assert.truthy(stats.snapshot_ignored:find("upgrade returned nil", 1, true), stats.snapshot_ignored)

    -- upgrade raising: a bug in the script, reported as such.
    local v5 = account {
      snapshot = { every = 1000, version = 5 },
      upgrade = function() error("cannot upgrade that") end,
    }
    local none, err = store:aggregate(v5, "acct-2")
    assert.is_nil(none)
    assert.are.equal("script", err.kind)
    assert.truthy(err.message:find("^upgrade failed on the snapshot of stream acct%-2 %(version 4"), err.message)
    assert.truthy(err.message:find("cannot upgrade that", 1, true), err.message)
  end)

  it("does not trust a snapshot beyond the stream, or one of an earlier life of the stream", function()
    load(url, "acct-3", 2000)
    local d = account { snapshot = { every = 1000 } }
    assert(store:aggregate(d, "acct-3"))
    -- A stale (or forged) position past the stream's end: a full fold.
    S.psql(url, "UPDATE tide_snapshots SET stream_position = 2500, state = '{\"balance\": -1, \"count\": -1}'")
    local state, version, stats = assert(store:aggregate(d, "acct-3", { stats = true }))
    assert.are.same({ 2000, 2000, sum_to(2000) }, { version, stats.events_read, state.balance })
    assert.truthy(stats.snapshot_ignored:find("event 2500 is no longer the one", 1, true), stats.snapshot_ignored)
    assert.is_nil(stats.snapshot_position)
    -- The same through handle, whose decision then rests on the full fold.
    S.psql(url, "UPDATE tide_snapshots SET stream_position = 2500, state = '{\"balance\": -1, \"count\": -1}'")
    local res = assert(store:handle(d, "acct-3", { type = "Deposit", data = { amount = 1 } }, { stats = true }))
    assert.are.same({ 2001, 2000 }, { res.next_expected_version, res.stats.events_read })

    -- The stream archived and begun again, longer than before: the event at the snapshot's
    -- position is another one now, so the snapshot is ignored.
    load(url, "acct-4", 1000)
    assert(store:aggregate(d, "acct-4"))
    assert.are.equal("1 1000 " .. sum_to(1000), row("acct-4"))
    S.psql(url, [[UPDATE emt_messages SET is_archived = true WHERE stream_id = 'acct-4';
                  UPDATE emt_streams SET is_archived = true WHERE stream_id = 'acct-4']])
    deposits(store, "acct-4", 1500)
    state, version, stats = assert(store:aggregate(d, "acct-4", { stats = true }))
    assert.are.same({ 1500, 1500, 1500 }, { version, stats.events_read, state.balance })
    assert.is_nil(stats.snapshot_position)
    assert.are.equal(1500, stats.snapshot_saved)
    assert.are.equal("1 1500 1500", row("acct-4"))
  end)

  it("never fails a call over a snapshot: it warns and folds everything", function()
    load(url, "acct-5", 1500)
    -- A state JSON cannot hold: not saved, and the stats say where.
    local d = account {
      snapshot = { every = 1000 },
      evolve = function(s, e)
        s.balance, s.count, s.fn = s.balance + e.data.amount, s.count + 1, print
        return s
      end,
    }
    local state, _, stats = assert(store:aggregate(d, "acct-5", { stats = true }))
    assert.are.equal(sum_to(1500), state.balance)
    assert.is_nil(stats.snapshot_saved)
    assert.truthy(stats.snapshot_error:find("was not saved: the state cannot be stored as JSON: state.fn", 1, true),
      stats.snapshot_error)
    assert.are.equal("", row("acct-5"))

    -- No table to keep them in (a database not migrated since): the CLI warns, and the
    -- command succeeds.
    S.psql(url, "DROP TABLE tide_snapshots")
    local dir = S.mkdtemp()
    S.write(dir .. "/counter.lua", [[
local tide = require "tide"
return tide.decider {
  snapshot = { every = 10 },
  initial = function() return { n = 0 } end,
  evolve = function(s, e) s.n = s.n + e.data.amount; return s end,
  decide = function(cmd) return { { type = "Deposited", data = { amount = 1 } } } end,
}
]])
    local r = S.tide("handle " .. q(dir .. "/counter.lua") .. " acct-5 '{\"type\":\"Deposit\",\"data\":{}}' --stats --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    local out = S.json(r.out)
    assert.are.same({ 1501, 1500 }, { out.next_expected_version, out.stats.events_read })
    -- One line says both: it could not be read, nor saved.
    assert.truthy(r.err:find("^tide handle: warning: the snapshot could not be read: [^\n]*tide_snapshots[^\n]*"
      .. "run `tide migrate`[^\n]*; the snapshot at position 1500 was not saved: [^\n]*\n$"), r.err)
    r = S.tide("aggregate " .. q(dir .. "/counter.lua") .. " acct-5 --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    assert.are.equal(1501, S.json(r.out).version)
  end)

  it("keeps snapshots apart by partition and by decider name", function()
    local tenant = assert(tide.connect(url, { partition = "tenant-b" }))
    finally(function() tenant:close() end)
    deposits(store, "acct-6", 20)
    deposits(tenant, "acct-6", 30)
    local d = account { snapshot = { every = 10 } }
    local other = account { name = "other", snapshot = { every = 10 } }
    assert(store:aggregate(d, "acct-6"))
    local state, _, stats = assert(tenant:aggregate(d, "acct-6", { stats = true }))
    assert.are.same({ 30, 30, 30 }, { state.balance, stats.events_read, stats.snapshot_saved })
    _, _, stats = assert(store:aggregate(other, "acct-6", { stats = true }))
    assert.are.same({ 20, 20 }, { stats.events_read, stats.snapshot_saved })
    assert.are.equal("emt:default account 20,emt:default other 20,tenant-b account 30", S.psql(url,
      "SELECT string_agg(partition || ' ' || decider || ' ' || stream_position, ',' ORDER BY partition, decider) FROM tide_snapshots"))
    _, _, stats = assert(store:aggregate(d, "acct-6", { stats = true }))
    assert.are.same({ 0, 20 }, { stats.events_read, stats.snapshot_position })
  end)

  it("wants a name for a host's decider with snapshots", function()
    local d = tide.decider {
      snapshot = { every = 10 },
      initial = function() return {} end, evolve = function(s) return s end, decide = function() end,
    }
    local ok, err = pcall(store.aggregate, store, d, "acct-7")
    assert.is_false(ok)
    assert.truthy(tostring(err):find("a decider with a snapshot needs a name", 1, true), tostring(err))
    ok, err = pcall(store.handle, store, d, "acct-7", { type = "X" })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("needs a name", 1, true), tostring(err))
    -- opts.name names it, as the CLI does with the file name.
    deposits(store, "acct-7", 10)
    local _, _, stats = assert(store:aggregate(d, "acct-7", { stats = true, name = "given" }))
    assert.are.equal(10, stats.snapshot_saved)
    assert.are.equal("given", S.psql(url, "SELECT decider FROM tide_snapshots"))
  end)
end)

describe("a decider's snapshot declaration", function()
  local function decider(extra)
    local spec = { initial = function() return {} end, evolve = function(s) return s end, decide = function() end }
    for k, v in pairs(extra) do spec[k] = v end
    return tide.decider(spec)
  end
  local function refused(extra, message)
    local ok, err = pcall(decider, extra)
    assert.is_false(ok)
    assert.truthy(tostring(err):find(message, 1, true), tostring(err))
  end

  it("is checked with errors that say what to write", function()
    refused({ snapshot = 100 }, "'snapshot' must be a table { every = N, version = V }, got number")
    refused({ snapshot = {} }, "'snapshot.every' must be a whole number of events from 1")
    refused({ snapshot = { every = 0 } }, "'snapshot.every' must be a whole number")
    refused({ snapshot = { every = 1.5 } }, "'snapshot.every' must be a whole number")
    refused({ snapshot = { every = 10, version = 0 } }, "'snapshot.version' must be a whole number >= 1")
    refused({ snapshot = { every = 10, version = "2" } }, "'snapshot.version' must be a whole number >= 1")
    refused({ snapshot = { evry = 10 } }, "'snapshot' has an unknown key 'evry' (it takes every and version)")
    refused({ upgrade = function() end }, "'upgrade' turns an older snapshot into a state: it needs snapshot")
    refused({ snapshot = { every = 10 }, upgrade = 1 }, "'upgrade' must be a function, got number")
    refused({ name = "" }, "'name' must be a non-empty string")
    local d = decider { snapshot = { every = 10 } }
    assert.are.equal(1, d.snapshot.version)
  end)

  it("leaves tide.testing as it was: given/when/then fold every event", function()
    local testing = require "tide.testing"
    local d = tide.decider {
      snapshot = { every = 2, version = 3 },
      upgrade = function(old) return old end,
      initial = function() return { n = 0 } end,
      evolve = function(s, e) return { n = s.n + e.data.by } end,
      decide = function(cmd, s)
        if s.n >= 5 then tide.reject("full") end
        return { { type = "Added", data = { by = cmd.data.by } } }
      end,
    }
    local given = testing.decider(d)
    local added = function(by) return { type = "Added", data = { by = by } } end
    given({ added(1), added(2), added(1) }).then_state({ n = 4 })
    given({ added(1) }).when({ type = "Add", data = { by = 2 } }).then_events({ added(2) })
    given({ added(5) }).when({ type = "Add", data = { by = 1 } }).then_rejects("full")
  end)
end)
