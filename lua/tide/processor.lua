-- tide.processor: one batch of a projection or reactor, run by the daemon inside the
-- processor's transaction (in a coroutine: sql:query waits for PostgreSQL by yielding).
-- `sql` is the transaction: sql:exec(q, ...) queues a statement without waiting (its
-- error, if any, fails the batch at commit); sql:query(q, ...) returns the rows.
-- Parameters are $1, $2, ...; tables are sent as JSON, nil/tide.null as NULL.
local model = require "tide.model"
local ipairs, tostring, type, error, setmetatable = ipairs, tostring, type, error, setmetatable
local array = model.array

local M = {}

-- The physical name of a projection's target NAME: NAME plus the suffix of the generation
-- being built ('' for a processor never rebuilt blue-green, '__vV' for version V; see
-- sql/0007). Table names are plain lower-case identifiers, so that the name a reader
-- queries and the one the script writes are the same without quoting rules.
local MAX_IDENTIFIER = 63
function M.target_name(name, suffix, what)
  if type(name) ~= "string" or not name:match("^[a-z_][a-z0-9_]*$") then
    error(what .. " wants a lower-case SQL name ([a-z_][a-z0-9_]*), got " .. tostring(name), 3)
  end
  local physical = name .. (suffix or "")
  if #physical > MAX_IDENTIFIER then
    error(what .. ": '" .. physical .. "' is longer than PostgreSQL's " .. MAX_IDENTIFIER
      .. " bytes; use a shorter name", 3)
  end
  return physical
end

