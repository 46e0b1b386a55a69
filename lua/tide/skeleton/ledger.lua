-- An SQL projection: one row per movement in the table ledger, written in the same
-- transaction as the processor's checkpoint, so each event counts exactly once. `setup`
-- creates the table when it is missing; `reset` empties it when `version` changes, and the
-- projection is then rebuilt from the first event.
--   psql "$TIDE_DATABASE_URL" -c "SELECT * FROM ledger ORDER BY account_id, position"
local tide = require "tide"

return tide.projection {
  version = 1,
  events = { "Deposited", "Withdrawn" },
  setup = function(sql)
    sql:exec([[CREATE TABLE IF NOT EXISTS ledger (
      account_id text NOT NULL, position bigint NOT NULL, amount numeric NOT NULL,
      PRIMARY KEY (account_id, position))]])
  end,
  reset = function(sql)
    sql:exec("TRUNCATE ledger")
  end,
  -- One call per batch of events; sql:exec queues a statement, sql:query returns rows.
  handle = function(events, sql)
    for _, e in ipairs(events) do
      local amount = e.data.amount
      if e.type == "Withdrawn" then amount = -amount end
      sql:exec("INSERT INTO ledger (account_id, position, amount) VALUES ($1, $2, $3)",
               e.stream_id, e.stream_position, amount)
    end
  end,
}
