// spec/browser.mjs — drives headless Chromium for the dashboard's spec, with no npm package:
// the DevTools protocol over --remote-debugging-pipe (JSON messages ended by NUL on file
// descriptors 3 and 4).
//
//   node spec/browser.mjs URL [--wait JS]... [--screenshot PNG [--screenshot-step N]]
//                         [--timeout SECONDS]
//
// Loads URL in a 1280×800 window, then for each --wait waits until the expression JS is
// truthy in the page and prints one line of JSON: {"step", "ok", "page"}, where page is
// what the dashboard shows (see pageState below), plus the page's script errors and console
// complaints (a Content-Security-Policy refusal, say) in "problems". A step that times out
// prints "ok": false with the page as it was, and ends the run (exit 1). The screenshot is
// taken after step N (default: the last), or when a step fails. The caller may act between
// steps: it reads a line, does something, and the next step waits for its effect.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const args = process.argv.slice(2);
const url = args.shift();
const waits = [];
let screenshot = null, screenshotStep = 0, timeoutMs = 15000;
while (args.length) {
  const a = args.shift();
  if (a === "--wait") waits.push(args.shift());
  else if (a === "--screenshot") screenshot = args.shift();
  else if (a === "--screenshot-step") screenshotStep = Number(args.shift());
  else if (a === "--timeout") timeoutMs = Number(args.shift()) * 1000;
  else throw new Error("unknown argument " + a);
}

// What the dashboard shows, read off its DOM as a user would read it.
function pageState() {
  const text = (e) => (e ? e.textContent.trim().replace(/\s+/g, " ") : null);
  const cell = (tr, cls) => text(tr.querySelector("td." + cls));
  const box = document.getElementById("held-back");
  // How many points the sparkline has, and how high it rises above its baseline (pixels).
  const sparkline = (svg) => {
    const height = Number(svg?.getAttribute("height") || 0);
    const points = (svg?.querySelector("polyline")?.getAttribute("points") || "")
      .split(" ").filter(Boolean).map((p) => Number(p.split(",")[1]));
    return { sparkline_points: points.length,
             sparkline_peak: Math.max(0, ...points.map((y) => height - 1 - y)) };
  };
  return {
    location: location.href,
    title: document.title,
    connection: text(document.getElementById("connection")),
    token_form: !document.getElementById("token-form").hidden,
    token_why: text(document.getElementById("token-why")),
    held_back: box && !box.hidden ? text(box) : null,
    headers: [...document.querySelectorAll("#processors thead th")].map(text),
    processors: [...document.querySelectorAll("#processors tbody tr")].map((tr) => ({
      id: tr.dataset.id,
      kind: cell(tr, "kind"),
      state: text(tr.querySelector(".state")),
      checkpoint: cell(tr, "checkpoint"),
      lag_events: cell(tr, "lag-events"),
      lag_seconds: cell(tr, "lag-seconds"),
      rate: cell(tr, "rate"),
      ...sparkline(tr.querySelector("td.rate svg")),
      dead_letters: cell(tr, "dead-letters"),
      last_error: text(tr.querySelector("td.error")?.firstChild ?? null),
    })),
    activity: [...document.querySelectorAll("#activity li")].map((li) => ({
      event: li.dataset.event,
      level: text(li.querySelector(".level")),
      processor: text(li.querySelector(".processor")),
      text: text(li),
    })),
  };
}

const profile = mkdtempSync(join(tmpdir(), "tide-chromium-"));
const chromium = spawn(process.env.CHROMIUM || "chromium", [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
  "--no-first-run", "--no-default-browser-check", "--disable-extensions",
  "--remote-debugging-pipe", "--user-data-dir=" + profile, "--window-size=1280,800",
  "about:blank",
], { stdio: ["ignore", "ignore", "ignore", "pipe", "pipe"] });

let nextId = 0, input = Buffer.alloc(0);
const pending = new Map();
const problems = [];
chromium.stdio[4].on("data", (chunk) => {
  input = Buffer.concat([input, chunk]);
  for (let end; (end = input.indexOf(0)) >= 0; input = input.subarray(end + 1)) {
    const m = JSON.parse(input.subarray(0, end).toString());
    if (m.id !== undefined && pending.has(m.id)) {
      pending.get(m.id)(m);
      pending.delete(m.id);
    } else if (m.method === "Runtime.exceptionThrown") {
      const d = m.params.exceptionDetails;
      problems.push("exception: " + (d.exception?.description || d.text));
    } else if (m.method === "Log.entryAdded" && ["error", "warning"].includes(m.params.entry.level) &&
               m.params.entry.source !== "network") { // a 401 is an answer the page handles
      problems.push(m.params.entry.level + ": " + m.params.entry.text);
    } else if (m.method === "Runtime.consoleAPICalled" && m.params.type === "error") {
      problems.push("console.error: " + m.params.args.map((a) => a.value ?? a.description).join(" "));
    }
  }
});

function send(method, params = {}, sessionId) {
  return new Promise((resolve, reject) => {
    const id = ++nextId;
    pending.set(id, (m) => (m.error ? reject(new Error(method + ": " + m.error.message)) : resolve(m.result)));
    chromium.stdio[3].write(JSON.stringify({ id, method, params, sessionId }) + "\0");
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let failed = false;

async function main() {
  const { targetInfos } = await send("Target.getTargets");
  const tab = targetInfos.find((t) => t.type === "page");
  const { sessionId: s } = await send("Target.attachToTarget", { targetId: tab.targetId, flatten: true });
  await send("Runtime.enable", {}, s);
  await send("Log.enable", {}, s);
  await send("Page.enable", {}, s);
  await send("Emulation.setDeviceMetricsOverride",
    { width: 1280, height: 800, deviceScaleFactor: 1, mobile: false }, s);
  await send("Page.navigate", { url }, s);
  const evaluate = async (expression) => {
    const r = await send("Runtime.evaluate", { expression, returnByValue: true }, s);
    return r.exceptionDetails ? undefined : r.result.value;
  };
  const state = () => evaluate("(" + pageState.toString() + ")()");

  const shoot = async () => {
    const { data } = await send("Page.captureScreenshot", { format: "png" }, s);
    writeFileSync(screenshot, Buffer.from(data, "base64"));
  };
  for (let step = 1; step <= waits.length; step++) {
    const deadline = Date.now() + timeoutMs;
    let ok = false;
    while (!(ok = Boolean(await evaluate(waits[step - 1]))) && Date.now() < deadline) await sleep(100);
    const page = await state();
    if (screenshot && (!ok || step === (screenshotStep || waits.length))) await shoot();
    process.stdout.write(JSON.stringify({ step, ok, page, problems }) + "\n");
    if (!ok) {
      failed = true;
      break;
    }
  }
  if (screenshot && !waits.length) await shoot();
  await send("Browser.close").catch(() => {});
}

const guard = setTimeout(() => {
  process.stderr.write("browser.mjs: Chromium did not answer in time\n");
  chromium.kill("SIGKILL");
  process.exit(2);
}, timeoutMs * (waits.length + 1) + 20000);

main().catch((e) => {
  process.stderr.write("browser.mjs: " + e.message + "\n");
  failed = true;
}).finally(async () => {
  clearTimeout(guard);
  if (chromium.exitCode === null) {
    const exited = new Promise((r) => chromium.once("exit", r));
    if (await Promise.race([exited, sleep(3000).then(() => "late")]) === "late") chromium.kill("SIGKILL");
  }
  rmSync(profile, { recursive: true, force: true });
  process.exit(failed ? 1 : 0);
});
