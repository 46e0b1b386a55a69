-- The balances documents, with tide.testing: the events in, the documents out.
local testing = require "tide.testing"
local balances = testing.projection(require "balances")

describe("the balances projection", function()
  it("keeps one document per account", function()
    balances.given({
      { type = "Opened", data = { owner = "ada" } },
      { type = "Deposited", data = { amount = 10 } },
      { type = "Withdrawn", data = { amount = 3 } },
    }, "account-1").then_document("account-1", { owner = "ada", balance = 7, movements = 2 })
      .then_no_document("account-2")
  end)
end)
