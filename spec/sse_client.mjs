// spec/sse_client.mjs — a Server-Sent Events client for the specs of GET /log/subscribe,
// with what a spec needs to play a real subscriber: every event it gets is one JSON line in
// OUT ({"id", "event", "data"}, as soon as it has arrived), comments count as {"comment"},
// and the end of the response is {"closed": true}.
//   node spec/sse_client.mjs URL OUT [--last-event-id ID] [--max N] [--pause]
// --max N: hangs up after N events (a client that goes away mid-way), then {"hung_up": true}.
// --pause: stops reading once the headers are in (a slow consumer), until SIGUSR1.
// The status and headers go first, as {"status", "headers"}.
import http from "node:http";
import fs from "node:fs";

const [url, out, ...rest] = process.argv.slice(2);
const opt = {};
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === "--last-event-id") opt.lastEventId = rest[++i];
  else if (rest[i] === "--max") opt.max = Number(rest[++i]);
  else if (rest[i] === "--pause") opt.pause = true;
  else throw new Error("unknown argument " + rest[i]);
}
const fd = fs.openSync(out, "a");
const put = (o) => fs.writeSync(fd, JSON.stringify(o) + "\n");
const headers = opt.lastEventId ? { "Last-Event-ID": opt.lastEventId } : {};
let events = 0;

const req = http.get(url, { headers }, (res) => {
  put({ status: res.statusCode, headers: res.headers });
  res.setEncoding("utf8");
  let buf = "";
  res.on("data", (chunk) => {
    buf += chunk;
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const ev = {};
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) { put({ comment: line.slice(1).trim() }); continue; }
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") data.push(value);
        else if (field === "id" || field === "event") ev[field] = value;
      }
      if (!data.length) continue;
      ev.data = data.join("\n");
      put(ev);
      if (opt.max && ++events >= opt.max) {
        req.destroy();
        put({ hung_up: true });
        fs.closeSync(fd);
        process.exit(0);
      }
    }
  });
  let closed = false;
  const close = (why) => {
    if (closed) return;
    closed = true;
    put(why ? { closed: true, error: why } : { closed: true });
    process.exit(0);
  };
  res.on("end", () => close());
  res.on("error", (e) => close(String(e)));
  res.on("close", () => close(res.complete ? undefined : "cut off"));
  if (opt.pause) {
    res.pause();
    // A socket that is not read is no active handle: keep the process up meanwhile.
    const alive = setInterval(() => {}, 1 << 30);
    process.on("SIGUSR1", () => { clearInterval(alive); res.resume(); });
  }
});
req.on("error", (e) => { put({ error: String(e) }); process.exit(0); });
