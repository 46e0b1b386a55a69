-- GET /metrics: `tide run --http` as a real process with a projection, a reactor and a
-- projection that fails; events appended over HTTP; the page scraped with curl and checked
-- value by value, linted by `promtool check metrics`, and scraped by a real Prometheus
-- server whose query API must give the same numbers.
local S = require "spec.support"
local D = require "spec.daemon"
local q = S.q

local why = S.missing()
if not why and S.sh("command -v promtool && command -v prometheus && command -v curl").code ~= 0 then
  why = "promtool, prometheus and curl are needed (Debian's prometheus and curl: scripts/setup)"
end

-- Counts every event in counted_events.
local COUNTED = [[
local tide = require "tide"
return tide.projection {
  setup = function(sql) sql:exec("CREATE TABLE IF NOT EXISTS counted_events (message_id text PRIMARY KEY)") end,
  handle = function(events, sql)
    for _, e in ipairs(events) do sql:exec("INSERT INTO counted_events VALUES ($1)", e.message_id) end
  end,
}
]]

-- A confirmed cart gets a notification event.
local NOTIFY = [[
local tide = require "tide"
return tide.reactor {
  events = { "Confirmed" },
  handle = function(e, ctx) ctx.append("notify-" .. e.stream_id, { { type = "Notified", data = {} } }) end,
}
]]

-- Fails on every Poison event: tried twice, then dead-lettered.
local PICKY = [[
local tide = require "tide"
return tide.projection {
  events = { "Poison" },
  on_error = "dead_letter", max_attempts = 2, backoff_ms = 10,
  handle = function(events, sql)
    for _, e in ipairs(events) do error("cannot digest " .. e.stream_id) end
  end,
}
]]

-- { status, body, content type } of a request to the daemon.
local function http(port, method, path, body, token)
  local r = S.sh(string.format("curl -sS -X %s -w '\\n%%{http_code} %%{content_type}' %s %s %s",
    method, token and ("-H " .. q("Authorization: Bearer " .. token)) or "",
    body and ("-H 'Content-Type: application/json' --data-binary " .. q(body)) or "",
    q("http://127.0.0.1:" .. port .. path)))
  assert(r.code == 0, "curl failed: " .. r.err)
  local text, code, ctype = r.out:match("^(.*)\n(%d+) ([^\n]*)$")
  return tonumber(code), text, ctype
end

-- The page's samples by series, as written: metric{labels} → value.
local function parse(text)
  local m = {}
  for line in text:gmatch("[^\n]+") do
    if not line:match("^#") then
      local series, value = line:match("^(.-) (%S+)$")
      assert(series, "not a sample line: " .. line)
      assert(m[series] == nil, "a series twice: " .. series)
      m[series] = tonumber(value)
    end
  end
  return m
end

local function scrape(port, token)
  local code, text, ctype = http(port, "GET", "/metrics", nil, token)
  assert.are.equal(200, code, text)
  return parse(text), text, ctype
end

-- Starts `tide run --http 127.0.0.1:0` on dir; returns the port it listens on.
local function start(url, dir, extra)
  local _, log = D.start(url, dir, "--poll-ms 200 " .. (extra or "--http 127.0.0.1:0"))
  return tonumber(S.wait_for(function()
    return D.read(log):match("event=http%.listening address=127%.0%.0%.1:(%d+)")
  end, 15, "the daemon's HTTP service"))
end

