-- When a cart is confirmed, queue a notification for the customer: an event on the
-- stream notifications-<cart>, appended in the same transaction as the checkpoint, so
-- each confirmation yields exactly one notification.
local tide = require "tide"

return tide.reactor {
  events = { "CartConfirmed" },
  handle = function(e, ctx)
    ctx.append("notifications-" .. e.stream_id, {
      { type = "CustomerNotified", data = { cart = e.stream_id, total = e.data.total },
        metadata = { causation_id = e.message_id } },
    })
    ctx.log("notified the customer of " .. e.stream_id)
  end,
}
