-- tide.model: the constructors processor scripts are written with (decider, projection,
-- reactor) and the JSON null sentinel. Pure Lua: usable from plain busted, with no
-- database and no C module.
local error, type, pairs, ipairs, setmetatable, getmetatable, tostring, next, rawget, rawset =
  error, type, pairs, ipairs, setmetatable, getmetatable, tostring, next, rawget, rawset
local table = table
local debug_getmetatable = debug and debug.getmetatable
local floor = math.floor

local M = {}

-- JSON null: a unique value that survives a round trip (nil cannot live in a table).
M.null = setmetatable({}, {
  __tostring = function() return "tide.null" end,
  __newindex = function() error("tide.null is read-only", 2) end,
})

-- JSON kinds for tables that cannot show theirs: an empty table is encoded as an object
-- unless it carries array_mt. Decoded arrays carry array_mt, decoded empty objects object_mt.
M.array_mt = { __name = "tide.array" }
M.object_mt = { __name = "tide.object" }
function M.array(t) return setmetatable(t or {}, M.array_mt) end
function M.object(t) return setmetatable(t or {}, M.object_mt) end

local function check_fn(spec, kind, name, required)
  local f = spec[name]
  if f == nil and not required then return end
  if type(f) ~= "function" then
    error(kind .. ": '" .. name .. "' must be a function, got " .. type(f), 3)
  end
end

local function check_events(spec, kind)
  local events = spec.events
  if events == nil then return end
  if type(events) ~= "table" then error(kind .. ": 'events' must be a list of type names", 3) end
  local set = {}
  for i = 1, #events do
    if type(events[i]) ~= "string" then error(kind .. ": 'events' must be a list of type names", 3) end
    set[events[i]] = true
  end
  spec.event_set = set
end

local function check_spec(spec, kind)
  if type(spec) ~= "table" then error(kind .. " wants a table, got " .. type(spec), 3) end
end

-- An Emmett partition (a tenant, say): a non-empty string; nil is the default. What else a
-- name must be (its length, valid UTF-8) the store checks in C, where the limit lives
-- (TIDE_MAX_PARTITION_BYTES), when the name is used.
function M.valid_partition(p)
  return p == nil or (type(p) == "string" and p ~= "")
end

-- The partition whose events a processor reads; default emt:default.
local function check_partition(spec, kind)
  if not M.valid_partition(spec.partition) then
    error(kind .. ": 'partition' must be a non-empty string", 3)
  end
end

-- What a projection or reactor does when handling an event keeps failing (engine/consumer.c):
-- on_error = "dead_letter" (default: park it in tide_dead_letters and go on), "skip" (go on
-- without it), "stop" (halt until the script changes) or "retry" (forever); max_attempts
-- (default 5) tries per event first, backoff_ms (default 500) doubling between them.
local ON_ERROR = { dead_letter = true, skip = true, stop = true, retry = true }
local DEFAULTS = { on_error = "dead_letter", max_attempts = 5, backoff_ms = 500 }
M.failure_defaults = DEFAULTS

local function whole(x, lo, hi)
  return type(x) == "number" and x == floor(x) and x >= lo and x <= hi
end

local function check_policy(spec, kind)
  if spec.on_error ~= nil and not ON_ERROR[spec.on_error] then
    error(kind .. ": 'on_error' must be \"dead_letter\", \"skip\", \"stop\" or \"retry\", got "
      .. tostring(spec.on_error), 3)
  end
  if spec.max_attempts ~= nil and not whole(spec.max_attempts, 1, 1000) then
    error(kind .. ": 'max_attempts' must be a whole number from 1 to 1000", 3)
  end
  if spec.backoff_ms ~= nil and not whole(spec.backoff_ms, 0, 3600000) then
    error(kind .. ": 'backoff_ms' must be a whole number of milliseconds (0 to 3600000)", 3)
  end
end

-- inline = true: a projection that runs inside the transaction that appends (engine/inline.c),
-- wherever tide appends with its directory, instead of in the daemon.
local function check_inline(spec, kind, projection)
  if spec.inline == nil then return end
  if type(spec.inline) ~= "boolean" then
    error(kind .. ": 'inline' must be true or false, got " .. tostring(spec.inline), 3)
  end
  if spec.inline and not projection then
    error(kind .. ": 'inline' is for projections (a reactor runs in the daemon)", 3)
  end
