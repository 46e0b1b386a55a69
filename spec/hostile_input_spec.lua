-- Hostile input against the real CLI and the real Lua module (`require "tide"`), a fresh
-- database per test: what tide refuses gets exit 2 / err.kind "invalid", one clear line,
-- and writes nothing; what it accepts comes back byte for byte through every path. The
-- limits are those of tide.h: names 1024 bytes, partitions 41, events 16 MiB, JSON 128 deep.
local S = require "spec.support"
local q = S.q
local tide = require "tide"

local MAX_DEPTH = 128
local MiB = 1024 * 1024

-- Things a name or a string in data must survive: quotes, backslashes, SQL, placeholders,
-- format directives, control characters, unicode and emoji.
local NASTY = {
  "it's", 'say "hi"', "back\\slash\\", "'; DROP TABLE emt_messages; --", "$1", "$1::text",
  "%s%n%d", "tab\there, line\nbreak", "ünïcödé", "日本語", "emoji 😀🎉", "a-b-c", "{\"json\":1}",
}

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- A SQL expression for the exact bytes of s, whatever they are.
local function lit(s)
  return "convert_from(decode('" .. hex(s) .. "', 'hex'), 'UTF8')"
end

-- Emmett's (and tide's) table name for a partition: every character outside
-- [A-Za-z0-9_] becomes one '_' (PostgreSQL's regexp_replace works on characters).
local function sanitized(p)
  return (p:gsub("[%z\1-\127\194-\244][\128-\191]*", function(c)
    return c:match("^[A-Za-z0-9_]$") and c or "_"
  end))
end

local function nested(n, inner)
  return ('{"a":'):rep(n) .. (inner or "1") .. ("}"):rep(n)
end

local function nested_table(n)
  local root = {}
  local t = root
  for _ = 2, n do
    t.a = {}
    t = t.a
  end
  t.a = 1
  return root
end

local function depth_of(v)
  local n = 0
  while type(v) == "table" do
    n = n + 1
    v = v.a
  end
  return n, v
end

-- The peak resident memory of this process so far, in KiB.
local function peak_kb()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmHWM:%s*(%d+)"))
end

describe("hostile input", function()
  local why = S.missing()
  if why or not S.build then
    it("needs the tide binary, the module and PostgreSQL", function() pending(why or "TIDE_BUILD_DIR is not set") end)
    return
  end

  local url, store
  before_each(function()
    url = S.fresh_db()
    store = assert(tide.connect(url))
  end)
  after_each(function()
    if store then store:close() end
    if url then S.drop_db(url) end
    url, store = nil, nil
  end)

  local function tide_cli(args)
    return S.tide(args .. " --database " .. q(url))
  end

  -- Runs `tide append STREAM TYPE - ...` with stdin from a file holding text.
  local function append_stdin(stream, typ, text, extra)
    local file = S.tmpname(".json")
    S.write(file, text)
    local r = S.sh(q(S.bin) .. " append " .. q(stream) .. " " .. q(typ) .. " - " .. (extra or "")
      .. " --database " .. q(url) .. " <" .. q(file))
    os.remove(file)
    return r
  end

  local function rows()
    return S.psql(url, "SELECT (SELECT count(*) FROM emt_messages) || '/' || (SELECT count(*) FROM emt_streams)")
  end

  local function refused_by_cli(r, fragment)
    assert.are.equal(2, r.code, r.err)
    assert.truthy(r.err:find(fragment, 1, true), r.err)
    local _, lines = r.err:gsub("\n", "")
    assert.are.equal(1, lines, r.err)
    assert.are.equal("", r.out)
    assert.are.equal("0/0", rows())
  end

  local function refused_by_lua(res, err, fragment)
    assert.is_nil(res)
    assert.is_table(err)
    assert.are.equal("invalid", err.kind, tostring(err.message))
    assert.truthy(err.message:find(fragment, 1, true), err.message)
    assert.falsy(err.message:find("\n", 1, true), err.message)
    assert.are.equal("0/0", rows())
  end

  it("tide append --help says DATA_JSON may be - (stdin) and gives the limits", function()
    local r = S.tide("append --help")
    assert.are.equal(0, r.code)
    assert.truthy(r.out:find("DATA_JSON is a JSON object, or - to read it from stdin", 1, true), r.out)
    assert.truthy(r.out:find("STREAM and TYPE 1 to 1024 bytes of UTF-8, P 1 to 41", 1, true), r.out)
    assert.truthy(r.out:find("at most 16 MiB of JSON, nested at most 128 deep", 1, true), r.out)
  end)

  describe("the CLI refuses with exit 2, one line, nothing written:", function()
    local long = ("s"):rep(1025)
    local cases = {
      { "\\u0000 in data", "append s-1 T " .. q('{"a":"x\\u0000y"}'), "DATA_JSON contains \\u0000 at byte 8" },
      { "\\u0000 in a key", "append s-1 T " .. q('{"\\u0000":1}'), "DATA_JSON contains \\u0000 at byte 3" },
      { "\\u0000 in metadata", "append s-1 T '{}' --metadata " .. q('{"m":"\\u0000"}'), "--metadata contains \\u0000" },
      { "invalid UTF-8 in data", "append s-1 T " .. q('{"a":"\255\254"}'), "DATA_JSON is not valid UTF-8 at byte 7" },
      { "UTF-8 of a surrogate in data", "append s-1 T " .. q('{"a":"\237\160\128"}'), "DATA_JSON is not valid UTF-8" },
      { "invalid UTF-8 in the type", "append s-1 " .. q("Type\192") .. " '{}'", "the event type is not valid UTF-8 (at byte 5)" },
      { "invalid UTF-8 in the stream name", "append " .. q("s-\255") .. " T '{}'", "the stream name is not valid UTF-8 (at byte 3)" },
      { "a lone surrogate", "append s-1 T " .. q('{"a":"\\ud800"}'), "unpaired surrogate \\ud800" },
      { "a lone low surrogate", "append s-1 T " .. q('{"a":"\\udc00x"}'), "unpaired surrogate \\udc00" },
      { "trailing garbage", "append s-1 T " .. q('{"a":1} x'), "unexpected text after the object at byte 9: x" },
      { "a second object", "append s-1 T " .. q('{"a":1}{"b":2}'), "unexpected text after the object" },
      { "1e400", "append s-1 T " .. q('{"a":1e400}'), "number out of range at byte 6: 1e400 is too large for a double" },
      { "-1e400 in metadata", "append s-1 T '{}' --metadata " .. q('{"a":[-1e400]}'), "--metadata has a number out of range" },
      { "1e-400", "append s-1 T " .. q('{"a":1e-400}'), "1e-400 is too small for a double" },
      { "more digits than numeric keeps", "append s-1 T " .. q('{"a":1e-20000}'), "more than 16383 digits after the decimal point" },
      { "a raw newline in a string", "append s-1 T " .. q('{"a":"x\ny"}'), "control character 0x0a inside a string at byte 8" },
      { "a leading zero", "append s-1 T " .. q('{"a":01}'), "unexpected '1' at byte 7" },
      { "a 1,025-byte stream name", "append " .. long .. " T '{}'", "the stream name is 1025 bytes long; at most 1024 are allowed" },
      { "a 1,025-byte type", "append s-1 " .. long .. " '{}'", "the event type is 1025 bytes long; at most 1024" },
      { "a 1,025-byte stream name to read", "read " .. long, "the stream name is 1025 bytes long" },
      { "invalid UTF-8 in a stream name to read", "read " .. q("\255"), "the stream name is not valid UTF-8" },
      { "a 42-byte partition", "append s-1 T '{}' --partition " .. ("p"):rep(42), "--partition wants at most 41 bytes" },
      { "a 42-byte partition to read", "read s-1 --partition " .. ("p"):rep(42), "--partition wants at most 41 bytes" },
      { "an empty partition", "append s-1 T '{}' --partition ''", "--partition wants a name: the partition name is empty" },
      { "invalid UTF-8 in a partition", "append s-1 T '{}' --partition " .. q("t\233"), "the partition name is not valid UTF-8" },
      { "nesting one deeper than the limit", "append s-1 T " .. q(nested(MAX_DEPTH + 1)), "DATA_JSON is nested too deeply: more than 128 levels" },
      { "nesting 10,000 deep", "append s-1 T " .. q(nested(10000)), "nested too deeply" },
      { "arrays 10,000 deep", "append s-1 T " .. q('{"a":' .. ("["):rep(10000) .. ("]"):rep(10000) .. "}"), "nested too deeply" },
      { "SQL through --id", "append s-1 T '{}' --id " .. q("'; DROP TABLE emt_messages; --"), "--id wants a UUID" },
      { "a newline in an echoed argument", "append s-1 T '{}' --expected " .. q("1\n2"), "--expected wants" },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        refused_by_cli(tide_cli(c[2]), c[3])
      end)
    end

    it("a NUL byte in data from stdin", function()
      refused_by_cli(append_stdin("s-1", "T", '{"a":"x\0y"}'), "DATA_JSON contains a NUL byte at byte 8")
    end)

    it("nesting 10,000 deep from stdin", function()
      refused_by_cli(append_stdin("s-1", "T", nested(10000)), "nested too deeply")
    end)

    it("an event over 16 MiB with its metadata", function()
      local data = '{"a":"' .. ("x"):rep(16 * MiB - 30) .. '"}'
      refused_by_cli(append_stdin("s-1", "T", data, "--metadata " .. q('{"m":"' .. ("y"):rep(40) .. '"}')),
        "the event is too large")
    end)

    it("a 100 MB payload from stdin, reading no more of it than the limit", function()
      local time = io.open("/usr/bin/time") and "/usr/bin/time -f 'maxrss_kb=%M' " or ""
      -- The writer dies of SIGPIPE once tide stops reading: keep its complaints out.
      local r = S.sh("{ printf '{\"a\":\"'; head -c 100000000 /dev/zero | tr '\\0' x; printf '\"}'; } 2>/dev/null | "
        .. time .. q(S.bin) .. " append huge-1 T - --database " .. q(url))
      local rss = tonumber(r.err:match("maxrss_kb=(%d+)"))
      r.err = r.err:gsub("maxrss_kb=%d+\n", ""):gsub("Command exited with non%-zero status %d+\n", "")
      refused_by_cli(r, "the event is too large: DATA_JSON from stdin and --metadata are more than 16777216 bytes")
      if time == "" then
        pending("/usr/bin/time is missing (Debian package `time`): the memory bound is not measured")
      elseif os.getenv("TIDE_SANITIZER_DIR") then
        -- ASan's shadow memory and quarantine inflate RSS: the plain build measures the bound.
        assert.is_true(rss < 256 * 1024, "tide used " .. tostring(rss) .. " KiB reading 100 MB")
      else
        assert.is_true(rss < 64 * 1024, "tide used " .. tostring(rss) .. " KiB reading 100 MB")
      end
    end)
  end)

  describe("the Lua module returns nil, err (kind invalid), nothing written, for", function()
    local cases = {
      { "a NUL byte in a data string", "s-1", { type = "T", data = { a = "x\0y" } }, "event 1 data.a: string contains a NUL byte" },
      { "a NUL byte in a data key", "s-1", { type = "T", data = { ["k\0"] = 1 } }, "event 1 data: a key: string contains a NUL byte" },
      { "invalid UTF-8 in data", "s-1", { type = "T", data = { list = { "ok", "\255" } } }, "event 1 data.list[2]: string is not valid UTF-8" },
      { "a surrogate (as UTF-8) in data", "s-1", { type = "T", data = { a = "\237\160\128" } }, "string is not valid UTF-8" },
      { "invalid UTF-8 in metadata", "s-1", { type = "T", data = {}, metadata = { m = "\192" } }, "event 1 metadata.m: string is not valid UTF-8" },
      { "invalid UTF-8 in the type", "s-1", { type = "T\255", data = {} }, "the type of event 1 is not valid UTF-8 (at byte 2)" },
      { "a NUL byte in the type", "s-1", { type = "Good\0Bad", data = {} }, "the type of event 1 contains a NUL byte (at byte 5)" },
      { "an empty type", "s-1", { type = "", data = {} }, "the type of event 1 is empty" },
      { "a 1,025-byte type", "s-1", { type = ("t"):rep(1025), data = {} }, "the type of event 1 is 1025 bytes long" },
      { "a NUL byte in the message id", "s-1", { type = "T", data = {}, id = "3f2504e0-4f89-41d3-9a0c-0305e82c3301\0junk" }, "the message id of event 1 contains a NUL byte (at byte 37)" },
      { "SQL as the message id", "s-1", { type = "T", data = {}, id = "'; DROP TABLE emt_messages; --" }, "the message id of event 1 is not a UUID" },
      { "infinity", "s-1", { type = "T", data = { a = math.huge } }, "event 1 data.a: infinity cannot be encoded" },
      { "NaN", "s-1", { type = "T", data = { a = 0 / 0 } }, "event 1 data.a: NaN cannot be encoded" },
      { "nesting one deeper than the limit", "s-1", { type = "T", data = nested_table(MAX_DEPTH + 1) }, "event 1 data: nested too deeply: more than 128 levels" },
      { "nesting 10,000 deep", "s-1", { type = "T", data = nested_table(10000) }, "event 1 data: nested too deeply" },
      { "invalid UTF-8 in the stream name", "s-\255", { type = "T", data = {} }, "the stream name is not valid UTF-8 (at byte 3)" },
      { "a NUL byte in the stream name", "s-1\0other", { type = "T", data = {} }, "the stream name contains a NUL byte (at byte 4)" },
      { "a 1,025-byte stream name", ("s"):rep(1025), { type = "T", data = {} }, "the stream name is 1025 bytes long; at most 1024" },
      { "an empty stream name", "", { type = "T", data = {} }, "the stream name is empty" },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        -- A good event first: one bad event refuses the whole append.
        local r, err = store:append(c[2], { { type = "Fine", data = {} }, c[3] })
        refused_by_lua(r, err, (c[4]:gsub("event 1", "event 2")))
      end)
    end

    it("a cycle", function()
      local t = {}
      t.self = t
      local r, err = store:append("s-1", { { type = "T", data = t } })
      refused_by_lua(r, err, "nested too deeply")
    end)

    it("an event over 16 MiB with its metadata, refused before it is copied", function()
      local r, err = store:append("s-1", { { type = "T", data = { a = ("x"):rep(9 * MiB) }, metadata = { b = ("y"):rep(8 * MiB) } } })
      refused_by_lua(r, err, "event 1 is too large: its data and metadata are more than 16777216 bytes")
    end)

    it("a 100 MB payload, without copying it", function()
      local huge = ("x"):rep(100 * 1000 * 1000)
      local before = peak_kb()
      local r, err = store:append("huge-1", { { type = "T", data = { s = huge } } })
      local grew = peak_kb() - before
      huge = nil
      collectgarbage()
      refused_by_lua(r, err, "event 1 is too large")
      assert.is_true(grew < 16 * 1024, "the refused append took " .. grew .. " KiB more")
    end)

    it("a stream name to read with a NUL byte or too long", function()
      local r, err = store:read("s-1\0x")
      refused_by_lua(r, err, "the stream name contains a NUL byte")
      r, err = store:read(("s"):rep(1025))
      refused_by_lua(r, err, "the stream name is 1025 bytes long")
    end)

    it("a partition of 42 bytes, with a NUL byte or not UTF-8; an empty one raises", function()
      local s, err = tide.connect(url, { partition = ("p"):rep(42) })
      refused_by_lua(s, err, "the partition name is 42 bytes long; at most 41")
      s, err = tide.connect(url, { partition = "tenant\0b" })
      refused_by_lua(s, err, "the partition name contains a NUL byte (at byte 7)")
      s, err = tide.connect(url, { partition = "t\233" })
      refused_by_lua(s, err, "the partition name is not valid UTF-8")
      assert.has_error(function() tide.connect(url, { partition = "" }) end, "tide.connect: partition must be a non-empty string")
    end)

    it("and raises for a wrong Lua type", function()
      assert.has_error(function() store:append("s-1", "not events") end)
      assert.has_error(function() store:append({}, { { type = "T", data = {} } }) end)
      assert.has_error(function() store:append("s-1", { { type = "T", data = "text" } }) end, "append: event 1 data must be a table")
      assert.has_error(function() store:append("s-1", { { type = "T", data = {}, metadata = 3 } }) end, "append: event 1 metadata must be a table")
      assert.has_error(function() store:append("s-1", { { type = 42, data = {} } }) end, "append: event 1: type must be a string, got a number")
      assert.has_error(function() store:append("s-1", { { data = {} } }) end, "append: event 1 has no type")
      assert.has_error(function() store:append("s-1", { { type = "T", data = {}, id = 7 } }) end, "append: event 1: id must be a string, got a number")
      assert.has_error(function() store:append("s-1", { "not an event" }) end, "append: event 1 is not a table")
      assert.has_error(function() store:append("s-1", { { type = "T", data = { f = print } } }) end)
      assert.has_error(function() store:read({}) end)
      assert.are.equal("0/0", rows())
    end)
  end)

  describe("round trips, byte for byte:", function()
    it("stream names, types, data and metadata with quotes, SQL, placeholders and unicode (CLI)", function()
      for i, s in ipairs(NASTY) do
        local data = tide.json.encode({ s = s, [s] = s })
        local meta = tide.json.encode({ note = s })
        local r = tide_cli("append " .. q(s) .. " " .. q(s) .. " " .. q(data) .. " --metadata " .. q(meta))
        assert.are.equal(0, r.code, r.err)
        local events = S.lines(tide_cli("read " .. q(s)).out)
        assert.are.equal(1, #events, s)
        local e = events[1]
        assert.are.same({ s, s, s, s, s }, { e.stream_id, e.type, e.data.s, e.data[s], e.metadata.note })
        assert.are.equal(hex(s) .. "|" .. hex(s) .. "|" .. hex(s), S.psql(url, "SELECT encode(convert_to(stream_id, 'UTF8'), 'hex') || '|' || encode(convert_to(message_type, 'UTF8'), 'hex') || '|' || encode(convert_to(message_data->>'s', 'UTF8'), 'hex') FROM emt_messages WHERE stream_id = " .. lit(s)))
        assert.are.equal(tostring(i), S.psql(url, "SELECT count(*) FROM emt_messages"))
      end
      assert.are.equal(#NASTY, #S.lines(tide_cli("read-all").out))
      assert.are.equal("t", S.psql(url, "SELECT to_regclass('emt_messages') IS NOT NULL AND to_regclass('emt_streams') IS NOT NULL"))
    end)

    it("stream names, types, data, metadata and keys with quotes, SQL and unicode (Lua)", function()
      for i, s in ipairs(NASTY) do
        local stream = s .. "/" .. i
        assert(store:append(stream, { { type = s, data = { s = s, [s] = { s } }, metadata = { note = s } } }))
        local e = assert(store:read(stream))[1]
        assert.are.same({ stream, s, s, s, s }, { e.stream_id, e.type, e.data.s, e.data[s][1], e.metadata.note })
        assert.are.equal(hex(stream), S.psql(url, "SELECT encode(convert_to(stream_id, 'UTF8'), 'hex') FROM emt_streams WHERE stream_id = " .. lit(stream)))
      end
      assert.are.equal(#NASTY .. "/" .. #NASTY, rows())
    end)

    it("names of exactly 1,024 bytes, multi-byte characters included", function()
      local ascii, chars = {}, "abcdefghijklmnopqrstuvwxyz0123456789-_.'\"$\\;"
      for i = 1, 1024 do
        local k = (i * 7919) % #chars + 1
        ascii[i] = chars:sub(k, k)
      end
      local name = table.concat(ascii)
      local wide = ("é"):rep(510) .. "😀"
      assert.are.equal(1024, #name)
      assert.are.equal(1024, #wide)
      assert.are.equal(0, tide_cli("append " .. q(name) .. " " .. q(wide) .. " '{}'").code)
      local e = S.lines(tide_cli("read " .. q(name)).out)[1]
      assert.are.same({ name, wide }, { e.stream_id, e.type })
      assert(store:append(wide, { { type = name, data = {} } }))
      e = assert(store:read(wide))[1]
      assert.are.same({ wide, name }, { e.stream_id, e.type })
    end)

    it("a number 2^63 read back as that exact text", function()
      local r = tide_cli("append big-1 N " .. q('{"n":9223372036854775808,"m":-9223372036854775809,"f":1e308}'))
      assert.are.equal(0, r.code, r.err)
      local out = tide_cli("read big-1").out
      assert.truthy(out:find('"n":9223372036854775808,', 1, true) or out:find('"n":9223372036854775808}', 1, true), out)
      assert.truthy(out:find("-9223372036854775809", 1, true), out)
      assert.are.equal(2 ^ 63, assert(store:read("big-1"))[1].data.n)
    end)

    it("a 1 MB payload through the CLI (stdin) and the Lua module", function()
      local pieces = { "plain ", "'quote' ", '"double" ', "\\back ", "line\nbreak ", "tab\t ", "ünï ", "😀 ", "\1\31 ", "$1 " }
      local parts, n = {}, 0
      while n < MiB do
        local p = pieces[#parts % #pieces + 1]
        parts[#parts + 1] = p
        n = n + #p
      end
      local big = table.concat(parts)
      local r = append_stdin("big-cli", "Big", tide.json.encode({ s = big }) .. "\n")
      assert.are.equal(0, r.code, r.err)
      assert.are.equal(1, S.json(r.out).next_expected_version)
      local e = S.lines(tide_cli("read big-cli").out)[1]
      assert.are.equal(#big, #e.data.s)
      assert.is_true(big == e.data.s, "the payload read back differs")
      assert.is_true(big == assert(store:read("big-cli"))[1].data.s)

      assert(store:append("big-lua", { { type = "Big", data = { s = big } } }))
      assert.is_true(big == assert(store:read("big-lua"))[1].data.s)
      e = S.lines(tide_cli("read big-lua").out)[1]
      assert.is_true(big == e.data.s)
      assert.are.equal(tostring(#big), S.psql(url, "SELECT octet_length(message_data->>'s') FROM emt_messages WHERE stream_id = 'big-lua'"))
    end)

    it("an event of exactly 16 MiB through the CLI's stdin, read back by Lua", function()
      local data = '{"s":"' .. ("z"):rep(16 * MiB - 8) .. '"}'
      assert.are.equal(16 * MiB, #data)
      local r = append_stdin("limit-1", "Big", data)
      assert.are.equal(0, r.code, r.err)
      assert.are.equal(16 * MiB - 8, #assert(store:read("limit-1"))[1].data.s)
    end)

    it("nesting exactly 128 deep: accepted by the CLI and Lua, read back by both", function()
      local r = tide_cli("append deep-cli T " .. q(nested(MAX_DEPTH)))
      assert.are.equal(0, r.code, r.err)
      local out = tide_cli("read deep-cli").out
      assert.truthy(out:find('"data":' .. ('{"a":'):rep(MAX_DEPTH) .. "1" .. ("}"):rep(MAX_DEPTH) .. ',', 1, true), out)
      assert.are.same({ MAX_DEPTH, 1 }, { depth_of(assert(store:read("deep-cli"))[1].data) })

      assert(store:append("deep-lua", { { type = "T", data = nested_table(MAX_DEPTH), metadata = nested_table(MAX_DEPTH) } }))
      local e = assert(store:read("deep-lua"))[1]
      local data_depth, innermost = depth_of(e.data)
      assert.are.same({ MAX_DEPTH, 1, MAX_DEPTH }, { data_depth, innermost, (depth_of(e.metadata)) })
      out = tide_cli("read deep-lua").out
      assert.truthy(out:find(('{"a":'):rep(MAX_DEPTH) .. "1" .. ("}"):rep(MAX_DEPTH), 1, true), out)
      local all = assert(store:read_all(nil, 10))
      assert.are.equal(2, #all)
    end)

    it("a deeper event written by someone else is a clean error in Lua, not a crash", function()
      S.psql(url, "SELECT tide_append('foreign-1', 'any', jsonb_build_array(jsonb_build_object('type', 'T', 'data', '"
        .. nested(MAX_DEPTH + 1) .. "'::jsonb)))")
      local r, err = store:read("foreign-1")
      assert.is_nil(r)
      assert.are.equal("invalid", err.kind)
      assert.truthy(err.message:find("stream foreign-1, position 1) cannot be read into Lua: its data or metadata is nested more than 128 levels deep", 1, true), err.message)
      local v, jerr = tide.json.decode(nested(10000))
      assert.is_nil(v)
      assert.truthy(jerr.message:find("nested too deeply", 1, true), jerr.message)
      local cli = tide_cli("read foreign-1") -- the CLI passes the stored text on, compacted
      assert.are.equal(0, cli.code, cli.err)
      assert.truthy(cli.out:find(('{"a":'):rep(MAX_DEPTH + 1) .. "1", 1, true), cli.out)
    end)
  end)

  describe("partition names", function()
    local names = { "a'b\"c;--", "t'; DROP TABLE emt_messages; --", "$1", "ünï-b", "Tenant.A %s", ("p"):rep(41) }

    -- Appends to partition p through the CLI, then Lua, and checks where the rows went; returns
    -- the Lua append's error, if any.
    local function round_trip(p, i)
      local data = tide.json.encode({ p = p })
      local r = tide_cli("append acct-1 Opened " .. q(data) .. " --partition " .. q(p))
      assert.are.equal(0, r.code, r.err)
      local events = S.lines(tide_cli("read acct-1 --partition " .. q(p)).out)
      assert.are.same({ 1, p }, { #events, events[1].data.p })
      local all = S.lines(tide_cli("read-all --partition " .. q(p)).out)
      assert.are.same({ 1, p }, { #all, all[1].data.p })
      local tables = S.psql(url, "SELECT string_agg(DISTINCT c.relname, ',') FROM emt_messages m JOIN pg_class c ON c.oid = m.tableoid WHERE m.partition = " .. lit(p))
      assert.are.equal("emt_messages_" .. sanitized(p) .. "_active", tables)
      tables = S.psql(url, "SELECT string_agg(DISTINCT c.relname, ',') FROM emt_streams s JOIN pg_class c ON c.oid = s.tableoid WHERE s.partition = " .. lit(p))
      assert.are.equal("emt_streams_" .. sanitized(p) .. "_active", tables)

      local tenant = assert(tide.connect(url, { partition = p }))
      local res, err = tenant:append("acct-1", { { type = "Funded", data = { p = p } } }, { expected = 1 })
      if not res then
        tenant:close()
        return err
      end
      local back = assert(tenant:read("acct-1"))
      assert.are.same({ 2, "Opened", "Funded", p }, { #back, back[1].type, back[2].type, back[2].data.p })
      assert.are.equal(2, #assert(tenant:read_all(nil, 10)))
      tenant:close()
      assert.are.equal(tostring(i * 2), S.psql(url, "SELECT count(*) FROM emt_messages"))
    end

    it("with a backslash work too", function()
      local err = round_trip("x\\y", 1)
      assert.is_nil(err, err and err.message)
    end)

    it("with quotes and SQL work, land in the tables Emmett would name, and read back (CLI and Lua)", function()
      for i, p in ipairs(names) do
        local err = round_trip(p, i)
        assert.is_nil(err, err and err.message)
      end
      assert.are.equal(0, #assert(store:read("acct-1")))
      assert.are.equal("t", S.psql(url, "SELECT to_regclass('emt_messages') IS NOT NULL"))
    end)

    it("never reach SQL unquoted: injection through stream, type, partition, id and metadata", function()
      local evil = "x'); DROP TABLE emt_messages; --"
      assert.are.equal(0, tide_cli("append " .. q(evil) .. " " .. q(evil) .. " '{}' --metadata "
        .. q(tide.json.encode({ evil = evil })) .. " --partition " .. q("p'; DROP TABLE x; --")).code)
      local r = tide_cli("append s-1 T '{}' --id " .. q(evil))
      assert.are.equal(2, r.code)
      local _, err = store:append(evil, { { type = evil, data = { [evil] = evil }, metadata = { evil = evil }, id = evil } })
      assert.are.equal("invalid", err.kind)
      assert(store:append(evil, { { type = evil, data = { [evil] = evil }, metadata = { evil = evil } } }))
      local tenant = assert(tide.connect(url, { partition = evil }))
      assert(tenant:append(evil, { { type = evil, data = {} } }))
      assert.are.equal(1, #assert(tenant:read(evil)))
      tenant:close()
      assert.are.equal("3|3|true", S.psql(url, "SELECT (SELECT count(*) FROM emt_messages) || '|' || (SELECT count(*) FROM emt_messages WHERE message_type = " .. lit(evil) .. ") || '|' || (to_regclass('emt_streams') IS NOT NULL)::text"))
      assert.are.equal(evil, assert(store:read(evil))[1].metadata.evil)
    end)
  end)
end)
