// spec/webhook_receiver.mjs — the HTTP endpoint spec/publisher_spec.lua delivers to: it
// records every request as one JSON line in LOG, and misbehaves on purpose, as the event's
// data asks, per message id (its Idempotency-Key):
//   data.fail = N  answers 500 to the first N arrivals (-1: always);
//   data.hang = N  never answers the first N arrivals (the client must time out or die);
// and answers 200 otherwise. Prints "port N" once listening on 127.0.0.1.
// Usage: node spec/webhook_receiver.mjs LOG
import { appendFileSync } from "node:fs";
import { createServer } from "node:http";

const log = process.argv[2];
const seen = new Map(); // message id -> arrivals so far

const server = createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const text = Buffer.concat(chunks).toString("utf8");
    let event = null;
    try { event = JSON.parse(text); } catch { /* recorded as it came */ }
    const key = req.headers["idempotency-key"] ?? null;
    const n = (seen.get(key) ?? 0) + 1;
    seen.set(key, n);
    const data = (event && event.data) || {};
    const fail = typeof data.fail === "number" && (data.fail < 0 || n <= data.fail);
    const hang = typeof data.hang === "number" && n <= data.hang;
    const answer = hang ? "none" : fail ? 500 : 200;
    appendFileSync(log, JSON.stringify({
      arrival: n, key, method: req.method, url: req.url, headers: req.headers, body: text,
      event, answer,
    }) + "\n");
    if (hang) return; // the socket stays open until the client gives up
    res.writeHead(answer, { "content-type": "text/plain" });
    res.end(fail ? "receiver failing on purpose" : "ok");
  });
});
server.keepAliveTimeout = 60000;
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`port ${server.address().port}\n`);
});
