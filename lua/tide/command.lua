-- tide.command: where a command meets a decider. handle = read the stream → fold with
-- evolve from initial() → decide → append with the read version as the expectation →
-- on a version conflict, read the new events only and retry (bounded, exponential backoff
-- with jitter) → then once more under the stream's lock, which cannot conflict.
-- The store is anything with read/append/sleep, and begin/commit/rollback to lock (the C
-- store, blocking on its own loop), and snapshot_load/snapshot_save for aggregate snapshots
-- (a store without them folds every stream from its first event).
-- `call` runs script code: the VM passes its CPU/memory guard; hosts call directly.
--
-- Aggregate snapshots (a decider with snapshot = { every = N, version = V }): a fold from
-- nothing starts from the stream's snapshot for this decider, when it has one that can be
-- trusted (its event is still the stream's event at that position) and of the decider's
-- version (or upgrade(old_state, old_version) made one of it), and reads only the events
-- after it. When a fold has moved `every` events past where it started (or started from an
-- upgraded snapshot), the state is saved as the new snapshot: after the command's append
-- committed, never inside it. Reading or saving one never fails a call: stats say what
-- happened (events_read, snapshot_position, snapshot_ignored, snapshot_upgraded_from,
-- snapshot_saved, snapshot_error).
local model = require "tide.model"
local error, type, setmetatable, tostring, select, unpack, xpcall, pcall, rawget =
  error, type, setmetatable, tostring, select, unpack, xpcall, pcall, rawget
local random, min = math.random, math.min

local M = {}

local error_mt = { __tostring = function(e) return e.message end }
local function fail(kind, message, extra)
  local e = extra or {}
  e.kind, e.message = kind, message
  return nil, setmetatable(e, error_mt)
end

-- What a failed call raised, as a message: a string (or number) as it is; anything else
-- is described, and none of its metamethods runs.
local function describe(m)
  local t = type(m)
  if t == "string" or t == "number" then return tostring(m) end
  return "the script raised a " .. t .. " value, not a message"
end

local function pack(...) return { n = select("#", ...), ... } end

-- Hosts: a protected call with a traceback; the same protocol as the VM's guard:
-- true, results... | false, message, kind, traceback, where kind is "error", "timeout",
-- "memory", or "rejected" (tide.reject: then message is the rejection itself).
local traceback = debug and debug.traceback
function M.direct_call(f, ...)
  local tb, rejection
  local res = pack(xpcall(f, function(m)
    if model.is_rejection(m) then
      rejection = m
    else
      tb = traceback and traceback(describe(m), 2) or describe(m)
    end
    return m
  end, ...))
  if res[1] then return unpack(res, 1, res.n) end
  if rejection then return false, rejection, "rejected", "" end
  return false, describe(res[2]), "error", tb
end

-- A failure of script code as err: kind "script" (a bug: the message keeps its file:line,
-- err.traceback has the stack) or the guard's "timeout"/"memory". what names the call.
local function script_failure(what, msg, kind, tb, extra)
  if kind == "rejected" then
    -- tide.reject outside decide: a bug too, said where it was called.
    msg = (msg.where and msg.where .. ": " or "") .. "tide.reject is for decide; it was called with: "
      .. msg.message
    kind, tb = "error", nil
  end
  if kind == "timeout" or kind == "memory" then return fail(kind, what .. ": " .. msg, extra) end
  extra = extra or {}
  extra.traceback = tb
  return fail("script", what .. ": " .. msg, extra)
end
-- For the runtime's other folds (tide.replay): the same report of a failed script call.
M.script_failure = script_failure

-- initial/evolve failed while folding stream: name the event it was at (fold's at[1]).
local function fold_failure(stream, events, at, msg, kind, tb)
  local i, what = at[1] or 0, nil
  if i == 0 then
    what = "initial failed for stream " .. stream
  else
    local e = events[i]
    what = "evolve failed on event " .. tostring(e.stream_position or i) .. " (" .. tostring(e.type)
      .. ") of stream " .. stream
  end
  return script_failure(what, msg, kind, tb, { stream = stream })
end

local function check_decider(decider)
  if type(decider) ~= "table" or decider.kind ~= "decider" then
    error("expected a decider (built with tide.decider), got " .. type(decider), 3)
  end
end

-- The events after version, folded onto state (the stream's whole history from initial()
-- when state is nil): true, state, version, global, restarted | false, err. global is the
-- global position of the event at version (nil when nothing was read). A tail that does not
-- start right after version (the stream was archived and begun again) is no tail: then the
-- whole stream, and restarted is true. stats.events_read counts what was read.
local function catch_up(store, decider, stream, call, state, version, stats)
  local events, err
  if state == nil then
    events, err = store:read(stream)
  else
    events, err = store:read(stream, { from = version + 1 })
  end
  if not events and type(err) == "table" and err.kind == "archived" then
    -- Archived and not begun again: to a decider, as to Emmett, there is no such stream
    -- (its append, expecting none, begins it again).
    if state ~= nil then
      local ok, folded, v, g = catch_up(store, decider, stream, call, nil, 0, stats)
      return ok, folded, v, g, true
    end
    events = {}
  end
  if not events then return false, err end
  stats.events_read = stats.events_read + #events
  if state ~= nil and events[1] and events[1].stream_position ~= version + 1 then
    local ok, folded, v, g = catch_up(store, decider, stream, call, nil, 0, stats)
    return ok, folded, v, g, true
  end
  local at = {}
  local ok, folded, kind, tb
  if state == nil then
    ok, folded, kind, tb = call(model.fold, decider, events, at)
  else
    ok, folded, kind, tb = call(model.fold_onto, decider, state, events, at)
  end
  if not ok then return false, select(2, fold_failure(stream, events, at, folded, kind, tb)) end
  local last = events[#events]
  if last then return true, folded, last.stream_position, last.global_position end
  return true, folded, state == nil and 0 or version
end

-- The name a decider's snapshots are kept under (nil: it takes none): its own `name`, else
-- opts.name (the CLI gives the script's file name).
local function snapshot_name(decider, opts)
  if decider.snapshot == nil then return nil end
  local name = decider.name
  if name == nil and opts then name = opts.name end
  if type(name) ~= "string" or name == "" then
    error("a decider with a snapshot needs a name to keep it under: give the decider "
      .. "name = \"...\" (tide handle and tide aggregate use the script's file name)", 3)
  end
  return name
end

-- The stream's snapshot, ready to fold the tail onto: state, position, global | nil (fold
-- from the start; stats say why) | nil, nil, nil, err when upgrade failed (a bug).
local function load_snapshot(store, decider, name, stream, call, stats)
  if not store.snapshot_load then return nil end
  local snap, err = store:snapshot_load(stream, name)
  if snap == nil then
    stats.snapshot_error = "the snapshot could not be read: " .. tostring(err)
    return nil
  end
  if not snap then return nil end
  if not snap.current then
    stats.snapshot_ignored = "the stream's event " .. snap.position .. " is no longer the one "
      .. "the snapshot was taken at (archived, truncated or begun again)"
    return nil
  end
  local state, want = snap.state, decider.snapshot.version
  if snap.version ~= want then
    if not decider.upgrade then
      stats.snapshot_ignored = "taken with snapshot version " .. snap.version
        .. ", the decider's is " .. want .. " (and it has no upgrade)"
      return nil
    end
    local ok, up, kind, tb = call(decider.upgrade, state, snap.version)
    if not ok then
      return nil, nil, nil, select(2, script_failure("upgrade failed on the snapshot of stream "
        .. stream .. " (version " .. snap.version .. ", position " .. snap.position .. ")",
        up, kind, tb, { stream = stream }))
    end
    if up == nil then
      stats.snapshot_ignored = "upgrade returned nil for snapshot version " .. snap.version
      return nil
    end
    state = up
    stats.snapshot_upgraded_from = snap.version
  end
  return state, snap.position, snap.global_position
end

-- The stream folded from its snapshot (when one can be used) or from the start: true,
-- state, version, global | false, err.
local function fold_stream(store, decider, name, stream, call, stats)
  local state, position, global, err
  if name then
    state, position, global, err = load_snapshot(store, decider, name, stream, call, stats)
    if err then return false, err end
  end
  local ok, folded, v, g, restarted = catch_up(store, decider, stream, call, state, position or 0,
    stats)
  if not ok then return false, folded end
  if state ~= nil then
    if restarted then
      stats.snapshot_ignored = "the stream does not go on from the snapshot's position "
        .. position .. " (archived and begun again)"
      stats.snapshot_upgraded_from = nil
    else
      stats.snapshot_position = position
      g = g or global
    end
  end
  return true, folded, v, g
end

-- Whether the state at version is due to be saved as the stream's snapshot.
local function snapshot_due(decider, name, stats, version)
  if not name or version == 0 then return false end
  return stats.snapshot_upgraded_from ~= nil
    or version - (stats.snapshot_position or 0) >= decider.snapshot.every
end

-- Saves state (folded up to version, whose event has global position global) as the
-- stream's snapshot. A failure is only noted: stats.snapshot_error.
local function save_snapshot(store, decider, name, stream, stats, state, version, global)
  if not store.snapshot_save or global == nil then return end
  local ok, err = store:snapshot_save(stream, name, decider.snapshot.version, version, global,
    state)
  if ok then
    stats.snapshot_saved = version
  else
    -- After one that could not be read: both, in one line.
    stats.snapshot_error = (stats.snapshot_error and stats.snapshot_error .. "; " or "")
      .. "the snapshot at position " .. version .. " was not saved: " .. tostring(err)
  end
end

-- state, version [, stats] | nil, err. opts: { stats = true } adds the stats (see the top);
-- name, the decider's snapshot name when it has none of its own.
function M.aggregate(store, decider, stream, call, opts)
  check_decider(decider)
  if type(stream) ~= "string" or stream == "" then error("aggregate: stream must be a name", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("aggregate: opts must be a table", 2) end
  if decider.consistency then
    error("aggregate: this decider folds the events of a consistency query, not a stream "
      .. "(handle it with a command)", 2)
  end
  local name = snapshot_name(decider, opts)
  local stats = { events_read = 0 }
  local ok, state, version, global = fold_stream(store, decider, name, stream,
    call or M.direct_call, stats)
  if not ok then return nil, state end
  if snapshot_due(decider, name, stats, version) then
    save_snapshot(store, decider, name, stream, stats, state, version, global)
  end
  if opts and opts.stats then return state, version, stats end
  return state, version
end

-- decide(command, state) and its events checked: list | nil, err.
local function decide(decider, stream, command, state, call)
  local ok, out, kind, tb = call(decider.decide, command, state)
  local what = "decide failed for command " .. command.type .. " on stream " .. stream
  local about = { stream = stream, command = command.type }
  if not ok then
    if kind == "rejected" then
      return fail("rejected", rawget(out, "message"), { details = rawget(out, "details") })
    end
    if kind == "error" and out:find("^the script raised a table value") then
      out = out .. " (to reject the command, call tide.reject(message [, details]))"
    end
    return script_failure(what, out, kind, tb, about)
  end
  local ok2, list = pcall(model.event_list, out, decider.decide)
  if not ok2 then return script_failure(what, tostring(list), "error", nil, about) end
  return list
end

-- The result of a decision that appended nothing.
local function unchanged(list, version)
  return { events = model.array(list), next_expected_version = version,
           global_positions = model.array() }
end

-- The defaults: 2 optimistic retries, then the lock (see M.handle).
M.default_retries = 2
-- Locked attempts before giving up: only a stream created by another writer between the
-- lock (there was no row to lock) and the append can make one fail, and the next one finds
-- its row; more than one failing means the stream is being archived and recreated under us.
local LOCKED_ATTEMPTS = 3

-- One attempt under the stream's lock: begin (lock the row), read the events after version
-- and fold them onto state (nothing to read when the locked version is ours), decide,
-- append expecting the locked version, commit. Anything but a commit rolls back. Result
-- as M.handle's (without attempts and locked) | nil, err.
local function locked_attempt(store, decider, stream, command, call, state, version, stats)
  local locked, err = store:begin(stream)
  if locked == nil then return nil, err end
  local function abandon(e)
    -- A lost connection took the transaction with it; then the store may have forgotten it
    -- already, and rollback raises: either way it is over.
    pcall(store.rollback, store)
    return nil, e
  end
  local at = locked == "no_stream" and 0 or locked
  if state == nil or at < version then
    state, version = nil, 0
  end
  if state == nil or at ~= version then
    local ok, folded, v = catch_up(store, decider, stream, call, state, version, stats)
    if not ok then return abandon(folded) end
    state, version = folded, v
  end
  -- No copy: nothing follows this decision but its commit, or starting over from the store.
  local list, derr = decide(decider, stream, command, state, call)
  if not list then return abandon(derr) end
  if #list == 0 then
    pcall(store.rollback, store)
    return unchanged(list, version)
  end
  local res, aerr = store:append(stream, list, { expected = locked })
  if not res then
    if aerr.kind == "unknown" then
      -- Lost before COMMIT: the transaction, and the append in it, ended uncommitted.
      aerr = select(2, fail("connection", "the connection was lost during the locked attempt "
        .. "(nothing was written): " .. tostring(aerr)))
    end
    return abandon(aerr)
  end
  local ok, cerr = store:commit()
  if not ok then return nil, cerr end
  res.events = model.array(list)
  return res
end

-- A decider with a consistency boundary (consistency = function(command) return query end):
-- its state is the fold of every event of the partition that matches the query the command
-- gives (store:read_query), not of one stream; its events go to `stream` with
-- store:append_if(query, P, ...), P the position the read gave (the head of the log once the
-- events were read): the append happens only if no event matching the query came after P. A
-- conflict
-- reads the events after P, folds them onto a copy of the state kept from before decide, and
-- decides again, retries + 1 times in all (no lock to fall back on). Result as M.handle's,
-- with position = P of the decision; next_expected_version is the stream's after the append
-- (nil when nothing was appended). opts.expected: the stream's expectation (default any).
local function handle_boundary(store, decider, stream, command, opts, call)
  if not store.read_query or not store.append_if then
    error("handle: a decider with consistency needs a store with read_query and append_if", 3)
  end
  local about = { stream = stream, command = command.type }
  local ok, query, kind, tb = call(decider.consistency, command)
  if not ok then
    return script_failure("consistency failed for command " .. command.type, query, kind, tb,
      about)
  end
  if type(query) ~= "table" then
    return script_failure("consistency failed for command " .. command.type,
      "it must return a query { types = { ... }, data = { field = value } }, got a "
      .. type(query), "error", nil, about)
  end
  -- A query of the wrong shape raises in the store: the script's mistake, said as one.
  local function read(after)
    local ok2, events, head = pcall(store.read_query, store, query, { after = after })
    if not ok2 then
      return nil, select(2, script_failure("consistency failed for command " .. command.type,
        tostring(events):gsub("^read_query: ", "it returned a bad query: "), "error", nil, about))
    end
    return events, head
  end
  local retries = opts.retries or M.default_retries
  local backoff = opts.backoff_ms or 2
  local stats = { events_read = 0 }
  local state, position, last_conflict = nil, 0, nil
  for attempt = 1, retries + 1 do
    local events, head = read(position)
    if not events then return nil, head end
    stats.events_read = stats.events_read + #events
    local at = {}
    local folded
    if state == nil then
      ok, folded, kind, tb = call(model.fold, decider, events, at)
    else
      ok, folded, kind, tb = call(model.fold_onto, decider, state, events, at)
    end
    if not ok then
      local e = events[at[1]]
      return script_failure((at[1] or 0) == 0 and "initial failed"
        or "evolve failed on the event at global position " .. tostring(e.global_position)
          .. " (" .. tostring(e.type) .. ", stream " .. tostring(e.stream_id) .. ")",
        folded, kind, tb, about)
    end
    state, position = folded, head
    local given
    ok, given, kind, tb = call(model.copy, state)
    if not ok then
      return script_failure("copying the state for command " .. command.type, given, kind, tb,
        about)
    end
    local list, derr = decide(decider, stream, command, given, call)
    if not list then return nil, derr end
    local res
    if #list == 0 then
      res = unchanged(list, nil)
    else
      local aerr
      res, aerr = store:append_if(query, position, stream, list, { expected = opts.expected })
      if not res and (aerr.kind ~= "conflict" or aerr.found == nil) then return nil, aerr end
      if res then res.events = model.array(list) end
      last_conflict = aerr
    end
    if res then
      res.attempts, res.locked, res.position = attempt, false, position
      if opts.stats then res.stats = stats end
      return res
    end
    if attempt <= retries then
      store:sleep(random() * min(250, backoff * 2 ^ (attempt - 1)))
    end
  end
  return fail("conflict", "conflict after " .. retries + 1 .. " attempts: "
    .. tostring(last_conflict):gsub("^conflict: ", ""),
    { found = last_conflict.found, after = last_conflict.after })
end

-- { events, next_expected_version, global_positions, attempts, locked [, stats] } | nil, err
-- Optimistic attempts first: read (from the snapshot, see the top), fold, decide, append
-- expecting the version read; after a
-- conflict only the events after that version are read and folded onto a copy of the state
-- kept from before decide (which may change the one it is given). After retries + 1 of those
-- (opts.retries, default 2) an attempt that cannot conflict: in a transaction on the store's
-- connection that locks the stream's row (store:begin), read the tail, decide, append,
-- commit. opts.lock == false, or a store without begin (a test's stand-in), gives up after
-- the optimistic attempts instead. attempts counts the decisions (1 without a conflict);
-- locked says whether the last one held the lock. opts.stats adds the stats (see the top),
-- opts.name is the decider's snapshot name when it has none of its own. The snapshot is saved
-- after an optimistic attempt that appended (or had nothing to append), from the state it
-- decided on; not after a locked one, where decide had that state itself.
-- err.kind: "rejected" (decide called tide.reject: err.message is its message as given,
-- err.details its details), "script" (any other error in initial/evolve/decide, or decide
-- returned something that is not a list of events: err.message has file:line,
-- err.traceback the stack; also upgrade's), "conflict" (attempts exhausted), "timeout",
-- "memory", or the store's kinds.
function M.handle(store, decider, stream, command, opts, call)
  check_decider(decider)
  if type(stream) ~= "string" or stream == "" then error("handle: stream must be a name", 2) end
  if type(command) ~= "table" or type(command.type) ~= "string" then
    error("handle: a command is { type = \"...\", data = {...} }", 2)
  end
  opts = opts or {}
  call = call or M.direct_call
  if decider.consistency then return handle_boundary(store, decider, stream, command, opts, call) end
  local retries = opts.retries or M.default_retries
  local backoff = opts.backoff_ms or 2
  local can_lock = opts.lock ~= false and store.begin ~= nil
  local name = snapshot_name(decider, opts)
  local stats = { events_read = 0 }
  local state, version, global -- folded before decide ran, its version and that event's position
  local last_conflict
  local attempts = 0

  -- An optimistic attempt's result: the snapshot first, when it is due.
  local function done(res)
    if snapshot_due(decider, name, stats, version) then
      save_snapshot(store, decider, name, stream, stats, state, version, global)
    end
    if opts.stats then res.stats = stats end
    return res
  end

  for attempt = 1, retries + 1 do
    attempts = attempt
    local ok, folded, v, g, restarted
    if attempt == 1 then
      ok, folded, v, g = fold_stream(store, decider, name, stream, call, stats)
    else
      ok, folded, v, g, restarted = catch_up(store, decider, stream, call, state, version, stats)
      if restarted then stats.snapshot_position, stats.snapshot_upgraded_from = nil, nil end
    end
    if not ok then return nil, folded end
    state, version, global = folded, v, g or (not restarted and global or nil)
    -- decide gets a copy: what it changes must not leak into the next attempt's fold.
    local ok, given, kind, tb = call(model.copy, state)
    if not ok then
      return script_failure("copying the state of stream " .. stream, given, kind, tb,
        { stream = stream, command = command.type })
    end
    local list, err = decide(decider, stream, command, given, call)
    if not list then return nil, err end
    if #list == 0 then
      local res = unchanged(list, version)
      res.attempts, res.locked = attempt, false
      return done(res)
    end
    local res, aerr = store:append(stream, list, { expected = version })
    if res then
      res.events, res.attempts, res.locked = model.array(list), attempt, false
      return done(res)
    end
    if aerr.kind ~= "conflict" then return nil, aerr end
    last_conflict = aerr
    if attempt <= retries then
      -- Exponential backoff with full jitter, capped at a quarter second.
      store:sleep(random() * min(250, backoff * 2 ^ (attempt - 1)))
    end
  end

  for _ = 1, can_lock and LOCKED_ATTEMPTS or 0 do
    attempts = attempts + 1
    local res, err = locked_attempt(store, decider, stream, command, call, state, version,
      stats)
    if res then
      res.attempts, res.locked = attempts, true
      if opts.stats then res.stats = stats end
      return res
    end
    if err.kind ~= "conflict" then return nil, err end
    -- Someone created the stream between our lock (no row) and our append: start over.
    last_conflict, state, version = err, nil, nil
  end

  -- The store's message starts "version conflict: "; say it once.
  local detail = tostring(last_conflict):gsub("^version conflict: ", "")
  return fail("conflict", "version conflict after " .. attempts .. " attempts: " .. detail,
    { expected = last_conflict.expected, actual = last_conflict.actual })
end

return M
