-- The welcome reactor, with tide.testing: what ctx.append would write.
local testing = require "tide.testing"
local welcome = testing.reactor(require "welcome")

describe("the welcome reactor", function()
  it("queues one welcome per opened account", function()
    welcome.given({
      { type = "Opened", data = { owner = "ada" } },
      { type = "Deposited", data = { amount = 10 } },
    }, "account-1").then_appends({
      { stream = "welcome-account-1", events = {
        { type = "WelcomeQueued", data = { account = "account-1", owner = "ada" } },
      } },
    }).then_logs({ "queued a welcome for ada" })
  end)
end)
