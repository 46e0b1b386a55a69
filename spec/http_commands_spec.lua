-- POST /commands/{decider}/{stream} against a real daemon (`tide run --http 127.0.0.1:0`)
-- and a real PostgreSQL, through curl: a command through a decider of the daemon's
-- directories, as `tide handle` runs it — its events appended and readable, rejections,
-- script errors and the CPU limit as errors that write nothing, bad input refused,
-- concurrent commands on one stream all applied, snapshots and inline projections, a
-- changed decider file used at once; and the daemon's loop free while a command runs.
local S = require "spec.support"
local D = require "spec.daemon"
local q = S.q

local why = S.missing()

local CPU_MS = 3000 -- long enough to look at the daemon while a runaway decide runs

local ACCOUNT = [[
local tide = require "tide"
return tide.decider {
  initial = function() return { balance = 0 } end,
  evolve = function(s, e)
    if e.type == "Deposited" then s.balance = s.balance + e.data.amount end
    if e.type == "Withdrawn" then s.balance = s.balance - e.data.amount end
    return s
  end,
  decide = function(cmd, s)
    if cmd.type == "Deposit" then
      if cmd.data.amount <= 0 then
        tide.reject("amount must be positive", { amount = cmd.data.amount })
      end
      return { { type = "Deposited", data = { amount = cmd.data.amount } } }
    elseif cmd.type == "Withdraw" then
      if cmd.data.amount > s.balance then tide.reject("insufficient funds") end
      return { { type = "Withdrawn", data = { amount = cmd.data.amount } } }
    elseif cmd.type == "Spin" then
      while true do end
    elseif cmd.type == "Nothing" then
      return {}
    end
    return undefined_helper(cmd)
  end,
}
]]

-- Snapshots every 2 events; and its name is the file's (counter).
local COUNTER = [[
local tide = require "tide"
return tide.decider {
  snapshot = { every = 2, version = 1 },
  initial = function() return { n = 0 } end,
  evolve = function(s, e) s.n = s.n + 1; return s end,
  decide = function(cmd, s) return { { type = "Counted", data = { n = s.n + 1 } } } end,
}
]]

-- An inline document projection: a command's append updates it in the same transaction.
local BALANCES = [[
local tide = require "tide"
return tide.projection {
  inline = true,
  collection = "balances",
  events = { "Deposited", "Withdrawn" },
  initial = function() return { balance = 0 } end,
  evolve = function(doc, e)
    if e.data.amount == 13 then error("unlucky amount") end
    doc.balance = doc.balance + (e.type == "Deposited" and e.data.amount or -e.data.amount)
    return doc
  end,
}
]]

