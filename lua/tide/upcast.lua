-- tide.upcast: upcasters, which turn an event stored in an older shape into the newest one
-- as it is read. A file among the scripts returns tide.upcaster { type, from, to, upcast }
-- (or tide.upcasters { ... } for several); together they make one chain per event type,
-- which must go 1 → 2 → ... without a gap. Every reader (processors' batches, deciders'
-- folds, the store's reads) hands on events upcast to the top of their type's chain with
-- e.schema_version set to it; an event stored at a version no upcaster starts from (a newer
-- one, or not a number) is handed on as it is. Appends write the top version of the type's
-- chain (1 for a type without one): what the scripts that append declare they write.
local error, type, pairs, ipairs, tostring, setmetatable, rawget, rawset, floor =
  error, type, pairs, ipairs, tostring, setmetatable, rawget, rawset, math.floor
local table = table

local M = {}

local function whole(x) return type(x) == "number" and x == floor(x) and x >= 1 and x < 2 ^ 31 end

local function check(spec, what, level)
  if type(spec) ~= "table" then error(what .. " wants a table, got " .. type(spec), level) end
  if type(spec.type) ~= "string" or spec.type == "" then
    error(what .. ": 'type' must be the event type (a non-empty string)", level)
  end
  if not whole(spec.from) then
    error(what .. ": 'from' must be a whole number >= 1 (the schema version it reads)", level)
  end
  if not whole(spec.to) or spec.to <= spec.from then
    error(what .. ": 'to' must be a whole number greater than 'from' (the version it makes)",
      level)
  end
  if type(spec.upcast) ~= "function" then
    error(what .. ": 'upcast' must be a function(data, metadata) returning data [, metadata]",
      level)
  end
end

-- tide.upcaster { type = "ItemAdded", from = 1, to = 2, upcast = function(data, metadata)
--   ... return data [, metadata] end }
function M.upcaster(spec)
  check(spec, "tide.upcaster", 3)
  spec.kind = "upcaster"
  return spec
end

-- tide.upcasters { tide.upcaster {...}, ... }: several in one file.
function M.upcasters(list)
  if type(list) ~= "table" or #list == 0 then
    error("tide.upcasters wants a list of tide.upcaster { ... }", 2)
  end
  for i, u in ipairs(list) do
    if type(u) ~= "table" or rawget(u, "kind") ~= "upcaster" then
      error("tide.upcasters: item " .. i .. " is not a tide.upcaster { ... }", 2)
    end
  end
  return { kind = "upcasters", steps = list }
end

-- Whether a script returned upcasters (raw: no metamethod of the script runs).
function M.is_upcasters(v)
  if type(v) ~= "table" then return false end
  local kind = rawget(v, "kind")
  return kind == "upcaster" or kind == "upcasters"
end

local function describe(steps)
  local out = {}
  for _, s in ipairs(steps) do
    out[#out + 1] = s.from .. "→" .. s.to .. " (" .. s.file .. ")"
  end
  return table.concat(out, ", ")
end

-- The chain of a list of { value = what a file returned, file = its path }: per type, the
-- steps by the version they read and the top version. Raises, naming the files, when a
-- type's steps do not go from 1 to the top without a gap, or two read the same version.
function M.chain(files)
  local by_type, order = {}, {}
  for _, f in ipairs(files) do
    local v = f.value
    if not M.is_upcasters(v) then
      error(f.file .. ": returns no upcaster (return tide.upcaster { ... })", 0)
    end
    local list = rawget(v, "kind") == "upcasters" and v.steps or { v }
    for _, u in ipairs(list) do
      local ok, err = pcall(check, u, "tide.upcaster", 0)
      if not ok then error(f.file .. ": " .. tostring(err), 0) end
      local steps = by_type[u.type]
      if not steps then
        steps = {}
        by_type[u.type] = steps
        order[#order + 1] = u.type
      end
      steps[#steps + 1] = { from = u.from, to = u.to, upcast = u.upcast, file = f.file }
    end
  end
  local chain = {}
  for _, t in ipairs(order) do
    local steps = by_type[t]
    table.sort(steps, function(a, b) return a.from < b.from end)
    local from = {}
    for _, s in ipairs(steps) do
      if from[s.from] then
        error("upcasters: two upcasters of " .. t .. " read version " .. s.from .. ": "
          .. from[s.from].file .. " and " .. s.file .. "; keep one", 0)
      end
      from[s.from] = s
    end
    local v, seen = 1, 0
    while from[v] do
      seen = seen + 1
      v = from[v].to
    end
    if seen < #steps then
      error("upcasters: the chain of " .. t .. " has no step from version " .. v .. " (it has "
        .. describe(steps) .. "): add an upcaster of " .. t .. " from " .. v, 0)
    end
    chain[t] = { from = from, top = v }
  end
  return chain
end

-- The version appends write for an event type: its chain's top, 1 without one.
function M.declared(chain, t)
  local c = chain and chain[t]
  return c and c.top or 1
end

-- Sets schema_version on the events a script appends that have none (raw: they are
-- plain tables the script built, or copies of them).
function M.stamp(chain, events)
  if not chain then return end
  for i = 1, #events do
    local e = events[i]
    if type(e) == "table" and rawget(e, "schema_version") == nil then
      local c = chain[rawget(e, "type")]
      if c then rawset(e, "schema_version", c.top) end
    end
  end
end

-- Upcasts the events in place (each to the top of its type's chain). at (optional) gets
-- the index of the event being upcast, so that a failure can name it. Raises when an
-- upcaster does, or returns no data.
function M.apply(chain, events, at)
  for i = 1, #events do
    local e = events[i]
    local c = chain[e.type]
    if c then
      local v = e.schema_version
      if v == nil then v = 1 end
      local s = c.from[v]
      if s then
        if at then at[1] = i end
        local data, meta = e.data, e.metadata
        repeat
          local d, m = s.upcast(data, meta)
          if type(d) ~= "table" then
            error(s.file .. ": the upcaster of " .. e.type .. " from " .. s.from .. " to "
              .. s.to .. " returned " .. (d == nil and "no data" or "a " .. type(d))
              .. ", not the event's data (a table)", 0)
          end
          if m ~= nil and type(m) ~= "table" then
            error(s.file .. ": the upcaster of " .. e.type .. " from " .. s.from .. " to "
              .. s.to .. " returned metadata that is a " .. type(m) .. ", not a table", 0)
          end
          data = d
          if m ~= nil then meta = m end
          v = s.to
          s = c.from[v]
        until not s
        e.data, e.metadata, e.schema_version = data, meta, v
      end
    end
  end
  return events
end

-- events upcast through call (a guard: true, ... | false, msg, kind, traceback) | nil, err
-- (err from failure(what, msg, kind, tb, extra): tide.command's script_failure).
function M.guarded(chain, events, call, failure)
  local at = {}
  local ok, msg, kind, tb = call(M.apply, chain, events, at)
  if ok then return events end
  local e = events[at[1] or 1] or {}
  return failure("upcasting event " .. tostring(e.stream_position) .. " (" .. tostring(e.type)
    .. ", schema version " .. tostring(e.schema_version) .. ") of stream "
    .. tostring(e.stream_id), msg, kind, tb, { stream = e.stream_id })
end

-- A store whose reads hand on upcast events and whose appends write the declared versions,
-- around store (anything with read, read_all, append and the rest: its other fields are
-- its own). store itself when chain is nil.
function M.store(store, chain, call, failure)
  if not chain then return store end
  local proxy = setmetatable({}, { __index = function(t, k)
    local v = store[k]
    if type(v) ~= "function" then return v end
    local f = function(_, ...) return v(store, ...) end
    rawset(t, k, f)
    return f
  end })
  function proxy:read(stream, opts)
    local events, err = store:read(stream, opts)
    if not events then return nil, err end
    return M.guarded(chain, events, call, failure)
  end
  function proxy:read_all(cursor, max)
    local events, next_cursor = store:read_all(cursor, max)
    if not events then return nil, next_cursor end
    local ok, err = M.guarded(chain, events, call, failure)
    if not ok then return nil, err end
    return events, next_cursor
  end
  function proxy:read_query(query, opts)
    local events, position = store:read_query(query, opts)
    if not events then return nil, position end
    local ok, err = M.guarded(chain, events, call, failure)
    if not ok then return nil, err end
    return events, position
  end
  function proxy:append(stream, events, opts)
    if type(events) == "table" then M.stamp(chain, events) end
    return store:append(stream, events, opts)
  end
  function proxy:append_if(query, after, stream, events, opts)
    if type(events) == "table" then M.stamp(chain, events) end
    return store:append_if(query, after, stream, events, opts)
  end
  return proxy
end

return M
