-- The tide command line against a real PostgreSQL: output, exit codes, bad input that
-- changes nothing, passwords that never show, migrations.
local S = require "spec.support"
local q = S.q

local function count(url, where)
  return tonumber(S.psql(url, "SELECT count(*) FROM emt_messages" .. (where and (" WHERE " .. where) or "")))
end

describe("tide CLI", function()
  local why = S.missing()
  if why then
    it("needs the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local url
  before_each(function()
    url = S.fresh_db()
  end)
  after_each(function()
    if url then S.drop_db(url) end
    url = nil
  end)

  local function tide(args, env)
    return S.tide(args .. " --database " .. q(url), env)
  end

  describe("help and usage", function()
    it("prints usage with --help on every command and exits 0", function()
      for _, cmd in ipairs({ "migrate", "append", "read", "read-all", "handle", "aggregate", "check", "run", "status" }) do
        local r = S.tide(cmd .. " --help")
        assert.are.equal(0, r.code, cmd)
        assert.truthy(r.out:find("usage: tide " .. cmd, 1, true), cmd .. ": " .. r.out)
      end
      local r = S.tide("--help")
      assert.are.equal(0, r.code)
      assert.truthy(r.out:find("commands:", 1, true))
    end)

    it("exits 2 without a command, on an unknown command and on an unknown flag", function()
      assert.are.equal(2, S.tide("").code)
      local r = S.tide("frobnicate")
      assert.are.equal(2, r.code)
      assert.truthy(r.err:find("unknown command 'frobnicate'", 1, true))
      r = tide("append s-1 T '{}' --bogus")
      assert.are.equal(2, r.code)
      assert.truthy(r.err:match("^tide append: unknown option '%-%-bogus'"))
      assert.are.equal(0, count(url))
    end)

    it("says where the database comes from when none is given", function()
      local r = S.tide("read s-1", { TIDE_DATABASE_URL = false, DATABASE_URL = false })
      assert.are.equal(2, r.code)
      assert.truthy(r.err:find("--database", 1, true))
    end)
  end)

  describe("append and read", function()
    it("appends and prints the next version and global positions", function()
      local r = tide("append cart-1 CartOpened '{\"customer\":\"ada\"}'")
      assert.are.equal(0, r.code, r.err)
      local out = S.json(r.out)
      assert.are.equal(1, out.next_expected_version)
      assert.are.equal(1, #out.global_positions)
      r = tide("append cart-1 ItemAdded '{\"sku\":\"tea\"}' --expected 1 --metadata '{\"correlation_id\":\"c-9\"}'")
      assert.are.equal(0, r.code, r.err)
      assert.are.equal(2, S.json(r.out).next_expected_version)

      local events = S.lines(tide("read cart-1").out)
      assert.are.equal(2, #events)
      assert.are.same({ "cart-1", 1, "CartOpened", "ada" },
        { events[1].stream_id, events[1].stream_position, events[1].type, events[1].data.customer })
      assert.are.equal("c-9", events[2].metadata.correlation_id)
      assert.truthy(events[1].message_id:match("^%x+%-%x+%-%x+%-%x+%-%x+$"))
      assert.truthy(events[1].created:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d+Z$"))
      assert.is_true(events[2].global_position > events[1].global_position)
    end)

    it("honours --from, --to, --max and --backward", function()
      for i = 1, 5 do assert.are.equal(0, tide("append s-1 N '{\"i\":" .. i .. "}'").code) end
      local function positions(args)
        local out = {}
        for _, e in ipairs(S.lines(tide("read s-1 " .. args).out)) do out[#out + 1] = e.stream_position end
        return out
      end
      assert.are.same({ 1, 2, 3, 4, 5 }, positions(""))
      assert.are.same({ 2, 3, 4 }, positions("--from 2 --to 4"))
      assert.are.same({ 1, 2 }, positions("--max 2"))
      assert.are.same({ 5, 4 }, positions("--backward --max 2"))
      assert.are.same({ 3, 2 }, positions("--from 2 --to 3 --backward"))
      assert.are.same({}, positions("--from 6"))
    end)

    it("keeps integers exact up to 2^53 and beyond in the output text", function()
      assert.are.equal(0, tide("append big-1 N '{\"n\":9007199254740993,\"m\":9007199254740992}'").code)
      local out = tide("read big-1").out
      assert.truthy(out:find("9007199254740993", 1, true), out)
      assert.truthy(out:find("9007199254740992", 1, true), out)
    end)

    it("uses the message id given with --id", function()
      local id = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
      assert.are.equal(0, tide("append ids-1 N '{}' --id " .. id).code)
      assert.are.equal(id, S.lines(tide("read ids-1").out)[1].message_id)
    end)
  end)

  describe("expected versions", function()
    local cases = {
      -- expected, on a missing stream, on a stream at version 2
      { "any", true, true }, { "no_stream", false == false, false }, { "stream_exists", false, true },
      { "0", true, false }, { "1", false, false }, { "2", false, true },
    }
    for _, c in ipairs(cases) do
      it("--expected " .. c[1] .. " on a missing and on an existing stream", function()
        local r = tide("append missing-1 T '{}' --expected " .. c[1])
        if c[2] then
          assert.are.equal(0, r.code, r.err)
          assert.are.equal(1, count(url, "stream_id = 'missing-1'"))
        else
          assert.are.equal(3, r.code)
          assert.truthy(r.err:find("version conflict: expected " .. c[1] .. ", found no stream", 1, true), r.err)
          assert.are.equal(0, count(url, "stream_id = 'missing-1'"))
        end
        tide("append there-1 T '{}'")
        tide("append there-1 T '{}'")
        r = tide("append there-1 T '{}' --expected " .. c[1])
        if c[3] then
          assert.are.equal(0, r.code, r.err)
          assert.are.equal(3, S.json(r.out).next_expected_version)
        else
          assert.are.equal(3, r.code)
          assert.truthy(r.err:find("version conflict: expected " .. c[1] .. ", found version 2", 1, true), r.err)
          assert.are.equal(2, count(url, "stream_id = 'there-1'"))
        end
      end)
    end
  end)

  describe("bad input", function()
    local bad = {
      { "append s-1 T '{\"a\":'", "DATA_JSON is not valid JSON" },
      { "append s-1 T '[1]'", "DATA_JSON must be a JSON object" },
      { "append s-1 T '\"x\"'", "DATA_JSON must be a JSON object" },
      { "append s-1 T '{}' --metadata '{oops'", "--metadata is not valid JSON" },
      { "append s-1 T '{}' --metadata '[]'", "--metadata must be a JSON object" },
      { "append s-1 T '{}' --expected abc", "--expected wants any, no_stream, stream_exists or a version number" },
      { "append s-1 T '{}' --expected -1", "--expected wants" },
      { "append s-1 T '{}' --id not-a-uuid", "--id wants a UUID" },
      { "append s-1 T", "missing arguments" },
      { "append s-1 T '{}' extra", "unexpected argument 'extra'" },
      { "append '' T '{}'", "the stream name is empty" },
      { "read s-1 --max -1", "--max wants a non-negative number" },
      { "read s-1 --from x", "--from wants a non-negative number" },
      { "read-all --after nonsense", "--after wants a cursor XID:POS" },
    }
    for _, b in ipairs(bad) do
      it("rejects `" .. b[1] .. "` with one clear line, exit 2, nothing written", function()
        local r = tide(b[1])
        assert.are.equal(2, r.code, r.err)
        assert.truthy(r.err:find(b[2], 1, true), r.err)
        local _, lines = r.err:gsub("\n", "")
        assert.are.equal(1, lines, r.err)
        assert.are.equal("", r.out)
        assert.are.equal(0, count(url))
      end)
    end

    it("reports an unreachable database on one line, exit 1, without the password", function()
      local r = S.tide("append s-1 T '{}' --database 'postgresql://tideuser:S3cretPw@127.0.0.1:1/nodb'")
      assert.are.equal(1, r.code)
      assert.truthy(r.err:find("cannot connect to the database", 1, true), r.err)
      assert.falsy((r.err .. r.out):find("S3cretPw", 1, true))
      r = S.tide("read s-1", { TIDE_DATABASE_URL = "postgresql://u:An0therPw@127.0.0.1:1/x" })
      assert.are.equal(1, r.code)
      assert.falsy((r.err .. r.out):find("An0therPw", 1, true))
    end)

    it("never prints the password of a working URL, also in conflicts and errors", function()
      local with_pw = url:gsub("^postgresql:///", "postgresql://postgres:Pr1vatePw@/")
      local runs = {
        S.tide("append pw-1 T '{}' --database " .. q(with_pw)),
        S.tide("append pw-1 T '{}' --expected no_stream --database " .. q(with_pw)),
        S.tide("read pw-1 --database " .. q(with_pw)),
        S.tide("read-all --database " .. q(with_pw)),
        S.tide("append pw-1 T '[]' --database " .. q(with_pw)),
        S.tide("status --database " .. q(with_pw)),
      }
      assert.are.same({ 0, 3, 0, 0, 2, 0 }, { runs[1].code, runs[2].code, runs[3].code, runs[4].code, runs[5].code, runs[6].code })
      for _, r in ipairs(runs) do assert.falsy((r.out .. r.err):find("Pr1vatePw", 1, true)) end
    end)
  end)

  describe("the database URL", function()
    it("prefers --database over TIDE_DATABASE_URL over DATABASE_URL", function()
      local dead = "postgresql://x@127.0.0.1:1/none"
      assert.are.equal(0, S.tide("append env-1 T '{}' --database " .. q(url), { TIDE_DATABASE_URL = dead, DATABASE_URL = dead }).code)
      assert.are.equal(0, S.tide("append env-1 T '{}'", { TIDE_DATABASE_URL = url, DATABASE_URL = dead }).code)
      assert.are.equal(0, S.tide("append env-1 T '{}'", { TIDE_DATABASE_URL = false, DATABASE_URL = url }).code)
      assert.are.equal(1, S.tide("append env-1 T '{}'", { TIDE_DATABASE_URL = dead, DATABASE_URL = url }).code)
      assert.are.equal(3, count(url, "stream_id = 'env-1'"))
    end)
  end)

  describe("read-all", function()
    it("follows its cursor through the whole log exactly once, in commit order", function()
      for i = 1, 5 do tide("append " .. (i % 2 == 0 and "a-1" or "b-1") .. " N '{\"i\":" .. i .. "}'") end
      local seen, after = {}, nil
      for _ = 1, 4 do
        local events = S.lines(tide("read-all --max 2" .. (after and (" --after " .. after) or "")).out)
        for _, e in ipairs(events) do
          seen[#seen + 1] = e.data.i
          assert.truthy(e.cursor:match("^%d+:" .. e.global_position .. "$"), e.cursor)
          after = e.cursor
        end
      end
      assert.are.same({ 1, 2, 3, 4, 5 }, seen)
    end)
  end)

  describe("partitions", function()
    it("keeps each partition's streams, versions and global read apart", function()
      assert.are.equal(0, tide("append acct-1 Opened '{\"t\":\"a\"}' --partition tenant-a").code)
      assert.are.equal(0, tide("append acct-1 Opened '{\"t\":\"d\"}'").code)
      local r = tide("append acct-1 Funded '{\"t\":\"a\"}' --partition tenant-a --expected 1")
      assert.are.equal(0, r.code, r.err)
      assert.are.equal(2, S.json(r.out).next_expected_version)
      assert.are.equal(3, tide("append acct-1 Funded '{}' --expected 2").code)
      local a = S.lines(tide("read acct-1 --partition tenant-a").out)
      assert.are.same({ "a", "a" }, { a[1].data.t, a[2].data.t })
      local d = S.lines(tide("read acct-1").out)
      assert.are.equal(1, #d)
      assert.are.equal("d", d[1].data.t)
      local all = S.lines(tide("read-all --partition tenant-a").out)
      assert.are.same({ "Opened", "Funded" }, { all[1].type, all[2].type })
      assert.are.equal("emt_messages_tenant_a_active",
        S.psql(url, "SELECT DISTINCT tableoid::regclass::text FROM emt_messages WHERE partition = 'tenant-a'"))
    end)

    it("refuses a partition whose tables' name another partition holds, writing nothing", function()
      assert.are.equal(0, tide("append x-1 T '{}' --partition tenant-a").code)
      local r = tide("append x-1 T '{}' --partition tenant.a")
      assert.are.equal(1, r.code)
      assert.truthy(r.err:find("partition tenant.a cannot have tables of its own", 1, true), r.err)
      assert.are.equal(1, count(url))
      r = tide("append x-1 T '{}' --partition ''")
      assert.are.equal(2, r.code)
      assert.truthy(r.err:find("--partition wants a name", 1, true), r.err)
    end)
  end)

  describe("status", function()
    it("names the backend whose open transaction holds consumers back", function()
      local backend, release = S.hold_transaction(url)
      finally(release)
      local r = tide("status")
      assert.are.equal(0, r.code)
      assert.falsy(r.err:find("held back", 1, true), r.err)
      S.sleep(5.5)
      r = tide("status")
      assert.are.equal(0, r.code, r.err)
      assert.truthy(r.err:find("held back by backend pid " .. backend .. " ", 1, true), r.err)
      assert.truthy(r.err:find("pg_terminate_backend(" .. backend .. ")", 1, true), r.err)
    end)
  end)

  describe("migrate", function()
    it("is idempotent and says so", function()
      local r = tide("migrate")
      assert.are.equal(0, r.code)
      assert.truthy(r.out:find("nothing to apply", 1, true))
    end)

    it("runs safely from two processes at once on a fresh database", function()
      local raw = S.fresh_db(true)
      local cmd = q(S.bin) .. " migrate --database " .. q(raw)
      local r = S.sh(cmd .. " & " .. cmd .. " & wait %1 && wait %2")
      assert.are.equal(0, r.code, r.err)
      local names = S.psql(raw, "SELECT string_agg(name, ',' ORDER BY name) || ' ' || count(*) FROM tide_migrations")
      local n = select(2, names:gsub(",", "")) + 1
      assert.are.equal(tostring(n), names:match(" (%d+)$"), names)
      assert.truthy(names:find("0001_emmett_layout", 1, true))
      S.drop_db(raw)
    end)

    it("--print prints the schema and touches no database", function()
      local raw = S.fresh_db(true)
      local r = S.tide("migrate --print --database " .. q(raw))
      assert.are.equal(0, r.code)
      assert.truthy(r.out:find("CREATE TABLE IF NOT EXISTS emt_messages", 1, true))
      assert.truthy(r.out:find("tide_append", 1, true))
      assert.falsy(r.out:find("FUNCTION emt_", 1, true))
      assert.are.equal("", S.psql(raw, "SELECT to_regclass('tide_migrations')::text"))
      assert.are.equal(0, S.tide("migrate --print --database postgresql://x@127.0.0.1:1/none").code)
      S.drop_db(raw)
    end)

    it("migrates a database whose emt_* tables exist already and reads their rows", function()
      local raw = S.fresh_db(true)
      local r = S.sh("psql -qX -v ON_ERROR_STOP=1 " .. q(raw) .. " -f sql/0001_emmett_layout.sql")
      assert.are.equal(0, r.code, r.err)
      S.psql(raw, [[
        INSERT INTO emt_streams (stream_id, stream_position, partition, stream_type, stream_metadata)
        VALUES ('order-7', 1, 'emt:default', 'order', '{}');
        INSERT INTO emt_messages (stream_id, stream_position, partition, message_data, message_metadata,
          message_schema_version, message_type, message_id, transaction_id)
        VALUES ('order-7', 1, 'emt:default', '{"total":3}', '{}', '1', 'OrderPlaced',
          '0b6ba1a2-5bb5-4d2b-9b1b-59cdfb9c7a9e', pg_current_xact_id())]])
      r = S.tide("migrate --database " .. q(raw))
      assert.are.equal(0, r.code, r.err)
      local events = S.lines(S.tide("read order-7 --database " .. q(raw)).out)
      assert.are.equal(1, #events)
      assert.are.equal(3, events[1].data.total)
      assert.are.equal(1, #S.lines(S.tide("read-all --database " .. q(raw)).out))
      r = S.tide("append order-7 Shipped '{}' --expected 1 --database " .. q(raw))
      assert.are.equal(0, r.code, r.err)
      S.drop_db(raw)
    end)
  end)

  describe("rows in Emmett's layout", function()
    it("writes every column as Emmett does", function()
      assert.are.equal(0, tide("append order-42-x Placed '{\"n\":1}'").code)
      assert.are.equal(0, tide("append order-42-x Paid '{\"n\":2}'").code)
      local row = S.psql(url, [[SELECT message_kind, message_schema_version, partition, is_archived,
        transaction_id IS NOT NULL, message_id ~ '^[0-9a-f-]{36}$', message_metadata::text
        FROM emt_messages WHERE stream_id = 'order-42-x' AND stream_position = 1]])
      assert.are.equal("E|1|emt:default|f|t|t|{}", row)
      local stream = S.psql(url, [[SELECT stream_type, stream_position, stream_metadata::text, is_archived
        FROM emt_streams WHERE stream_id = 'order-42-x']])
      assert.are.equal("order|2|{}|f", stream)
      assert.are.equal("emt_messages_emt_default_active",
        S.psql(url, "SELECT tableoid::regclass::text FROM emt_messages LIMIT 1"))
      assert.are.equal("0", S.psql(url, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'emt\\_%'"))
    end)
  end)
end)
