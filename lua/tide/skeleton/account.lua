-- A decider: the rules of one account, one stream per account (account-1, account-2, ...).
-- Commands Open { owner }, Deposit { amount }, Withdraw { amount }; events Opened,
-- Deposited, Withdrawn. A command that breaks a rule is rejected and writes nothing.
--   tide handle account.lua account-1 '{"type":"Open","data":{"owner":"ada"}}'
--   tide aggregate account.lua account-1
local tide = require "tide"

-- A broken rule rejects the command with tide.reject: `tide handle` prints the message and
-- exits 4, a spec matches it with then_rejects. Any other error is a bug (exit 1, with the
-- file and line).
local reject = tide.reject

local function amount_of(data)
  if type(data.amount) ~= "number" or data.amount <= 0 then reject("amount must be a positive number") end
  return data.amount
end

return tide.decider {
  initial = function() return { open = false, balance = 0 } end,

  -- State is rebuilt from the events: return a new table rather than changing the old one.
  evolve = function(state, e)
    if e.type == "Opened" then
      return { open = true, owner = e.data.owner, balance = 0 }
    elseif e.type == "Deposited" then
      return { open = true, owner = state.owner, balance = state.balance + e.data.amount }
    elseif e.type == "Withdrawn" then
      return { open = true, owner = state.owner, balance = state.balance - e.data.amount }
    end
    return state
  end,

  -- Returns the events to append (a list; one event or nil are fine too).
  decide = function(cmd, state)
    local data = cmd.data or {}
    if cmd.type == "Open" then
      if state.open then reject("account is already open") end
      if type(data.owner) ~= "string" or data.owner == "" then reject("an account needs an owner") end
      return { { type = "Opened", data = { owner = data.owner } } }
    end
    if not state.open then reject("account is not open") end
    if cmd.type == "Deposit" then
      return { { type = "Deposited", data = { amount = amount_of(data) } } }
    elseif cmd.type == "Withdraw" then
      local amount = amount_of(data)
      if amount > state.balance then reject("insufficient funds: the balance is " .. state.balance) end
      return { { type = "Withdrawn", data = { amount = amount } } }
    end
    reject("unknown command " .. tostring(cmd.type))
  end,
}
