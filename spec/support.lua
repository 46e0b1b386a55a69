-- spec/support.lua — what the busted specs share: the tide binary, a fresh database per
-- test on the private PostgreSQL (TIDE_TEST_DATABASE_URL, started by scripts/test), psql,
-- JSON (through tide's own module, cJSON underneath), and waiting for a condition.
local M = {}

M.bin = os.getenv("TIDE_BIN")
M.admin_url = os.getenv("TIDE_TEST_DATABASE_URL")
M.build = os.getenv("TIDE_BUILD_DIR") or (M.bin and M.bin:match("^(.*)/[^/]+$"))
M.root = os.getenv("PWD")

package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
if M.build then package.cpath = M.build .. "/lua/?.so;" .. package.cpath end

-- Why a spec cannot run here, or nil.
function M.missing()
  if not M.bin then return "TIDE_BIN is not set (run the suite with scripts/test)" end
  if not M.admin_url then return "TIDE_TEST_DATABASE_URL is not set (run scripts/test)" end
  return nil
end

function M.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

local tmp_n = 0
function M.tmpname(suffix)
  tmp_n = tmp_n + 1
  return string.format("%s/tide-spec-%d-%d%s", os.getenv("TMPDIR") or "/tmp",
    math.random(1e9), tmp_n, suffix or "")
end

-- Runs a shell command; returns { code, out, err }.
function M.sh(cmd)
  local out, err, rc = M.tmpname(".out"), M.tmpname(".err"), M.tmpname(".rc")
  os.execute(string.format("(%s) >%s 2>%s </dev/null; echo $? >%s", cmd, out, err, rc))
  local r = { code = tonumber(slurp(rc)), out = slurp(out), err = slurp(err) }
  os.remove(out); os.remove(err); os.remove(rc)
  return r
end

-- Runs the tide binary with args (a string, already quoted) and optional env table.
function M.tide(args, env)
  -- env wants its -u options before the first assignment.
  local unset, set = "", ""
  for k, v in pairs(env or {}) do
    if v == false then
      unset = unset .. "-u " .. k .. " "
    else
      set = set .. k .. "=" .. M.q(v) .. " "
    end
  end
  local prefix = unset .. set
  return M.sh("env " .. prefix .. M.q(M.bin) .. " " .. args)
end

function M.url_for(db)
  return (M.admin_url:gsub("^postgresql:///[^?]*", "postgresql:///" .. db))
end

function M.psql(url, sql)
  local r = M.sh("psql -qAtX -v ON_ERROR_STOP=1 " .. M.q(url) .. " -c " .. M.q(sql))
  if r.code ~= 0 then error("psql failed: " .. r.err .. "\n" .. sql, 2) end
  return (r.out:gsub("%s+$", ""))
end

-- A fresh database, migrated unless raw; returns its URL.
function M.fresh_db(raw)
  local name = string.format("tide_spec_%d_%d", os.time() % 100000, math.random(1e9))
  M.psql(M.url_for("postgres"), "CREATE DATABASE " .. name)
  local url = M.url_for(name)
  if not raw then
    local r = M.tide("migrate --database " .. M.q(url))
    assert(r.code == 0, "migrate failed: " .. r.err)
  end
  return url
end

function M.drop_db(url)
  local name = url:match("^postgresql:///([^?]+)")
  M.psql(M.url_for("postgres"), "DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
end

local tide
function M.json(text)
  tide = tide or require "tide"
  local v, err = tide.json.decode(text)
  if v == nil then error("not JSON (" .. tostring(err) .. "): " .. text, 2) end
  return v
end

-- The JSON objects of a command's output, one per line.
function M.lines(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do out[#out + 1] = M.json(line) end
  return out
end

function M.sleep(s)
  os.execute("sleep " .. s)
end

-- Polls f() until it returns a truthy value or `seconds` pass; returns that value.
function M.wait_for(f, seconds, what)
  local deadline = os.time() + (seconds or 30)
  repeat
    local v = f()
    if v then return v end
    M.sleep(0.05)
  until os.time() > deadline
  error("timed out waiting for " .. (what or "a condition"), 2)
end

-- Opens a transaction that has written (it holds an xid) and stays open, from a psql in the
-- background; returns its backend pid and a function that ends it.
function M.hold_transaction(url)
  local psql_pid = M.sh("psql -qAtX " .. M.q(url) .. [[ -c "BEGIN; SELECT pg_current_xact_id() IS NOT NULL; SELECT pg_sleep(60);" >/dev/null 2>&1 & echo $!]]).out:match("%d+")
  local backend = M.wait_for(function()
    local b = M.psql(url, "SELECT pid FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND query LIKE '%pg_sleep(60)%'")
    return b ~= "" and b
  end, 10, "the open transaction")
  return backend, function()
    M.psql(url, "SELECT pg_terminate_backend(" .. backend .. ")")
    os.execute("kill " .. psql_pid .. " 2>/dev/null")
  end
end

function M.write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- Writes through a temporary file and a rename, as editors save.
function M.save(path, text)
  M.write(path .. ".tmp~", text)
  assert(os.rename(path .. ".tmp~", path))
end

function M.mkdtemp()
  local dir = M.tmpname(".d")
  assert(os.execute("mkdir -p " .. M.q(dir)) == 0 or true)
  return dir
end

math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)

return M
