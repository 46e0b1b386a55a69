-- The cart's rules, with tide.testing: plain busted, no database.
--   tide test examples/cart          (from anywhere: the scripts beside it are on the path)
local testing = require "tide.testing"
local cart = require "cart"
local summary = require "cart_summary"
local sales = require "product_sales"
local notify = require "notify_on_confirm"
local given = testing.decider(cart)

local opened = { type = "CartOpened", data = { customer = "ada" } }
local tea = { type = "ItemAdded", data = { sku = "tea", qty = 2, price = 4.5 } }
local mug = { type = "ItemAdded", data = { sku = "mug", qty = 1, price = 12 } }

describe("the cart decider", function()
  it("opens a cart", function()
    given({}).when({ type = "OpenCart", data = { customer = "ada" } }).then_events({ opened })
  end)

  it("does not open a cart twice", function()
    given({ opened }).when({ type = "OpenCart", data = { customer = "bob" } }).then_rejects("already open")
  end)

  it("adds and removes items", function()
    given({ opened }).when({ type = "AddItem", data = { sku = "tea", qty = 2, price = 4.5 } }).then_events({ tea })
    given({ opened, tea }).when({ type = "RemoveItem", data = { sku = "tea" } })
      .then_events({ { type = "ItemRemoved", data = { sku = "tea" } } })
  end)

  it("refuses items before opening, bad quantities and unknown removals", function()
    given({}).when({ type = "AddItem", data = { sku = "tea", qty = 1, price = 1 } }).then_rejects("cart is not open")
    given({ opened }).when({ type = "AddItem", data = { sku = "tea", qty = 0, price = 1 } }).then_rejects("positive whole number")
    given({ opened }).when({ type = "AddItem", data = { sku = "tea", qty = 1.5, price = 1 } }).then_rejects("positive whole number")
    given({ opened }).when({ type = "AddItem", data = { sku = "tea", qty = 1, price = -1 } }).then_rejects("must not be negative")
    given({ opened }).when({ type = "RemoveItem", data = { sku = "tea" } }).then_rejects("not in the cart", { sku = "tea" })
  end)

  it("confirms with the total, and rejects an empty cart", function()
    given({ opened, tea, mug }).when({ type = "ConfirmCart", data = {} })
      .then_events({ { type = "CartConfirmed", data = { total = 21, items = 2 } } })
    given({ opened }).when({ type = "ConfirmCart", data = {} }).then_rejects("cannot confirm an empty cart")
    given({ opened, tea, { type = "ItemRemoved", data = { sku = "tea" } } })
      .when({ type = "ConfirmCart", data = {} }).then_rejects("empty")
  end)

  it("accepts nothing after confirmation", function()
    local confirmed = { type = "CartConfirmed", data = { total = 9, items = 1 } }
    given({ opened, tea, confirmed }).when({ type = "AddItem", data = { sku = "mug", qty = 1, price = 1 } })
      .then_rejects("already confirmed")
  end)

  it("folds the state", function()
    given({ opened, tea, mug, tea }).then_state({
      status = "open", customer = "ada",
      items = { tea = { qty = 4, price = 4.5 }, mug = { qty = 1, price = 12 } },
    })
  end)
end)

describe("the cart summary projection", function()
  local p = testing.projection(summary)
  it("keeps one document per cart with its total", function()
    p.given({ opened, tea, mug }, "cart-1").then_document("cart-1", {
      customer = "ada", status = "open", total = 21,
      items = { tea = { qty = 2, price = 4.5 }, mug = { qty = 1, price = 12 } },
    })
  end)
  it("marks confirmed carts", function()
    p.given({ opened, tea, { type = "CartConfirmed", data = { total = 9, items = 1 } } }, "cart-2")
      .then_document("cart-2", { customer = "ada", status = "confirmed", total = 9, items = { tea = { qty = 2, price = 4.5 } } })
      .then_no_document("cart-1")
  end)
end)

describe("the product sales projection (SQL)", function()
  local p = testing.sql_projection(sales)
  local confirmed = { type = "CartConfirmed", data = { total = 21, items = 2 } }

  it("creates its tables if they are missing", function()
    p.setup().then_statements({ "CREATE TABLE IF NOT EXISTS cart_lines", "CREATE TABLE IF NOT EXISTS product_sales" })
  end)

  it("keeps an open cart's lines and counts them when it is confirmed", function()
    p.given({ opened, tea, { type = "ItemRemoved", data = { sku = "tea" } }, mug, confirmed }, "cart-1")
      .then_statements({
        { "INSERT INTO cart_lines", "cart-1", "tea", 2, 4.5 },
        { "DELETE FROM cart_lines WHERE cart_id = $1 AND sku = $2", "cart-1", "tea" },
        { "INSERT INTO cart_lines", "cart-1", "mug", 1, 12 },
        { "INSERT INTO product_sales (sku, units, revenue) SELECT sku, qty, qty * price FROM cart_lines", "cart-1" },
        { "DELETE FROM cart_lines WHERE cart_id = $1", "cart-1" },
      })
  end)

  it("ignores the events it did not ask for", function()
    p.given({ opened }, "cart-1").then_no_statements()
  end)
end)

describe("the notify-on-confirm reactor", function()
  local r = testing.reactor(notify)
  it("queues one notification per confirmed cart, caused by the confirmation", function()
    r.given({ opened, tea, { type = "CartConfirmed", data = { total = 9, items = 1 } } }, "cart-3")
      .then_appends({
        { stream = "notifications-cart-3", events = {
          { type = "CustomerNotified", data = { cart = "cart-3", total = 9 },
            metadata = { causation_id = "00000000-0000-4000-8000-000000000003" } },
        } },
      })
      .then_logs({ "notified the customer of cart-3" })
  end)
  it("does nothing for a cart that is still open", function()
    r.given({ opened, tea }, "cart-4").then_no_appends()
  end)
end)