end

-- shards = N: the processor's work split by a hash of the stream id into N workers, each
-- with its own lease and checkpoint (README "Sharded processors"). Changing N rebuilds it in
-- place, so a sharded SQL projection (one with handle or handle_event) clears its tables
-- itself: reset(sql). Inline projections run in the appender: nothing to shard.
M.MAX_SHARDS = 64
local function check_shards(spec, kind)
  if spec.shards == nil then return end
  if not whole(spec.shards, 1, M.MAX_SHARDS) then
    error(kind .. ": 'shards' must be a whole number from 1 to " .. M.MAX_SHARDS .. ", got "
      .. tostring(spec.shards), 3)
  end
  if spec.shards == 1 then return end
  if spec.inline then
    error(kind .. ": an inline projection cannot be sharded (it runs inside each append);"
      .. " remove 'shards' or 'inline'", 3)
  end
  if (spec.handle ~= nil or spec.handle_event ~= nil) and spec.reset == nil
     and spec.kind ~= "reactor" and kind ~= "tide.reactor" then
    error(kind .. ": a sharded SQL projection needs reset(sql), which clears its tables:"
      .. " changing 'shards' rebuilds it in place", 3)
  end
end

-- The daemon's settings of a processor, checked (a script may return a table built by hand):
-- { kind, version, partition, types = { ... } | nil, on_error, max_attempts, backoff_ms,
--   inline, shards }.
function M.settings(p)
  if type(p) ~= "table" or type(p.kind) ~= "string" then
    error("the script must return a processor built with tide.projection, tide.reactor or tide.publisher", 0)
  end
  if p.kind == "decider" or p.kind == "upcaster" or p.kind == "upcasters" then
    return { kind = p.kind }
  end
  if p.kind ~= "projection" and p.kind ~= "reactor" and p.kind ~= "publisher" then
    error("unknown processor kind '" .. p.kind .. "'", 0)
  end
  if p.kind == "publisher" then M.check_publisher(p, "tide.publisher", 0) end
  local version = p.version
  if version == nil then version = 1 end
  if not whole(version, 1, 2147483647) then error("version must be a whole number >= 1", 0) end
  local partition = p.partition
  if partition == nil then partition = "emt:default" end
  if type(partition) ~= "string" or partition == "" then
    error("partition must be a non-empty name", 0)
  end
  check_policy(p, p.kind)
  check_inline(p, p.kind, p.kind == "projection")
  check_shards(p, p.kind)
  local shards = p.shards or 1
  local types
  if p.events ~= nil then
    check_events(p, p.kind)
    types = {}
    for i = 1, #p.events do types[i] = p.events[i] end
  end
  -- A projection without reset() writes targets tide names (documents, sql:table): a new
  -- version is built beside the running one and switched to (blue-green). One with reset()
  -- clears fixed tables itself, so it is rebuilt in place, as a reactor is replayed.
  -- A sharded one is rebuilt in place (once, by one of its shards: sql/0012).
  local blue_green = p.kind == "projection" and p.reset == nil and shards == 1
  return {
    kind = p.kind, version = version, partition = partition, types = types,
    blue_green = blue_green, shards = shards,
    on_error = p.on_error or DEFAULTS.on_error,
    max_attempts = p.max_attempts or DEFAULTS.max_attempts,
    backoff_ms = p.backoff_ms or DEFAULTS.backoff_ms,
    inline = p.inline == true,
    url = p.kind == "publisher" and p.url or nil,
    headers = p.kind == "publisher" and M.header_lines(p.headers) or nil,
    timeout_ms = p.kind == "publisher" and (p.timeout_ms or M.publisher_timeout_ms) or nil,
  }
end

