-- tide.processor: one batch of a projection or reactor, run by the daemon inside the
-- processor's transaction (in a coroutine: sql:query waits for PostgreSQL by yielding).
-- `sql` is the transaction: sql:exec(q, ...) queues a statement without waiting (its
-- error, if any, fails the batch at commit); sql:query(q, ...) returns the rows.
-- Parameters are $1, $2, ...; tables are sent as JSON, nil/tide.null as NULL.
local model = require "tide.model"
local ipairs, pairs, tostring, type, error, setmetatable, unpack =
  ipairs, pairs, tostring, type, error, setmetatable, unpack
local table = table
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
  local handle = { suffix = suffix or "", tables = {} }
  -- sql:table("product_sales"): the table this generation writes; readers query the name
  -- itself (after a blue-green rebuild, a view of the live generation's table).
  function handle:table(name)
    local physical = M.target_name(name, self.suffix, "sql:table")
    self.tables[name] = true
    return physical
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
-- A document records the event it reflects last (sql/0007): its stream, stream position and
-- global position.
local DOC_PUT = "INSERT INTO tide_documents (collection, id, doc, last_stream_id,"
  .. " last_stream_position, last_global_position) VALUES ($1, $2, $3::jsonb, $4, $5, $6)"
  .. " ON CONFLICT (collection, id) DO UPDATE SET doc = excluded.doc,"
  .. " last_stream_id = excluded.last_stream_id,"
  .. " last_stream_position = excluded.last_stream_position,"
  .. " last_global_position = excluded.last_global_position, updated_at = now()"
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

-- The batch's events by document id: the ids in the order first met, and each id's events.
local function grouped(p, events)
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
  return order, by_id
end

-- One document per id: load the batch's documents in one query, fold, write each once.
local function documents(p, events, sql)
  local order, by_id = grouped(p, events)
  if #order == 0 then return end
  local collection = p.collection .. sql.suffix
  local docs = {}
  for _, row in ipairs(sql:query(DOCS_LOAD, collection, order)) do docs[row.id] = row.doc end
  for _, id in ipairs(order) do
    local doc, list = docs[id], by_id[id]
    for _, e in ipairs(list) do
      if doc == nil and p.initial then doc = p.initial() end
      doc = p.evolve(doc, e)
    end
    if doc == nil then
      sql:exec(DOC_DELETE, collection, id)
    else
      local last = list[#list]
      sql:exec(DOC_PUT, collection, id, doc, last.stream_id, last.stream_position,
        last.global_position)
    end
  end
end

-- --- Snapshot projections: a decider's state per stream (or id(event)), in a table --------
-- The table (sql:table(p.table): the generation's) has the columns of model.snapshot_columns
-- and the script's own (column_types, filled from columns(state)); every identifier is
-- quoted, so that a column may be called "order".

local function quoted(name) return '"' .. name .. '"' end

local function sorted_columns(p)
  local names = array()
  for name in pairs(p.column_types or {}) do names[#names + 1] = name end
  table.sort(names)
  return names
end

-- Creates the table when it is missing, adds the script's new columns, and checks that what
-- is there is a snapshot table of these types: a table of the same name made for something
-- else is refused before anything writes into it (or a reset deletes its rows).
local function snapshot_table(p, sql)
  local t = sql:table(p.table)
  local defs = {}
  for _, c in ipairs(model.snapshot_columns) do
    defs[#defs + 1] = quoted(c[1]) .. " " .. c[2] .. " " .. c[3]
  end
  sql:exec("CREATE TABLE IF NOT EXISTS " .. quoted(t) .. " (" .. table.concat(defs, ", ") .. ")")
  local names = sorted_columns(p)
  for _, name in ipairs(names) do
    sql:exec("ALTER TABLE " .. quoted(t) .. " ADD COLUMN IF NOT EXISTS " .. quoted(name) .. " "
      .. model.snapshot_types[p.column_types[name]])
  end
  local have = {}
  for _, row in ipairs(sql:query("SELECT attname, format_type(atttypid, atttypmod) AS type"
    .. " FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0"
    .. " AND NOT attisdropped", quoted(t))) do
    have[row.attname] = row.type
  end
  local function expect(name, ty)
    if have[name] ~= ty then
      error("snapshot table " .. t .. " exists, but its column " .. name .. " is "
        .. (have[name] and "of type " .. have[name] or "missing") .. ", not " .. ty
        .. ": it was made for something else, or by a version of the script with other"
        .. " column_types; drop it (or that column) and let the projection make it again,"
        .. " or name another table", 0)
    end
  end
  for _, c in ipairs(model.snapshot_columns) do expect(c[1], c[2]) end
  for _, name in ipairs(names) do expect(name, model.snapshot_types[p.column_types[name]]) end
  return t
end

-- The statements of a snapshot table, made once per projection and physical table name.
local statements = setmetatable({}, { __mode = "k" })
local function snapshot_sql(p, t)
  local cache = statements[p]
  if not cache or cache.table ~= t then
    local names = sorted_columns(p)
    local cols = { "id", "partition", "state", "last_stream_id", "last_stream_position",
      "last_global_position" }
    local vals = { "$1", "$2", "$3::jsonb", "$4", "$5", "$6" }
    local sets = {}
    for i, c in ipairs(cols) do
      cols[i] = quoted(c)
      if i > 1 then sets[#sets + 1] = cols[i] .. " = excluded." .. cols[i] end
    end
    for i, name in ipairs(names) do
      cols[#cols + 1] = quoted(name)
      vals[#vals + 1] = "$" .. (6 + i) .. "::" .. model.snapshot_types[p.column_types[name]]
      sets[#sets + 1] = quoted(name) .. " = excluded." .. quoted(name)
    end
    sets[#sets + 1] = "updated_at = now()"
    cache = {
      table = t, names = names,
      load = "SELECT id, state FROM " .. quoted(t)
        .. " WHERE id IN (SELECT jsonb_array_elements_text($1::jsonb))",
      put = "INSERT INTO " .. quoted(t) .. " (" .. table.concat(cols, ", ") .. ") VALUES ("
        .. table.concat(vals, ", ") .. ") ON CONFLICT (id) DO UPDATE SET "
        .. table.concat(sets, ", "),
    }
    statements[p] = cache
  end
  return cache
end

-- What a column of each type takes from columns(state); nil and tide.null are NULL.
local COLUMN_VALUES = {
  text = { string = true, number = true }, integer = { number = true },
  bigint = { number = true }, numeric = { number = true },
  ["double precision"] = { number = true }, boolean = { boolean = true },
  date = { string = true }, timestamptz = { string = true },
}

-- columns(state)'s values in the order of names, checked: an undeclared key or a value the
-- column cannot take is a bug in the script, said with where columns is and the row's id.
local function column_values(p, names, state, id)
  local function fail(what)
    error(model.where(p.columns) .. ": columns(state) " .. what .. " (snapshot " .. id .. ")", 0)
  end
  local row = p.columns(state)
  if type(row) ~= "table" then
    fail("must return a table of column = value, got " .. type(row))
  end
  for k in pairs(row) do
    if type(k) ~= "string" or not p.column_types[k] then
      fail("returned the column " .. tostring(k) .. ", which column_types does not declare")
    end
  end
  local out = {}
  for i, name in ipairs(names) do
    local v, ty = row[name], p.column_types[name]
    local takes = COLUMN_VALUES[ty]
    if v ~= nil and v ~= model.null and takes and not takes[type(v)] then
      fail("returned a " .. type(v) .. " for column " .. name .. " (" .. ty .. "); return a "
        .. (takes.number and "number" or takes.boolean and "boolean" or "string")
        .. ", or nil for NULL")
    end
    out[i] = v
  end
  return out
end

-- One row per id: load the batch's rows in one query, fold each id's events with the
-- decider (from initial() for a new one), write each row once.
local function snapshots(p, events, sql)
  local order, by_id = grouped(p, events)
  if #order == 0 then return end
  local t = sql:table(p.table)
  local stmt = snapshot_sql(p, t)
  local states = {}
  for _, row in ipairs(sql:query(stmt.load, order)) do states[row.id] = row.state end
  local decider, partition = p.snapshot, p.partition or "emt:default"
  for _, id in ipairs(order) do
    local state, list = states[id], by_id[id]
    if state == nil then state = decider.initial() end
    for _, e in ipairs(list) do
      state = decider.evolve(state, e)
      if state == nil then
        error(model.where(decider.evolve) .. ": evolve returned nil for event "
          .. tostring(e.stream_position) .. " of stream " .. tostring(e.stream_id) .. " ("
          .. tostring(e.type) .. "): a snapshot keeps the state evolve returns", 0)
      end
    end
    local last = list[#list]
    local cols = p.columns and column_values(p, stmt.names, state, id) or {}
    sql:exec(stmt.put, id, last.partition or partition, state, last.stream_id, last.stream_position,
      last.global_position, unpack(cols, 1, #stmt.names))
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

local function reactor_context(log, at, appender)
  local ctx = { log = log }
  -- ctx.append(stream, events, { expected, partition }): in the processor's transaction,
  -- by default in the partition of the event being handled (at.partition).
  function ctx.append(stream, events, opts)
    if type(stream) ~= "string" or stream == "" then error("ctx.append: stream must be a name", 2) end
    if type(events) ~= "table" or #events == 0 then error("ctx.append: no events", 2) end
    if opts ~= nil and type(opts) ~= "table" then error("ctx.append: options must be a table", 2) end
    local where = opts and opts.partition or at.partition
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
    if p.snapshot then return snapshots(p, events, sql) end
    if p.handle_event then
      for _, e in ipairs(events) do p.handle_event(e, sql) end
      return
    end
    return p.handle(events, sql)
  elseif p.kind == "reactor" then
    local own = p.partition or "emt:default"
    local at = {}
    local ctx = reactor_context(log, at, appender)
    for _, e in ipairs(events) do
      at.partition = e.partition or own -- differs from own only for partition = "*"
      p.handle(e, ctx)
    end
  elseif p.kind == "publisher" then
    error("a publisher runs no code: `tide run` POSTs its events to its url (engine/publish.c)")
  else
    error("a " .. tostring(p.kind) .. " cannot run in the daemon (use tide handle)")
  end
end

-- A generation with a suffix (a rebuild's, or the one a rebuild made live) records the
-- targets it wrote in tide_targets, in its batch's transaction, so that the switch knows
-- what to make live (sql/0010). Cheap enough to do every batch: one pipelined statement.
local TARGETS = "INSERT INTO tide_targets (kind, physical, name, processor_id)"
  .. " SELECT $1, n || $2, n, $3 FROM jsonb_array_elements_text($4::jsonb) AS n"
  .. " ON CONFLICT (kind, physical) DO NOTHING"
function M.register_targets(p, sql, id)
  if sql.suffix == "" then return end
  if p.collection then sql:exec(TARGETS, "collection", sql.suffix, id, array { p.collection }) end
  local tables = array()
  for name in pairs(sql.tables) do tables[#tables + 1] = name end
  if #tables > 0 then sql:exec(TARGETS, "table", sql.suffix, id, tables) end
end

-- Called when a projection's version changes: clear what it built, then replay.
-- A rebuild starting afresh (sql.suffix ~= ""): also the tables an abandoned build of the
-- same suffix left behind, which setup() would otherwise find full.
local STALE_TABLES = "SELECT physical FROM tide_targets WHERE kind = 'table'"
  .. " AND processor_id = $1 AND physical = name || $2 AND NOT live"
function M.reset(p, sql, id)
  if p.collection then
    sql:exec("DELETE FROM tide_documents WHERE collection = $1", p.collection .. sql.suffix)
  end
  if sql.suffix ~= "" then
    for _, row in ipairs(sql:query(STALE_TABLES, id, sql.suffix)) do
      sql:exec('DROP TABLE IF EXISTS "' .. row.physical .. '"')
    end
  elseif p.snapshot then
    sql:exec("DELETE FROM " .. quoted(snapshot_table(p, sql)))
  end
  if p.reset then p.reset(sql) end
end

-- Runs once per generation before its first batch (e.g. create the projection's table).
function M.setup(p, sql)
  if p.snapshot then snapshot_table(p, sql) end
  if p.setup then p.setup(sql) end
end

return M
