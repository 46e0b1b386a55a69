-- tide.testing itself: it passes what holds and fails, with a useful message, what does not.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local tide = require "tide"
local testing = require "tide.testing"

local counter = tide.decider {
  initial = function() return { n = 0 } end,
  evolve = function(s, e) return { n = s.n + e.data.by } end,
  decide = function(cmd, s)
    if cmd.type == "Noop" then return nil end
    if s.n + cmd.data.by > 10 then tide.reject("counter would pass 10") end
    return { { type = "Added", data = { by = cmd.data.by }, metadata = { source = "test" } } }
  end,
}
local given = testing.decider(counter)
local added = function(by) return { type = "Added", data = { by = by } } end

describe("tide.testing for deciders", function()
  it("passes matching events and no events", function()
    given({ added(3) }).when({ type = "Add", data = { by = 2 } }).then_events({ added(2) })
    given({}).when({ type = "Noop" }).then_events({})
  end)

  it("compares metadata only when the expectation has it", function()
    given({}).when({ type = "Add", data = { by = 1 } })
      .then_events({ { type = "Added", data = { by = 1 }, metadata = { source = "test" } } })
    assert.has_error(function()
      given({}).when({ type = "Add", data = { by = 1 } })
        .then_events({ { type = "Added", data = { by = 1 }, metadata = { source = "other" } } })
    end)
  end)

  it("fails on different events and shows both", function()
    local ok, err = pcall(function()
      given({}).when({ type = "Add", data = { by = 2 } }).then_events({ added(3) })
    end)
    assert.is_false(ok)
    err = tostring(err) -- a busted failure: a table with the message
    assert.truthy(err:find("decided events differ", 1, true))
    assert.truthy(err:find("by = 3", 1, true) and err:find("by = 2", 1, true), err)
  end)

  it("matches rejections by pattern or plain text, without file:line", function()
    given({ added(9) }).when({ type = "Add", data = { by = 5 } }).then_rejects("would pass 10")
    given({ added(9) }).when({ type = "Add", data = { by = 5 } }).then_rejects("^counter")
    local ok, err = pcall(function()
      given({}).when({ type = "Add", data = { by = 1 } }).then_rejects("would pass")
    end)
    assert.is_false(ok)
    err = tostring(err)
    assert.truthy(err:find("expected a rejection", 1, true), err)
    ok, err = pcall(function()
      given({ added(9) }).when({ type = "Add", data = { by = 5 } }).then_events({ added(5) })
    end)
    assert.is_false(ok)
    err = tostring(err)
    assert.truthy(err:find("rejected: counter would pass 10", 1, true), err)
  end)

  it("checks folded state and fills in stored fields", function()
    given({ added(1), added(2) }).then_state({ n = 3 })
    assert.has_error(function() given({ added(1) }).then_state({ n = 2 }) end)
    local seen
    local spy = tide.decider {
      initial = function() return {} end,
      evolve = function(_, e) seen = e return {} end,
      decide = function() return {} end,
    }
    testing.decider(spy)({ added(1) }, "counter-7").then_state({})
    assert.are.same({ "counter-7", 1, 1 }, { seen.stream_id, seen.stream_position, seen.global_position })
    assert.truthy(seen.message_id and seen.created)
  end)

  it("does not change the caller's tables", function()
    local events = { added(1) }
    given(events).when({ type = "Add", data = { by = 1 } }).then_events({ added(1) })
    assert.are.same({ added(1) }, events)
    assert.is_nil(events[1].stream_id)
  end)

  it("refuses what is not a decider", function()
    assert.has_error(function() testing.decider({}) end)
  end)
end)

describe("tide.testing for document projections", function()
  local p = testing.projection(tide.projection {
    collection = "totals",
    events = { "Added", "Reset" },
    initial = function() return { n = 0 } end,
    evolve = function(doc, e)
      if e.type == "Reset" then return nil end
      doc.n = doc.n + e.data.by
      return doc
    end,
  })
  it("folds documents per stream, honours the filter and deletes on nil", function()
    p.given({ added(1), added(2), { type = "Other", data = { by = 100 } } }, "c-1").then_document("c-1", { n = 3 })
    p.given({ added(1), { type = "Reset" } }, "c-1").then_no_document("c-1").then_state({})
    assert.has_error(function() p.given({ added(1) }, "c-1").then_document("c-1", { n = 2 }) end)
  end)
  it("serializes tide.null as null", function()
    assert.are.equal("{\n  a = null\n}", testing.serialize({ a = tide.null }))
  end)
end)

describe("processor constructors", function()
  it("take a per-batch handle or a per-event handle_event, not both", function()
    assert.are.equal("projection", tide.projection { handle_event = function() end }.kind)
    assert.are.equal("projection", tide.projection { handle = function() end }.kind)
    assert.has_error(function()
      tide.projection { handle = function() end, handle_event = function() end }
    end, "tide.projection: give 'handle' (per batch) or 'handle_event' (per event), not both")
    assert.has_error(function() tide.projection { handle_event = "no" } end)
  end)

  it("take a partition name, and refuse anything else there", function()
    assert.are.equal("tenant-a", tide.reactor { partition = "tenant-a", handle = function() end }.partition)
    -- The length limit is the store's (TIDE_MAX_PARTITION_BYTES, checked in C where the
    -- name is used); the constructors refuse what is not a name at all.
    for _, bad in ipairs({ "", 42, {} }) do
      assert.has_error(function() tide.projection { partition = bad, handle = function() end } end)
      assert.has_error(function() tide.reactor { partition = bad, handle = function() end } end)
    end
  end)
end)
