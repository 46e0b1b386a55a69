-- The cart's rules, with tide.testing: plain busted, no database.
--   busted --lua=luajit examples/cart/cart_spec.lua     (from the repository root)
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local testing = require "tide.testing"
local cart = dofile("examples/cart/cart.lua")
local summary = dofile("examples/cart/cart_summary.lua")
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
