// Traces: the recent traces the control plane keeps (failing ones first to hand with a
// filter), a waterfall of one, and what the proxies decided about one request ID (as
// `skein why` shows it). Every span a proxy recorded carries its request's ID, so a
// waterfall's span leads to its explanation.

import { api, setStatus, el, svg, clock, fixed } from "./common.js";

/** The trace whose waterfall shows, kept across refreshes. */
let open = null;
/** What the list was drawn from, so an unchanged list keeps the keyboard's focus. */
let listed = null;

const ROW = 24;
const LABEL = 300;
const BARS = 560;

/** The API path for the list's filters. */
function listPath() {
  const form = document.getElementById("traces-form");
  const q = new URLSearchParams({ limit: "30" });
  if (form.elements.errors.checked) q.set("errors", "true");
  const service = form.elements.service.value.trim();
  if (service) q.set("service", service);
  const min = form.elements.min.value.trim();
  if (min) q.set("min_duration", min);
  return `/api/v1/traces?${q}`;
}

const say = setStatus;

/** Spans in waterfall order: each after its parent, siblings by start; with depth. */
export function ordered(spans) {
  const ids = new Set(spans.map((s) => s.spanId));
  const children = new Map();
  for (const s of spans) {
    const parent = s.parent_spanId && ids.has(s.parent_spanId) ? s.parent_spanId : "";
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(s);
  }
  for (const list of children.values()) list.sort((a, b) => a.startUnixNano - b.startUnixNano || a.spanId.localeCompare(b.spanId));
  const out = [];
  const walk = (parent, depth) => {
    for (const s of children.get(parent) || []) {
      out.push({ span: s, depth });
      walk(s.spanId, depth + 1);
    }
  };
  walk("", 0);
  return out;
}

async function showTrace(id) {
  open = id;
  const host = document.getElementById("trace-waterfall");
  try {
    const t = await api(`/api/v1/traces/${encodeURIComponent(id)}`);
    const rows = ordered(t.spans);
    const t0 = Math.min(...t.spans.map((s) => s.startUnixNano));
    const t1 = Math.max(...t.spans.map((s) => s.endUnixNano));
    const total = Math.max(1, t1 - t0);
    const x = (ns) => LABEL + ((ns - t0) / total) * BARS;
    const lines = rows.map(({ span, depth }, i) => {
      const y = i * ROW + 4;
      const rid = span.attributes["skein.request_id"];
      const g = svg(
        "g",
        { class: `span${span.error ? " error" : ""}`, "data-span": span.spanId },
        svg("text", { x: 6 + depth * 14, y: y + 14 }, `${span.service} · ${span.name}`),
        svg("rect", { x: x(span.startUnixNano), y: y + 2, width: Math.max(2, x(span.endUnixNano) - x(span.startUnixNano)), height: ROW - 8, rx: 2 }),
        svg("text", { x: Math.min(LABEL + BARS - 4, x(span.endUnixNano) + 4), y: y + 14, class: "ms" }, `${fixed((span.endUnixNano - span.startUnixNano) / 1e6, 2)} ms`),
      );
      return { g, span, rid };
    });
    const picture = svg(
      "svg",
      { viewBox: `0 0 ${LABEL + BARS + 70} ${rows.length * ROW + 8}`, width: LABEL + BARS + 70, height: rows.length * ROW + 8, role: "img", "aria-label": `Waterfall of trace ${id}: ${rows.length} spans over ${fixed(total / 1e6, 2)} ms` },
      ...lines.map((l) => l.g),
    );
    const table = el(
      "table",
      { class: "grid" },
      el("caption", {}, "The same spans in words; a span's request ID shows what the proxies decided about it"),
      el("thead", {}, el("tr", {}, ...["Service", "Span", "Kind", "Start (ms)", "Duration (ms)", "Status", "Request ID"].map((h) => el("th", { scope: "col" }, h)))),
      el(
        "tbody",
        {},
        ...lines.map(({ span, rid }) => {
          const find = rid ? el("button", { type: "button", class: "link", "data-request-id": rid }, rid) : "–";
          if (rid) find.addEventListener("click", () => why(rid));
          return el(
            "tr",
            { class: span.error ? "bad" : "" },
            el("td", {}, span.service),
            el("td", {}, span.name),
            el("td", {}, span.kind),
            el("td", { class: "num" }, fixed((span.startUnixNano - t0) / 1e6, 2)),
            el("td", { class: "num" }, fixed((span.endUnixNano - span.startUnixNano) / 1e6, 2)),
            el("td", {}, span.error ? `error${span.statusMessage ? `: ${span.statusMessage}` : ""}` : "ok"),
            el("td", {}, find),
          );
        }),
      ),
    );
    host.replaceChildren(el("h2", { id: "trace-title" }, `Trace ${id}`), picture, table);
  } catch (e) {
    host.replaceChildren(el("p", { class: "status error" }, `Cannot show trace ${id}: ${e.message}`));
  }
}

