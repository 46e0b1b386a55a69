-- tide.replay: `tide replay` — one stream folded through one script, event by event, each
-- event handed on with the state after it: the debugging loop of script authors. What folds:
-- a decider (initial/evolve: the stream's state), a document projection (collection: a
-- document per id(event), default the stream, from initial() or nothing, its events filter
-- respected, as the daemon folds it in lua/tide/processor.lua) and a snapshot projection
-- (snapshot = a decider: that decider's initial/evolve, per id as documents). A keyed
-- projection's documents hold only this stream's events. SQL projections and reactors have
-- no state to fold: they are refused.
local model = require "tide.model"
local command = require "tide.command"
local processor = require "tide.processor"
local type, tostring, ipairs, error, setmetatable = type, tostring, ipairs, error, setmetatable

local M = {}

-- Events read from the store at a time: a long stream is never held whole.
M.page = 1000

local error_mt = { __tostring = function(e) return e.message end }
local function fail(kind, message)
  return nil, setmetatable({ kind = kind, message = message }, error_mt)
end

local function event_set(p)
  if type(p.events) ~= "table" then return nil end
  local set = {}
  for _, t in ipairs(p.events) do set[t] = true end
  return set
end

-- How p folds: { initial, evolve, keyed, set, what } | nil, what p is instead ("a reactor
-- (...)": the end of a sentence).
function M.folder(p)
  if type(p) ~= "table" then return nil, "a " .. type(p) end
  if p.kind == "decider" then
    return { initial = p.initial, evolve = p.evolve, what = "decider" }
  end
  if p.kind == "projection" then
    local snapshot = p.snapshot
    if type(snapshot) == "table" and type(snapshot.evolve) == "function" then
      return { initial = snapshot.initial, evolve = snapshot.evolve, keyed = true,
               set = event_set(p), what = "snapshot projection" }
    end
    if p.collection ~= nil then
      return { initial = p.initial, evolve = p.evolve, keyed = true, set = event_set(p),
               what = "document projection" }
    end
    return nil, "an SQL projection (handle/handle_event): its state is the tables it writes; "
      .. "test it with tide.testing (`tide test`)"
  end
  if p.kind == "reactor" then
    return nil, "a reactor: it has effects, not a state; test it with tide.testing (`tide test`)"
  end
  if p.kind == "publisher" then
    return nil, "a publisher: it POSTs events to its url (`tide run`), it has no state"
  end
  return nil, "a " .. tostring(p.kind)
end

-- "event 3 (ItemAdded) of stream cart-1"
local function event_name(e, stream)
  return "event " .. tostring(e.stream_position) .. " (" .. tostring(e.type) .. ") of stream "
    .. stream
end

-- Folds stream through p, calling emit(event, state, id) after each event it folds (id: the
-- document's, for keyed projections) and emit(nil, state, id) with what initial() returned,
-- before the first event folds onto it. emit returns true, or false and why the state
-- cannot be shown. opts.to: the last stream position (default: the end). call runs script
-- code (the VM's guard, or command.direct_call).
-- → { events = read, folded = N, position = the last read, what = "decider"|... } | nil,
-- err: err.kind "invalid" (p cannot be replayed), "script" (initial, id or evolve failed, or
-- a state cannot be shown: named by its event), "timeout", "memory", or the store's.
function M.run(store, p, stream, opts, emit, call)
  if type(stream) ~= "string" or stream == "" then error("replay: stream must be a name", 2) end
  if type(emit) ~= "function" then error("replay: emit must be a function", 2) end
  call = call or command.direct_call
  local f, why = M.folder(p)
  if not f then
    return fail("invalid", "replay folds a decider (initial/evolve), a document projection "
      .. "(collection, evolve) or a snapshot projection (snapshot = a decider); the script is "
      .. why)
  end
  local to = opts and opts.to
  local states, known = {}, {} -- by id ("" for a decider's one state)
  local read, folded, position = 0, 0, 0

  local function initial(id, e)
    if not f.initial then return true, nil end
    local ok, state, kind, tb = call(f.initial)
    if not ok then
      return command.script_failure("initial failed before " .. event_name(e, stream), state,
        kind, tb)
    end
    local shown, err = emit(nil, state, id)
    if not shown then
      return fail("script", "the initial state cannot be shown (" .. event_name(e, stream)
        .. " is next): " .. tostring(err))
    end
    return true, state
  end

  local function step(e)
    local id = ""
    if f.keyed and f.set and not f.set[e.type] then return true end
    -- The script gets a copy: what it changes in its event must not show in what is printed.
    local given = model.copy(e)
    if f.keyed then
      local ok, got, kind, tb = call(processor.document_id, p, given)
      if not ok then
        return command.script_failure("id failed on " .. event_name(e, stream), got, kind, tb)
      end
      if got == false then return true end
      id = tostring(got)
    end
    -- A document that evolve deleted (nil) starts again from initial(), as in the daemon;
    -- a decider's state comes from initial() once.
    if not known[id] or (f.keyed and states[id] == nil) then
      local ok, state = initial(f.keyed and id or nil, e)
      if not ok then return nil, state end
      states[id], known[id] = state, true
    end
    local ok, state, kind, tb = call(f.evolve, states[id], given)
    if not ok then
      return command.script_failure("evolve failed on " .. event_name(e, stream), state, kind, tb)
    end
    states[id] = state
    folded = folded + 1
    local shown, err = emit(e, state, f.keyed and id or nil)
    if not shown then
      return fail("script", "the state after " .. event_name(e, stream) .. " cannot be shown: "
        .. tostring(err))
    end
    return true
  end

  local from = 1
  while true do
    local events, err = store:read(stream, { from = from, to = to, max = M.page })
    if not events then return nil, err end
    for _, e in ipairs(events) do
      read, position = read + 1, e.stream_position
      local ok, serr = step(e)
      if not ok then return nil, serr end
    end
    if #events < M.page then break end
    from = position + 1
  end
  return { events = read, folded = folded, position = position, what = f.what }
end

return M
