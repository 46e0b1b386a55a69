-- spec/http.lua — what the specs of the HTTP service share: a daemon started with
-- `--http 127.0.0.1:0` (the port it picked read off its log), and requests made with curl.
local S = require "spec.support"
local D = require "spec.daemon"
local q = S.q

local H = {}

-- Starts `tide run DIR --http 127.0.0.1:0 EXTRA`; returns the base URL, pid and log path.
function H.start(url, dir, extra)
  local pid, log = D.start(url, dir, "--http 127.0.0.1:0 " .. (extra or ""))
  local address = S.wait_for(function()
    return D.read(log):match("event=http%.listening address=(%S+)")
  end, 15, "the daemon's HTTP server (" .. log .. ")")
  return "http://" .. address, pid, log
end

-- One request: method, URL, optional body (a string or a table, sent as JSON) and headers
-- ({ ["Authorization"] = "Bearer X" }). Returns the status, the body, and the body decoded
-- when it is JSON (else nil).
function H.request(method, url, body, headers)
  local args = { "curl -s -o - -w '\\n%{http_code}' -X " .. method }
  for k, v in pairs(headers or {}) do args[#args + 1] = "-H " .. q(k .. ": " .. v) end
  local file
  if body ~= nil then
    file = S.tmpname(".body")
    S.write(file, type(body) == "table" and require("tide").json.encode(body) or body)
    args[#args + 1] = "--data-binary @" .. q(file)
  end
  args[#args + 1] = q(url)
  local r = S.sh(table.concat(args, " "))
  if file then os.remove(file) end
  local text, code = r.out:match("^(.*)\n(%d+)$")
  assert(code, "curl failed: " .. r.err .. r.out)
  local ok, decoded = pcall(S.json, text)
  return tonumber(code), text, ok and decoded or nil
end

function H.get(url, headers) return H.request("GET", url, nil, headers) end
function H.post(url, body, headers) return H.request("POST", url, body, headers) end

-- A bearer token header.
function H.bearer(token) return { Authorization = "Bearer " .. token } end

-- Percent-encodes a path segment or query value.
function H.escape(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

return H
