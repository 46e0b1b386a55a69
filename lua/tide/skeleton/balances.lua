-- A document projection: one JSON document per account, in the table tide_documents
-- (collection "balances", id = the stream id by default), kept current by `tide run`.
--   psql "$TIDE_DATABASE_URL" -c "SELECT id, doc FROM tide_documents WHERE collection = 'balances'"
local tide = require "tide"

return tide.projection {
  collection = "balances",
  events = { "Opened", "Deposited", "Withdrawn" },
  initial = function() return { balance = 0, movements = 0 } end,
  -- Returns the new document (nil would delete it).
  evolve = function(doc, e)
    if e.type == "Opened" then
      doc.owner = e.data.owner
    elseif e.type == "Deposited" then
      doc.balance = doc.balance + e.data.amount
      doc.movements = doc.movements + 1
    elseif e.type == "Withdrawn" then
      doc.balance = doc.balance - e.data.amount
      doc.movements = doc.movements + 1
    end
    return doc
  end,
}
