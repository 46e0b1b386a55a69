-- Document projections as readers see them: single- and multi-stream documents written by
-- `tide run` (each recording the event it reflects last), read back with store:doc /
-- store:docs and with `tide doc` / `tide docs`.
local S = require "spec.support"
local D = require "spec.daemon"
local q = S.q

local why = S.missing()

-- Sales per product across every cart: one document per sku (id(event)), from initial();
-- events without a sku are left out (id returns false).
local SALES = [[
local tide = require "tide"
return tide.projection {
  collection = "sales",
  events = { "ItemAdded", "Noted" },
  id = function(e) return e.data.sku or false end,
  initial = function() return { units = 0, carts = tide.object(), made_by = "initial" } end,
  evolve = function(doc, e)
    doc.units = doc.units + e.data.qty
    doc.carts[e.stream_id] = true
    doc.last_cart = e.stream_id
    return doc
  end,
}
]]

-- One document per stream (the default id).
local COUNTS = [[
local tide = require "tide"
return tide.projection {
  collection = "counts",
  initial = function() return { n = 0 } end,
  evolve = function(doc, e) doc.n = doc.n + 1 doc.kind = e.type return doc end,
}
]]

local SKUS = { "tea", "mug", "pot", "cup", "jam" }

-- Appends n events spread over carts and skus, interleaved, some without a sku.
local function load_sales(url, n)
  S.psql(url, string.format([[SELECT count(*) FROM (SELECT tide_append('cart-' || (i %% 7), 'any',
    jsonb_build_array(CASE WHEN i %% 11 = 0
      THEN jsonb_build_object('type', 'Noted', 'data', jsonb_build_object('qty', 1))
      ELSE jsonb_build_object('type', 'ItemAdded', 'data', jsonb_build_object(
        'sku', (ARRAY['%s'])[1 + i %% 5], 'qty', 1 + i %% 4)) END))
    FROM generate_series(1, %d) i) x]], table.concat(SKUS, "','"), n))
end

-- What the documents must say, from the log itself: per sku the units, the carts, and the
-- event with the highest global position.
local function sales_from_log(url)
  local out = {}
  local rows = S.psql(url, [[
    SELECT message_data->>'sku', sum((message_data->>'qty')::int),
      count(DISTINCT stream_id),
      (array_agg(stream_id ORDER BY global_position DESC))[1],
      (array_agg(stream_position ORDER BY global_position DESC))[1],
      max(global_position)
    FROM emt_messages WHERE message_type = 'ItemAdded' GROUP BY 1 ORDER BY 1]])
  for line in rows:gmatch("[^\n]+") do
    local sku, units, carts, stream, spos, gpos = line:match("^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$")
    out[sku] = { units = tonumber(units), carts = tonumber(carts), stream = stream,
      stream_position = tonumber(spos), global_position = tonumber(gpos) }
  end
  return out
end