/** What the proxies decided about request `id`, as `skein why` says it. */
export async function why(id) {
  const form = document.getElementById("why-form");
  form.elements.request.value = id;
  const host = document.getElementById("why-result");
  try {
    const w = await api(`/api/v1/why?request_id=${encodeURIComponent(id)}`);
    if (!w.hops.length) {
      host.replaceChildren(el("p", { class: "status" }, `No decision about ${id} is recorded: the proxies record failed and retried requests, and requests of sampled traces; the newest 10,000 are kept.`));
      return;
    }
    host.replaceChildren(
      el(
        "table",
        { class: "grid", id: "why-hops" },
        el("caption", {}, `What each proxy decided about request ${w.requestId}`),
        el("thead", {}, el("tr", {}, ...["Time", "Proxy", "Side", "Service", "Route", "Endpoint", "Tries", "Status", "Why"].map((h) => el("th", { scope: "col" }, h)))),
        el(
          "tbody",
          {},
          ...w.hops.map((h) =>
            el(
              "tr",
              { class: h.status >= 500 ? "bad" : "" },
              el("td", {}, clock(h.atUnixMs / 1000)),
              el("td", {}, h.workload),
              el("td", {}, h.direction),
              el("td", {}, h.service),
              el("td", {}, h.route ? `${h.route}${h.rule === undefined ? "" : ` rule ${h.rule}`}` : "–"),
              el("td", {}, h.endpoint || "–"),
              el("td", { class: "num" }, String(h.tries)),
              el("td", { class: "num" }, `${h.status}${h.reason ? ` (${h.reason})` : ""}`),
              el("td", {}, h.why),
            ),
          ),
        ),
      ),
    );
  } catch (e) {
    host.replaceChildren(el("p", { class: "status error" }, `Cannot explain ${id}: ${e.message}`));
  }
}

export async function traces() {
  try {
    const list = await api(listPath());
    const from = JSON.stringify(list.traces);
    if (from !== listed) {
      listed = from;
      const body = document.querySelector("#traces-list tbody");
      const focused = body.contains(document.activeElement) ? document.activeElement.dataset.trace : null;
      body.replaceChildren(
        ...list.traces.map((t) => {
          const show = el("button", { type: "button", class: "link", "data-trace": t.traceId }, t.traceId.slice(0, 12));
          show.addEventListener("click", () => showTrace(t.traceId));
          return el(
            "tr",
            { class: t.errors ? "bad" : "", "data-trace": t.traceId },
            el("td", {}, clock(t.startUnixNano / 1e9)),
            el("td", {}, show),
            el("td", {}, t.root),
            el("td", { class: "num" }, fixed(t.durationUs / 1000, 2)),
            el("td", { class: "num" }, String(t.spans)),
            el("td", { class: "num" }, String(t.errors)),
            el("td", {}, t.services.join(", ")),
          );
        }),
      );
      if (focused) body.querySelector(`button[data-trace="${CSS.escape(focused)}"]`)?.focus();
    }
    say("traces-status", `${list.traces.length} shown of ${list.kept} kept`);
    if (open && !document.getElementById("trace-title")) showTrace(open);
  } catch (e) {
    say("traces-status", `Cannot read the traces: ${e.message}`, true);
  }
}

document.getElementById("traces-form").addEventListener("submit", (e) => {
  e.preventDefault();
  listed = null;
  traces();
});
document.getElementById("why-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const id = e.target.elements.request.value.trim();
  if (id) why(id);
});
