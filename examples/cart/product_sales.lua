-- Units and revenue per product, counted when a cart is confirmed. Plain SQL inside the
-- processor's transaction: the open carts' lines are kept in cart_lines until then.
local tide = require "tide"

return tide.projection {
  events = { "ItemAdded", "ItemRemoved", "CartConfirmed" },
  setup = function(sql)
    sql:exec([[CREATE TABLE IF NOT EXISTS cart_lines (
      cart_id text NOT NULL, sku text NOT NULL, qty bigint NOT NULL, price numeric NOT NULL,
      PRIMARY KEY (cart_id, sku))]])
    sql:exec([[CREATE TABLE IF NOT EXISTS product_sales (
      sku text PRIMARY KEY, units bigint NOT NULL, revenue numeric NOT NULL)]])
  end,
  reset = function(sql)
    sql:exec("TRUNCATE cart_lines, product_sales")
  end,
  handle = function(events, sql)
    for _, e in ipairs(events) do
      if e.type == "ItemAdded" then
        sql:exec([[INSERT INTO cart_lines (cart_id, sku, qty, price) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (cart_id, sku) DO UPDATE
                   SET qty = cart_lines.qty + excluded.qty, price = excluded.price]],
                 e.stream_id, e.data.sku, e.data.qty, e.data.price)
      elseif e.type == "ItemRemoved" then
        sql:exec("DELETE FROM cart_lines WHERE cart_id = $1 AND sku = $2", e.stream_id, e.data.sku)
      elseif e.type == "CartConfirmed" then
        sql:exec([[INSERT INTO product_sales (sku, units, revenue)
                   SELECT sku, qty, qty * price FROM cart_lines WHERE cart_id = $1
                   ON CONFLICT (sku) DO UPDATE SET units = product_sales.units + excluded.units,
                                                   revenue = product_sales.revenue + excluded.revenue]],
                 e.stream_id)
        sql:exec("DELETE FROM cart_lines WHERE cart_id = $1", e.stream_id)
      end
    end
  end,
}
