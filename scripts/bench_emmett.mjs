// scripts/bench_emmett.mjs — the Emmett side of scripts/bench: the real
// @event-driven-io/emmett-postgresql 0.42 (installed by `npm ci` in spec/interop), driven
// the way a Node.js service drives it, against a database of its own on the same server.
// Prints one JSON object per command.
//
//   node bench_emmett.mjs migrate URL
//   node bench_emmett.mjs append URL CLIENTS EVENTS_PER_CALL SECONDS STREAMS DATA_JSON
//       CLIENTS loops in this process, one append in flight each, sharing the store's pool;
//       each call appends to one of STREAMS streams picked at random (expected: any)
//       → {"calls","conflicts","events","seconds","events_per_s","p50_ms","p99_ms"}
//   node bench_emmett.mjs read URL EVENTS DATA_JSON
//       writes one stream of EVENTS events (100 per call), then reads it with readStream
//       and folds it with aggregateStream, 6 times each; the first is a warm-up
//       → {"read_ms","aggregate_ms"} (medians of 5)
//   node bench_emmett.mjs consume URL EVENTS BATCH
//       one reactor in a PostgreSQL consumer works off EVENTS events already in the store
//       (batches of BATCH, no pause between full batches) → {"events","seconds","events_per_s"}
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';

// The package lives under spec/interop/node_modules, which Node's resolution does not
// search from scripts/: load its entry point by path (its own imports then resolve there).
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const entry = join(root, 'spec/interop/node_modules/@event-driven-io/emmett-postgresql/dist/index.js');
const { getPostgreSQLEventStore, postgreSQLEventStoreConsumer } = await import(pathToFileURL(entry).href);

const [cmd, url, ...args] = process.argv.slice(2);
const now = () => Number(process.hrtime.bigint()) / 1e6;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.ceil(xs.length / 2) - 1];
const quantile = (sorted, q) => (sorted.length ? sorted[Math.floor(sorted.length * q)] : 0);
const out = (v) => console.log(JSON.stringify(v));

const store = getPostgreSQLEventStore(url);
let code = 0;
try {
  if (cmd === 'migrate') {
    await store.schema.migrate();
    out({ migrated: true });
  } else if (cmd === 'append') {
    const [clients, perCall, seconds, streams] = args.slice(0, 4).map(Number);
    const data = JSON.parse(args[4]);
    const events = Array.from({ length: perCall }, () => ({ type: 'BenchEvent', data }));
    // One warm call so the pool and Emmett's prepared paths exist before the clock starts.
    await store.appendToStream('warm-0', events);
    const lat = [];
    let calls = 0;
    let conflicts = 0;
    const start = now();
    const deadline = start + seconds * 1000;
    const client = async () => {
      while (now() < deadline) {
        const stream = 'bench-' + Math.floor(Math.random() * streams);
        const t0 = now();
        // Two concurrent first appends to one stream: Emmett fails the loser with a version
        // conflict even without an expected version; a service would retry, so do we.
        for (;;) {
          try {
            await store.appendToStream(stream, events);
            break;
          } catch (e) {
            if (!/ExpectedVersionConflictError/.test(e.constructor?.name ?? '')) throw e;
            conflicts++;
          }
        }
        lat.push(now() - t0);
        calls++;
      }
    };
    await Promise.all(Array.from({ length: clients }, client));
    const secs = (now() - start) / 1000;
    lat.sort((a, b) => a - b);
    out({
      calls,
      conflicts,
      events: calls * perCall,
      seconds: secs,
      events_per_s: (calls * perCall) / secs,
      p50_ms: quantile(lat, 0.5),
      p99_ms: quantile(lat, 0.99),
    });
  } else if (cmd === 'read') {
    const n = Number(args[0]);
    const data = JSON.parse(args[1]);
    const stream = 'big-1';
    for (let written = 0; written < n; written += 100) {
      const k = Math.min(100, n - written);
      await store.appendToStream(stream, Array.from({ length: k }, () => ({ type: 'Added', data })));
    }
    const reads = [];
    const aggs = [];
    for (let i = 0; i < 6; i++) {
      const t0 = now();
      const { events } = await store.readStream(stream);
      const t1 = now();
      const { state, currentStreamVersion } = await store.aggregateStream(stream, {
        initialState: () => ({ sum: 0 }),
        evolve: (s, e) => ({ sum: s.sum + e.data.amount }),
      });
      const t2 = now();
      if (events.length !== n || state.sum !== n || Number(currentStreamVersion) !== n)
        throw new Error(`read ${events.length} events, summed ${state.sum}, version ${currentStreamVersion}`);
      if (i > 0) {
        reads.push(t1 - t0);
        aggs.push(t2 - t1);
      }
    }
    out({ read_ms: median(reads), aggregate_ms: median(aggs) });
  } else if (cmd === 'consume') {
    const [n, batch] = args.map(Number);
    // pullingFrequencyInMs: 0 — Emmett's puller sleeps that long between full batches
    // (50 ms by default, with batches of 100: at most ~2,000 events/s); 0 is its best case.
    const consumer = postgreSQLEventStoreConsumer({
      connectionString: url,
      pulling: { batchSize: batch, pullingFrequencyInMs: 0 },
    });
    let seen = 0;
    let sum = 0;
    consumer.reactor({
      processorId: 'bench',
      eachMessage: async (m) => {
        sum += m.data.amount;
        if (++seen >= n) return { type: 'STOP' };
      },
    });
    const guard = setTimeout(() => consumer.stop(), 600000);
    const t0 = now();
    await consumer.start();
    const secs = (now() - t0) / 1000;
    clearTimeout(guard);
    await consumer.close();
    if (seen !== n || sum !== n) throw new Error(`the consumer saw ${seen} of ${n} events (sum ${sum})`);
    out({ events: seen, seconds: secs, events_per_s: seen / secs });
  } else {
    console.error(`bench_emmett.mjs: unknown command ${cmd}`);
    code = 2;
  }
} catch (e) {
  console.error(`bench_emmett.mjs ${cmd}: ${e.name}: ${e.message}`);
  code = 1;
} finally {
  await store.close();
}
process.exit(code);