describe("GET /metrics", function()
  if why then
    it("needs the tide binary, PostgreSQL and Prometheus", function() pending(why) end)
    return
  end
  local url, dir, prometheus, release
  before_each(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
  end)
  after_each(function()
    if release then
      release()
      release = nil
    end
    if prometheus then
      os.execute("kill -9 " .. prometheus .. " 2>/dev/null")
      prometheus = nil
    end
    D.kill_all()
    S.drop_db(url)
    os.execute("rm -rf " .. q(dir))
  end)

  it("counts what the daemon did, per processor and per route, in a page promtool accepts", function()
    S.write(dir .. "/counted.lua", COUNTED)
    S.write(dir .. "/notify.lua", NOTIFY)
    S.write(dir .. "/picky.lua", PICKY)
    local port = start(url, dir)
    local two = [[{"events":[{"type":"Added","data":{"n":1}},{"type":"Confirmed","data":{}}]}]]
    assert.are.equal(200, (http(port, "POST", "/streams/cart-1", two)))
    assert.are.equal(200, (http(port, "POST", "/streams/cart-2",
      [[{"events":[{"type":"Poison","data":{}}],"expected":"no_stream"}]])))
    assert.are.equal(409, (http(port, "POST", "/streams/cart-1",
      [[{"events":[{"type":"Added","data":{}}],"expected":0}]])))
    assert.are.equal(400, (http(port, "POST", "/streams/cart-1", "{not json")))
    assert.are.equal(200, (http(port, "GET", "/streams/cart-1")))
    assert.are.equal(404, (http(port, "GET", "/no/such/route")))

    -- The reactor's notification makes 4 events; everything settles.
    local m = S.wait_for(function()
      local m = scrape(port)
      return (m['tide_processor_events_total{processor="spec/counted"}'] or 0) >= 4
        and (m['tide_processor_failed_events_total{processor="spec/picky"}'] or 0) >= 1
        and m['tide_processor_lag_events{processor="spec/counted"}'] == 0 and m
    end, 15, "the processors to settle")
    local appended = D.last_position(url)
    assert.are.equal(4, appended)
    local function of(name, id) return m[name .. '{processor="spec/' .. id .. '"}'] end

    -- Per processor: events handled (every one, and each once), batches, lag, state.
    assert.are.equal(appended, of("tide_processor_events_total", "counted"))
    assert.are.equal(appended, D.count(url, "counted_events"))
    assert.is_true(of("tide_processor_batches_total", "counted") > 0)
    assert.are.equal(of("tide_processor_batches_total", "counted") + of("tide_processor_failed_batches_total", "counted"),
      m['tide_processor_batch_duration_seconds_count{processor="spec/counted"}'])
    assert.are.equal(of("tide_processor_batch_duration_seconds_count", "counted"),
      m['tide_processor_batch_duration_seconds_bucket{processor="spec/counted",le="+Inf"}'])
    assert.are.equal(1, of("tide_processor_events_total", "notify")) -- its one Confirmed
    assert.are.equal(0, of("tide_processor_lag_seconds", "counted"))
    assert.are.equal(1, m['tide_processor_state{processor="spec/counted",state="running"}'])
    assert.are.equal(0, m['tide_processor_state{processor="spec/counted",state="failed"}'])
    -- The failing one: two failed tries (one a retry), then the event is dead-lettered.
    assert.are.equal(2, of("tide_processor_failed_batches_total", "picky"))
    assert.are.equal(1, of("tide_processor_retries_total", "picky"))
    assert.are.equal(1, of("tide_processor_failed_events_total", "picky"))
    assert.are.equal(1, of("tide_processor_dead_letters", "picky"))
    assert.are.equal(0, of("tide_processor_events_total", "picky"))
    assert.are.equal(0, of("tide_processor_failed_batches_total", "counted"))

    -- Per daemon: appends by source, the conflict, one latency per append sent.
    assert.are.equal(3, m['tide_appended_events_total{source="http"}'])
    assert.are.equal(1, m['tide_appended_events_total{source="reactor"}'])
    assert.are.equal(1, m['tide_append_conflicts_total{source="http"}'])
    assert.are.equal(3, m['tide_append_duration_seconds_count{source="http"}'])
    assert.are.equal(1, m['tide_append_duration_seconds_count{source="reactor"}'])
    assert.are.equal(0, m['tide_held_back_seconds'])
    assert.are.equal(0, m['tide_reconnects_total{connection="processor"}'])
    assert.are.equal(0, m['tide_reconnects_total{connection="wal"}'])
    assert.are.equal(1, m['tide_wal_stream_up']) -- it wakes by the WAL stream
    -- HTTP requests by route pattern and status code.
    assert.are.equal(2, m['tide_http_requests_total{method="POST",route="/streams/{id}",code="200"}'])
    assert.are.equal(1, m['tide_http_requests_total{method="POST",route="/streams/{id}",code="409"}'])
    assert.are.equal(1, m['tide_http_requests_total{method="POST",route="/streams/{id}",code="400"}'])
    assert.are.equal(1, m['tide_http_requests_total{method="GET",route="/streams/{id}",code="200"}'])
    assert.are.equal(1, m['tide_http_requests_total{method="GET",route="unmatched",code="404"}'])
    -- A scrape is counted once it has ended: the next page shows it.
    assert.is_true(scrape(port)['tide_http_requests_total{method="GET",route="/metrics",code="200"}'] >= 1)
    assert.are.equal(1, m['tide_build_info{version="0.1.0"}'])
    assert.is_true(math.abs(m.process_start_time_seconds - os.time()) < 60)

    -- A broken save and its fix are reloads; the daemon's view of them is counted.
    S.save(dir .. "/counted.lua", "return {")
    S.wait_for(function() return scrape(port)['tide_reloads_total{result="failed"}'] == 1 end, 10, "the failed reload")
    S.save(dir .. "/counted.lua", COUNTED .. "-- fixed\n")
    S.wait_for(function() return scrape(port)['tide_reloads_total{result="ok"}'] == 1 end, 10, "the reload")

    local _, text, ctype = scrape(port)
    assert.are.equal("text/plain; version=0.0.4; charset=utf-8", ctype)
    local file = dir .. "/metrics.txt"
    S.write(file, text)
    local lint = S.sh("promtool check metrics < " .. q(file))
    assert.are.equal(0, lint.code, lint.out .. lint.err)
    assert.are.equal("", lint.out .. lint.err)
  end)

  it("is scraped by Prometheus with a read token, labels escaped", function()
    S.write(dir .. "/counted.lua", COUNTED)
    local config = dir .. "/tide.conf.lua"
    S.write(config, string.format([=[
return {
  app = [[we"ird\app]],
  directories = { %q },
  http = { listen = "127.0.0.1:0", tokens = {
    { name = "prometheus", token = "scrape-token-0123456789", scopes = { "read" } },
    { name = "writer", token = "append-token-0123456789", scopes = { "append" } },
  } },
}
]=], dir))
    local port = start(url, dir, "--config " .. q(config))
    -- Scope read: no token is 401, a token without read 403.
    assert.are.equal(401, (http(port, "GET", "/metrics")))
    assert.are.equal(403, (http(port, "GET", "/metrics", nil, "append-token-0123456789")))
    assert.are.equal(200, (http(port, "POST", "/streams/s-1",
      [[{"events":[{"type":"A","data":{}},{"type":"B","data":{}}]}]], "append-token-0123456789")))
    local id = [[we\"ird\\app/counted]] -- as the page writes it
    S.wait_for(function()
      return scrape(port, "scrape-token-0123456789")['tide_processor_events_total{processor="' .. id .. '"}'] == 2
    end, 15, "the projection to handle both events")

    -- A writing transaction left open holds every processor back: the gauge says how long.
    local _
    _, release = S.hold_transaction(url)

    S.write(dir .. "/prometheus.yml", string.format([[
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: tide
    authorization:
      credentials: scrape-token-0123456789
    static_configs:
      - targets: ['127.0.0.1:%d']
]], port))
    -- A free port for its web API: a few random tries.
    local web
    for _ = 1, 5 do
      web = math.random(20000, 60000)
      prometheus = S.sh(string.format("prometheus --config.file=%s --storage.tsdb.path=%s --web.listen-address=127.0.0.1:%d >%s 2>&1 & echo $!",
        q(dir .. "/prometheus.yml"), q(dir .. "/tsdb"), web, q(dir .. "/prometheus.log"))).out:match("%d+")
      local up = S.wait_for(function()
        local log = D.read(dir .. "/prometheus.log")
        if log:find("Server is ready to receive web requests", 1, true) then return "up" end
        if not D.alive(prometheus) then return "gone" end
      end, 15, "Prometheus to start")
      if up == "up" then break end
      assert.is_truthy(D.read(dir .. "/prometheus.log"):find("address already in use", 1, true),
        D.read(dir .. "/prometheus.log"))
      prometheus = nil
    end
    assert.is_truthy(prometheus, "no free port for Prometheus")

    local function query(expr)
      local r = S.sh(string.format("curl -sS -G --data-urlencode %s http://127.0.0.1:%d/api/v1/query",
        q("query=" .. expr), web))
      assert(r.code == 0, r.err)
      local body = S.json(r.out)
      assert.are.equal("success", body.status, r.out)
      return body.data.result
    end
    local result = S.wait_for(function()
      local rows = query('tide_appended_events_total{source="http"}')
      return #rows == 1 and rows
    end, 15, "Prometheus to scrape the daemon")
    assert.are.equal("2", result[1].value[2])
    assert.are.equal("127.0.0.1:" .. port, result[1].metric.instance)
    local rows = query("tide_processor_events_total")
    assert.are.equal(1, #rows)
    assert.are.equal([[we"ird\app/counted]], rows[1].metric.processor)
    assert.are.equal("2", rows[1].value[2])
    local up = query('up{job="tide"}')
    assert.are.equal("1", up[1].value[2])
    local held = S.wait_for(function()
      local s = scrape(port, "scrape-token-0123456789").tide_held_back_seconds
      return s >= 5 and s
    end, 15, "the held-back gauge")
    assert.is_true(held < 60)
  end)
end)
