-- The account's rules, with tide.testing: plain busted, no database (`tide test`).
local testing = require "tide.testing"
local given = testing.decider(require "account")

local opened = { type = "Opened", data = { owner = "ada" } }
local function deposited(amount) return { type = "Deposited", data = { amount = amount } } end

describe("the account decider", function()
  it("opens an account once, for an owner", function()
    given({}).when({ type = "Open", data = { owner = "ada" } }).then_events({ opened })
    given({ opened }).when({ type = "Open", data = { owner = "bob" } }).then_rejects("already open")
    given({}).when({ type = "Open", data = {} }).then_rejects("needs an owner")
  end)

  it("takes deposits of positive amounts into open accounts", function()
    given({ opened }).when({ type = "Deposit", data = { amount = 10 } }).then_events({ deposited(10) })
    given({ opened }).when({ type = "Deposit", data = { amount = 0 } }).then_rejects("positive")
    given({}).when({ type = "Deposit", data = { amount = 10 } }).then_rejects("not open")
  end)

  it("refuses to withdraw more than the balance", function()
    given({ opened, deposited(10) }).when({ type = "Withdraw", data = { amount = 4 } })
      .then_events({ { type = "Withdrawn", data = { amount = 4 } } })
    given({ opened, deposited(10) }).when({ type = "Withdraw", data = { amount = 11 } })
      .then_rejects("insufficient funds: the balance is 10")
  end)

  it("folds the balance from the events", function()
    given({ opened, deposited(10), { type = "Withdrawn", data = { amount = 3 } } })
      .then_state({ open = true, owner = "ada", balance = 7 })
  end)
end)
