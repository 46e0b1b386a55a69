-- The shopping cart decider: commands OpenCart, AddItem, RemoveItem, ConfirmCart;
-- events CartOpened, ItemAdded, ItemRemoved, CartConfirmed. A rule that does not hold
-- calls tide.reject, which refuses the command and writes nothing (`tide handle` exits 4);
-- any other error is a bug in the script (exit 1, with file:line and the stack).
--   tide handle examples/cart/cart.lua cart-42 '{"type":"OpenCart","data":{"customer":"ada"}}'
local tide = require "tide"

local function copy_items(items)
  local out = {}
  for sku, item in pairs(items) do out[sku] = { qty = item.qty, price = item.price } end
  return out
end

local function total(items)
  local sum, count = 0, 0
  for _, item in pairs(items) do
    sum = sum + item.qty * item.price
    count = count + 1
  end
  return sum, count
end

local function must_be_open(state)
  if state.status == "none" then tide.reject("cart is not open") end
  if state.status == "confirmed" then tide.reject("cart is already confirmed") end
end

local decide = {
  OpenCart = function(data, state)
    if state.status ~= "none" then tide.reject("cart is already open") end
    if type(data.customer) ~= "string" or data.customer == "" then tide.reject("a cart needs a customer") end
    return { { type = "CartOpened", data = { customer = data.customer } } }
  end,
  AddItem = function(data, state)
    must_be_open(state)
    if type(data.sku) ~= "string" or data.sku == "" then tide.reject("an item needs a sku") end
    local qty, price = data.qty, data.price
    if type(qty) ~= "number" or qty < 1 or qty % 1 ~= 0 then tide.reject("qty must be a positive whole number") end
    if type(price) ~= "number" or price < 0 then tide.reject("price must not be negative") end
    return { { type = "ItemAdded", data = { sku = data.sku, qty = qty, price = price } } }
  end,
  RemoveItem = function(data, state)
    must_be_open(state)
    if not state.items[data.sku] then tide.reject("item " .. tostring(data.sku) .. " is not in the cart", { sku = data.sku }) end
    return { { type = "ItemRemoved", data = { sku = data.sku } } }
  end,
  ConfirmCart = function(_, state)
    must_be_open(state)
    local sum, count = total(state.items)
    if count == 0 then tide.reject("cannot confirm an empty cart") end
    return { { type = "CartConfirmed", data = { total = sum, items = count } } }
  end,
}

return tide.decider {
  initial = function() return { status = "none", items = {} } end,

  evolve = function(state, e)
    local items = copy_items(state.items)
    local next = { status = state.status, customer = state.customer, items = items }
    if e.type == "CartOpened" then
      next.status, next.customer = "open", e.data.customer
    elseif e.type == "ItemAdded" then
      local item = items[e.data.sku] or { qty = 0, price = e.data.price }
      items[e.data.sku] = { qty = item.qty + e.data.qty, price = e.data.price }
    elseif e.type == "ItemRemoved" then
      items[e.data.sku] = nil
    elseif e.type == "CartConfirmed" then
      next.status = "confirmed"
    end
    return next
  end,

  decide = function(cmd, state)
    local handler = decide[cmd.type]
    if not handler then tide.reject("unknown command " .. tostring(cmd.type)) end
    return handler(cmd.data or {}, state)
  end,
}
