-- A reactor: when an account is opened, queue a welcome message for its owner, as an event
-- on the stream welcome-<account>. ctx.append writes in the processor's transaction, with
-- its checkpoint: each opening queues exactly one.
local tide = require "tide"

return tide.reactor {
  events = { "Opened" },
  handle = function(e, ctx)
    ctx.append("welcome-" .. e.stream_id, {
      { type = "WelcomeQueued", data = { account = e.stream_id, owner = e.data.owner },
        metadata = { causation_id = e.message_id } },
    })
    ctx.log("queued a welcome for " .. e.data.owner)
  end,
}
