-- spec/dcb_writer.lua URL WRITER WRITERS ROUNDS BARRIER OUT — one of the racing writers of
-- spec/dcb_spec.lua: in each round, waits until all WRITERS have arrived (a barrier file: each
-- writer adds one byte to BARRIER per round, and the round starts once it holds
-- WRITERS × ROUND bytes), then tries to reserve the round's seat with store:append_if on a
-- stream of its own. OUT gets one line per round: "ok ROUND
-- GLOBAL_POSITION" or "conflict ROUND FOUND"; a conflict of another shape, or any other
-- failure, is written as "error ..." and ends the writer with status 1. Run with luajit from
-- the repository root.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = os.getenv("TIDE_BUILD_DIR") .. "/lua/?.so;" .. package.cpath
local tide = require "tide"
local ffi = require "ffi"
ffi.cdef "int usleep(unsigned int usec);"

local url, writer, writers, rounds, barrier, out = arg[1], arg[2], tonumber(arg[3]),
  tonumber(arg[4]), arg[5], arg[6]
local f = assert(io.open(out, "w"))
f:setvbuf("line")
local function die(...)
  f:write("error ", table.concat({ ... }, " "), "\n")
  os.exit(1)
end
local store, err = tide.connect(url)
if not store then die("connect:", tostring(err)) end

local arrive = assert(io.open(barrier, "a"))
local look = assert(io.open(barrier, "r"))
for round = 1, rounds do
  arrive:write("x")
  arrive:flush()
  while look:seek("end") < writers * round do ffi.C.usleep(200) end
  local seat = "seat-" .. round
  local res, cerr = store:append_if({ types = { "SeatReserved" }, data = { seat = seat } }, 0,
    "booking-" .. round .. "-" .. writer,
    { { type = "SeatReserved", data = { seat = seat, writer = writer } } })
  if res then
    f:write("ok ", round, " ", string.format("%d", res.global_positions[1]), "\n")
  elseif cerr.kind == "conflict" and type(cerr.found) == "number" and cerr.found > 0
    and cerr.after == 0 and cerr.expected == "any" and cerr.actual == nil
    and tostring(cerr):find("^conflict: an event matching the query was appended after "
      .. "global position 0 %(the first at global position " .. string.format("%d", cerr.found)
      .. "%); nothing was written$") then
    f:write("conflict ", round, " ", string.format("%d", cerr.found), "\n")
  else
    die("round", round, "kind", tostring(cerr.kind), "found", tostring(cerr.found), tostring(cerr))
  end
end
f:close()
