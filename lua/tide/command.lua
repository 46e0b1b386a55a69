-- tide.command: where a command meets a decider. handle = read the stream → fold with
-- evolve from initial() → decide → append with the read version as the expectation →
-- on a version conflict, read the new events only and retry (bounded, exponential backoff
-- with jitter) → then once more under the stream's lock, which cannot conflict.
-- The store is anything with read/append/sleep, and begin/commit/rollback to lock (the C
-- store, blocking on its own loop).
-- `call` runs script code: the VM passes its CPU/memory guard; hosts call directly.
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

local function version_of(events)
  local last = events[#events]
  return last and last.stream_position or 0
end

local function check_decider(decider)
  if type(decider) ~= "table" or decider.kind ~= "decider" then
    error("expected a decider (built with tide.decider), got " .. type(decider), 3)
  end
end

-- state, version | nil, err
function M.aggregate(store, decider, stream, call)
  check_decider(decider)
  if type(stream) ~= "string" or stream == "" then error("aggregate: stream must be a name", 2) end
  local events, err = store:read(stream)
  if not events then return nil, err end
  local at = {}
  local ok, state, kind, tb = (call or M.direct_call)(model.fold, decider, events, at)
  if not ok then return fold_failure(stream, events, at, state, kind, tb) end
  return state, version_of(events)
end

-- The events after version, folded onto state (the stream's whole history from initial()
-- when state is nil): state, version | nil, err. A tail that does not start right after
-- version (the stream was archived and begun again) is no tail: then the whole stream.
local function catch_up(store, decider, stream, call, state, version)
  local events, err
  if state == nil then
    events, err = store:read(stream)
  else
    events, err = store:read(stream, { from = version + 1 })
  end
  if not events then return nil, err end
  if state ~= nil and events[1] and events[1].stream_position ~= version + 1 then
    return catch_up(store, decider, stream, call, nil, 0)
  end
  local at = {}
  local ok, folded, kind, tb
  if state == nil then
    ok, folded, kind, tb = call(model.fold, decider, events, at)
  else
    ok, folded, kind, tb = call(model.fold_onto, decider, state, events, at)
  end
  if not ok then return fold_failure(stream, events, at, folded, kind, tb) end
  local last = events[#events]
  return folded, last and last.stream_position or (state == nil and 0 or version)
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
local function locked_attempt(store, decider, stream, command, call, state, version)
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
    local folded, v = catch_up(store, decider, stream, call, state, version)
    if folded == nil then return abandon(v) end
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

-- { events, next_expected_version, global_positions, attempts, locked } | nil, err
-- Optimistic attempts first: read, fold, decide, append expecting the version read; after a
-- conflict only the events after that version are read and folded onto a copy of the state
-- kept from before decide (which may change the one it is given). After retries + 1 of those
-- (opts.retries, default 2) an attempt that cannot conflict: in a transaction on the store's
-- connection that locks the stream's row (store:begin), read the tail, decide, append,
-- commit. opts.lock == false, or a store without begin (a test's stand-in), gives up after
-- the optimistic attempts instead. attempts counts the decisions (1 without a conflict);
-- locked says whether the last one held the lock.
-- err.kind: "rejected" (decide called tide.reject: err.message is its message as given,
-- err.details its details), "script" (any other error in initial/evolve/decide, or decide
-- returned something that is not a list of events: err.message has file:line,
-- err.traceback the stack), "conflict" (attempts exhausted), "timeout", "memory", or the
-- store's kinds.
function M.handle(store, decider, stream, command, opts, call)
  check_decider(decider)
  if type(stream) ~= "string" or stream == "" then error("handle: stream must be a name", 2) end
  if type(command) ~= "table" or type(command.type) ~= "string" then
    error("handle: a command is { type = \"...\", data = {...} }", 2)
  end
  opts = opts or {}
  call = call or M.direct_call
  local retries = opts.retries or M.default_retries
  local backoff = opts.backoff_ms or 2
  local can_lock = opts.lock ~= false and store.begin ~= nil
  local state, version -- folded before decide ran, and the version it is at
  local last_conflict
  local attempts = 0

  for attempt = 1, retries + 1 do
    attempts = attempt
    local folded, v = catch_up(store, decider, stream, call, state, version or 0)
    if folded == nil then return nil, v end
    state, version = folded, v
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
      return res
    end
    local res, aerr = store:append(stream, list, { expected = version })
    if res then
      res.events, res.attempts, res.locked = model.array(list), attempt, false
      return res
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
    local res, err = locked_attempt(store, decider, stream, command, call, state, version)
    if res then
      res.attempts, res.locked = attempts, true
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
