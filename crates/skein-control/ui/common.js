// What every page of the dashboard shares: reading and changing through the control
// plane's API (the one the CLI uses) with the session cookie, building elements, and
// saying numbers and health the same way everywhere.

/** GET an API path as JSON; a lapsed session goes back to the login page. */
export async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  return answer(path, r);
}

/** POST to an API path with the header that marks a change as the dashboard's own (the
 * API refuses a session's change without it: another site's form cannot send it). */
export async function change(path) {
  const r = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { Accept: "application/json", "X-Skein-Csrf": "1" },
  });
  return answer(path, r);
}

async function answer(path, r) {
  if (r.status === 401) {
    window.location.assign("/ui/login");
    throw new Error("the session ended");
  }
  const text = await r.text();
  let body = {};
  try {
    body = text ? JSON.parse(text) : {};
  } catch {
    body = { error: text.trim() };
  }
  if (!r.ok) throw new Error(body.error || `${path}: HTTP ${r.status}`);
  return body;
}

/** Reads a stream of JSON lines (`GET /api/v1/tap`) from the answer `r`, calling `each`
 * with every object and `after` after every chunk, until the stream ends or is aborted. */
export async function eachLine(r, each, after = () => {}) {
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let rest = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    rest += value;
    const lines = rest.split("\n");
    rest = lines.pop();
    for (const line of lines) {
      if (line.trim()) each(JSON.parse(line));
    }
    after();
  }
}

/** Sets a status line's text and class, only if they changed: a live region announces
 * every change, and a redraw that says the same thing again is not news. */
export function setStatus(id, text, bad) {
  const p = document.getElementById(id);
  const cls = bad ? "status error" : "status";
  if (p.className !== cls) p.className = cls;
  if (p.textContent !== text) p.textContent = text;
}

/** An HTML element with attributes (`class`, `data-*`, `aria-*`, …) and children
 * (elements or text). */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : String(v));
  }
  e.append(...children.filter((c) => c !== null && c !== undefined));
  return e;
}

/** An SVG element, as [`el`]. */
export function svg(tag, attrs = {}, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== null && v !== undefined) e.setAttribute(k, String(v));
  }
  e.append(...children.filter((c) => c !== null && c !== undefined));
  return e;
}

export function cell(text, cls) {
  return el("td", cls ? { class: cls } : {}, text);
}

const missing = (x) => x === null || x === undefined;
export const fixed = (x, digits) => (missing(x) ? "–" : Number(x).toFixed(digits));
export const percent = (x) => (missing(x) ? "–" : `${(x * 100).toFixed(1)} %`);

/** Below this success rate a service or edge is failing (red); below [`WARN_BELOW`],
 * worth a look (amber). Linkerd's dashboard draws the same lines. */
export const FAILING_BELOW = 0.95;
export const WARN_BELOW = 0.99;

/** `good`, `warn` or `failing` for a success rate (a share), `none` without requests. */
export function health(successRate) {
  if (missing(successRate)) return "none";
  if (successRate < FAILING_BELOW) return "failing";
  if (successRate < WARN_BELOW) return "warn";
  return "good";
}

/** What is wrong with a row of signals, in words: failing, denied, or nothing. */
export function trouble(row) {
  const said = [];
  if (health(row.success_rate) === "failing") said.push("failing");
  if (row.denied > 0) said.push("denied");
  return said;
}

/** `namespace/name`, or the bare name of a caller outside any namespace (a client
 * without a mesh identity). */
export function qualified(namespace, name) {
  return namespace ? `${namespace}/${name}` : name;
}

/** A time of day for an RFC 3339 or unix-seconds time. */
export function clock(t) {
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleTimeString();
}