local function count_keys(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

describe("documents", function()
  if why then
    it("need the tide binary and PostgreSQL", function() pending(why) end)
    return
  end
  local tide = require "tide"
  local url, dir
  before_each(function()
    url = S.fresh_db()
    dir = S.mkdtemp()
  end)
  after_each(function()
    D.kill_all()
    if url then S.drop_db(url) end
  end)

  local function run_until_caught_up(names)
    local pid = D.start(url, dir, "--batch-size 7")
    for _, name in ipairs(names) do D.caught_up(url, name, 60) end
    return pid
  end

  it("keyed by id(event) span many streams, each recording the event it reflects last", function()
    S.write(dir .. "/sales.lua", SALES)
    load_sales(url, 300)
    local pid = run_until_caught_up({ "sales" })
    load_sales(url, 90) -- more batches onto documents that exist
    D.caught_up(url, "sales", 60)
    D.stop(pid)

    local want = sales_from_log(url)
    assert.are.equal(#SKUS, count_keys(want))
    local store = assert(tide.connect(url))
    for sku, w in pairs(want) do
      local doc, info = store:doc("sales", sku)
      assert.is_table(doc, sku)
      assert.are.equal(w.units, doc.units, sku)
      assert.are.equal(w.carts, count_keys(doc.carts), sku)
      assert.are.equal("initial", doc.made_by, sku) -- initial() made it
      assert.are.equal(w.stream, doc.last_cart, sku)
      assert.are.equal(w.stream, info.last_stream_id, sku)
      assert.are.equal(w.stream_position, info.last_stream_position, sku)
      assert.are.equal(w.global_position, info.last_global_position, sku)
      assert.are.equal(sku, info.id)
      assert.truthy(info.updated_at:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d+Z$"), info.updated_at)
      assert.is_nil(info.doc)
    end
    -- Noted events have no sku: left out, no document for them.
    assert.are.equal(#SKUS, D.scalar(url, "SELECT count(*) FROM tide_documents WHERE collection = 'sales'"))
    store:close()
  end)

  it("keyed by stream record their stream's last event", function()
    S.write(dir .. "/counts.lua", COUNTS)
    load_sales(url, 100)
    D.stop(run_until_caught_up({ "counts" }))
    assert.are.equal("0", S.psql(url, [[
      SELECT count(*) FROM (SELECT stream_id, count(*) AS n, max(stream_position) AS spos,
        max(global_position) AS gpos FROM emt_messages GROUP BY stream_id) f
      FULL JOIN tide_documents d ON d.collection = 'counts' AND d.id = f.stream_id
      WHERE (d.doc->>'n')::int IS DISTINCT FROM f.n OR d.last_stream_id IS DISTINCT FROM f.stream_id
        OR d.last_stream_position IS DISTINCT FROM f.spos
        OR d.last_global_position IS DISTINCT FROM f.gpos]]))
    assert.are.equal(7, D.scalar(url, "SELECT count(*) FROM tide_documents WHERE collection = 'counts'"))
  end)

  describe("from Lua", function()
    local store
    before_each(function()
      S.write(dir .. "/sales.lua", SALES)
      load_sales(url, 200)
      D.stop(run_until_caught_up({ "sales" }))
      store = assert(tide.connect(url))
    end)
    after_each(function() if store then store:close() end end)

    it("store:doc gives nil for a document that is not there, without an error", function()
      local doc, info = store:doc("sales", "no-such-sku")
      assert.is_nil(doc)
      assert.is_nil(info)
      doc, info = store:doc("no_such_collection", "tea")
      assert.is_nil(doc)
      assert.is_nil(info)
    end)

    it("store:docs lists in id order, filters by containment, pages with after", function()
      local all = assert(store:docs("sales"))
      local ids = {}
      for i, d in ipairs(all) do
        ids[i] = d.id
        assert.is_table(d.doc)
        assert.is_number(d.last_global_position)
        assert.is_number(d.last_stream_position)
        assert.is_string(d.last_stream_id)
        local doc = store:doc("sales", d.id)
        assert.are.same(doc, d.doc)
      end
      assert.are.same({ "cup", "jam", "mug", "pot", "tea" }, ids)

      -- Containment: the carts that bought tea have true under their id.
      local teas = assert(store:docs("sales", { where = { carts = { ["cart-1"] = true } } }))
      local expected = S.psql(url, [[SELECT string_agg(DISTINCT message_data->>'sku', ',' ORDER BY message_data->>'sku')
        FROM emt_messages WHERE message_type = 'ItemAdded' AND stream_id = 'cart-1']])
      local got = {}
      for i, d in ipairs(teas) do got[i] = d.id end
      assert.are.equal(expected, table.concat(got, ","))
      local units, same = all[2].doc.units, {}
      for _, d in ipairs(all) do
        if d.doc.units == units then same[#same + 1] = d.id end
      end
      local matched = {}
      for i, d in ipairs(assert(store:docs("sales", { where = { units = units, made_by = "initial" } }))) do
        matched[i] = d.id
      end
      assert.are.same(same, matched)
      assert.truthy(#same >= 1 and #same < #all)
      assert.are.same({}, assert(store:docs("sales", { where = { units = tostring(units) } })))
      assert.are.same({}, assert(store:docs("sales", { where = { made_by = "nobody" } })))

      -- Pages of 2 add up to the whole list, in order.
      local paged, after = {}, nil
      repeat
        local page = assert(store:docs("sales", { limit = 2, after = after }))
        for _, d in ipairs(page) do paged[#paged + 1] = d.id end
        after = page[#page] and page[#page].id
      until #page < 2
      assert.are.same(ids, paged)
      assert.are.same({ "mug", "pot" }, (function()
        local out = {}
        for i, d in ipairs(assert(store:docs("sales", { after = "jam", limit = 2 }))) do out[i] = d.id end
        return out
      end)())
    end)

    it("raises on misuse with a clear message, and refuses what the store cannot look up", function()
      local function raises(pattern, f, ...)
        local ok, err = pcall(f, ...)
        assert.is_false(ok)
        assert.truthy(tostring(err):find(pattern, 1, true), tostring(err))
      end
      raises("doc: document id must be a string, got nil", store.doc, store, "sales")
      raises("doc: collection name must be a string, got table", store.doc, store, {}, "tea")
      raises("docs: unknown option 'wher'", store.docs, store, "sales", { wher = {} })
      raises("docs: limit must be a whole number from 1 to 1000", store.docs, store, "sales", { limit = 0 })
      raises("docs: limit must be a whole number from 1 to 1000", store.docs, store, "sales", { limit = 1001 })
      raises("docs: limit must be a whole number from 1 to 1000", store.docs, store, "sales", { limit = 2.5 })
      raises("docs: where must be a table of key = value, got string", store.docs, store, "sales", { where = "x" })
      raises("docs: where must be a table of key = value, not a list", store.docs, store, "sales", { where = { 1, 2 } })
      raises("docs: options must be a table", store.docs, store, "sales", "x")
      raises("docs: after must be a string", store.docs, store, "sales", { after = {} })
      local none, err = store:docs("sales\0x")
      assert.is_nil(none)
      assert.are.equal("invalid", err.kind)
      assert.truthy(err.message:find("NUL", 1, true), err.message)
      none, err = store:doc("", "tea")
      assert.is_nil(none)
      assert.are.equal("invalid", err.kind)
      -- Numbers are ids as tostring makes them (as a projection makes them).
      assert.is_nil((store:doc("sales", 42)))
    end)
  end)

  describe("from the command line", function()
    before_each(function()
      S.write(dir .. "/sales.lua", SALES)
      load_sales(url, 200)
      D.stop(run_until_caught_up({ "sales" }))
    end)
    local function tide_(args) return S.tide(args .. " --database " .. q(url)) end

    it("tide doc prints the document with the event it reflects, and exits 1 without one", function()
      local want = sales_from_log(url).tea
      local r = tide_("doc sales tea")
      assert.are.equal(0, r.code, r.err)
      assert.are.equal("", r.err)
      local lines = S.lines(r.out)
      assert.are.equal(1, #lines)
      local d = lines[1]
      assert.are.equal("tea", d.id)
      assert.are.equal(want.units, d.doc.units)
      assert.are.equal(want.stream, d.last_stream_id)
      assert.are.equal(want.stream_position, d.last_stream_position)
      assert.are.equal(want.global_position, d.last_global_position)
      -- Keys in a fixed order, compact.
      assert.truthy(r.out:match('^{"id":"tea","doc":{.*},"last_stream_id":"cart%-%d","last_stream_position":%d+,"last_global_position":%d+,"updated_at":"[^"]+Z"}\n$'), r.out)

      r = tide_("doc sales coffee")
      assert.are.equal(1, r.code)
      assert.are.equal("", r.out)
      assert.are.equal("tide doc: no document 'coffee' in collection 'sales'\n", r.err)
    end)

    it("tide docs prints one line per document, filtered with --where, paged with --limit/--after", function()
      local r = tide_("docs sales")
      assert.are.equal(0, r.code, r.err)
      local ids = {}
      for i, d in ipairs(S.lines(r.out)) do ids[i] = d.id end
      assert.are.same({ "cup", "jam", "mug", "pot", "tea" }, ids)

      local tea = S.lines(tide_("doc sales tea").out)[1]
      local same = {}
      for _, d in ipairs(S.lines(r.out)) do
        if d.doc.units == tea.doc.units then same[#same + 1] = d.id end
      end
      -- A number is a number; the same digits quoted are a string; a word is a string.
      r = tide_("docs sales --where units=" .. tea.doc.units .. " --where made_by=initial")
      assert.are.equal(0, r.code, r.err)
      local matched = {}
      for i, d in ipairs(S.lines(r.out)) do matched[i] = d.id end
      assert.are.same(same, matched)
      assert.truthy(#same >= 1 and #same < 5)
      r = tide_("docs sales --where " .. q('units="' .. tea.doc.units .. '"'))
      assert.are.equal(0, r.code, r.err)
      assert.are.equal("", r.out)
      -- An object matches what it contains.
      r = tide_("docs sales --where " .. q('carts={"' .. tea.last_stream_id .. '":true}') .. " --limit 1000")
      assert.are.equal(0, r.code, r.err)
      local found = false
      for _, d in ipairs(S.lines(r.out)) do
        assert.is_true(d.doc.carts[tea.last_stream_id])
        found = found or d.id == "tea"
      end
      assert.is_true(found)

      local page1 = S.lines(tide_("docs sales --limit 2").out)
      assert.are.equal(2, #page1)
      local page2 = S.lines(tide_("docs sales --limit 2 --after " .. page1[2].id).out)
      assert.are.same({ "mug", "pot" }, { page2[1].id, page2[2].id })
      assert.are.equal(0, #S.lines(tide_("docs sales --after tea").out))
      assert.are.equal(0, #S.lines(tide_("docs nothing_here").out))
    end)

    it("refuses bad input with exit 2, a message, no output and nothing changed", function()
      local before = S.psql(url, "SELECT md5(string_agg(collection || id || doc::text, ',' ORDER BY collection, id)) FROM tide_documents")
      local cases = {
        { "docs sales --bogus", "unknown option '--bogus'" },
        { "docs sales --where units", "--where wants KEY=VALUE, got 'units'" },
        { "docs sales --where =1", "--where wants KEY=VALUE, got '=1'" },
        { "docs sales --where a=1 --where a=2", "--where names the key 'a' twice" },
        { "docs sales --limit 0", "--limit wants a number from 1 to 1000, got '0'" },
        { "docs sales --limit 1001", "--limit wants a number from 1 to 1000" },
        { "docs sales --limit x", "--limit wants a number" },
        { "docs sales --where " .. q("a=\255"), "--where wants UTF-8 text" },
        { "docs sales --max 3", "unknown option '--max'" },
        { "doc sales --where a=1", "unknown option '--where'" },
        { "doc sales", "missing arguments: usage is tide doc COLLECTION ID" },
        { "doc sales tea extra", "unexpected argument 'extra'" },
        { "docs", "missing arguments: usage is tide docs COLLECTION" },
        { "docs ''", "collection name" },
        { "doc sales ''", "document id" },
        { "docs sales --after ''", "--after" },
      }
      for _, c in ipairs(cases) do
        local r = tide_(c[1])
        assert.are.equal(2, r.code, c[1] .. ": " .. r.err)
        assert.are.equal("", r.out, c[1])
        assert.truthy(r.err:find(c[2], 1, true), c[1] .. ": " .. r.err)
        assert.truthy(r.err:find("(see `tide do", 1, true), c[1] .. ": " .. r.err)
      end
      assert.are.equal(before, S.psql(url, "SELECT md5(string_agg(collection || id || doc::text, ',' ORDER BY collection, id)) FROM tide_documents"))
      -- --help says how --where reads its value.
      local help = S.tide("docs --help")
      assert.are.equal(0, help.code)
      assert.truthy(help.out:find("JSON when it is JSON", 1, true), help.out)
    end)
  end)
end)
