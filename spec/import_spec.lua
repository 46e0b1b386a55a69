-- tide import against a real PostgreSQL: positions that continue each stream, the rows as
-- an append writes them, bad lines and conflicts that write nothing, stdin, partitions, a
-- progress bar only on a terminal, and memory that stays flat over 1,000,000 events.
local S = require "spec.support"
local q = S.q

local function count(url, sql)
  return tonumber(S.psql(url, sql or "SELECT count(*) FROM emt_messages"))
end

-- Writes lines (a list of strings, or a function(i) for i = 1..n) to path, one a line.
local function write_lines(path, lines, n)
  local f = assert(io.open(path, "wb"))
  if type(lines) == "function" then
    local buf = {}
    for i = 1, n do
      buf[#buf + 1] = lines(i)
      if #buf == 4096 then
        f:write(table.concat(buf, "\n"), "\n")
        buf = {}
      end
    end
    if #buf > 0 then f:write(table.concat(buf, "\n"), "\n") end
  else
    f:write(table.concat(lines, "\n"), "\n")
  end
  f:close()
end

local function event(stream, type, data, extra)
  return string.format('{"stream_id":"%s","type":"%s","data":%s%s}', stream, type, data, extra or "")
end

describe("tide import", function()
  local why = S.missing()
  if why then
    it("needs the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  -- A fresh database per test where the test writes (fresh_db), none where nothing gets
  -- as far as connecting.
  local url, dir
  local nowhere = "postgresql://x@127.0.0.1:1/none"
  local function fresh()
    before_each(function() url = S.fresh_db() end)
    after_each(function()
      if url then S.drop_db(url) end
      url = nil
    end)
  end
  before_each(function() dir = S.mkdtemp() end)
  after_each(function()
    if dir then os.execute("rm -rf " .. q(dir)) end
    dir = nil
  end)

  local function import(args, env)
    return S.tide("import " .. args .. " --database " .. q(url or nowhere), env)
  end

  local function file(name, lines, n)
    local path = dir .. "/" .. name
    write_lines(path, lines, n)
    return path
  end

  describe("usage", function()
    it("prints its usage with --help and exits 0", function()
      local r = S.tide("import --help")
      assert.are.equal(0, r.code)
      assert.truthy(r.out:find("usage: tide import FILE|-", 1, true), r.out)
      assert.truthy(S.tide("--help").out:find("import", 1, true))
    end)

    local bad = {
      { "", "missing argument: FILE" },
      { "a b", "unexpected argument 'b'" },
      { "f --expected stream_exists", "--expected wants any or no_stream, got 'stream_exists'" },
      { "f --expected 3", "--expected wants any or no_stream" },
      { "f --bogus", "unknown option '--bogus'" },
      { "f --partition ''", "--partition wants a name" },
    }
    for _, b in ipairs(bad) do
      it("rejects `import " .. b[1] .. "` with one line and exit 2", function()
        local r = import(b[1])
        assert.are.equal(2, r.code, r.err)
        assert.truthy(r.err:find("^tide import: "), r.err)
        assert.truthy(r.err:find(b[2], 1, true), r.err)
        local _, lines = r.err:gsub("\n", "")
        assert.are.equal(1, lines, r.err)
      end)
    end

    it("says where the database comes from when none is given", function()
      local r = S.tide("import -", { TIDE_DATABASE_URL = false, DATABASE_URL = false })
      assert.are.equal(2, r.code)
      assert.truthy(r.err:find("--database", 1, true), r.err)
    end)

    it("names a file it cannot read, exit 2", function()
      local r = import(q(dir .. "/missing.ndjson"))
      assert.are.equal(2, r.code)
      assert.truthy(r.err:find("cannot open " .. dir .. "/missing.ndjson: No such file", 1, true), r.err)
      r = import(q(dir))
      assert.are.equal(2, r.code)
      assert.truthy(r.err:find("is a directory", 1, true), r.err)
    end)

    it("never prints the password of the URL", function()
      url = S.fresh_db()
      finally(function()
        S.drop_db(url)
        url = nil
      end)
      local r = S.tide("import " .. q(file("a.ndjson", { event("a-1", "T", "{}") })) ..
        " --database 'postgresql://tideuser:S3cretPw@127.0.0.1:1/nodb'")
      assert.are.equal(1, r.code)
      assert.truthy(r.err:find("cannot connect to the database", 1, true), r.err)
      assert.falsy((r.err .. r.out):find("S3cretPw", 1, true))
      local with_pw = url:gsub("^postgresql:///", "postgresql://postgres:Pr1vatePw@/")
      r = S.tide("import " .. q(file("b.ndjson", { event("a-1", "T", "{}") })) .. " --database " .. q(with_pw))
      assert.are.equal(0, r.code, r.err)
      r = S.tide("import " .. q(file("c.ndjson", { event("a-1", "T", "{}") })) ..
        " --expected no_stream --database " .. q(with_pw))
      assert.are.equal(3, r.code, r.err)
      assert.falsy((r.err .. r.out):find("Pr1vatePw", 1, true))
    end)
  end)

  describe("positions and rows", function()
    fresh()
    it("gives each stream's events the positions after its current one, in file order", function()
      assert.are.equal(0, S.tide("append cart-1 CartOpened '{\"customer\":\"ada\"}' --database " .. q(url)).code)
      local id = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
      local path = file("events.ndjson", {
        event("cart-1", "ItemAdded", '{"sku":"tea","qty":2}'),
        event("cart-2", "CartOpened", '{"customer":"bob"}', ',"metadata":{"correlation_id":"c-9"}'),
        event("cart-1", "ItemAdded", '{"sku":"cake","note":"a\\tb\\\\c \\u00e9"}', ',"id":"' .. id .. '"'),
        '{ "data" : {"n": 1.50, "big": 9007199254740993} , "type":"Counted", "stream_id":"tally-1" }',
        event("cart-2", "CartConfirmed", "{}"),
      })
      local r = import(q(path))
      assert.are.equal(0, r.code, r.err)
      assert.truthy(r.out:match('^{"events":5,"streams":3,"seconds":%d+%.%d%d%d}\n$'), r.out)
      assert.are.equal("", r.err) -- no progress bar: stderr is not a terminal

      local cart1 = S.lines(S.tide("read cart-1 --database " .. q(url)).out)
      assert.are.same({ 1, 2, 3 }, { cart1[1].stream_position, cart1[2].stream_position, cart1[3].stream_position })
      assert.are.same({ "CartOpened", "ItemAdded", "ItemAdded" }, { cart1[1].type, cart1[2].type, cart1[3].type })
      assert.are.same({ sku = "tea", qty = 2 }, cart1[2].data)
      assert.are.same({ sku = "cake", note = "a\tb\\c \u{e9}" }, cart1[3].data)
      assert.are.equal(id, cart1[3].message_id)
      assert.truthy(cart1[2].message_id:match("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x+$"), cart1[2].message_id)
      assert.are.same({}, cart1[2].metadata)
      local cart2 = S.lines(S.tide("read cart-2 --database " .. q(url)).out)
      assert.are.same({ 1, 2 }, { cart2[1].stream_position, cart2[2].stream_position })
      assert.are.equal("c-9", cart2[1].metadata.correlation_id)
      assert.truthy(cart1[3].global_position > cart2[1].global_position)
      local tally = S.tide("read tally-1 --database " .. q(url)).out
      assert.truthy(tally:find('"big":9007199254740993', 1, true), tally)

      -- The stream rows, as tide_append writes them.
      assert.are.equal("cart-1|3|cart|{}|f\ncart-2|2|cart|{}|f\ntally-1|1|tally|{}|f", S.psql(url,
        "SELECT stream_id, stream_position, stream_type, stream_metadata, is_archived FROM emt_streams ORDER BY 1"))
      -- The message rows, as an append writes them: one transaction, its id in every row.
      assert.are.equal("1|E|1|emt:default", S.psql(url, [[
        SELECT count(DISTINCT transaction_id), min(message_kind), min(message_schema_version), min(partition)
          FROM emt_messages WHERE NOT (stream_id = 'cart-1' AND stream_position = 1)]]))
      assert.are.equal(0, count(url, "SELECT count(*) FROM emt_messages WHERE transaction_id::text <> xmin::text"))
      assert.are.equal(1, count(url, "SELECT count(DISTINCT created) FROM emt_messages WHERE stream_position > 1 OR stream_id <> 'cart-1'"))
    end)

    it("takes CRLF lines, blank lines and a last line without a newline", function()
      local path = dir .. "/crlf.ndjson"
      S.write(path, event("c-1", "A", "{}") .. "\r\n\r\n  \n" .. event("c-1", "B", "{}") .. "\r\n" .. event("c-2", "C", "{}"))
      local r = import(q(path))
      assert.are.equal(0, r.code, r.err)
      assert.are.same({ events = 3, streams = 2 }, { events = S.json(r.out).events, streams = S.json(r.out).streams })
      assert.are.equal("c-1|1|A\nc-1|2|B\nc-2|1|C", S.psql(url,
        "SELECT stream_id, stream_position, message_type FROM emt_messages ORDER BY global_position"))
    end)

    it("imports nothing from an empty input", function()
      local r = import(q(file("empty.ndjson", {})))
      assert.are.equal(0, r.code, r.err)
      assert.truthy(r.out:match('^{"events":0,"streams":0,"seconds":'), r.out)
    end)

    it("reads stdin for -", function()
      local path = file("in.ndjson", { event("s-1", "A", '{"i":1}'), event("s-1", "B", '{"i":2}') })
      local r = S.sh("cat " .. q(path) .. " | " .. q(S.bin) .. " import - --database " .. q(url))
      assert.are.equal(0, r.code, r.err)
      assert.truthy(r.out:match('^{"events":2,"streams":1,'), r.out)
      assert.are.equal("1|A|1\n2|B|2", S.psql(url,
        "SELECT stream_position, message_type, message_data->>'i' FROM emt_messages ORDER BY stream_position"))
    end)

    it("creates a new partition's tables and keeps its streams apart", function()
      assert.are.equal(0, S.tide("append acct-1 Opened '{}' --database " .. q(url)).code)
      local path = file("p.ndjson", { event("acct-1", "Opened", '{"t":"x"}'), event("acct-1", "Funded", '{"t":"x"}') })
      local r = import(q(path) .. " --partition tenant-x")
      assert.are.equal(0, r.code, r.err)
      local events = S.lines(S.tide("read acct-1 --partition tenant-x --database " .. q(url)).out)
      assert.are.same({ 1, 2 }, { events[1].stream_position, events[2].stream_position })
      assert.are.equal("x", events[2].data.t)
      assert.are.equal(1, #S.lines(S.tide("read acct-1 --database " .. q(url)).out))
      assert.are.equal("emt_messages_tenant_x_active", S.psql(url,
        "SELECT DISTINCT tableoid::regclass::text FROM emt_messages WHERE partition = 'tenant-x'"))
      assert.are.equal("2", S.psql(url,
        "SELECT stream_position FROM emt_streams WHERE partition = 'tenant-x' AND stream_id = 'acct-1'"))
      -- A second import there continues the stream.
      r = import(q(path) .. " --partition tenant-x")
      assert.are.equal(0, r.code, r.err)
      assert.are.equal("4", S.psql(url,
        "SELECT stream_position FROM emt_streams WHERE partition = 'tenant-x' AND stream_id = 'acct-1'"))
    end)
  end)

  describe("--expected no_stream", function()
    fresh()
    it("imports new streams", function()
      local r = import(q(file("new.ndjson", { event("n-1", "A", "{}"), event("n-2", "A", "{}"), event("n-1", "B", "{}") })) ..
        " --expected no_stream")
      assert.are.equal(0, r.code, r.err)
      assert.are.equal("n-1|2\nn-2|1", S.psql(url, "SELECT stream_id, stream_position FROM emt_streams ORDER BY 1"))
    end)

    it("exits 3 and writes nothing when one stream of the file exists", function()
      assert.are.equal(0, S.tide("append old-1 Opened '{}' --database " .. q(url)).code)
      local path = file("mixed.ndjson", { event("new-1", "A", "{}"), event("old-1", "B", "{}"), event("new-2", "C", "{}") })
      local r = import(q(path) .. " --expected no_stream")
      assert.are.equal(3, r.code, r.err)
      assert.truthy(r.err:find("^tide import: version conflict: stream old%-1 already exists"), r.err)
      assert.are.equal("", r.out)
      assert.are.equal(1, count(url))
      assert.are.equal("old-1|1", S.psql(url, "SELECT stream_id, stream_position FROM emt_streams"))
      -- The same file without the expectation goes in.
      r = import(q(path))
      assert.are.equal(0, r.code, r.err)
      assert.are.equal(4, count(url))
    end)
  end)

  describe("bad lines", function()
    -- One database for all: each case checks that nothing at all was written.
    setup(function() url = S.fresh_db() end)
    teardown(function()
      S.drop_db(url)
      url = nil
    end)
    local good = event("b-1", "T", '{"ok":true}')
    local bad = {
      { "not json", "line 3: not valid JSON: 'n' at byte 1 where an event object" },
      { '{"stream_id":"b-1","type":"T","data":{"a":1,}}', "line 3: data is not valid JSON: unexpected '}' at byte 8" },
      { '{"stream_id":"b-1","type":"T"}', 'line 3: "data" is missing' },
      { '{"stream_id":"b-1","data":{}}', 'line 3: "type" is missing' },
      { '{"type":"T","data":{}}', 'line 3: "stream_id" is missing' },
      { '{"stream_id":"b-1","type":"T","data":[1]}', 'line 3: "data" must be a JSON object, got: [1]' },
      { '{"stream_id":"b-1","type":"T","data":{},"metadata":"x"}', '"metadata" must be a JSON object' },
      { '{"stream_id":"","type":"T","data":{}}', "line 3: the stream name is empty" },
      { '{"stream_id":"b-1","type":"T","data":{},"id":"nope"}', 'line 3: "id" is not a UUID: "nope"' },
      { '{"stream_id":"b-1","type":"T","data":{},"extra":1}', 'line 3: unknown key "extra"' },
      { '{"stream_id":"b-1","type":"T","type":"U","data":{}}', 'line 3: "type" appears twice' },
      { '{"stream_id":"b-1","type":"T","data":{"s":"\\u0000"}}', "which PostgreSQL's jsonb cannot store" },
      { '{"stream_id":"b\\u0000","type":"T","data":{}}', "line 3: the stream name contains a NUL byte" },
      { '{"stream_id":"b-1","type":"T","data":{"n":1e400}}', "has a number out of range" },
      { '{"stream_id":"b-1","type":"T","data":{}} x', "line 3: not valid JSON: unexpected text after the event" },
      { '{"stream_id":"b-1","type":"T","data":' .. string.rep("[", 200) .. string.rep("]", 200) .. "}",
        '"data" must be a JSON object' },
      { '{"stream_id":"b-1","type":"T","data":{"a":' .. string.rep("[", 200) .. string.rep("]", 200) .. "}}",
        "is nested too deeply" },
      { '{"stream_id":"' .. string.rep("x", 1025) .. '","type":"T","data":{}}',
        "line 3: the stream name is 1025 bytes long; at most 1024 are allowed" },
    }
    for _, b in ipairs(bad) do
      it("exits 2 naming the line of " .. b[1]:sub(1, 60) .. ", nothing written", function()
        local r = import(q(file("bad.ndjson", { good, good, b[1], good })))
        assert.are.equal(2, r.code, r.err)
        assert.truthy(r.err:find("^tide import: "), r.err)
        assert.truthy(r.err:find(b[2], 1, true), r.err)
        local _, lines = r.err:gsub("\n", "")
        assert.are.equal(1, lines, r.err)
        assert.are.equal("", r.out)
        assert.are.equal(0, count(url))
        assert.are.equal(0, count(url, "SELECT count(*) FROM emt_streams"))
      end)
    end

    it("rolls back what it already sent when a bad line comes after several chunks", function()
      assert.are.equal(0, S.tide("append keep-1 T '{}' --database " .. q(url)).code)
      finally(function() S.psql(url, "TRUNCATE emt_messages, emt_streams") end)
      local path = file("late.ndjson", function(i)
        if i == 40001 then return '{"stream_id":"s-1","type":"T","data":{"broken":}}' end
        return event("s-" .. (i % 7), "T", '{"i":' .. i .. "}")
      end, 40002)
      local r = import(q(path))
      assert.are.equal(2, r.code, r.err)
      assert.truthy(r.err:find("line 40001: data is not valid JSON", 1, true), r.err)
      assert.are.equal(1, count(url))
      assert.are.equal("keep-1", S.psql(url, "SELECT string_agg(stream_id, ',') FROM emt_streams"))
    end)

    it("refuses a line longer than an event can be without reading it whole", function()
      local path = dir .. "/long.ndjson"
      os.execute("head -c 20000000 /dev/zero | tr '\\0' ' ' > " .. q(path))
      local r = import(q(path))
      assert.are.equal(2, r.code, r.err)
      assert.truthy(r.err:find("line 1: longer than", 1, true), r.err)
    end)
  end)

  describe("at scale", function()
    fresh()

    it("shows progress on stderr only when it is a terminal", function()
      local path = file("tty.ndjson", function(i) return event("t-" .. (i % 10), "T", "{}") end, 20000)
      local r = S.sh("script -qec " .. q(q(S.bin) .. " import " .. q(path) .. " --database " .. q(url)) .. " /dev/null")
      assert.are.equal(0, r.code, r.out .. r.err)
      assert.truthy(r.out:find("20,000 events", 1, true), r.out)
      assert.truthy(r.out:find("events/s", 1, true), r.out)
      assert.truthy(r.out:find("100%", 1, true), r.out)
      assert.truthy(r.out:find('{"events":20000,"streams":10,', 1, true), r.out)
    end)

    it("keeps counting positions right with more streams than it remembers", function()
      -- 70,000 streams, each twice, far apart: more than the 65,536 the client keeps.
      local n = 70000
      local path = file("many.ndjson", function(i) return event("m-" .. ((i - 1) % n), "T", "{}") end, 2 * n)
      local r = import(q(path) .. " --expected no_stream")
      assert.are.equal(0, r.code, r.err)
      assert.truthy(r.out:match('^{"events":140000,"streams":70000,'), r.out)
      assert.are.equal("70000|2|2|140000", S.psql(url,
        "SELECT count(*), min(stream_position), max(stream_position), sum(stream_position) FROM emt_streams"))
      assert.are.equal(0, count(url, [[
        SELECT count(*) FROM (SELECT stream_id, array_agg(stream_position ORDER BY global_position) p
          FROM emt_messages GROUP BY stream_id) x WHERE p <> '{1,2}']]))
    end)

    it("serializes with a concurrent append to one of its streams", function()
      local path = file("c.ndjson", function(i) return event("shared-1", "T", '{"i":' .. i .. "}") end, 60000)
      local bg = S.sh("(" .. q(S.bin) .. " import " .. q(path) .. " --database " .. q(url) ..
        " >" .. q(dir .. "/out") .. " 2>&1; echo $? >" .. q(dir .. "/rc") .. ") & echo started")
      assert.truthy(bg.out:find("started", 1, true))
      S.wait_for(function()
        return count(url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY emt_messages%'") > 0
      end, 30, "the import's COPY")
      local r = S.tide("append shared-1 Late '{}' --database " .. q(url))
      assert.are.equal(0, r.code, r.err)
      S.wait_for(function() return io.open(dir .. "/rc") end, 60, "the import")
      assert.are.equal("0", S.sh("cat " .. q(dir .. "/rc")).out:gsub("%s", ""))
      assert.are.equal("60001|60001|60001", S.psql(url, [[
        SELECT count(*), count(DISTINCT stream_position), max(stream_position) FROM emt_messages]]))
      assert.are.equal("60001|Late", S.psql(url,
        "SELECT stream_position, message_type FROM emt_messages ORDER BY global_position DESC LIMIT 1"))
    end)

    it("imports 1,000,000 events with its memory flat", function()
      local n = 1000000
      local path = file("million.ndjson", function(i)
        return '{"stream_id":"acct-' .. (i % 10000) .. '","type":"Deposited","data":{"amount":' .. i ..
          ',"note":"deposit ' .. i .. '"}}'
      end, n)
      -- The import in the background; its VmRSS sampled every 50 ms while it runs.
      local rss, out = dir .. "/rss", dir .. "/out"
      local r = S.sh(table.concat({
        q(S.bin) .. " import " .. q(path) .. " --database " .. q(url) .. " >" .. q(out) .. " &",
        "pid=$!",
        "while kill -0 $pid 2>/dev/null; do",
        "  awk '/^VmRSS/ { print $2 }' /proc/$pid/status >>" .. q(rss) .. " 2>/dev/null",
        "  sleep 0.05",
        "done",
        "wait $pid",
      }, "\n"))
      assert.are.equal(0, r.code, r.err)
      local result = S.json(S.sh("cat " .. q(out)).out)
      assert.are.same({ n, 10000 }, { result.events, result.streams })
      local samples = {}
      for kb in S.sh("cat " .. q(rss)).out:gmatch("%d+") do samples[#samples + 1] = tonumber(kb) end
      assert.truthy(#samples >= 10, "too few RSS samples: " .. #samples)
      local max = 0
      for _, kb in ipairs(samples) do max = math.max(max, kb) end
      local start, quarter, last = samples[1], samples[math.floor(#samples / 4) + 1], samples[#samples]
      io.stderr:write(string.format("\n# import of %d events (%.1f MiB) in %.1f s: RSS start %.1f MiB, " ..
        "at a quarter %.1f MiB, end %.1f MiB, max %.1f MiB (%d samples)\n", n,
        tonumber(S.sh("stat -c %s " .. q(path)).out) / 1048576, result.seconds, start / 1024, quarter / 1024,
        last / 1024, max / 1024, #samples))
      assert.truthy(max < 64 * 1024, "RSS reached " .. max .. " kB")
      -- Flat: from a quarter of the way to the end it grows by no more than 4 MiB.
      assert.truthy(last - quarter < 4 * 1024, string.format("RSS grew from %d to %d kB", quarter, last))
      assert.are.equal(string.format("%d|10000|100", n), S.psql(url,
        "SELECT sum(stream_position), count(*), max(stream_position) FROM emt_streams"))
      assert.are.equal(n, count(url))
    end)
  end)
end)