-- Wraps the C transaction handle: misuse and failed queries raise, as the script expects.
-- raw_query yields until the rows are there; raw_result then hands them over. The second
-- value appends in the transaction (for reactors' ctx.append; scripts never see it).
-- suffix: the target suffix of the generation this batch builds (sql:table).
function M.sql_handle(raw, query, exec, result, append, suffix)
  local handle = { suffix = suffix or "" }
  -- sql:table("product_sales"): the table this generation writes; readers query the name
  -- itself (after a blue-green rebuild, a view of the live generation's table).
  function handle:table(name)
    return M.target_name(name, self.suffix, "sql:table")
  end
  function handle:exec(q, ...)
    if type(q) ~= "string" then error("sql:exec wants the SQL text first", 2) end
    local ok, err = exec(raw, q, ...)
    if not ok then error(err, 2) end
  end
  function handle:query(q, ...)
    if type(q) ~= "string" then error("sql:query wants the SQL text first", 2) end
    local _, err = query(raw, q, ...)
    if err ~= nil then error(err, 2) end
    local rows, rerr = result(raw)
    if not rows then error(rerr, 2) end
    return rows
  end
  -- The append of every tide writer (engine/append.c): its result, or the error raised —
  -- a conflict as the store's typed error { kind = "conflict", expected, actual }.
  local function appender(stream, events, opts, partition, level)
    local _, err = append(raw, stream, events, opts, partition)
    if err ~= nil then error(err, level) end
    local res, aerr = result(raw)
    if not res then error(aerr, level) end
    return res
  end
  return handle, appender
end

local function selected(p, events)
  local set = p.event_set
  if not set then return events end
  local out = array()
  for _, e in ipairs(events) do
    if set[e.type] then out[#out + 1] = e end
  end
  return out
end

local DOCS_LOAD = "SELECT id, doc FROM tide_documents WHERE collection = $1"
  .. " AND id IN (SELECT jsonb_array_elements_text($2::jsonb))"
local DOC_PUT = "INSERT INTO tide_documents (collection, id, doc) VALUES ($1, $2, $3::jsonb)"
  .. " ON CONFLICT (collection, id) DO UPDATE SET doc = excluded.doc, updated_at = now()"
local DOC_DELETE = "DELETE FROM tide_documents WHERE collection = $1 AND id = $2"

-- The document id of an event: id(e) (default: its stream), false to leave the event out
-- on purpose; nil is a mistake, not a silent skip.
function M.document_id(p, e)
  if not p.id then return e.stream_id end
  local id = p.id(e)
  if id == nil then
    error("id(event) returned nil for event " .. tostring(e.stream_position) .. " of stream "
      .. tostring(e.stream_id) .. " (" .. tostring(e.type) .. "): return the document's id, or"
      .. " false to leave this event out", 0)
  end
  return id
end

-- One document per id: load the batch's documents in one query, fold, write each once.
local function documents(p, events, sql)
  local order, by_id = array(), {}
  for _, e in ipairs(events) do
    local id = M.document_id(p, e)
    if id ~= false then
      id = tostring(id)
      local list = by_id[id]
      if not list then
        list = {}
        by_id[id] = list
        order[#order + 1] = id
      end
      list[#list + 1] = e
    end
  end
  if #order == 0 then return end
  local collection = p.collection .. sql.suffix
  local docs = {}
  for _, row in ipairs(sql:query(DOCS_LOAD, collection, order)) do docs[row.id] = row.doc end
  for _, id in ipairs(order) do
    local doc = docs[id]
    for _, e in ipairs(by_id[id]) do
      if doc == nil and p.initial then doc = p.initial() end
      doc = p.evolve(doc, e)
    end
    if doc == nil then
      sql:exec(DOC_DELETE, collection, id)
    else
      sql:exec(DOC_PUT, collection, id, doc)
    end
  end
end

-- An inline projection's documents (engine/inline.c), before it reads them: appenders to
-- different streams may fold events into one document keyed by id(event), each reading it
-- before writing it. A lock per document for the rest of the transaction, taken in one order
-- (by hash), makes the later appender wait for the earlier one's commit and then read what it
-- wrote. Documents keyed by their stream need none: the append holds the stream's row.
local DOCS_LOCK = "SELECT pg_advisory_xact_lock(hashtext($1), k) FROM (SELECT DISTINCT"
  .. " hashtext(i) AS k FROM jsonb_array_elements_text($2::jsonb) AS i ORDER BY 1) AS keys"

function M.lock_documents(p, events, sql)
  if not (p.kind == "projection" and p.collection and p.id) then return end
  local ids, seen = array(), {}
  for _, e in ipairs(selected(p, events)) do
    local id = M.document_id(p, e)
    if id ~= false then
      id = tostring(id)
      if not seen[id] then
        seen[id] = true
        ids[#ids + 1] = id
      end
    end
  end
  if #ids > 0 then sql:exec(DOCS_LOCK, p.collection .. sql.suffix, ids) end
end

local function reactor_context(log, partition, appender)
  local ctx = { log = log }
  -- ctx.append(stream, events, { expected, partition }): in the processor's transaction,
  -- by default in the processor's own partition.
  function ctx.append(stream, events, opts)
    if type(stream) ~= "string" or stream == "" then error("ctx.append: stream must be a name", 2) end
    if type(events) ~= "table" or #events == 0 then error("ctx.append: no events", 2) end
    if opts ~= nil and type(opts) ~= "table" then error("ctx.append: options must be a table", 2) end
    local where = opts and opts.partition or partition
    if type(where) ~= "string" then error("ctx.append: partition must be a string", 2) end
    return appender(stream, events, opts, where, 3)
  end
  return ctx
end

-- Runs one batch; raises on failure (the daemon rolls the transaction back).
function M.run_batch(p, events, sql, log, appender)
  events = selected(p, events)
  if #events == 0 then return end
  if p.kind == "projection" then
    if p.collection then return documents(p, events, sql) end
    if p.handle_event then
      for _, e in ipairs(events) do p.handle_event(e, sql) end
      return
    end
    return p.handle(events, sql)
  elseif p.kind == "reactor" then
    local ctx = reactor_context(log, p.partition or "emt:default", appender)
    for _, e in ipairs(events) do p.handle(e, ctx) end
  else
    error("a " .. tostring(p.kind) .. " cannot run in the daemon (use tide handle)")
  end
end

-- Called when a projection's version changes: clear what it built, then replay.
function M.reset(p, sql)
  if p.collection then
    sql:exec("DELETE FROM tide_documents WHERE collection = $1", p.collection .. sql.suffix)
  end
  if p.reset then p.reset(sql) end
end

-- Runs once per generation before its first batch (e.g. create the projection's table).
function M.setup(p, sql)
  if p.setup then p.setup(sql) end
end

return M
