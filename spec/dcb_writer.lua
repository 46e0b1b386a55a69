-- spec/dcb_writer.lua URL WRITER WRITERS ROUNDS OUT — one of the racing writers of
-- spec/dcb_spec.lua: in each round, waits until all WRITERS have arrived (a barrier through
-- the database: one event each on stream barrier-ROUND), then tries to reserve the round's
-- seat with store:append_if on a stream of its own. OUT gets one line per round: "ok ROUND
-- GLOBAL_POSITION" or "conflict ROUND FOUND"; a conflict of another shape, or any other
-- failure, is written as "error ..." and ends the writer with status 1. Run with luajit from
-- the repository root.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = os.getenv("TIDE_BUILD_DIR") .. "/lua/?.so;" .. package.cpath
local tide = require "tide"

local url, writer, writers, rounds, out = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4]),
  arg[5]
local f = assert(io.open(out, "w"))
f:setvbuf("line")
local function die(...)
  f:write("error ", table.concat({ ... }, " "), "\n")
  os.exit(1)
end
local store, err = tide.connect(url)
if not store then die("connect:", tostring(err)) end

for round = 1, rounds do
  local barrier = "barrier-" .. round
  local ok, aerr = store:append(barrier, { { type = "Arrived", data = { writer = writer } } })
  if not ok then die("barrier:", tostring(aerr)) end
  while true do
    local last, rerr = store:read(barrier, { from = writers, max = 1 })
    if not last then die("barrier read:", tostring(rerr)) end
    if last[1] then break end
    store:sleep(1)
  end
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
