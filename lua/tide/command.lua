-- tide.command: where a command meets a decider. handle = read the stream → fold with
-- evolve from initial() → decide → append with the read version as the expectation →
-- on a version conflict, read again and retry (bounded, exponential backoff with jitter).
-- The store is anything with read/append/sleep (the C store, blocking on its own loop).
-- `call` runs script code: the VM passes its CPU/memory guard; hosts call directly.
local model = require "tide.model"
local error, type, setmetatable, tostring, select, unpack, xpcall, rawget =
  error, type, setmetatable, tostring, select, unpack, xpcall, rawget
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

-- { events, next_expected_version, global_positions, attempts } | nil, err
-- err.kind: "rejected" (decide called tide.reject: err.message is its message as given,
-- err.details its details), "script" (any other error in initial/evolve/decide, or decide
-- returned something that is not a list of events: err.message has file:line,
-- err.traceback the stack), "conflict" (retries exhausted), "timeout", "memory", or the
-- store's kinds.
function M.handle(store, decider, stream, command, opts, call)
  check_decider(decider)
  if type(stream) ~= "string" or stream == "" then error("handle: stream must be a name", 2) end
  if type(command) ~= "table" or type(command.type) ~= "string" then
    error("handle: a command is { type = \"...\", data = {...} }", 2)
  end
  opts = opts or {}
  call = call or M.direct_call
  local retries = opts.retries or 5
  local backoff = opts.backoff_ms or 2
  local last_conflict
  for attempt = 1, retries + 1 do
    local events, err = store:read(stream)
    if not events then return nil, err end
    local version = version_of(events)
    local at = {}
    local ok, state, kind, tb = call(model.fold, decider, events, at)
    if not ok then return fold_failure(stream, events, at, state, kind, tb) end
    local ok2, out, kind2, tb2 = call(decider.decide, command, state)
    local what = "decide failed for command " .. command.type .. " on stream " .. stream
    local about = { stream = stream, command = command.type }
    if not ok2 then
      if kind2 == "rejected" then
        return fail("rejected", rawget(out, "message"), { details = rawget(out, "details") })
      end
      if kind2 == "error" and out:find("^the script raised a table value") then
        out = out .. " (to reject the command, call tide.reject(message [, details]))"
      end
      return script_failure(what, out, kind2, tb2, about)
    end
    local ok3, list = pcall(model.event_list, out, decider.decide)
    if not ok3 then return script_failure(what, tostring(list), "error", nil, about) end
    if #list == 0 then
      return { events = model.array(list), next_expected_version = version,
               global_positions = model.array(), attempts = attempt }
    end
    local res, aerr = store:append(stream, list, { expected = version })
    if res then
      res.events, res.attempts = model.array(list), attempt
      return res
    end
    if aerr.kind ~= "conflict" then return nil, aerr end
    last_conflict = aerr
    if attempt <= retries then
      -- Exponential backoff with full jitter, capped at a quarter second.
      store:sleep(random() * min(250, backoff * 2 ^ (attempt - 1)))
    end
  end
  -- The store's message starts "version conflict: "; say it once.
  local detail = tostring(last_conflict):gsub("^version conflict: ", "")
  return fail("conflict", "version conflict after " .. (retries + 1) .. " attempts: " .. detail,
    { expected = last_conflict.expected, actual = last_conflict.actual })
end

return M
