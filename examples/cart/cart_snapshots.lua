-- The cart decider's own state, one row per cart in the table cart_snapshots, kept by folding
-- the events with cart.lua's initial/evolve (the state `tide aggregate` prints), plus columns
-- of its own for indexes and reports:
--   SELECT id, status, total FROM cart_snapshots WHERE status = 'confirmed' ORDER BY total DESC
local tide = require "tide"
local cart = require "cart" -- cart.lua, beside this script

return tide.projection {
  snapshot = cart,
  table = "cart_snapshots",
  events = { "CartOpened", "ItemAdded", "ItemRemoved", "CartConfirmed" },
  columns = function(state)
    local total = 0
    for _, item in pairs(state.items) do total = total + item.qty * item.price end
    return { status = state.status, customer = state.customer, total = total }
  end,
  column_types = { status = "text", customer = "text", total = "numeric" },
  setup = function(sql) -- after tide made the table; sql:table names this generation's
    local t = sql:table("cart_snapshots")
    sql:exec("CREATE INDEX IF NOT EXISTS " .. t .. "_status ON " .. t .. " (status)")
  end,
}
