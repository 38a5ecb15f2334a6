// Live tap: the requests the mesh's proxies see, as they happen, filtered as `skein tap`
// filters them (GET /api/v1/tap streams one JSON object per line). The stream runs while
// the page is open and stops when another page is chosen: every open tap asks every
// proxy for events, and the control plane runs at most 16 at once.

import { el, clock, fixed, eachLine } from "./common.js";

/** Rows kept on the page; older ones go. */
const KEEP = 200;

let running = null;
let seen = 0;

/** The API path for the form's filters. */
export function tapPath(form) {
  const q = new URLSearchParams();
  for (const name of ["to", "from", "path", "method", "status"]) {
    const v = form.elements[name].value.trim();
    if (v) q.set(name, v);
  }
  q.set("max_rps", "50");
  return `/api/v1/tap?${q}`;
}

function say(text, bad) {
  const status = document.getElementById("tap-status");
  status.className = bad ? "status error" : "status";
  status.textContent = text;
}

function row(e) {
  const failed = e.status >= 500 || (e.grpc_status !== null && e.grpc_status !== undefined && e.grpc_status !== 0) || e.error;
  return el(
    "tr",
    { class: failed ? "bad" : "" },
    el("td", {}, clock(e.unix_ms / 1000)),
    el("td", {}, e.direction),
    el("td", {}, e.src || "–"),
    el("td", {}, e.dst || "–"),
    el("td", {}, e.method || ""),
    el("td", { class: "path" }, e.path || ""),
    el("td", { class: "num" }, String(e.status ?? "")),
    el("td", { class: "num" }, fixed(e.latency_ms, 2)),
    el("td", {}, e.tls ? "yes" : "no"),
    el("td", {}, [e.route, e.error].filter(Boolean).join(" · ")),
  );
}

/** Reads the stream at `path` until it ends or `stop` aborts it. */
async function follow(path, stop) {
  const body = document.querySelector("#tap-events tbody");
  const r = await fetch(path, { credentials: "same-origin", signal: stop.signal });
  if (r.status === 401) {
    window.location.assign("/ui/login");
    return;
  }
  if (!r.ok) {
    const text = await r.text();
    let why = text;
    try {
      why = JSON.parse(text).error || text;
    } catch {
      // not JSON: the text as it is
    }
    throw new Error(why.trim() || `HTTP ${r.status}`);
  }
  say("Tapping: new requests appear at the top.");
  await eachLine(
    r,
    (e) => {
      body.prepend(row(e));
      seen += 1;
    },
    () => {
      while (body.rows.length > KEEP) body.deleteRow(-1);
      document.getElementById("tap-count").textContent = `${seen} requests seen`;
    },
  );
}

/** Starts tapping with the form's filters (stopping any tap running). */
export function start() {
  stop();
  const form = document.getElementById("tap-form");
  const controller = new AbortController();
  running = controller;
  seen = 0;
  document.querySelector("#tap-events tbody").replaceChildren();
  document.getElementById("tap-count").textContent = "0 requests seen";
  say("Connecting…");
  follow(tapPath(form), controller)
    .then(() => {
      if (running === controller) say("The tap ended (the control plane closed it); press Start to tap again.");
    })
    .catch((e) => {
      if (e.name !== "AbortError") say(`Cannot tap: ${e.message}`, true);
    })
    .finally(() => {
      if (running === controller) running = null;
    });
}

/** Stops the tap, if one runs. */
export function stop() {
  if (running) {
    running.abort();
    running = null;
    say("Stopped.");
  }
}

document.getElementById("tap-form").addEventListener("submit", (e) => {
  e.preventDefault();
  start();
});
document.getElementById("tap-stop").addEventListener("click", () => stop());
