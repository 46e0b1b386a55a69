-- tide.command: where a command meets a decider. handle = read the stream → fold with
-- evolve from initial() → decide → append with the read version as the expectation →
-- on a version conflict, read again and retry (bounded, exponential backoff with jitter).
-- The store is anything with read/append/sleep (the C store, blocking on its own loop).
-- `call` runs script code: the VM passes its CPU/memory guard; hosts call directly.
local model = require "tide.model"
local error, type, setmetatable, tostring = error, type, setmetatable, tostring
local random, min = math.random, math.min

local M = {}

local error_mt = { __tostring = function(e) return e.message end }
local function fail(kind, message, extra)
  local e = extra or {}
  e.kind, e.message = kind, message
  return nil, setmetatable(e, error_mt)
end

-- Hosts: a protected call with a traceback; the same protocol as the VM's guard.
local traceback = debug and debug.traceback
function M.direct_call(f, ...)
  local tb
  local res = { xpcall(f, function(m)
    tb = traceback and traceback(tostring(m), 2) or tostring(m)
    return m
  end, ...) }
  if res[1] then return unpack(res) end
  return false, tostring(res[2]), "error", tb
end

local function script_failure(what, msg, kind, tb)
  if kind == "timeout" or kind == "memory" then return fail(kind, what .. ": " .. msg) end
  return fail("script", what .. " failed: " .. msg, { traceback = tb })
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
  local ok, state, kind, tb = (call or M.direct_call)(model.fold, decider, events)
  if not ok then return script_failure("evolve", state, kind, tb) end
  return state, version_of(events)
end

-- { events, next_expected_version, global_positions, attempts } | nil, err
-- err.kind: "rejected" (decide raised; message is the decider's), "conflict" (retries
-- exhausted), "script", "timeout", "memory", or the store's kinds.
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
    local ok, state, kind, tb = call(model.fold, decider, events)
    if not ok then return script_failure("evolve", state, kind, tb) end
    local ok2, out, kind2, tb2 = call(decider.decide, command, state)
    if not ok2 then
      if kind2 == "error" then return fail("rejected", model.rejection_message(out)) end
      return script_failure("decide", out, kind2, tb2)
    end
    local ok3, list = pcall(model.event_list, out)
    if not ok3 then return fail("script", tostring(list)) end
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
