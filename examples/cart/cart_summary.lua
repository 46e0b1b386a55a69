-- A document per cart (table tide_documents, collection "cart_summary"): who, what,
-- how much, and whether it is confirmed. The document id defaults to the stream id.
local tide = require "tide"

local function total(items)
  local sum = 0
  for _, item in pairs(items) do sum = sum + item.qty * item.price end
  return sum
end

return tide.projection {
  collection = "cart_summary",
  events = { "CartOpened", "ItemAdded", "ItemRemoved", "CartConfirmed" },
  initial = function() return { status = "open", items = tide.object(), total = 0 } end,
  evolve = function(doc, e)
    if e.type == "CartOpened" then
      doc.customer = e.data.customer
    elseif e.type == "ItemAdded" then
      local item = doc.items[e.data.sku] or { qty = 0, price = e.data.price }
      item.qty = item.qty + e.data.qty
      item.price = e.data.price
      doc.items[e.data.sku] = item
    elseif e.type == "ItemRemoved" then
      doc.items[e.data.sku] = nil
    elseif e.type == "CartConfirmed" then
      doc.status = "confirmed"
    end
    doc.total = total(doc.items)
    return doc
  end,
}
