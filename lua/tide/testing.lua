-- tide.testing: given/when/then for deciders and projections, for plain busted with no
-- database and no C module.
--
--   local given = require("tide.testing").decider(cart)
--   given({ { type = "CartOpened", data = { customer = "ada" } } })
--     .when({ type = "AddItem", data = { sku = "tea", qty = 1, price = 2 } })
--     .then_events({ { type = "ItemAdded", data = { sku = "tea", qty = 1, price = 2 } } })
--   given({}).when({ type = "ConfirmCart", data = {} }).then_rejects("not open")
--   given(events).then_state(expected_state)
--
--   local p = require("tide.testing").projection(cart_summary)
--   p.given(events).then_document("cart-1", doc)   .then_no_document(id)   .then_state(all)
local model = require "tide.model"
local command = require "tide.command"
local type, pairs, ipairs, tostring, error, pcall, select = type, pairs, ipairs, tostring, error, pcall, select
local sort, concat, format = table.sort, table.concat, string.format

local M = {}

-- Deterministic text of a value: keys sorted, tide.null as null.
function M.serialize(v, indent)
  indent = indent or ""
  if v == model.null then return "null" end
  local t = type(v)
  if t == "string" then return format("%q", v) end
  if t ~= "table" then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  if #keys == 0 then return "{}" end
  sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then return a < b end
    return type(a) < type(b)
  end)
  local inner, parts = indent .. "  ", {}
  for _, k in ipairs(keys) do
    local key = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or ("[" .. M.serialize(k) .. "]")
    parts[#parts + 1] = inner .. key .. " = " .. M.serialize(v[k], inner)
  end
  return "{\n" .. concat(parts, ",\n") .. "\n" .. indent .. "}"
end

function M.deep_equal(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" or a == model.null or b == model.null then return false end
  for k, v in pairs(a) do
    if not M.deep_equal(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

local function copy(v)
  if type(v) ~= "table" or v == model.null then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = copy(x) end
  return out
end

-- A failed expectation: a busted *failure* (raised through luassert, which busted binds to
-- its own fail) when luassert is there, else an error. level as for error().
local luassert
local function failure(msg, level)
  if luassert == nil then
    local ok, la = pcall(require, "luassert")
    luassert = ok and type(la) == "table" and la or false
  end
  if luassert then luassert(false, msg, luassert:level(level + 1)) end
  error(msg, level + 1)
end
M.failure = failure

local function fail(msg, expected, actual)
  failure(msg .. "\nexpected: " .. M.serialize(expected) .. "\n  actual: " .. M.serialize(actual), 3)
end

-- Events as the runtime delivers them: stored fields filled in with stand-ins.
local function as_stored(events, stream)
  local out = {}
  for i, e in ipairs(events or {}) do
    local s = copy(e)
    s.stream_id = s.stream_id or stream or "test-1"
    s.stream_position = s.stream_position or i
    s.global_position = s.global_position or i
    s.data = s.data or {}
    s.metadata = s.metadata or {}
    s.message_id = s.message_id or format("00000000-0000-4000-8000-%012d", i)
    s.created = s.created or "2026-01-01T00:00:00.000000Z"
    out[i] = s
  end
  return out
end

local function compare_events(expected, actual)
  if #expected ~= #actual then return false end
  for i, e in ipairs(expected) do
    local a = actual[i]
    if e.type ~= a.type or not M.deep_equal(e.data or {}, a.data or {}) then return false end
    if e.metadata ~= nil and not M.deep_equal(e.metadata, a.metadata) then return false end
  end
  return true
end

local function strip(events)
  local out = {}
  for i, e in ipairs(events) do out[i] = { type = e.type, data = e.data, metadata = e.metadata } end
  return out
end

-- An error in the script under test is a bug, not a failed expectation (nor a rejection:
-- only tide.reject is one): raised as an error with its file:line and the script's stack.
local function script_bug(what, msg, kind, tb)
  if kind == "rejected" then msg = "tide.reject is for decide; it was called with: " .. msg.message end
  local stack = tb and tb:match("\n(stack traceback:.-)\n%s*%[C%]: in function 'xpcall'")
  error(what .. ": " .. tostring(msg)
    .. (kind == "error" and "\n(an error is a bug in the script, not a rejection: reject with tide.reject)" or "")
    .. (stack and "\n" .. stack or ""), 0)
end

-- testing.decider(d) → given(events [, stream]) → { when, then_state }
function M.decider(d)
  if type(d) ~= "table" or d.kind ~= "decider" then
    error("testing.decider wants a decider built with tide.decider", 2)
  end
  return function(events, stream)
    local history = as_stored(events, stream)
    local function fold()
      local ok, state, kind, tb = command.direct_call(model.fold, d, copy(history), {})
      if not ok then script_bug("evolve failed on the given events", state, kind, tb) end
      return state
    end
    local g = {}
    function g.then_state(expected)
      local state = fold()
      if not M.deep_equal(expected, state) then fail("state differs", expected, state) end
      return g
    end
    function g.when(cmd)
      local w = {}
      -- true, events | false, rejection; a bug in the script raises (an error, not a failure).
      local function run()
        local state = fold()
        local what = "decide failed for command " .. tostring(cmd.type)
        local ok, out, kind, tb = command.direct_call(d.decide, copy(cmd), state)
        if not ok then
          if kind == "rejected" then return false, out end
          script_bug(what, out, kind, tb)
        end
        local ok2, list = pcall(model.event_list, out, d.decide)
        if not ok2 then script_bug(what, list) end
        return true, list
      end
      function w.then_events(expected)
        local ok, out = run()
        if not ok then failure("the command was rejected: " .. out.message, 2) end
        if not compare_events(expected, out) then fail("decided events differ", expected, strip(out)) end
        return w
      end
      -- then_rejects(pattern [, details]): pattern matches the message (or is found in it as
      -- plain text); details, when given, must equal the rejection's.
      function w.then_rejects(pattern, details)
        local ok, out = run()
        if ok then
          failure("expected a rejection matching '" .. pattern .. "', but decide returned:\n" ..
            M.serialize(strip(out)), 2)
        end
        local msg = out.message
        if not (msg:find(pattern) or msg:find(pattern, 1, true)) then
          failure("the rejection '" .. msg .. "' does not match '" .. pattern .. "'", 2)
        end
        if details ~= nil and not M.deep_equal(details, out.details) then
          fail("the rejection's details differ", details, out.details)
        end
        return w
      end
      return w
    end
    return g
  end
end

-- testing.projection(p) → { given(events [, stream]) → { then_document, then_no_document, then_state } }
function M.projection(p)
  if type(p) ~= "table" or p.kind ~= "projection" or not p.collection then
    error("testing.projection wants a document projection (tide.projection with a collection)", 2)
  end
  local t = {}
  function t.given(events, stream)
    local docs = {}
    for _, e in ipairs(as_stored(events, stream)) do
      if not p.event_set or p.event_set[e.type] then
        local id = (p.id or function(x) return x.stream_id end)(e)
        if id ~= nil then
          id = tostring(id)
          local doc = docs[id]
          if doc == nil and p.initial then doc = p.initial() end
          docs[id] = p.evolve(doc, e)
        end
      end
    end
    local g = {}
    function g.then_document(id, expected)
      if not M.deep_equal(expected, docs[id]) then fail("document " .. id .. " differs", expected, docs[id]) end
      return g
    end
    function g.then_no_document(id)
      if docs[id] ~= nil then fail("document " .. id .. " should not exist", nil, docs[id]) end
      return g
    end
    function g.then_state(expected)
      if not M.deep_equal(expected, docs) then fail("documents differ", expected, docs) end
      return g
    end
    return g
  end
  return t
end

return M
