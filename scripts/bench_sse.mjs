// scripts/bench_sse.mjs — SSE fan-out for scripts/bench: N subscribers of the daemon's
// GET /log/subscribe, each from the start of the log, read until each has seen EVENTS
// events; prints {"subscribers", "events", "seconds", "events_per_s"} (events delivered in
// all, per second), or {"error": ...}.
// usage: node scripts/bench_sse.mjs BASE_URL SUBSCRIBERS EVENTS
import http from "node:http";

const [base, subscribers, events] = [process.argv[2], +process.argv[3], +process.argv[4]];
const started = process.hrtime.bigint();
let done = 0;
const timer = setTimeout(() => fail("timed out after 120 s"), 120000);

function fail(message) {
  console.log(JSON.stringify({ error: message }));
  process.exit(1);
}

for (let i = 0; i < subscribers; i++) {
  let seen = 0, tail = "\n"; // as if a line ended before the first
  const req = http.get(base + "/log/subscribe?after=0:0", (res) => {
    if (res.statusCode !== 200) fail("status " + res.statusCode);
    res.setEncoding("utf8");
    res.on("data", (chunk) => {
      // Each event has one "id:" line; count them across chunk boundaries.
      const text = tail + chunk;
      let at = 0;
      while ((at = text.indexOf("\nid:", at)) !== -1) { seen++; at += 4; }
      tail = text.slice(-3);
      if (seen >= events) {
        req.destroy();
        if (++done === subscribers) {
          clearTimeout(timer);
          const seconds = Number(process.hrtime.bigint() - started) / 1e9;
          console.log(JSON.stringify({ subscribers, events: subscribers * events, seconds,
                                       events_per_s: subscribers * events / seconds }));
          process.exit(0);
        }
      }
    });
  });
  req.on("error", (e) => { if (seen < events) fail(e.message); });
}
