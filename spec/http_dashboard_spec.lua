-- The dashboard at / (README "Dashboard") in headless Chromium against a real daemon: what
-- it shows as events flow and after a broken reload (live, on a page left open), a
-- held-back log, and a server with tokens. spec/browser.mjs drives Chromium; the
-- screenshots stay in build*/artifacts/.
local S = require "spec.support"
local D = require "spec.daemon"
local H = require "spec.http"

local function missing()
  if S.missing() then return S.missing() end
  if S.sh("command -v chromium && command -v node").code ~= 0 then
    return "chromium and node are needed (scripts/setup installs them)"
  end
end

local function artifact(name)
  local dir = S.build .. "/artifacts"
  os.execute("mkdir -p " .. S.q(dir))
  return dir .. "/" .. name
end

-- Opens page_url in Chromium (spec/browser.mjs) with one JavaScript condition per step.
-- step() waits for the next step's line: { ok, page = what the page shows, problems = its
-- script errors and console complaints }, failing the test when the condition never held.
local function browse(page_url, waits, screenshot, screenshot_step)
  local err = S.tmpname(".err")
  local cmd = { "node spec/browser.mjs", S.q(page_url), "--timeout 20" }
  for _, w in ipairs(waits) do cmd[#cmd + 1] = "--wait " .. S.q(w) end
  if screenshot then cmd[#cmd + 1] = "--screenshot " .. S.q(screenshot) end
  if screenshot_step then cmd[#cmd + 1] = "--screenshot-step " .. screenshot_step end
  local p = assert(io.popen(table.concat(cmd, " ") .. " 2>" .. S.q(err)))
  local b = {}
  function b.step()
    local line = p:read("*l")
    if not line then
      p:close()
      error("the browser ended early: " .. D.read(err), 2)
    end
    local r = S.json(line)
    if not r.ok then
      p:close()
      error("timed out waiting for step " .. r.step .. ": " .. waits[r.step] .. "\nthe page: " .. line, 2)
    end
    assert.are.same({}, r.problems)
    return r.page
  end
  function b.close()
    p:read("*a")
    p:close()
    os.remove(err)
  end
  return b
end

-- A JavaScript condition: the processor's row exists and cond (an expression over `r`,
-- the row, and `cell(name)`, a cell's text) holds.
local function row_where(id, cond)
  return string.format([[(() => {
    const r = document.querySelector('#processors tbody tr[data-id=%q]');
    if (!r) return false;
    const cell = (c) => (r.querySelector('.' + c) || {}).textContent || '';
    return %s; })()]], id, cond)
end

local function activity_has(event)
  return string.format("document.querySelector('#activity li[data-event=%q]') !== null", event)
end

local function tide_json(v) return require("tide").json.encode(v) end

local function find(list, pred)
  for _, v in ipairs(list) do
    if pred(v) then return v end
  end
end

local function row(page, id)
  return find(page.processors, function(p) return p.id == id end)
end

describe("the dashboard", function()
  local why = missing()
  if why then
    pending(why)
    return
  end

  local url
  before_each(function() url = S.fresh_db() end)
  after_each(function()
    D.kill_all()
    S.drop_db(url)
  end)

  it("shows the processors as events flow, then a broken reload, live", function()
    local dir = S.mkdtemp()
    local script = dir .. "/totals.lua"
    S.write(script, D.TOTALS)
    local base, pid, log = H.start(url, dir)
    D.load_events(url, 40, 4)
    D.caught_up(url, "totals")
    local first = D.last_position(url)

    local shot = artifact("dashboard.png")
    os.remove(shot)
    local b = browse(base .. "/", {
      row_where("spec/totals", string.format(
        "cell('state') === 'running' && cell('checkpoint').endsWith(':%d') && cell('lag-events') === '0'", first)),
      row_where("spec/totals", string.format(
        "Number(cell('checkpoint').split(':')[1]) > %d && cell('lag-events') === '0' && " ..
        "r.querySelector('polyline').getAttribute('points').split(' ').length >= 2", first)),
      activity_has("processor.reload_failed") .. " && " ..
        row_where("spec/totals", "cell('error').includes('totals.lua')"),
      "document.getElementById('connection').textContent.includes('daemon stopped')",
    }, shot, 3)

    -- Caught up: running, at the last event, no lag, no error; the load is in the activity.
    local page = b.step()
    assert.are.equal("tide", page.title)
    assert.are.same({ "Processor", "Kind", "State", "Checkpoint", "Lag (events)", "Lag (seconds)",
      "Rate (events/s)", "Dead letters", "Last error" }, page.headers)
    local p = row(page, "spec/totals")
    assert.are.equal("projection", p.kind)
    assert.are.equal("0", p.dead_letters)
    assert.are.equal("none", p.last_error)
    assert.are.equal("live", page.connection)
    local loaded = find(page.activity, function(a) return a.event == "processor.loaded" end)
    assert.truthy(loaded, "the activity replays the load")
    assert.are.equal("spec/totals", loaded.processor)

    -- More events, with the page open: the checkpoint follows, the sparkline shows the burst.
    D.load_events(url, 60, 4)
    page = b.step()
    D.caught_up(url, "totals")
    p = row(page, "spec/totals")
    assert.are.equal(tostring(D.last_position(url)), p.checkpoint:match(":(%d+)$"))
    assert.is_true(p.sparkline_points >= 2)
    assert.is_true(p.sparkline_peak > 0, "the sparkline rose with the burst: " .. tide_json(p))

    -- A syntax error saved: the reload fails, the old generation keeps running, the page
    -- shows the error in the row and in the activity.
    S.save(script, "local tide = require 'tide'\nreturn tide.projection {\n  handle = function(events, sql)\n")
    page = b.step()
    p = row(page, "spec/totals")
    assert.are.equal("running", p.state)
    assert.truthy(p.last_error:find("totals.lua", 1, true), p.last_error)
    local failed = find(page.activity, function(a) return a.event == "processor.reload_failed" end)
    assert.are.equal("spec/totals", failed.processor)
    assert.are.equal("error", failed.level)
    assert.truthy(failed.text:find("totals.lua:4", 1, true), failed.text)
    assert.truthy(failed.text:find("the running generation keeps serving", 1, true), failed.text)

    -- The daemon stops with the page open: its stream ends with a last word the page shows.
    D.stop(pid)
    assert.truthy(D.read(log):find("event=daemon.stopped", 1, true))
    page = b.step()
    assert.truthy(page.connection:find("reconnecting", 1, true), page.connection)
    b.close()

    local f = assert(io.open(shot, "rb"), "the screenshot " .. shot)
    assert.are.equal("\137PNG", f:read(4))
    f:close()
    print("\n# the dashboard's screenshot: " .. shot)
  end)

  it("asks for a token, takes one from the fragment, and warns of a held-back log", function()
    local READER, WRITER = "reader-secret-0123456789", "writer-secret-0123456789"
    local backend, release = S.hold_transaction(url)
    local dir = S.mkdtemp()
    S.write(dir .. "/totals.lua", D.TOTALS)
    S.write(dir .. "/tide.conf", string.format([[
return {
  app = "spec",
  http = { tokens = {
    { name = "reader", token = %q, scopes = { "read" } },
    { name = "writer", token = %q, scopes = { "append" } },
  } },
}]], READER, WRITER))
    local base, pid, log = H.start(url, dir, "--config " .. S.q(dir .. "/tide.conf"))

    -- The page is public (it holds no data); its stream is not.
    local code, text = H.get(base .. "/")
    assert.are.equal(200, code)
    assert.truthy(text:find("<table id=\"processors\"", 1, true))
    local headers = S.sh("curl -s -D - -o /dev/null " .. S.q(base .. "/")).out:lower()
    assert.truthy(headers:find("content-type: text/html; charset=utf-8", 1, true), headers)
    -- Only the page's own script and style run (by hash), and it talks to this server only.
    assert.truthy(headers:find("content-security-policy: default-src 'none'; script-src 'sha256-", 1, true), headers)
    assert.truthy(headers:find("connect-src 'self'", 1, true), headers)
    assert.is_nil(headers:find("unsafe", 1, true), headers)
    local body
    code, _, body = H.get(base .. "/live")
    assert.are.equal(401, code)
    assert.are.equal("unauthorized", body.error.kind)
    code = H.get(base .. "/live?access_token=" .. WRITER)
    assert.are.equal(403, code)

    -- Without a token the page says why and asks for one.
    local b = browse(base .. "/", { "!document.getElementById('token-form').hidden" })
    local page = b.step()
    b.close()
    assert.are.equal("not allowed", page.connection)
    assert.truthy(page.token_why:find("bearer token", 1, true), page.token_why)
    assert.are.equal(0, #page.processors)

    -- With #token=: the data, the token gone from the address, and the held-back warning.
    local shot = artifact("dashboard-held-back.png")
    b = browse(base .. "/#token=" .. READER, {
      row_where("spec/totals", "cell('state') === 'running'") ..
        " && !document.getElementById('held-back').hidden && " .. activity_has("log.held_back"),
    }, shot)
    page = b.step()
    b.close()
    release()
    assert.is_nil(page.location:find(READER, 1, true), page.location)
    assert.is_false(page.token_form)
    assert.truthy(page.held_back:find("backend " .. backend, 1, true), page.held_back)
    assert.truthy(page.held_back:find("reaches any processor until it ends", 1, true), page.held_back)
    local held = find(page.activity, function(a) return a.event == "log.held_back" end)
    assert.are.equal("warn", held.level)
    assert.truthy(held.text:find("backend_pid=" .. backend, 1, true), held.text)

    D.stop(pid)
    local logged = D.read(log)
    assert.is_nil(logged:find(READER, 1, true))
    assert.is_nil(logged:find(WRITER, 1, true))
  end)
end)
