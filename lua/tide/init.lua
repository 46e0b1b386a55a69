-- tide: the Lua face of tide. Processor scripts get `script_api` as `require "tide"` (or
-- the global `tide`); LuaJIT hosts get the same constructors plus tide.connect(url),
-- which loads the C module (tide.core) on first use, so plain busted needs no build.
local model = require "tide.model"
local command = require "tide.command"
local upcast = require "tide.upcast"
local setmetatable, error, type, pairs = setmetatable, error, type, pairs

-- What a sandboxed script may use; hosts get the same and more.
local script_api = {
  null = model.null,
  decider = model.decider,
  projection = model.projection,
  reactor = model.reactor,
  publisher = model.publisher,
  array = model.array,
  object = model.object,
  reject = model.reject,
  upcaster = upcast.upcaster,
  upcasters = upcast.upcasters,
}

local M = { script_api = script_api }
for k, v in pairs(script_api) do M[k] = v end
-- Whether an error value is a rejection (tide.reject), for hosts that call deciders.
M.is_rejection = model.is_rejection

-- Set by the script VM to its CPU/memory guard; hosts call script code directly.
M._guard = nil
local function guard() return M._guard or command.direct_call end

local Store = {}
Store.__index = Store

-- With upcasters (tide.connect's option), reads hand on events upcast to their type's
-- newest shape, and appends write that version (see lua/tide/upcast.lua).
-- store:append(stream, events, { expected = "any"|"no_stream"|"stream_exists"|N })
--   → { next_expected_version, global_positions } | nil, err (err.kind == "conflict", ...)
function Store:append(stream, events, opts) return self.io:append(stream, events, opts) end
-- store:append_if(query, after, stream, events, { expected }) → as append | nil, err: appends
--   only if no event matching query ({ types = { ... }, data = { field = value } }) came
--   after global position `after`; else err.kind == "conflict" with err.found, the global
--   position of the first that did (tide_store_append_if in tide.h).
function Store:append_if(query, after, stream, events, opts)
  return self.io:append_if(query, after, stream, events, opts)
end
-- store:read_query(query, { after, max }) → the events matching query, in global order
function Store:read_query(query, opts) return self.io:read_query(query, opts) end
-- store:read(stream, { from, to, max, backward }) → events | nil, err (err.kind ==
-- "archived" for a stream that was archived and not begun again)
function Store:read(stream, opts) return self.io:read(stream, opts) end
-- store:archive(stream) → true | nil, err: its events leave the active partition and reads
function Store:archive(stream) return self.raw:archive(stream) end
-- store:read_all(cursor?, max?) → events, next_cursor | nil, err
function Store:read_all(cursor, max) return self.io:read_all(cursor, max) end
-- store:doc(collection, id) → doc, info | nil (no such document) | nil, err; info has id,
-- last_stream_id, last_stream_position, last_global_position, updated_at.
function Store:doc(collection, id) return self.raw:doc(collection, id) end
-- store:docs(collection, { where = { key = value }, limit = N, after = id })
--   → { { id, doc, last_stream_id, ... }, ... } in id order | nil, err
function Store:docs(collection, opts) return self.raw:docs(collection, opts) end
-- store:begin([stream]) → version | "no_stream" (true without a stream) | nil, err: a
-- transaction with the stream's row locked; every call runs inside it until commit/rollback.
function Store:begin(stream) return self.raw:begin(stream) end
-- store:commit() / store:rollback() → true | nil, err
function Store:commit() return self.raw:commit() end
function Store:rollback() return self.raw:rollback() end
function Store:sleep(ms) return self.raw:sleep(ms) end
function Store:close() return self.raw:close() end
-- store:snapshot_load(stream, decider_name) → { version, position, global_position, state,
--   current } | false | nil, err;  store:snapshot_save(stream, decider_name, version,
--   position, global_position, state) → true | nil, err (aggregate and handle use them)
function Store:snapshot_load(stream, name) return self.raw:snapshot_load(stream, name) end
function Store:snapshot_save(...) return self.raw:snapshot_save(...) end
-- store:aggregate(decider, stream [, { stats, name }]) → state, version [, stats] | nil, err
function Store:aggregate(decider, stream, opts)
  return command.aggregate(self.io, decider, stream, guard(), opts)
end
-- store:handle(decider, stream, command, { retries, backoff_ms, lock, stats, name })
--   → { events, next_expected_version, global_positions, attempts, locked, stats? } | nil, err
function Store:handle(decider, stream, cmd, opts)
  return command.handle(self.io, decider, stream, cmd, opts, guard())
end

local core
local function load_core()
  if not core then core = require "tide.core" end
  return core
end

-- tide.connect(url [, { partition = name, projections = dir }]) → store | nil, err. Every
-- call of the store works in that partition (Emmett's tenant column; default "emt:default").
-- A partition name the store cannot use (too long, not UTF-8) is nil, err with err.kind ==
-- "invalid". projections: a directory whose inline projections (inline = true) every append
-- runs inside its transaction; a file there that does not load is nil, err (kind "script").
-- upcasters: a directory (the upcaster files among its scripts) or a list of tide.upcaster
-- values; a file that does not load, or a chain with a missing step, is nil, err (kind
-- "script"). Inside a script VM, the upcasters loaded with it are the default.
function M.connect(url, opts)
  if type(url) ~= "string" or url == "" then error("tide.connect wants a database URL", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("tide.connect: options must be a table", 2) end
  local partition = opts and opts.partition
  if not model.valid_partition(partition) then
    error("tide.connect: partition must be a non-empty string", 2)
  end
  local projections = opts and opts.projections
  if projections ~= nil and (type(projections) ~= "string" or projections == "") then
    error("tide.connect: projections must be a directory (a non-empty string)", 2)
  end
  local upcasters = opts and opts.upcasters
  if upcasters ~= nil and type(upcasters) ~= "table"
    and (type(upcasters) ~= "string" or upcasters == "") then
    error("tide.connect: upcasters must be a directory (a non-empty string) or a list of "
      .. "tide.upcaster values", 2)
  end
  local chain, cerr = M._upcasters, nil
  if upcasters ~= nil then
    chain, cerr = M.upcaster_chain(upcasters)
    if not chain then return nil, cerr end
  end
  local raw, err = load_core().connect(url, partition, projections)
  if not raw then return nil, err end
  return setmetatable({ raw = raw, io = upcast.store(raw, chain, guard(), command.script_failure),
    upcasters = chain, partition = partition or "emt:default" }, Store)
end

local function script_error(message)
  return nil, setmetatable({ kind = "script", message = message },
    { __tostring = function(e) return e.message end })
end

-- tide.upcaster_chain(dir | { tide.upcaster, ... }) → chain | nil, err: the upcasters of a
-- directory (each *.lua file but specs that returns tide.upcaster or tide.upcasters, run as
-- the host runs Lua), or of a list, checked.
function M.upcaster_chain(from)
  local files = {}
  if type(from) == "string" then
    local paths, err = load_core().upcaster_files(from)
    if not paths then return nil, err end
    for _, path in ipairs(paths) do
      local ok, v = pcall(dofile, path)
      if not ok then return script_error(tostring(v)) end
      files[#files + 1] = { value = v, file = path }
    end
  else
    for i, u in ipairs(from) do files[i] = { value = u, file = "upcasters[" .. i .. "]" } end
  end
  local ok, chain = pcall(upcast.chain, files)
  if not ok then return script_error(tostring(chain)) end
  return chain
end

-- A read's events upcast in place with the VM's upcasters (engine/upcast.c: `tide read`).
function M.upcast_events(events)
  if M._upcasters then upcast.apply(M._upcasters, events) end
end

-- A script VM's upcasters (engine/upcast.c): { { value, file }, ... } → the runtime's chain,
-- which its readers use; raises when the chain is broken.
function M.use_upcasters(files)
  M._upcasters = upcast.chain(files)
end

-- tide.json.encode(value) → text | nil, err;  tide.json.decode(text) → value | nil, err
M.json = setmetatable({}, { __index = function(t, k)
  local c = load_core()
  t.encode, t.decode = c.json_encode, c.json_decode
  return rawget(t, k)
end })

-- The daemon's entry for one batch (see engine/batch.c): runs in a coroutine. in_append: an
-- inline projection, inside the transaction that appended the events (engine/inline.c).
local processor
function M.processor_run(p, events, raw, query, exec, result, append, log, setup, reset, suffix,
                         id, in_append)
  processor = processor or require "tide.processor"
  local sql, appender = processor.sql_handle(raw, query, exec, result, append, suffix)
  local chain = M._upcasters
  if chain then
    upcast.apply(chain, events)
    local plain = appender
    appender = function(stream, list, opts, partition, level)
      upcast.stamp(chain, list)
      local res = plain(stream, list, opts, partition, level + 1)
      return res
    end
  end
  if reset then processor.reset(p, sql, id) end
  if setup then processor.setup(p, sql) end
  if in_append then processor.lock_documents(p, events, sql) end
  processor.run_batch(p, events, sql, log, appender)
  processor.register_targets(p, sql, id)
end

-- The daemon's view of a processor script: its settings, checked, as a plain table.
M.processor_settings = model.settings

-- tide.command's, on a store that upcasts with the VM's upcasters (when it has some; a
-- store from tide.connect upcasts already).
local function upcasting(store, call)
  if getmetatable(store) == Store then return store end
  return upcast.store(store, M._upcasters, call or command.direct_call, command.script_failure)
end
function M.aggregate(store, decider, stream, call, opts)
  return command.aggregate(upcasting(store, call), decider, stream, call, opts)
end
function M.handle(store, decider, stream, cmd, opts, call)
  return command.handle(upcasting(store, call), decider, stream, cmd, opts, call)
end

-- tide.replay(store, processor, stream, { to = N }, emit) → { events, folded, position, what }
-- | nil, err: the stream folded through a decider or a document/snapshot projection,
-- emit(event, state, id) after each event (see lua/tide/replay.lua); `tide replay`'s entry.
local replay
function M.replay(store, p, stream, opts, emit)
  replay = replay or require "tide.replay"
  return replay.run(store, p, stream, opts, emit, guard())
end

return M