describe("POST /commands/{decider}/{stream}", function()
  if why then
    pending(why)
    return
  end

  local url, dir, pid, log, base

  setup(function()
    url = S.fresh_db()
    dir = S.mkdtemp() .. "/bank"
    os.execute("mkdir -p " .. q(dir))
    S.write(dir .. "/account.lua", ACCOUNT)
    S.write(dir .. "/counter.lua", COUNTER)
    S.write(dir .. "/balances.lua", BALANCES)
    S.write(dir .. "/totals.lua", D.TOTALS)
    pid, log = D.start(url, dir, "--http 127.0.0.1:0 --cpu-ms " .. CPU_MS)
    local port = S.wait_for(function()
      return D.read(log):match("event=http%.listening address=127%.0%.0%.1:(%d+)")
    end, 20, "the daemon to listen")
    base = "http://127.0.0.1:" .. port
  end)

  teardown(function()
    D.kill_all()
    if url then S.drop_db(url) end
  end)

  -- method path [body] → status, the reply's JSON (nil when there is none)
  local function call(method, path, body)
    local out = S.tmpname(".json")
    local data = body and (" --data-binary " .. q(body)) or ""
    local r = S.sh(string.format("curl -s --path-as-is -o %s -w '%%{http_code}' -X %s%s %s", q(out), method,
      data, q(base .. path)))
    local f = io.open(out)
    local text = f and f:read("*a") or ""
    if f then f:close() end
    os.remove(out)
    return tonumber(r.out), text ~= "" and S.json(text) or nil, text
  end

  local function post(decider, stream, body, query)
    return call("POST", "/commands/" .. decider .. "/" .. stream .. (query or ""), body)
  end

  local function read(stream, extra)
    return S.lines(S.tide("read " .. q(stream) .. " --database " .. q(url) .. " " .. (extra or "")).out)
  end

  local function aggregate(script, stream)
    local r = S.tide("aggregate " .. q(dir .. "/" .. script) .. " " .. q(stream) .. " --database " .. q(url))
    assert.equal(0, r.code, r.err)
    return S.json(r.out)
  end

  it("appends what decide returns and answers with tide handle's result", function()
    local status, res = post("account", "acct-1", '{"type":"Deposit","data":{"amount":5}}')
    assert.equal(200, status)
    assert.same({ { type = "Deposited", data = { amount = 5 } } }, res.events)
    assert.equal(1, res.next_expected_version)
    assert.equal(1, #res.global_positions)
    assert.equal(1, res.attempts)
    assert.is_false(res.locked)

    status, res = post("account", "acct-1", '{"type":"Withdraw","data":{"amount":2}}')
    assert.equal(200, status)
    assert.equal(2, res.next_expected_version)
    local events = read("acct-1")
    assert.equal(2, #events)
    assert.equal("Deposited", events[1].type)
    assert.same({ amount = 2 }, events[2].data)
    assert.equal(res.global_positions[1], events[2].global_position)
    assert.same({ balance = 3 }, aggregate("account.lua", "acct-1").state)

    -- A decision with no events appends nothing.
    status, res = post("account", "acct-1", '{"type":"Nothing","data":{}}')
    assert.equal(200, status)
    assert.same({}, res.events)
    assert.equal(2, res.next_expected_version)
  end)

  it("answers 422 for a rejection and writes nothing", function()
    local status, res = post("account", "acct-r", '{"type":"Deposit","data":{"amount":-3}}')
    assert.equal(422, status)
    assert.same({ kind = "rejected", message = "amount must be positive", details = { amount = -3 } },
      res.error)
    status, res = post("account", "acct-r", '{"type":"Withdraw","data":{"amount":1}}')
    assert.equal(422, status)
    assert.equal("insufficient funds", res.error.message)
    assert.same({}, read("acct-r"))
  end)

  it("refuses a body that is no command, and writes nothing", function()
    for _, body in ipairs({ '{"type":"Deposit","data":', '[1,2]', '{"data":{"amount":1}}',
                            '{"type":"Deposit","data":[1]}', '' }) do
      local status, res = post("account", "acct-bad", body)
      assert.equal(400, status, body)
      assert.equal("invalid", res.error.kind)
      assert.truthy(res.error.message:find('{"type": "...", "data": {...}}', 1, true), res.error.message)
    end
    local status, res = post("account", "acct-bad", '{"type":"Deposit","data":{"amount":1}}', "?retries=x")
    assert.equal(400, status)
    assert.truthy(res.error.message:find("retries wants a whole number", 1, true))
    assert.same({}, read("acct-bad"))
  end)

  it("answers 404 for a decider that is not there, and 400 for a path", function()
    local status, res = post("nope", "acct-1", '{"type":"Deposit","data":{"amount":1}}')
    assert.equal(404, status)
    assert.equal("not_found", res.error.kind)
    assert.truthy(res.error.message:find("no nope.lua in the daemon's directories", 1, true))

    -- A script of the directory that is no decider.
    status, res = post("balances", "acct-1", '{"type":"Deposit","data":{"amount":1}}')
    assert.equal(404, status)
    assert.truthy(res.error.message:find("balances.lua is a projection, not a decider", 1, true),
      res.error.message)

    for _, name in ipairs({ "..%2Fetc", "..", "%2Fetc%2Fpasswd", ".hidden", "account_spec" }) do
      status, res = post(name, "acct-1", '{"type":"Deposit","data":{"amount":1}}')
      assert.equal(400, status, name)
      assert.truthy(res.error.message:find("file name without .lua", 1, true))
    end
    assert.equal(2, #read("acct-1"))
  end)

  it("answers 422 with the traceback for a bug in the decider", function()
    local status, res = post("account", "acct-bug", '{"type":"Typo","data":{}}')
    assert.equal(422, status)
    assert.equal("script", res.error.kind)
    assert.truthy(res.error.message:find("decide failed for command Typo on stream acct-bug", 1, true))
    assert.truthy(res.error.message:find("account.lua:%d+: undefined global 'undefined_helper'"),
      res.error.message)
    assert.truthy(res.error.traceback:find("account.lua:%d+: in function"), res.error.traceback)
    assert.is_nil(res.error.traceback:find("tide runtime", 1, true))
    assert.same({}, read("acct-bug"))
  end)

  it("applies every one of 80 concurrent commands on one stream", function()
    local cmd = string.format(
      "for i in $(seq 10); do curl -s -o /dev/null -w '%%{http_code}\\n' -X POST --data-binary %s %s; done",
      q('{"type":"Deposit","data":{"amount":1}}'), q(base .. "/commands/account/acct-c"))
    local all = {}
    for i = 1, 8 do all[i] = "(" .. cmd .. ") >" .. q(dir .. "/../codes-" .. i) .. " &" end
    S.sh(table.concat(all, " ") .. " wait")
    local codes = {}
    for i = 1, 8 do
      for code in D.read(dir .. "/../codes-" .. i):gmatch("%d+") do
        codes[code] = (codes[code] or 0) + 1
      end
    end
    assert.same({ ["200"] = 80 }, codes)
    assert.same({ state = { balance = 80 }, version = 80 }, aggregate("account.lua", "acct-c"))
  end)

  it("stops a runaway decide at the CPU limit while the daemon goes on serving", function()
    local spin = dir .. "/../spin.out"
    S.sh(string.format("curl -s -w '\\n%%{http_code}' -X POST --data-binary %s %s >%s 2>&1 &",
      q('{"type":"Spin","data":{}}'), q(base .. "/commands/account/acct-spin"), q(spin)))
    S.sleep(0.3)
    -- Meanwhile the loop answers, other commands run, and the projections go on.
    local status, res = call("GET", "/processors")
    assert.equal(200, status)
    assert.truthy(res.processors)
    assert.equal(200, (post("account", "acct-other", '{"type":"Deposit","data":{"amount":4}}')))
    assert.equal(0, S.tide("append s-spin Added '{\"by\":2}' --database " .. q(url)).code)
    S.wait_for(function() return D.count(url, "totals WHERE id = 's-spin'") == 1 end, 20,
      "the projection to take the event")
    assert.equal("", D.read(spin), "the runaway command was still running")

    S.wait_for(function() return D.read(spin):find("\n%d+$") end, 20, "the runaway command's reply")
    local body, code = D.read(spin):match("^(.*)\n(%d+)$")
    assert.equal("422", code)
    res = S.json(body)
    assert.equal("script", res.error.kind)
    assert.truthy(res.error.message:find("decide failed for command Spin on stream acct-spin: " ..
      "script exceeded its CPU time limit of " .. CPU_MS .. " ms", 1, true), res.error.message)
    assert.same({}, read("acct-spin"))
    -- The next command is served, by the same decider.
    assert.equal(200, (post("account", "acct-spin", '{"type":"Deposit","data":{"amount":1}}')))
    assert.is_true(D.alive(pid))
  end)

  it("works in the partition given, folds from snapshots and runs inline projections", function()
    local status, res = post("account", "acct-p", '{"type":"Deposit","data":{"amount":9}}',
      "?partition=tenant-a")
    assert.equal(200, status)
    assert.equal(1, #read("acct-p", "--partition tenant-a"))
    assert.same({}, read("acct-p"))

    -- balances.lua is inline: the document is there as soon as the command answered.
    local doc = S.json(S.tide("doc balances acct-1 --database " .. q(url)).out)
    assert.same({ balance = 3 }, doc.doc)
    assert.equal(200, (post("account", "acct-1", '{"type":"Deposit","data":{"amount":10}}')))
    doc = S.json(S.tide("doc balances acct-1 --database " .. q(url)).out)
    assert.same({ balance = 13 }, doc.doc)
    -- A failing inline projection rolls the command's append back.
    status, res = post("account", "acct-1", '{"type":"Deposit","data":{"amount":13}}')
    assert.equal(422, status)
    assert.equal("script", res.error.kind)
    assert.equal("spec/balances", res.error.processor)
    assert.truthy(res.error.message:find("unlucky amount", 1, true), res.error.message)
    assert.equal(3, #read("acct-1"))

    -- The third command folds 2 events and saves them as a snapshot; the fourth starts there.
    for i = 1, 4 do
      status, res = post("counter", "count-1", '{"type":"Count","data":{}}', "?stats=true")
      assert.equal(200, status)
      assert.same({ n = i }, res.events[1].data)
      if i == 3 then assert.equal(2, res.stats.snapshot_saved) end
    end
    assert.equal(2, res.stats.snapshot_position)
    assert.equal(1, res.stats.events_read)
    assert.equal("2", S.psql(url, "SELECT max(stream_position) FROM tide_snapshots WHERE stream_id = 'count-1' AND decider = 'counter'"))
  end)

  it("uses a decider's new content from the next command on", function()
    S.save(dir .. "/account.lua", ACCOUNT:gsub('type = "Deposited"', 'type = "Credited"'))
    local status, res = post("account", "acct-new", '{"type":"Deposit","data":{"amount":1}}')
    assert.equal(200, status)
    assert.equal("Credited", res.events[1].type)
    S.save(dir .. "/account.lua", "return {")
    status, res = post("account", "acct-new", '{"type":"Deposit","data":{"amount":1}}')
    assert.equal(422, status)
    assert.equal("script", res.error.kind)
    assert.truthy(res.error.message:find("account.lua:1:", 1, true), res.error.message)
    assert.equal(1, #read("acct-new"))
    S.save(dir .. "/account.lua", ACCOUNT)
  end)

  it("connects again when the server ended a worker's connection between commands", function()
    assert.equal(200, (post("account", "acct-conn", '{"type":"Deposit","data":{"amount":1}}')))
    assert.truthy(tonumber(S.psql(url, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
      .. "WHERE application_name = 'tide command'")) >= 1)
    for _ = 1, 8 do
      local status, res = post("account", "acct-conn", '{"type":"Deposit","data":{"amount":1}}')
      assert.equal(200, status, res and res.error and res.error.message)
    end
    assert.same({ state = { balance = 9 }, version = 9 }, aggregate("account.lua", "acct-conn"))
  end)

  -- Last: it stops the daemon, which waits 2 s for the calls in flight, less than the
  -- runaway command takes: that command is answered 503, its outcome unknown.
  it("lets the daemon stop on SIGTERM while a command runs", function()
    local spin = dir .. "/../spin-stop.out"
    S.sh(string.format("curl -s -w '\\n%%{http_code}' -X POST --data-binary %s %s >%s 2>&1 &",
      q('{"type":"Spin","data":{}}'), q(base .. "/commands/account/acct-stop"), q(spin)))
    S.sleep(0.3)
    D.stop(pid)
    assert.truthy(D.read(log):find("event=daemon.stopped", 1, true), D.read(log))
    S.wait_for(function() return D.read(spin):find("\n%d+$") end, 10, "curl to end")
    local body, code = D.read(spin):match("^(.*)\n(%d+)$")
    assert.equal("503", code)
    local res = S.json(body)
    assert.equal("unknown", res.error.kind)
    assert.truthy(res.error.message:find("the daemon is stopping while the command runs", 1, true))
    assert.same({}, read("acct-stop"))
  end)
end)
