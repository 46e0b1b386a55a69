-- scripts/bench_append_if.lua URL [N] — what a conditional append costs next to a plain one,
-- one client, one event per append, each to a stream of its own with a seat of its own (as a
-- booking would): N (2,000) plain appends and N append_if whose query is the seat's
-- ({ types = { "SeatReserved" }, data = { seat = ... } }), alternating in slices of 100 so that
-- load from elsewhere falls on both. append_if checks after the head of the log (what a
-- decider's store:read_query gives: here the position of the append before it); the check
-- then reads the events of the query's type appended since, whatever the partition holds.
-- Then N / 10 append_if after position 0, which read every event of the type. All three again
-- with 100,000 more events of the type (other seats) in the partition. Prints the mean time per
-- append. Run with luajit from the repository root on a database migrated by tide; it leaves
-- its events there.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "build/lua/?.so;" .. package.cpath
local tide = require "tide"
local ffi = require "ffi"
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } tide_timespec;
  int clock_gettime(int clk, tide_timespec *ts);
]]
local ts = ffi.new("tide_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local url, n = assert(arg[1], "usage: bench_append_if.lua URL [N]"), tonumber(arg[2] or 2000)
local store = assert(tide.connect(url))
local run = tostring(os.time())
local head = 0

local function append(kind, label, i)
  local seat = run .. "-" .. label .. "-" .. kind .. "-" .. i
  local events = { { type = "SeatReserved", data = { seat = seat } } }
  local stream = "booking-" .. seat
  local res
  if kind == "plain" then
    res = assert(store:append(stream, events))
  else
    local q = { types = { "SeatReserved" }, data = { seat = seat } }
    res = assert(store:append_if(q, kind == "head" and head or 0, stream, events))
  end
  head = res.global_positions[1]
end

local function measure(label)
  local t = { plain = 0, head = 0, zero = 0 }
  for slice = 0, n / 100 - 1 do
    for _, kind in ipairs({ "plain", "head", "zero" }) do
      local start = now()
      for i = slice * 100 + 1, slice * 100 + (kind == "zero" and 10 or 100) do
        append(kind, label, i)
      end
      t[kind] = t[kind] + now() - start
    end
  end
  local plain = t.plain / n * 1e3
  print(string.format("%-32s append %.3f ms | append_if after the head %.3f ms (%+.0f %%)"
    .. " | after 0 %.3f ms", label, plain, t.head / n * 1e3, (t.head / t.plain - 1) * 100,
    t.zero / (n / 10) * 1e3))
end

measure("partition of " .. n * 2.1 .. " events")
local list = {}
for i = 1, 1000 do list[i] = { type = "SeatReserved", data = { seat = run .. "-bulk-" .. i } } end
for b = 1, 100 do assert(store:append("bulk-" .. run .. "-" .. b, list)) end
measure("+100,000 SeatReserved")
