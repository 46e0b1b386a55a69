-- spec/outage_writer.lua URL PREFIX COUNT OUT — a writer for the outage specs: appends COUNT
-- events to ten streams PREFIX-0..9 through tide's Lua module, one per call, whatever
-- happens to the connection. A call that failed before it was sent ("connection") is made
-- again; one whose outcome is unknown is noted and not repeated. OUT gets one line per
-- event: "ok GLOBAL_POSITION I" or "unknown I". Run with luajit from the repository root.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = os.getenv("TIDE_BUILD_DIR") .. "/lua/?.so;" .. package.cpath
local tide = require "tide"

local url, prefix, count, out = arg[1], arg[2], tonumber(arg[3]), arg[4]
local f = assert(io.open(out, "w"))
f:setvbuf("line")
local store
local i = 1
while i <= count do
  if not store then
    store = tide.connect(url)
    if not store then os.execute("sleep 0.05") end
  end
  if store then
    local res, err = store:append(prefix .. "-" .. (i % 10),
      { { type = "Added", data = { by = 1 + i % 3, writer = prefix, i = i } } })
    if res then
      f:write("ok ", string.format("%d", res.global_positions[1]), " ", i, "\n")
      i = i + 1
    elseif err.kind == "unknown" then
      f:write("unknown ", i, "\n")
      i = i + 1
    elseif err.kind == "connection" then
      store:sleep(50) -- the next call connects again
    else
      error(prefix .. " event " .. i .. ": " .. tostring(err))
    end
  end
end
f:close()