-- A decider's aggregate snapshots (tide.command): snapshot = { every = N, version = V }
-- (version defaults to 1, and is set here), and upgrade(old_state, old_version), which
-- only a decider with snapshots can have.
local function check_snapshot(spec)
  local s = spec.snapshot
  if s == nil then
    if spec.upgrade ~= nil then
      error("tide.decider: 'upgrade' turns an older snapshot into a state: it needs "
        .. "snapshot = { every = N, version = V } too", 3)
    end
    return
  end
  if type(s) ~= "table" then
    error("tide.decider: 'snapshot' must be a table { every = N, version = V }, got " .. type(s), 3)
  end
  for k in next, s do
    if k ~= "every" and k ~= "version" then
      error("tide.decider: 'snapshot' has an unknown key '" .. tostring(k)
        .. "' (it takes every and version)", 3)
    end
  end
  if not whole(s.every, 1, 1e9) then
    error("tide.decider: 'snapshot.every' must be a whole number of events from 1 to "
      .. "1000000000 (a snapshot every N events), got " .. tostring(s.every), 3)
  end
  if s.version == nil then s.version = 1 end
  if not whole(s.version, 1, 2147483647) then
    error("tide.decider: 'snapshot.version' must be a whole number >= 1 (raise it when the "
      .. "state's shape changes), got " .. tostring(s.version), 3)
  end
  if spec.upgrade ~= nil and type(spec.upgrade) ~= "function" then
    error("tide.decider: 'upgrade' must be a function, got " .. type(spec.upgrade), 3)
  end
end

