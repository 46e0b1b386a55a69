-- The HTTP API of `tide run --http` (README "HTTP API"): appends, stream and global-log
-- reads, processors and documents against a real daemon and database; bad input gets a 400
-- and writes nothing; tokens and scopes; start-up (refusals, and clients knocking before the pool is up).
local S = require "spec.support"
local D = require "spec.daemon"
local H = require "spec.http"

local function events_of(url, stream)
  local r = S.tide("read " .. S.q(stream) .. " --database " .. S.q(url))
  assert.are.equal(0, r.code, r.err)
  return S.lines(r.out)
end

local COUNTS = [[
local tide = require "tide"
return tide.projection {
  collection = "counts",
  initial = function() return { n = 0 } end,
  evolve = function(doc, e) doc.n = doc.n + 1 doc.last = e.type return doc end,
}
]]

describe("the HTTP API", function()
  if S.missing() then return end
  local url, dir, base, pid, log
  setup(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
    S.write(dir .. "/counts.lua", COUNTS)
    base, pid, log = H.start(url, dir)
  end)
  teardown(function()
    D.kill_all()
    S.drop_db(url)
  end)

  it("appends events with the four expectations and answers what the CLI prints", function()
    local code, _, body = H.post(base .. "/streams/acc-1", [[{"events":[
      {"type":"Opened","data":{"owner":"ada","big":12345678901}},
      {"type":"Deposited","data":{"amount":10},"metadata":{"by":"http"}}],
      "expected":"no_stream"}]])
    assert.are.equal(200, code)
    assert.are.equal(2, body.next_expected_version)
    assert.are.equal(2, #body.global_positions)
    local stored = events_of(url, "acc-1")
    assert.are.equal(2, #stored)
    assert.are.equal("Opened", stored[1].type)
    assert.are.equal("ada", stored[1].data.owner)
    assert.are.equal(12345678901, stored[1].data.big)
    assert.are.equal("http", stored[2].metadata.by)
    assert.are.equal(body.global_positions[2], stored[2].global_position)

    code, _, body = H.post(base .. "/streams/acc-1",
      { events = { { type = "Deposited", data = { amount = 5 } } }, expected = 2 })
    assert.are.equal(200, code)
    assert.are.equal(3, body.next_expected_version)
    code = H.post(base .. "/streams/acc-1",
      { events = { { type = "Deposited", data = { amount = 5 } } }, expected = "stream_exists" })
    assert.are.equal(200, code)
    code = H.post(base .. "/streams/acc-1",
      { events = { { type = "Deposited", data = { amount = 5 } } }, expected = "any" })
    assert.are.equal(200, code)
    assert.are.equal(5, #events_of(url, "acc-1"))
  end)

  it("answers a violated expectation with 409, the version found, and writes nothing", function()
    local code, _, body = H.post(base .. "/streams/acc-2",
      { events = { { type = "Opened", data = { owner = "bob" } } }, expected = "no_stream" })
    assert.are.equal(200, code)
    code, _, body = H.post(base .. "/streams/acc-2",
      { events = { { type = "Opened", data = { owner = "eve" } } }, expected = "no_stream" })
    assert.are.equal(409, code)
    assert.are.equal("conflict", body.error.kind)
    assert.are.equal("no_stream", body.error.expected)
    assert.are.equal(1, body.error.actual)
    assert.truthy(body.error.message:find("expected no_stream", 1, true))
    code, _, body = H.post(base .. "/streams/nobody",
      { events = { { type = "X", data = { a = 1 } } }, expected = 3 })
    assert.are.equal(409, code)
    assert.are.equal(3, body.error.expected)
    assert.are.equal(require("tide").null, body.error.actual)
    code = H.post(base .. "/streams/nobody",
      { events = { { type = "X", data = { a = 1 } } }, expected = "stream_exists" })
    assert.are.equal(409, code)
    assert.are.equal(1, #events_of(url, "acc-2"))
    assert.are.equal(0, #events_of(url, "nobody"))
  end)

  it("refuses bad input with 400 and a message that says what is wrong, writing nothing", function()
    local cases = {
      { "not json", "not JSON" },
      { "[1]", "must be a JSON object" },
      { "{}", "\"events\" must be an array" },
      { [[{"events":[]}]], "one or more events" },
      { [[{"events":[{"type":"A","data":{}}],"extra":1}]], "unknown key \"extra\"" },
      { [[{"events":[{"data":{}}]}]], "events[0].type must be a string" },
      { [[{"events":[{"type":"A"}]}]], "events[0].data is missing" },
      { [[{"events":[{"type":"A","data":[1]}]}]], "events[0].data must be a JSON object" },
      { [[{"events":[{"type":"A","data":{},"metadata":"x"}]}]], "events[0].metadata must be a JSON object" },
      { [[{"events":[{"type":"A","data":{},"colour":1}]}]], "unknown key \"colour\"" },
      { [[{"events":[{"type":"A","data":{},"id":"nope"}]}]], "UUID" },
      { [[{"events":[{"type":"","data":{}}]}]], "the type of event 1 is empty" },
      { [[{"events":[{"type":"A","data":{}}],"expected":"sometimes"}]], "\"expected\" wants" },
      { [[{"events":[{"type":"A","data":{}}],"expected":-4}]], "\"expected\" wants" },
      { [[{"events":[{"type":"A","data":{}},{"type":"B","data":5}]}]], "events[1].data" },
    }
    for _, case in ipairs(cases) do
      local code, text, body = H.post(base .. "/streams/bad-1", case[1])
      assert.are.equal(400, code, case[1] .. " → " .. text)
      assert.are.equal("invalid", body.error.kind)
      assert.truthy(body.error.message:find(case[2], 1, true), case[1] .. " → " .. text)
    end
    local long = string.rep("s", 1025)
    local code, text = H.post(base .. "/streams/" .. long, { events = { { type = "A", data = { a = 1 } } } })
    assert.are.equal(400, code, text)
    assert.are.equal(0, D.scalar(url, "SELECT count(*) FROM emt_messages WHERE stream_id LIKE 'bad-%' OR length(stream_id) > 1000"))
  end)

  it("reads a stream with from, to, max and backward, ids percent-decoded", function()
    local stream = "order/7 ü"
    local path = base .. "/streams/" .. H.escape(stream)
    for i = 1, 5 do
      assert.are.equal(200, (H.post(path, { events = { { type = "Step", data = { i = i } } } })))
    end
    local code, _, body = H.get(path)
    assert.are.equal(200, code)
    assert.are.equal(5, #body.events)
    assert.are.equal(stream, body.events[1].stream_id)
    _, _, body = H.get(path .. "?from=2&to=4")
    assert.are.same({ 2, 3, 4 }, { body.events[1].data.i, body.events[2].data.i, body.events[3].data.i })
    _, _, body = H.get(path .. "?max=2&backward=true")
    assert.are.same({ 5, 4 }, { body.events[1].data.i, body.events[2].data.i })
    _, _, body = H.get(base .. "/streams/never-written")
    assert.are.same({}, body.events)
    local text
    code, text, body = H.get(path .. "?from=-1")
    assert.are.equal(400, code, text)
    assert.truthy(body.error.message:find("from wants a whole number", 1, true))
  end)

  it("pages through the global log with cursors, every event once", function()
    local all = {}
    local after = ""
    repeat
      local code, _, body = H.get(base .. "/log?max=3" .. after)
      assert.are.equal(200, code)
      for _, e in ipairs(body.events) do
        assert.is_nil(all[e.global_position], "an event twice")
        all[e.global_position] = e
        assert.are.equal(e.cursor, body.events[#body.events].cursor == e.cursor and body.next or e.cursor)
      end
      after = "&after=" .. body.next
    until #body.events == 0
    local n = 0
    for _ in pairs(all) do n = n + 1 end
    assert.are.equal(D.scalar(url, "SELECT count(*) FROM emt_messages"), n)
    local code, _, body = H.get(base .. "/log?after=nonsense")
    assert.are.equal(400, code)
    assert.truthy(body.error.message:find("XID:POS", 1, true))
  end)

  it("takes concurrent appends to one stream: all succeed with contiguous positions", function()
    local cmds = {}
    for w = 1, 6 do
      cmds[#cmds + 1] = string.format(
        "for i in $(seq 1 10); do curl -s -o /dev/null -w '%%{http_code}\\n' -X POST --data-binary '{\"events\":[{\"type\":\"Hit\",\"data\":{\"w\":%d}}]}' %s; done",
        w, S.q(base .. "/streams/hot"))
    end
    local r = S.sh("(" .. table.concat(cmds, ") & (") .. ") & wait")
    local codes = {}
    for c in r.out:gmatch("%d+") do codes[#codes + 1] = c end
    assert.are.equal(60, #codes)
    for _, c in ipairs(codes) do assert.are.equal("200", c) end
    local stored = events_of(url, "hot")
    assert.are.equal(60, #stored)
    for i, e in ipairs(stored) do assert.are.equal(i, e.stream_position) end
  end)

  it("works in the partition a request names", function()
    local code, _, body = H.post(base .. "/streams/t-1?partition=tenant_a",
      { events = { { type = "Opened", data = { who = "a" } } } })
    assert.are.equal(200, code)
    _, _, body = H.get(base .. "/streams/t-1?partition=tenant_a")
    assert.are.equal(1, #body.events)
    _, _, body = H.get(base .. "/streams/t-1")
    assert.are.equal(0, #body.events)
    assert.are.equal(1, D.scalar(url, "SELECT count(*) FROM emt_messages WHERE partition = 'tenant_a'"))
    code, _, body = H.get(base .. "/streams/t-1?partition=")
    assert.are.equal(400, code)
  end)

  it("shows the processors and their documents", function()
    S.wait_for(function()
      local _, _, body = H.get(base .. "/processors")
      local p = body and body.processors[1]
      return p and p.id == "spec/counts" and p.state == "running" and p.lag_events == 0
    end, 20, "the projection to catch up")
    local code, _, body = H.get(base .. "/processors")
    assert.are.equal(200, code)
    assert.are.equal("projection", body.processors[1].kind)
    assert.are.equal(require("tide").null, body.held_back_by)
    code, _, body = H.get(base .. "/documents/counts/acc-1")
    assert.are.equal(200, code)
    assert.are.equal(5, body.doc.n)
    assert.are.equal("acc-1", body.last_stream_id)
    code, _, body = H.get(base .. "/documents/counts/nobody")
    assert.are.equal(404, code)
    assert.are.equal("not_found", body.error.kind)
    code, _, body = H.get(base .. "/documents/counts?limit=2")
    assert.are.equal(200, code)
    assert.are.equal(2, #body.documents)
    local next_ = body.next
    code, _, body = H.get(base .. "/documents/counts?limit=1000&after=" .. H.escape(next_))
    assert.is_true(#body.documents >= 1)
    assert.is_true(body.documents[1].id > next_)
    code, _, body = H.get(base .. "/documents/counts?where=" .. H.escape('{"last":"Opened"}'))
    assert.are.equal(200, code)
    for _, d in ipairs(body.documents) do assert.are.equal("Opened", d.doc.last) end
    code, _, body = H.get(base .. "/documents/counts?where=" .. H.escape('[1]'))
    assert.are.equal(400, code)
  end)

  it("answers unknown routes with 404 and wrong methods with 405", function()
    local code, _, body = H.get(base .. "/nowhere")
    assert.are.equal(404, code)
    assert.are.equal("not_found", body.error.kind)
    code, _, body = H.request("DELETE", base .. "/streams/acc-1")
    assert.are.equal(405, code)
    code, _, body = H.get(base .. "/streams/a%zz")
    assert.are.equal(400, code)
    code = H.get(base .. "/streams/a%00b")
    assert.are.equal(400, code)
  end)

  it("serves HTTP/2 as well", function()
    local r = S.sh("curl -s --http2-prior-knowledge -o /dev/null -w '%{http_version} %{http_code}' " .. S.q(base .. "/streams/acc-1"))
    assert.are.equal("2 200", r.out)
  end)

  it("answers 503 while the database is unreachable and recovers by itself", function()
    -- Unreachable for real: new connections refused, the pool's own ended.
    local db = url:match("^postgresql:///([^?]+)")
    local admin = S.url_for("postgres")
    S.psql(admin, "ALTER DATABASE " .. db .. " ALLOW_CONNECTIONS false")
    finally(function() S.psql(admin, "ALTER DATABASE " .. db .. " ALLOW_CONNECTIONS true") end)
    S.psql(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'tide http'")
    local body = S.wait_for(function()
      local code, _, b = H.get(base .. "/streams/acc-1")
      return code == 503 and b
    end, 10, "a 503")
    assert.are.equal("connection", body.error.kind)
    S.psql(admin, "ALTER DATABASE " .. db .. " ALLOW_CONNECTIONS true")
    S.wait_for(function() return (H.get(base .. "/streams/acc-1")) == 200 end, 10, "the pool to reconnect")
  end)

  it("stops on SIGTERM with a client connection open", function()
    local hold = S.sh("(exec 3<>/dev/tcp/" .. base:match("//(.*):") .. "/" .. base:match(":(%d+)$") .. "; sleep 20) >/dev/null 2>&1 & echo $!").out:match("%d+")
    S.sleep(0.2)
    D.stop(pid)
    os.execute("kill " .. hold .. " 2>/dev/null")
    assert.truthy(D.read(log):find("event=daemon.stopped", 1, true))
  end)
end)

describe("HTTP tokens", function()
  if S.missing() then return end
  local url, dir, base, pid, log
  local READER, WRITER, ADMIN = "reader-secret-0123456789", "writer-secret-0123456789", "admin-secret-0123456789"
  setup(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
    local sha = S.sh("printf %s " .. S.q(ADMIN) .. " | sha256sum").out:match("%x+")
    S.write(dir .. "/tide.conf", string.format([[
return {
  app = "spec",
  http = {
    tokens = {
      { name = "reader", token = %q, scopes = { "read" } },
      { name = "writer", token = %q, scopes = { "append" } },
      { name = "ops", sha256 = %q, scopes = { "admin" } },
    },
  },
}]], READER, WRITER, sha))
    base, pid, log = H.start(url, dir, "--config " .. S.q(dir .. "/tide.conf"))
  end)
  teardown(function()
    D.kill_all()
    S.drop_db(url)
  end)

  local append = { events = { { type = "A", data = { x = 1 } } } }

  it("wants a known token: 401 without one or with a wrong one, nothing written", function()
    local code, _, body = H.post(base .. "/streams/s", append)
    assert.are.equal(401, code)
    assert.are.equal("unauthorized", body.error.kind)
    code = H.post(base .. "/streams/s", append, H.bearer("wrong-token-0123456789"))
    assert.are.equal(401, code)
    code = H.post(base .. "/streams/s", append, { Authorization = "Basic " .. WRITER })
    assert.are.equal(401, code)
    code = H.get(base .. "/log")
    assert.are.equal(401, code)
    assert.are.equal(0, D.scalar(url, "SELECT count(*) FROM emt_messages"))
  end)

  it("holds each token to its scopes: 403 and nothing written", function()
    local code, _, body = H.post(base .. "/streams/s", append, H.bearer(READER))
    assert.are.equal(403, code)
    assert.are.equal("forbidden", body.error.kind)
    assert.truthy(body.error.message:find("append scope", 1, true))
    assert.are.equal(0, D.scalar(url, "SELECT count(*) FROM emt_messages"))
    code = H.post(base .. "/streams/s", append, H.bearer(WRITER))
    assert.are.equal(200, code)
    code = H.get(base .. "/streams/s", H.bearer(WRITER))
    assert.are.equal(403, code)
    code, _, body = H.get(base .. "/streams/s", H.bearer(READER))
    assert.are.equal(200, code)
    assert.are.equal(1, #body.events)
    code = H.get(base .. "/log?access_token=" .. READER)
    assert.are.equal(200, code)
  end)

  it("lets an admin token (configured by its hash) do everything", function()
    assert.are.equal(200, (H.post(base .. "/streams/s", append, H.bearer(ADMIN))))
    assert.are.equal(200, (H.get(base .. "/processors", H.bearer(ADMIN))))
    assert.are.equal(2, D.scalar(url, "SELECT count(*) FROM emt_messages"))
  end)

  it("never writes a token into the log", function()
    D.stop(pid)
    local text = D.read(log)
    assert.truthy(text:find("tokens=3", 1, true))
    for _, secret in ipairs({ READER, WRITER, ADMIN }) do
      assert.is_nil(text:find(secret, 1, true))
    end
  end)
end)

describe("tide run --http at start-up", function()
  if S.missing() then return end
  local url, dir
  setup(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
  end)
  teardown(function()
    D.kill_all()
    S.drop_db(url)
  end)

  local function run(args)
    return S.tide("run --database " .. S.q(url) .. " " .. args .. " " .. S.q(dir))
  end

  it("refuses a non-loopback address without tokens unless --http-insecure", function()
    local r = run("--http 0.0.0.0:0")
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find("not a loopback address and no token is configured", 1, true), r.err)
    local base, pid = H.start(url, dir, "--http-insecure --http 0.0.0.0:0")
    assert.truthy(base)
    D.stop(pid)
  end)

  it("refuses bad addresses and bad token configurations, with a clear message", function()
    local r = run("--http localhost")
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find("HOST:PORT", 1, true), r.err)
    r = run("--http 127.0.0.1:99999")
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find("port", 1, true), r.err)
    local conf = dir .. "/bad.conf"
    S.write(conf, [[return { http = { listen = "127.0.0.1:0", tokens = { { token = "short", scopes = { "read" } } } } }]])
    r = run("--config " .. S.q(conf))
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find("at least 16 bytes", 1, true), r.err)
    assert.is_nil(r.err:find("short", 1, true) and r.err:find("\"short\"", 1, true))
    S.write(conf, [[return { http = { listen = "127.0.0.1:0", tokens = { { token = "long-enough-secret-123", scopes = { "write" } } } } }]])
    r = run("--config " .. S.q(conf))
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find("unknown scope", 1, true), r.err)
  end)

  it("refuses an address in use: exits 2 and says so", function()
    local base, pid = H.start(url, dir)
    local r = run("--http " .. base:match("//(.*)$"))
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find("cannot listen on", 1, true), r.err)
    D.stop(pid)
  end)

  it("answers a client knocking from the start once its database connections are up", function()
    -- The service listens before its pool has connected; a request then waits for it
    -- instead of getting 503 "the database is unreachable" (9 of 20 first answers were 503
    -- before, by hand).
    for round = 1, 5 do
      local port = 20000 + math.random(0, 19999)
      local pid, log = D.start(url, dir, "--http 127.0.0.1:" .. port)
      local r = S.sh("for k in $(seq 3000); do c=$(curl -s -o /dev/null -w '%{http_code}' "
        .. "http://127.0.0.1:" .. port .. "/processors); [ \"$c\" != 000 ] && break; done; echo $c")
      D.stop(pid)
      assert.are.equal("200", (r.out:gsub("%s+$", "")), "round " .. round .. ": " .. D.read(log))
    end
  end)
end)

describe("HTTP appends with the daemon's inline projections", function()
  if S.missing() then return end
  local url, dir, base
  local CARTS = [[
local tide = require "tide"
return tide.projection {
  inline = true,
  collection = "carts",
  events = { "Added" },
  initial = function() return { items = 0 } end,
  evolve = function(doc, e)
    if e.data.boom then error("boom: refusing " .. e.type) end
    doc.items = doc.items + e.data.n
    return doc
  end,
}
]]
  setup(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
    S.write(dir .. "/carts.lua", CARTS)
    base = H.start(url, dir)
    S.wait_for(function() return D.read(dir .. "/daemon-1.log"):find("daemon.inline_projections", 1, true) end,
      10, "the inline projection to be known")
  end)
  teardown(function()
    D.kill_all()
    S.drop_db(url)
  end)

  it("run them in the append's transaction: the document is there when the reply comes", function()
    for i = 1, 3 do
      local code, text = H.post(base .. "/streams/cart-1", { events = { { type = "Added", data = { n = i } } } })
      assert.are.equal(200, code, text)
      local _, _, doc = H.get(base .. "/documents/carts/cart-1")
      assert.are.equal(i * (i + 1) / 2, doc.doc.items)
    end
  end)

  it("answer a failing projection with 422, its processor and stack, and write nothing", function()
    local code, text, body = H.post(base .. "/streams/cart-1", { events = { { type = "Added", data = { n = 1, boom = true } } } })
    assert.are.equal(422, code, text)
    assert.are.equal("script", body.error.kind)
    assert.are.equal("spec/carts", body.error.processor)
    assert.truthy(body.error.message:find("boom: refusing Added", 1, true))
    assert.truthy(body.error.traceback:find("carts.lua", 1, true))
    assert.are.equal(3, D.scalar(url, "SELECT count(*) FROM emt_messages WHERE stream_id = 'cart-1'"))
    local _, _, doc = H.get(base .. "/documents/carts/cart-1")
    assert.are.equal(6, doc.doc.items)
  end)
end)
