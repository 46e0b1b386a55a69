-- Publishers (tide.publisher): a real `tide run` POSTing events to a real HTTP endpoint
-- (spec/webhook_receiver.mjs, under Node) that answers 500, never answers, or is left
-- mid-batch by a daemon killed with -9, on purpose. Every event must arrive at least once,
-- in order per stream, keyed by its message id; failures are retried with backoff, one that
-- keeps failing is parked as a dead letter with its error, and no secret reaches the log.
local S = require "spec.support"
local D = require "spec.daemon"
local q = S.q

local why = S.missing()
if not why and S.sh("node --version").code ~= 0 then why = "needs node (the webhook receiver)" end

-- Starts the receiver; returns its port, the log of what it received, and its pid.
local function receiver(dir)
  local log, out = dir .. "/received.jsonl", dir .. "/receiver.out"
  local r = S.sh(string.format("node spec/webhook_receiver.mjs %s >%s 2>&1 & echo $!", q(log), q(out)))
  local pid = r.out:match("%d+")
  D.track(pid)
  local port
  S.wait_for(function()
    port = D.read(out):match("port (%d+)")
    return port
  end, 10, "the webhook receiver")
  return tonumber(port), log, pid
end

-- What the receiver got, in arrival order.
local function received(log)
  local out = {}
  for line in D.read(log):gmatch("[^\n]+") do out[#out + 1] = S.json(line) end
  return out
end

-- The first arrival answered 200, per Idempotency-Key.
local function delivered(log)
  local keys, n = {}, 0
  for _, r in ipairs(received(log)) do
    if r.answer == 200 and not keys[r.key] then
      keys[r.key] = r
      n = n + 1
    end
  end
  return keys, n
end

local function append(url, stream, type_, data)
  local r = S.tide(string.format("append %s %s %s --database %s", q(stream), q(type_), q(data), q(url)))
  assert(r.code == 0, r.err)
  return S.json(r.out).global_positions[1]
end

-- message id -> { stream, position } of the events of the given types.
local function messages(url, types)
  local out, n = {}, 0
  local rows = S.psql(url, "SELECT message_id, stream_id, stream_position FROM emt_messages"
    .. " WHERE message_type IN ('" .. table.concat(types, "','") .. "') ORDER BY global_position")
  for id, stream, pos in rows:gmatch("([^|\n]+)|([^|\n]+)|(%d+)") do
    out[id] = { stream = stream, position = tonumber(pos) }
    n = n + 1
  end
  return out, n
end

-- Per stream, the positions of arrivals never go back (retries repeat one, in place).
local function assert_in_order(arrivals)
  local last = {}
  for _, r in ipairs(arrivals) do
    local e = r.event
    assert(e and e.stream_id, "an arrival without an event: " .. tostring(r.body))
    local before = last[e.stream_id] or 0
    assert(e.stream_position >= before, string.format("%s: position %d arrived after %d",
      e.stream_id, e.stream_position, before))
    last[e.stream_id] = e.stream_position
  end
end

local function publisher(port, settings)
  return string.format([[
local tide = require "tide"
return tide.publisher {
  events = { "Added", "Flaky", "Slow", "Poison" },
  url = "http://hook-user:pa55word@127.0.0.1:%d/hook?sig=query-secret",
  headers = { Authorization = "Bearer s3cret-token", ["X-Tenant"] = "acme" },
  %s
}
]], port, settings)
end

describe("tide.publisher", function()
  if why then
    it("needs the tide binary, PostgreSQL and node", function() pending(why) end)
    return
  end
  local url, dir
  before_each(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
  end)
  after_each(function()
    D.kill_all()
    if url then S.drop_db(url) end
  end)

  it("delivers each event with its key and headers, retries 500s and timeouts, and parks one that keeps failing", function()
    local port, rlog = receiver(dir)
    D.load_events(url, 30, 3) -- s-0 .. s-2
    append(url, "flaky-1", "Flaky", '{"fail":2}')
    D.load_events(url, 6, 3)
    append(url, "slow-1", "Slow", '{"hang":1}')
    append(url, "other-1", "Ignored", '{}')
    local poison = append(url, "poison-1", "Poison", '{"fail":3}') -- one more than max_attempts
    D.load_events(url, 6, 3)
    S.write(dir .. "/hooks.lua", publisher(port, "timeout_ms = 400, max_attempts = 3, backoff_ms = 20,"))
    local pid, log = D.start(url, dir)

    local want, total = messages(url, { "Added", "Flaky", "Slow" })
    S.wait_for(function() return select(2, delivered(rlog)) >= total end, 20, "every event delivered")
    D.caught_up(url, "hooks", 10)
    local keys = delivered(rlog)
    for id in pairs(want) do assert.truthy(keys[id], "never delivered: " .. id) end
    for id in pairs(keys) do assert.truthy(want[id], "delivered but not wanted: " .. id) end

    local arrivals = received(rlog)
    assert_in_order(arrivals)
    local by_type = {}
    for _, r in ipairs(arrivals) do
      local t = r.event.type
      by_type[t] = by_type[t] or {}
      table.insert(by_type[t], r.answer)
      -- The event as the HTTP API shows it, keyed by its message id, with the headers.
      assert.are.equal("POST", r.method)
      assert.are.equal("/hook?sig=query-secret", r.url)
      assert.are.equal(r.event.message_id, r.key)
      assert.are.equal("application/json", r.headers["content-type"])
      assert.are.equal("Bearer s3cret-token", r.headers.authorization)
      assert.are.equal("acme", r.headers["x-tenant"])
      assert.is_number(r.event.global_position)
      assert.is_string(r.event.created)
    end
    assert.are.same({ 500, 500, 200 }, by_type.Flaky)
    assert.are.same({ "none", 200 }, by_type.Slow)
    assert.are.same({ 500, 500, 500 }, by_type.Poison)
    assert.is_nil(by_type.Ignored)
    local first = S.psql(url, "SELECT message_id, message_data->>'by' FROM emt_messages WHERE message_type = 'Added' ORDER BY global_position LIMIT 1")
    local id, by = first:match("([^|]+)|(%d+)")
    assert.are.same({ by = tonumber(by) }, keys[id].event.data)

    -- The one that kept failing is a dead letter, with the endpoint's answer.
    local rows = S.lines(S.tide("dlq list --json --database " .. q(url)).out)
    assert.are.equal(1, #rows)
    assert.are.equal("spec/hooks", rows[1].processor)
    assert.are.equal(poison, rows[1].global_position)
    assert.are.equal(3, rows[1].attempts)
    assert.truthy(rows[1].last_error:find("POST http://127.0.0.1:" .. port .. "/hook: HTTP 500", 1, true),
      rows[1].last_error)

    local text = D.read(log)
    assert.truthy(text:find("no answer within timeout_ms = 400", 1, true), text)
    assert.truthy(text:find("event=processor.dead_lettered processor=spec/hooks", 1, true), text)
    for _, secret in ipairs({ "s3cret-token", "pa55word", "hook-user", "query-secret" }) do
      assert.falsy(text:find(secret, 1, true), "the log shows " .. secret)
      assert.falsy(rows[1].last_error:find(secret, 1, true), "the dead letter shows " .. secret)
    end
    local st = D.status(url).hooks
    assert.are.equal("publisher", st.kind)
    assert.are.equal(1, st.dead_letters)

    -- A retry from the dead letters sends it again; delivered, it leaves the queue.
    local r = S.tide("dlq retry --all --processor hooks --database " .. q(url))
    assert.are.equal(0, r.code, r.err)
    S.wait_for(function() return D.scalar(url, "SELECT count(*) FROM tide_dead_letters") == 0 end, 10,
      "the retried dead letter delivered")
    local last = received(rlog)
    last = last[#last]
    assert.are.equal("Poison", last.event.type)
    assert.are.equal(200, last.answer)
    assert.are.equal(4, last.arrival)
    D.stop(pid)
  end)

  it("delivers again what a daemon killed mid-batch had sent, and goes on in order", function()
    local port, rlog = receiver(dir)
    -- One append, one transaction: one batch. The endpoint holds the 4th event's answer.
    local events = {}
    for i = 1, 10 do
      events[i] = string.format('{"type":"Added","data":{"i":%d%s}}', i, i == 4 and ',"hang":1' or "")
    end
    S.psql(url, "SELECT tide_append('d-1', 'any', '[" .. table.concat(events, ",") .. "]'::jsonb)")
    D.load_events(url, 9, 3)
    S.write(dir .. "/hooks.lua", publisher(port, "timeout_ms = 60000,"))
    -- The timeout is cut to half the lease: 2 s, time enough to kill the daemon first.
    local pid = D.start(url, dir, "--lease-ms 4000")
    S.wait_for(function()
      for _, r in ipairs(received(rlog)) do
        if r.event.data.i == 4 then return true end
      end
    end, 10, "the 4th event at the endpoint")
    D.kill9(pid)
    assert.are.equal(0, D.checkpoint(url, "hooks")) -- nothing committed

    pid = D.start(url, dir, "--lease-ms 4000")
    local want, total = messages(url, { "Added" })
    S.wait_for(function() return select(2, delivered(rlog)) >= total end, 20, "every event delivered")
    D.caught_up(url, "hooks", 10)
    local keys = delivered(rlog)
    local n = 0
    for id in pairs(keys) do
      assert.truthy(want[id], id)
      n = n + 1
    end
    assert.are.equal(total, n) -- the distinct keys are the message ids

    -- The first three arrived twice (at least once, not exactly once); the rest in order.
    local seq = {}
    for _, r in ipairs(received(rlog)) do
      if r.event.stream_id == "d-1" then seq[#seq + 1] = r.event.data.i end
    end
    assert.are.same({ 1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, seq)
    local again = received(rlog)
    local after_restart = {}
    for i = 5, #again do after_restart[#after_restart + 1] = again[i] end
    assert_in_order(after_restart)
    assert.are.equal(0, D.scalar(url, "SELECT count(*) FROM tide_dead_letters"))

    -- SIGTERM while an answer is awaited: the daemon leaves without it, the event stays
    -- undelivered in the checkpoint's eyes, and the next daemon sends it again.
    local held = append(url, "d-2", "Added", '{"hang":1}')
    S.wait_for(function() return select(2, delivered(rlog)) == total end, 5)
    S.wait_for(function()
      local all = received(rlog)
      return all[#all].event.stream_id == "d-2"
    end, 10, "the held event at the endpoint")
    D.stop(pid)
    assert.truthy(D.checkpoint(url, "hooks") < held)
    D.start(url, dir, "--lease-ms 4000")
    S.wait_for(function() return D.checkpoint(url, "hooks") >= held end, 15, "the held event delivered")
    local all = received(rlog)
    assert.are.equal("d-2", all[#all].event.stream_id)
    assert.are.equal(200, all[#all].answer)
    assert.are.equal(2, all[#all].arrival)
  end)

  it("refuses bad definitions when the script loads", function()
    local cases = {
      { 'url = "ftp://example.com/x"', "'url' must be an http:// or https:// URL" },
      { 'url = "http://example.com/", headers = { ["X-A"] = "one\\r\\ntwo" }', "must be a string without line breaks" },
      { 'url = "http://example.com/", headers = { ["Bad Name"] = "x" }', "a header name must be" },
      { 'url = "http://example.com/", headers = { ["Idempotency-Key"] = "x" }', "is set by tide itself" },
      { 'url = "http://example.com/", timeout_ms = 0', "'timeout_ms' must be a whole number" },
      { 'url = "http://example.com/", handle = function() end', "it takes no 'handle'" },
      { 'url = "http://example.com/", on_error = "explode"', "'on_error' must be" },
    }
    for i, c in ipairs(cases) do
      local path = dir .. "/bad" .. i .. ".lua"
      S.write(path, "local tide = require 'tide'\nreturn tide.publisher { " .. c[1] .. " }\n")
      local r = S.tide("check " .. q(path))
      assert.are.equal(1, r.code, c[1])
      assert.truthy((r.out .. r.err):find(c[2], 1, true), c[1] .. ": " .. r.out .. r.err)
      assert.truthy((r.out .. r.err):find("bad" .. i .. ".lua", 1, true), r.out .. r.err)
    end
    S.write(dir .. "/good.lua", "local tide = require 'tide'\nreturn tide.publisher { url = 'https://example.com/h' }\n")
    local r = S.tide("check " .. q(dir .. "/good.lua"))
    assert.are.equal(0, r.code, r.err)
    assert.truthy(r.out:find("(publisher)", 1, true), r.out)
  end)
end)