-- decider { initial, evolve, decide, stream_type?, name?, snapshot?, upgrade?, consistency? }
-- consistency(command) → { types = { ... }, data = { field = value } }: the decider's
-- consistency boundary (tide.command's handle_boundary) instead of a stream.
function M.decider(spec)
  check_spec(spec, "tide.decider")
  check_fn(spec, "tide.decider", "initial", true)
  check_fn(spec, "tide.decider", "evolve", true)
  check_fn(spec, "tide.decider", "decide", true)
  if spec.stream_type ~= nil and type(spec.stream_type) ~= "string" then
    error("tide.decider: 'stream_type' must be a string", 2)
  end
  if spec.name ~= nil and (type(spec.name) ~= "string" or spec.name == "") then
    error("tide.decider: 'name' must be a non-empty string", 2)
  end
  check_fn(spec, "tide.decider", "consistency", false)
  if spec.consistency and spec.snapshot ~= nil then
    error("tide.decider: 'snapshot' keeps the state of a stream; a decider with "
      .. "'consistency' folds the events of its query instead, and takes none", 2)
  end
  check_snapshot(spec)
  spec.kind = "decider"
  return spec
end

-- A snapshot projection's table and columns (lua/tide/processor.lua writes them). Column
-- types are a small set whose names PostgreSQL prints back the same way (format_type), so
-- that a table made by an older version of the script can be checked against this one.
M.snapshot_types = {
  text = "text", integer = "integer", bigint = "bigint", numeric = "numeric",
  ["double precision"] = "double precision", boolean = "boolean", date = "date",
  timestamptz = "timestamp with time zone", jsonb = "jsonb",
}
-- The columns every snapshot table has: name, type as format_type prints it, constraints.
M.snapshot_columns = {
  { "id", "text", "PRIMARY KEY" }, { "partition", "text", "NOT NULL" },
  { "state", "jsonb", "NOT NULL" }, { "last_stream_id", "text", "" },
  { "last_stream_position", "bigint", "" }, { "last_global_position", "bigint", "" },
  { "updated_at", "timestamp with time zone", "NOT NULL DEFAULT now()" },
}
local MAX_SNAPSHOT_COLUMNS = 32 -- of the script's own; a row's write has at most 64 parameters
local SQL_NAME = "^[a-z_][a-z0-9_]*$"

local function check_snapshot(spec)
  local what = "tide.projection"
  local d = spec.snapshot
  if type(d) ~= "table" or type(d.initial) ~= "function" or type(d.evolve) ~= "function" then
    error(what .. ": 'snapshot' must be a decider (tide.decider { initial, evolve, ... }, e.g."
      .. " require \"cart\" for cart.lua beside the script), got " .. type(d), 3)
  end
  local t = spec.table
  if type(t) ~= "string" or not t:match(SQL_NAME) or #t > 50 then
    error(what .. ": a snapshot projection wants 'table', a lower-case SQL name"
      .. " ([a-z_][a-z0-9_]*, at most 50 bytes), got " .. tostring(t), 3)
  end
  if t:match("^emt_") or t:match("^tide_") then
    error(what .. ": 'table' must not start with emt_ or tide_ (the store's own tables), got "
      .. t, 3)
  end
  for _, f in ipairs({ "id", "columns" }) do
    if spec[f] ~= nil and type(spec[f]) ~= "function" then
      error(what .. ": '" .. f .. "' must be a function, got " .. type(spec[f]), 3)
    end
  end
  local types = spec.column_types
  if spec.columns == nil then
    if types ~= nil then error(what .. ": 'column_types' without 'columns'", 3) end
    return
  end
  if type(types) ~= "table" then
    error(what .. ": 'columns' wants 'column_types' = { name = \"type\", ... } too", 3)
  end
  local n = 0
  for name, ty in pairs(types) do
    n = n + 1
    if type(name) ~= "string" or not name:match(SQL_NAME) or #name > 63 then
      error(what .. ": column_types: a column name must be a lower-case SQL name"
        .. " ([a-z_][a-z0-9_]*, at most 63 bytes), got " .. tostring(name), 3)
    end
    for _, fixed in ipairs(M.snapshot_columns) do
      if name == fixed[1] then
        error(what .. ": column_types: '" .. name .. "' is a column every snapshot table"
          .. " has already; name yours otherwise", 3)
      end
    end
    if not M.snapshot_types[ty] then
      local list = {}
      for k in pairs(M.snapshot_types) do list[#list + 1] = k end
      table.sort(list)
      error(what .. ": column_types." .. name .. ": the type must be one of "
        .. table.concat(list, ", ") .. "; got " .. tostring(ty), 3)
    end
  end
  if n == 0 then error(what .. ": 'column_types' declares no column", 3) end
  if n > MAX_SNAPSHOT_COLUMNS then
    error(what .. ": at most " .. MAX_SNAPSHOT_COLUMNS .. " columns, got " .. n, 3)
  end
end

-- projection { name?, events?, partition?, handle(events, sql) }: one call per batch;
-- projection { ..., handle_event(event, sql) }: one call per event;
-- projection { collection, id?, initial?, evolve(doc, event), events?, partition? };
-- projection { snapshot = decider, table, id?, columns?, column_types?, events?, partition? }
-- Any of them with inline = true runs inside the appending transaction (engine/inline.c).
function M.projection(spec)
  check_spec(spec, "tide.projection")
  check_events(spec, "tide.projection")
  check_partition(spec, "tide.projection")
  check_policy(spec, "tide.projection")
  check_inline(spec, "tide.projection", true)
  check_shards(spec, "tide.projection")
  if spec.snapshot ~= nil then
    for _, k in ipairs({ "collection", "handle", "handle_event", "evolve", "initial" }) do
      if spec[k] ~= nil then
        error("tide.projection: a snapshot projection folds with its decider's initial and"
          .. " evolve; it takes no '" .. k .. "'", 2)
      end
    end
    check_snapshot(spec)
  elseif spec.collection ~= nil then
    if type(spec.collection) ~= "string" or not spec.collection:match("^[%a_][%w_]*$") then
      error("tide.projection: 'collection' must be a name of letters, digits and _", 2)
    end
    check_fn(spec, "tide.projection", "evolve", true)
    check_fn(spec, "tide.projection", "id", false)
    check_fn(spec, "tide.projection", "initial", false)
  elseif spec.handle_event ~= nil then
    if spec.handle ~= nil then
      error("tide.projection: give 'handle' (per batch) or 'handle_event' (per event), not both", 2)
    end
    check_fn(spec, "tide.projection", "handle_event", true)
  else
    check_fn(spec, "tide.projection", "handle", true)
  end
  spec.kind = "projection"
  return spec
end

-- reactor { events?, partition?, handle(event, ctx) }
function M.reactor(spec)
  check_spec(spec, "tide.reactor")
  check_events(spec, "tide.reactor")
  check_partition(spec, "tide.reactor")
  check_policy(spec, "tide.reactor")
  check_inline(spec, "tide.reactor", false)
  check_shards(spec, "tide.reactor")
  check_fn(spec, "tide.reactor", "handle", true)
  spec.kind = "reactor"
  return spec
end

-- A publisher's delivery (engine/publish.c): url, headers and timeout_ms, checked here for
-- tide.publisher and again for the daemon (a script may return a table built by hand).
M.publisher_timeout_ms = 5000
local TOKEN = "^[!#$%%&'*+%-.^_`|~%w]+$" -- an HTTP header name (RFC 9110 token)
local OWN_HEADERS = { ["content-type"] = true, ["idempotency-key"] = true,
  ["content-length"] = true, host = true, ["transfer-encoding"] = true, expect = true }

function M.check_publisher(spec, kind, level)
  local url = spec.url
  if type(url) ~= "string" or not (url:match("^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+")) then
    error(kind .. ": 'url' must be an http:// or https:// URL with a host, got "
      .. (type(url) == "string" and ("'" .. url:match("^[^:/?#]*") .. "...'") or type(url)), level)
  end
  if #url > 2048 or url:find("[%c%s]") then
    error(kind .. ": 'url' must be at most 2048 bytes, without spaces or control characters", level)
  end
  local headers = spec.headers
  if headers ~= nil then
    if type(headers) ~= "table" then
      error(kind .. ": 'headers' must be a table { [\"Name\"] = \"value\", ... }", level)
    end
    for name, value in pairs(headers) do
      if type(name) ~= "string" or not name:match(TOKEN) or #name > 256 then
        error(kind .. ": headers: a header name must be letters, digits and !#$%&'*+-.^_`|~"
          .. " (at most 256 bytes), got " .. tostring(name), level)
      end
      if OWN_HEADERS[name:lower()] then
        error(kind .. ": headers: '" .. name .. "' is set by tide itself; leave it out", level)
      end
      -- The value is not shown: it may be a secret.
      if type(value) ~= "string" or value:find("[%z\r\n]") or #value > 8192 then
        error(kind .. ": headers: the value of '" .. name .. "' must be a string without"
          .. " line breaks (at most 8192 bytes)", level)
      end
    end
  end
  if spec.timeout_ms ~= nil and not whole(spec.timeout_ms, 1, 600000) then
    error(kind .. ": 'timeout_ms' must be a whole number of milliseconds from 1 to 600000", level)
  end
end

-- The headers as "Name: value" lines, sorted by name (the order they are sent in).
function M.header_lines(headers)
  local lines = {}
  for name, value in pairs(headers or {}) do lines[#lines + 1] = name .. ": " .. value end
  table.sort(lines)
  return lines
end

-- publisher { events?, partition?, url, headers?, timeout_ms?, on_error?, max_attempts?,
-- backoff_ms? }: each event POSTed to url as JSON, at least once, in order per stream.
function M.publisher(spec)
  check_spec(spec, "tide.publisher")
  check_events(spec, "tide.publisher")
  check_partition(spec, "tide.publisher")
  check_policy(spec, "tide.publisher")
  check_inline(spec, "tide.publisher", false)
  for _, k in ipairs({ "handle", "handle_event", "evolve", "collection", "snapshot" }) do
    if spec[k] ~= nil then
      error("tide.publisher: a publisher delivers events over HTTP; it takes no '" .. k
        .. "' (write a reactor for code per event)", 2)
    end
  end
  M.check_publisher(spec, "tide.publisher", 3)
  spec.kind = "publisher"
  return spec
end

-- A rejection: the decider refusing a command, raised by tide.reject(message [, details]).
-- Only a value made here counts as one; any other error in a script is a bug in it. The
-- metatable is hidden (__metatable), so a script cannot forge or alter one, and C finds it
-- by identity (lua_vm.c keeps it in the registry) after the value crossed a guarded call.
local getinfo = debug and debug.getinfo
M.rejection_mt = {
  __name = "tide.rejection",
  __metatable = "tide.rejection",
  __tostring = function(r) return r.message end,
}
local rejection_mt = M.rejection_mt

function M.is_rejection(v)
  if type(v) ~= "table" then return false end
  if debug_getmetatable then return debug_getmetatable(v) == rejection_mt end
  return getmetatable(v) == "tide.rejection"
end

-- tide.reject(message [, details]): refuses the command. message: a non-empty string, shown
-- as it is (no file:line); details: an optional table, handed on as JSON.
function M.reject(message, details)
  if type(message) ~= "string" or message == "" then
    error("tide.reject wants a message (a non-empty string), got " .. type(message), 2)
  end
  if details ~= nil and type(details) ~= "table" then
    error("tide.reject: details must be a table, got " .. type(details), 2)
  end
  local info = getinfo and getinfo(2, "Sl")
  local where = info and info.currentline and info.currentline > 0
    and (info.source:gsub("^@", "") .. ":" .. info.currentline) or nil
  error(setmetatable({ message = message, details = details, where = where }, rejection_mt), 0)
end

-- "file:line" of a function's definition: names the script in messages about what it
-- returned, where no error of its own carries a location.
function M.where(f)
  local info = type(f) == "function" and getinfo and getinfo(f, "S")
  if not info or info.what == "C" then return "?" end
  return info.source:gsub("^@", "") .. ":" .. info.linedefined
end

local function shape_error(decide, what)
  error(M.where(decide) .. ": decide " .. what, 0)
end

-- The events a decide() returned, checked: nil or an empty table → {}; otherwise a list of
-- { type = "...", data = {...}?, metadata = {...}?, id = "..."? }. Anything else (one event
-- not in a list, a string, an event without a type) is a bug in the script, said with the
-- place decide is defined. Raw reads, and the list returned is a copy of plain tables: no
-- metamethod of the script runs here or later, outside the CPU guard.
function M.event_list(result, decide)
  if result == nil then return {} end
  if type(result) ~= "table" then
    shape_error(decide, "must return a list of events (or nil), got a " .. type(result))
  end
  if rawget(result, "type") ~= nil then
    shape_error(decide, "returned one event, not a list of events: return { event }")
  end
  local n, list = 0, {}
  for k in next, result do
    if type(k) ~= "number" or k < 1 or k % 1 ~= 0 then
      shape_error(decide, "returned a table that is not a list of events (it has the key "
        .. (type(k) == "string" and ("'" .. k .. "'") or ("of type " .. type(k))) .. ")")
    end
    n = n + 1
  end
  for i = 1, n do
    local e = rawget(result, i)
    if e == nil then shape_error(decide, "returned a list of events with a hole at " .. i) end
    if type(e) ~= "table" then
      shape_error(decide, "returned event " .. i .. " as a " .. type(e) .. ", not a table")
    end
    local t = rawget(e, "type")
    if type(t) ~= "string" or t == "" then
      shape_error(decide, "returned event " .. i .. " without a type (a non-empty string)")
    end
    local data, meta = rawget(e, "data"), rawget(e, "metadata")
    if data ~= nil and type(data) ~= "table" then
      shape_error(decide, "returned event " .. i .. " (" .. t .. ") whose data is a "
        .. type(data) .. ", not a table")
    end
    if meta ~= nil and type(meta) ~= "table" then
      shape_error(decide, "returned event " .. i .. " (" .. t .. ") whose metadata is a "
        .. type(meta) .. ", not a table")
    end
    local id = rawget(e, "id")
    if id ~= nil and type(id) ~= "string" then
      shape_error(decide, "returned event " .. i .. " (" .. t .. ") whose id is a "
        .. type(id) .. ", not a string")
    end
    list[i] = { type = t, data = data, metadata = meta, id = id }
  end
  return list
end

-- Folds events onto state with a decider's evolve. at (optional) is a table whose [1] says
-- how far it got: the index of the event being folded, so that a failure can name it.
function M.fold_onto(decider, state, events, at)
  at = at or {}
  for i = 1, #events do
    at[1] = i
    state = decider.evolve(state, events[i])
  end
  return state
end

-- Folds events with a decider's evolve, from initial(); at[1] is 0 while in initial().
function M.fold(decider, events, at)
  at = at or {}
  at[1] = 0
  return M.fold_onto(decider, decider.initial(), events, at)
end

-- A deep copy of a value a script built (a decider's state), to fold on after decide had the
-- original (which it may change): tables are new, with the same metatables (tide.array and
-- tide.object keep their kind, a script's own keep their behaviour); tide.null, functions,
-- and tables used as keys stay the very same values; a table met twice is copied once, so
-- shared parts stay shared and cycles stay cycles. Raw access: no metamethod runs.
function M.copy(v)
  if type(v) ~= "table" or v == M.null then return v end
  local seen = {}
  local function walk(t)
    local c = seen[t]
    if c then return c end
    c = {}
    seen[t] = c
    for k, x in next, t do
      if type(x) == "table" and x ~= M.null then x = walk(x) end
      rawset(c, k, x)
    end
    local mt = debug_getmetatable and debug_getmetatable(t) or getmetatable(t)
    if type(mt) == "table" then setmetatable(c, mt) end
    return c
  end
  return walk(v)
end

return M
