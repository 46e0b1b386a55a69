-- Scripts' SQL and the database's privileges: a processor's SQL is a way around the Lua
-- sandbox when the daemon connects as a superuser. `tide run` says so, and with sql_role it
-- runs every batch's script SQL under a role the operator chose (SET LOCAL ROLE), refusing a
-- batch whose script switched the role back.
local S = require "spec.support"
local D = require "spec.daemon"
local q = S.q

local why = S.missing()

local function processor(body)
  return string.format([[
local tide = require "tide"
return tide.projection {
  max_attempts = 1, backoff_ms = 10,
  handle = function(events, sql)
    %s
  end,
}
]], body)
end

describe("tide run and the database's privileges", function()
  if why then
    it("needs the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local url, dir, role
  before_each(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
    role = string.format("tide_scripts_%d", math.random(1e9))
    S.psql(url, "CREATE ROLE " .. role .. " NOLOGIN")
    S.psql(url, "GRANT USAGE, CREATE ON SCHEMA public TO " .. role)
  end)
  after_each(function()
    D.kill_all()
    if url then S.drop_db(url) end
    S.psql(S.url_for("postgres"), "DROP ROLE IF EXISTS " .. role)
  end)

  it("warns when scripts' SQL would run as a superuser", function()
    S.write(dir .. "/seen.lua", D.seen_script("a"))
    local pid, log = D.start(url, dir)
    S.wait_for(function() return D.read(log):find("event=daemon.superuser", 1, true) end, 10, "the warning")
    assert.truthy(D.read(log):find("COPY ... TO PROGRAM", 1, true), D.read(log))
    assert.truthy(D.read(log):find("sql_role", 1, true))
    D.stop(pid)
  end)

  it("runs scripts' SQL as sql_role: server files and programs are out of reach, a role switch is refused", function()
    local victim = S.tmpname(".pwned")
    S.write(dir .. "/ok.lua", processor([[
    sql:exec("CREATE TABLE IF NOT EXISTS ok_rows (pos bigint PRIMARY KEY, who text)")
    for _, e in ipairs(events) do sql:exec("INSERT INTO ok_rows VALUES ($1, current_user)", e.global_position) end]]))
    S.write(dir .. "/reader.lua", processor([[local rows = sql:query("SELECT pg_read_file('/etc/hostname') AS f")]]))
    S.write(dir .. "/program.lua", processor(string.format([[sql:exec("COPY (SELECT 1) TO PROGRAM 'touch %s'")]], victim)))
    S.write(dir .. "/escape.lua", processor([[
    sql:exec("RESET ROLE")
    sql:exec("CREATE TABLE IF NOT EXISTS escaped (x int)")]]))
    for i = 1, 2 do S.tide("append r-" .. i .. " T '{}' --database " .. q(url)) end
    local pid, log = D.start(url, dir, "--sql-role " .. role)
    for _, id in ipairs({ "ok", "reader", "program", "escape" }) do D.caught_up(url, id, 30) end
    assert.are.equal("2|" .. role, S.psql(url, "SELECT count(*) || '|' || min(who) FROM ok_rows"))
    local parked = {}
    for _, row in ipairs(S.lines(S.tide("dlq list --json --database " .. q(url)).out)) do
      local name = row.processor:gsub("^spec/", "")
      parked[name] = (parked[name] or 0) + 1
      local expected = ({ escape = "changed the role", reader = "permission denied",
                          program = "pg_execute_server_program" })[name]
      assert.truthy(row.last_error:find(expected, 1, true), row.last_error)
    end
    assert.are.same({ reader = 2, program = 2, escape = 2 }, parked)
    assert.is_nil(io.open(victim), "a script ran a program on the server")
    assert.are.equal("", S.psql(url, "SELECT to_regclass('escaped')::text"))
    -- Connected as a superuser, it still says that only a non-superuser login is airtight.
    assert.truthy(D.read(log):find("event=daemon.superuser sql_role=" .. role, 1, true), D.read(log))
    D.stop(pid)
  end)

  it("refuses an sql_role it cannot use, and says why", function()
    S.write(dir .. "/seen.lua", D.seen_script("a"))
    -- It gives up by itself, with the configuration's exit code (its processors were
    -- connecting meanwhile: it once closed its handles twice then, and aborted).
    local gave_up = S.tide("run " .. q(dir) .. " --app " .. D.APP .. " --sql-role no_such_role_here --database " .. q(url))
    assert.are.equal(2, gave_up.code, gave_up.err)
    assert.truthy(gave_up.err:find("event=daemon.sql_role_unusable sql_role=no_such_role_here", 1, true), gave_up.err)
    assert.truthy(gave_up.err:find("event=daemon.stopped", 1, true), gave_up.err)
    local r = S.tide("run --sql-role '' " .. q(dir) .. " --database " .. q(url))
    assert.are.equal(2, r.code)
    assert.truthy(r.err:find("--sql-role wants a role name", 1, true), r.err)
  end)
end)
