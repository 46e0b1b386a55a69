// The real Emmett (emmett-postgresql 0.42.0) as a command line for spec/interop_spec.lua:
//   node emmett.mjs migrate URL
//   node emmett.mjs append URL STREAM TYPE DATA_JSON [EXPECTED]   → {"nextExpectedStreamVersion":..}
//   node emmett.mjs read URL STREAM                               → one JSON event per line
//   node emmett.mjs aggregate URL STREAM                          → {"state":..,"currentStreamVersion":..}
//   node emmett.mjs consume URL PROCESSOR_ID COUNT                → the events its reactor saw
// Exit codes: 0 ok, 3 expected-version conflict, 1 anything else.
import { getPostgreSQLEventStore, postgreSQLEventStoreConsumer } from '@event-driven-io/emmett-postgresql';

const [cmd, url, ...args] = process.argv.slice(2);
const json = (v) => JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? Number(x) : x));

const store = getPostgreSQLEventStore(url);
let code = 0;
try {
  if (cmd === 'migrate') {
    await store.schema.migrate();
    console.log('migrated');
  } else if (cmd === 'append') {
    const [stream, type, data, expected] = args;
    const options = expected === undefined ? {} : { expectedStreamVersion: BigInt(expected) };
    const result = await store.appendToStream(stream, [{ type, data: JSON.parse(data) }], options);
    console.log(json(result));
  } else if (cmd === 'read') {
    const { events } = await store.readStream(args[0]);
    for (const e of events) console.log(json(e));
  } else if (cmd === 'aggregate') {
    const result = await store.aggregateStream(args[0], {
      initialState: () => ({ n: 0 }),
      evolve: (state, e) => ({ n: state.n + (e.data.amount ?? 0) }),
    });
    console.log(json(result));
  } else if (cmd === 'consume') {
    const [processorId, count] = args;
    const seen = [];
    const consumer = postgreSQLEventStoreConsumer({ connectionString: url, pulling: { batchSize: 100 } });
    consumer.reactor({
      processorId,
      eachMessage: async (m) => {
        seen.push({ type: m.type, streamName: m.metadata.streamName, globalPosition: m.metadata.globalPosition });
        if (seen.length >= Number(count)) return { type: 'STOP' };
      },
    });
    const timeout = setTimeout(() => consumer.stop(), 20000);
    await consumer.start();
    clearTimeout(timeout);
    await consumer.close();
    for (const s of seen) console.log(json(s));
  } else {
    console.error(`emmett.mjs: unknown command ${cmd}`);
    code = 2;
  }
} catch (e) {
  // emmett-postgresql bundles its own copy of the error class: match it by name.
  const conflict = /ExpectedVersionConflictError/.test(e.constructor?.name ?? '');
  console.error(`emmett.mjs ${cmd}: ${conflict ? 'ExpectedVersionConflictError' : e.name}: ${e.message}`);
  code = conflict ? 3 : 1;
} finally {
  await store.close();
}
process.exit(code);
