-- tide.testing: given/when/then for deciders, projections and reactors, for plain busted
-- with no database and no C module (`tide test DIR` runs a directory's specs).
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
--
--   local s = require("tide.testing").sql_projection(product_sales)     -- handle / handle_event
--   s.given(events, "cart-1").query_returns("SELECT ...", rows)
--     .then_statements({ { "INSERT INTO cart_lines", "cart-1", "tea", 2, 4.5 }, "DELETE FROM" })
--   s.given(events).then_no_statements()   s.setup().then_statements(...)   .then_fails(pattern)
--
--   local events = require("tide.testing").upcast({ require "item_added_v2" }, old_events)
--
--   local r = require("tide.testing").reactor(notify_on_confirm)
--   r.given(events, "cart-1").then_appends({ { stream = "notifications-cart-1", events = {...} } })
--     .then_logs({ "notified" })   .then_no_appends()   .then_fails(pattern)
local model = require "tide.model"
local processor = require "tide.processor"
local command = require "tide.command"
local upcast = require "tide.upcast"
local type, pairs, ipairs, tostring, error, pcall, select, setmetatable =
  type, pairs, ipairs, tostring, error, pcall, select, setmetatable
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
-- A snapshot projection's documents are its rows' states, folded with its decider.
function M.projection(p)
  if type(p) ~= "table" or p.kind ~= "projection" or not (p.collection or p.snapshot) then
    error("testing.projection wants a document projection (tide.projection with a collection)"
      .. " or a snapshot projection", 2)
  end
  local initial, evolve = p.initial, p.evolve
  if p.snapshot then initial, evolve = p.snapshot.initial, p.snapshot.evolve end
  local t = {}
  function t.given(events, stream)
    local docs = {}
    for _, e in ipairs(as_stored(events, stream)) do
      if not p.event_set or p.event_set[e.type] then
        local id = processor.document_id(p, e) -- as the daemon: false skips, nil fails
        if id ~= false then
          id = tostring(id)
          local doc = docs[id]
          if doc == nil and initial then doc = initial() end
          docs[id] = evolve(doc, e)
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

-- --- SQL projections and reactors ---------------------------------------------------------
-- They run as in the daemon (tide.processor: the event filter, one handle per batch or one
-- handle_event per event), against a recording stand-in for `sql` or `ctx`. A failed
-- expectation is a busted failure, raised through luassert (which busted binds to its own
-- `fail`); outside busted it is a plain error. A script that raises is an error, not a
-- failure, unless the test expects it (then_fails).
local find, gsub, maxn, unpack = string.find, string.gsub, table.maxn, unpack or table.unpack
local xpcall, max, traceback = xpcall, math.max, debug and debug.traceback
local processor -- tide.processor, loaded on first use

local function expectation_failed(message, level)
  level = (level or 1) + 1
  local ok, luassert = pcall(require, "luassert")
  if ok and type(luassert) == "table" and luassert.level then
    luassert(false, message, luassert:level(level))
  end
  error(message, level)
end

local function differs(what, expected, actual, level)
  expectation_failed(what .. "\nexpected: " .. M.serialize(expected) .. "\n  actual: " .. M.serialize(actual),
    (level or 1) + 1)
end

-- SQL text with every run of whitespace as one space, for comparing and showing.
local function squash(sql)
  return (gsub(gsub(sql, "%s+", " "), "^ ?(.-) ?$", "%1"))
end

-- expected matches text when they are equal, when text contains it, or when it matches as a
-- Lua pattern (one that is not a valid pattern simply does not match).
local function matches(expected, text)
  if expected == text or find(text, expected, 1, true) then return true end
  local ok, found = pcall(find, text, expected)
  return ok and found ~= nil
end

-- Runs f(...) once; true | false, message, traceback.
local function attempt(f, ...)
  local tb
  local ok, err = xpcall(f, function(m)
    tb = traceback and traceback(tostring(m), 2) or tostring(m)
    return m
  end, ...)
  if ok then return true end
  return false, model.is_rejection(err) and err.message or tostring(err), tb
end

-- The parameters of a statement as the daemon would send them (batch.c): nil and tide.null
-- are NULL, tables go as JSON; other types, NUL bytes and more than 64 raise.
local function sql_params(...)
  local n = select("#", ...)
  if n > 64 then error("at most 64 parameters", 3) end
  local params = { n = n }
  for i = 1, n do
    local v = select(i, ...)
    local t = type(v)
    if v == nil then
      v = model.null
    elseif t == "string" then
      if find(v, "\0", 1, true) then error(format("$%d: a SQL parameter cannot hold a NUL byte", i), 3) end
    elseif t ~= "number" and t ~= "boolean" and t ~= "table" then
      error(format("$%d: a %s cannot be a SQL parameter", i, t), 3)
    end
    params[i] = copy(v)
  end
  return params
end

-- A statement as an expectation is written: { sql, params... }, the SQL squashed.
local function shown(st)
  local out = { squash(st.sql) }
  for i = 1, st.params.n do out[i + 1] = st.params[i] end
  return out
end

-- An expected statement: "SQL" (its parameters are not compared) or { "SQL", params... }
-- (they are, all of them; nil or tide.null for NULL, tide.null when it is the last one).
local function statement_matches(expected, st)
  if type(expected) == "string" then return matches(squash(expected), squash(st.sql)) end
  if type(expected) ~= "table" or type(expected[1]) ~= "string" then
    error("an expected statement is \"SQL\" or { \"SQL\", params... }", 3)
  end
  if not matches(squash(expected[1]), squash(st.sql)) then return false end
  local n = maxn(expected) - 1
  if n ~= st.params.n then return false end
  for i = 1, n do
    local e = expected[i + 1]
    if e == nil then e = model.null end
    if not M.deep_equal(e, st.params[i]) then return false end
  end
  return true
end

-- run() → ok, message, traceback, called once, when the first then_... wants it: the
-- expectations that feed a run (query_returns) come before.
local function lazily(run)
  local done
  return function()
    if not done then
      done = {}
      done.ok, done.message, done.traceback = run()
    end
    return done
  end
end

local function must_succeed(outcome, what)
  if not outcome.ok then
    error(what .. " raised: " .. tostring(outcome.message) .. "\n" .. tostring(outcome.traceback), 3)
  end
end

local function add_then_fails(g, outcome, what, effects)
  -- then_fails(pattern): the script raised, with a message matching pattern (plain text or
  -- Lua pattern; without file:line). A handler that fails is retried by the daemon, then
  -- dead-lettered (on_error).
  function g.then_fails(pattern)
    local o = outcome()
    if o.ok then
      expectation_failed("expected " .. what .. " to fail with '" .. tostring(pattern) ..
        "', but it succeeded, with:\n" .. M.serialize(effects()), 2)
    end
    if not matches(pattern, o.message) then
      expectation_failed(what .. " failed with '" .. o.message .. "', which does not match '" ..
        tostring(pattern) .. "'", 2)
    end
    return g
  end
end

-- The statements of run(sql) against a recording sql handle; queries answer with the rows
-- given by query_returns, else none.
local function sql_outcome(run, what)
  local statements, canned, g = {}, {}, {}
  local sql = {}
  function sql:exec(q, ...)
    if type(q) ~= "string" then error("sql:exec wants the SQL text first", 2) end
    statements[#statements + 1] = { sql = q, params = sql_params(...), query = false }
  end
  function sql:query(q, ...)
    if type(q) ~= "string" then error("sql:query wants the SQL text first", 2) end
    local params = sql_params(...)
    statements[#statements + 1] = { sql = q, params = params, query = true }
    for _, c in ipairs(canned) do
      if matches(squash(c.pattern), squash(q)) then
        if type(c.rows) == "function" then return c.rows(q, unpack(params, 1, params.n)) end
        return copy(c.rows)
      end
    end
    return model.array()
  end
  local outcome, started = lazily(function() return attempt(run, sql) end), false
  local function ran()
    started = true
    return outcome()
  end
  local function list()
    local out = {}
    for i, st in ipairs(statements) do out[i] = shown(st) end
    return out
  end

  -- query_returns(sql, rows | function(sql, params...) → rows): what sql:query answers for
  -- a statement matching sql (the first such given wins); rows = { { column = value }, ... }.
  function g.query_returns(pattern, rows)
    if started then error("query_returns must come before then_...", 2) end
    if type(pattern) ~= "string" or (type(rows) ~= "table" and type(rows) ~= "function") then
      error("query_returns wants the SQL (text or pattern) and the rows (a list or a function)", 2)
    end
    canned[#canned + 1] = { pattern = pattern, rows = rows }
    return g
  end

  -- then_statements({ "SQL" | { "SQL", params... }, ... }): exactly these statements, in
  -- order, exec and query alike.
  function g.then_statements(expected)
    if type(expected) ~= "table" then error("then_statements wants a list of statements", 2) end
    must_succeed(ran(), what)
    for i = 1, max(#expected, #statements) do
      local e, st = expected[i], statements[i]
      if e == nil or st == nil or not statement_matches(e, st) then
        differs(format("the statements differ (from statement %d on)", i), expected, list(), 2)
      end
    end
    return g
  end

  function g.then_no_statements()
    must_succeed(ran(), what)
    if #statements > 0 then differs("expected no statements", {}, list(), 2) end
    return g
  end

  -- statements() → { { sql, params = { n, ... }, query = bool }, ... } for checks of one's own.
  function g.statements()
    must_succeed(ran(), what)
    local out = {}
    for i, st in ipairs(statements) do out[i] = copy(st) end
    return out
  end

  add_then_fails(g, ran, what, list)
  return g
end

-- testing.sql_projection(p) → { given(events [, stream]), setup(), reset() }, each
--   → { query_returns, then_statements, then_no_statements, then_fails, statements }
function M.sql_projection(p)
  if type(p) ~= "table" or p.kind ~= "projection" or p.collection ~= nil then
    error("testing.sql_projection wants an SQL projection (tide.projection with handle or " ..
      "handle_event; for a collection use testing.projection)", 2)
  end
  processor = processor or require "tide.processor"
  local t = {}
  function t.given(events, stream)
    local batch = model.array(as_stored(events, stream))
    return sql_outcome(function(sql) return processor.run_batch(p, batch, sql) end, "the batch")
  end
  function t.setup()
    return sql_outcome(function(sql) return processor.setup(p, sql) end, "setup")
  end
  function t.reset()
    return sql_outcome(function(sql) return processor.reset(p, sql) end, "reset")
  end
  return t
end

-- A reactor's ctx that records: append checks its arguments and the expected version as the
-- daemon's does (streams start empty in a test), log keeps the messages.
local conflict_mt = { __tostring = function(e) return e.message end }

local function recording_ctx(partition, appends, logs)
  local versions, ctx = {}, {}
  function ctx.append(stream, events, opts)
    if type(stream) ~= "string" or stream == "" then error("ctx.append: stream must be a name", 2) end
    if type(events) ~= "table" or #events == 0 then error("ctx.append: no events", 2) end
    for i, e in ipairs(events) do
      if type(e) ~= "table" or type(e.type) ~= "string" or e.type == "" then
        error("ctx.append: event " .. i .. " has no type", 2)
      end
      if type(e.data) ~= "table" then -- the store's column is NOT NULL: the batch would fail
        error("ctx.append: event " .. i .. " (" .. e.type .. ") needs data, a table", 2)
      end
    end
    local expected = opts and opts.expected or "any"
    local part = opts and opts.partition or partition
    local key = part .. "\0" .. stream
    local version = versions[key] or 0
    if (expected == "no_stream" and version ~= 0) or (expected == "stream_exists" and version == 0)
      or (type(expected) == "number" and expected ~= version) then
      -- The daemon's typed conflict (engine/append.c's message).
      local message = "ctx.append to " .. stream .. ": version conflict: expected "
        .. tostring(expected) .. ", found " .. (version > 0 and ("version " .. version) or "no stream")
      error(setmetatable({ kind = "conflict", message = message, expected = expected,
        actual = version > 0 and version or "no_stream" }, conflict_mt), 2)
    end
    versions[key] = version + #events
    appends[#appends + 1] = { stream = stream, events = copy(events), expected = expected, partition = part }
    return { next_expected_version = version + #events }
  end
  function ctx.log(message)
    if type(message) ~= "string" and type(message) ~= "number" then
      error("bad argument #1 to 'log' (string expected, got " .. type(message) .. ")", 2)
    end
    logs[#logs + 1] = tostring(message)
  end
  return ctx
end

local function append_matches(e, a)
  if type(e) ~= "table" or type(e.events) ~= "table" then
    error("an expected append is { stream = ..., events = { ... } }", 3)
  end
  if e.stream ~= a.stream or not compare_events(e.events, a.events) then return false end
  if e.expected ~= nil and e.expected ~= a.expected then return false end
  return e.partition == nil or e.partition == a.partition
end

-- testing.reactor(r) → { given(events [, stream]) → { then_appends, then_no_appends,
--   then_logs, then_fails, appends } }
function M.reactor(r)
  if type(r) ~= "table" or r.kind ~= "reactor" then
    error("testing.reactor wants a reactor (tide.reactor)", 2)
  end
  local t = {}
  function t.given(events, stream)
    local appends, logs, g = {}, {}, {}
    local outcome = lazily(function()
      local ctx = recording_ctx(r.partition or "emt:default", appends, logs)
      return attempt(function()
        for _, e in ipairs(as_stored(events, stream)) do
          if not r.event_set or r.event_set[e.type] then r.handle(e, ctx) end
        end
      end)
    end)
    local function list()
      local out = {}
      for i, a in ipairs(appends) do
        out[i] = { stream = a.stream, events = strip(a.events), expected = a.expected, partition = a.partition }
      end
      return out
    end

    -- then_appends({ { stream = ..., events = { ... }, expected = ?, partition = ? }, ... }):
    -- exactly these ctx.append calls, in order. Events compare by type and data (metadata
    -- when the expectation has it); expected and partition when given.
    function g.then_appends(expected)
      if type(expected) ~= "table" then error("then_appends wants a list of appends", 2) end
      must_succeed(outcome(), "the reactor")
      for i = 1, max(#expected, #appends) do
        local e, a = expected[i], appends[i]
        if e == nil or a == nil or not append_matches(e, a) then
          differs(format("the appends differ (from append %d on)", i), expected, list(), 2)
        end
      end
      return g
    end

    function g.then_no_appends()
      must_succeed(outcome(), "the reactor")
      if #appends > 0 then differs("expected no appends", {}, list(), 2) end
      return g
    end

    -- then_logs({ text, ... }): the ctx.log messages, each matching its text (equal,
    -- contained, or a Lua pattern).
    function g.then_logs(expected)
      if type(expected) ~= "table" then error("then_logs wants a list of messages", 2) end
      must_succeed(outcome(), "the reactor")
      for i = 1, max(#expected, #logs) do
        if expected[i] == nil or logs[i] == nil or not matches(expected[i], logs[i]) then
          differs(format("the log messages differ (from message %d on)", i), expected, logs, 2)
        end
      end
      return g
    end

    function g.appends()
      must_succeed(outcome(), "the reactor")
      return copy(appends)
    end

    add_then_fails(g, outcome, "the reactor", list)
    return g
  end
  return t
end

-- testing.upcast(upcasters, events [, stream]) → the events as stored (see given) and then
-- read through the upcasters (a list of tide.upcaster / tide.upcasters values): what every
-- reader hands on. A chain with a gap raises, as it does at load; so does an upcaster.
function M.upcast(upcasters, events, stream)
  if type(upcasters) ~= "table" then
    error("testing.upcast wants a list of upcasters (tide.upcaster { ... })", 2)
  end
  local files = {}
  for i, u in ipairs(upcasters) do files[i] = { value = u, file = "upcasters[" .. i .. "]" } end
  local chain = upcast.chain(files)
  return upcast.apply(chain, as_stored(events, stream))
end

return M
