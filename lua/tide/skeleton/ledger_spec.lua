-- The ledger's SQL, with tide.testing: the statements a batch would send, and their parameters.
local testing = require "tide.testing"
local ledger = testing.sql_projection(require "ledger")

describe("the ledger projection", function()
  it("creates its table only if it is missing", function()
    ledger.setup().then_statements({ "CREATE TABLE IF NOT EXISTS ledger" })
  end)

  it("writes one row per movement, withdrawals negative", function()
    ledger.given({
      { type = "Opened", data = { owner = "ada" } },
      { type = "Deposited", data = { amount = 10 } },
      { type = "Withdrawn", data = { amount = 3 } },
    }, "account-1").then_statements({
      { "INSERT INTO ledger", "account-1", 2, 10 },
      { "INSERT INTO ledger", "account-1", 3, -3 },
    })
  end)
end)
