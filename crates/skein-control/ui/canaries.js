// Canaries: each rollout with its phase, the canary's weight over time (uPlot, vendored),
// the checks with the metric values that decided each step, and the operator's buttons:
// promote, pause or resume, abort. The buttons are the admin's: a read-only session sees
// them disabled, and the API refuses a viewer's request whatever the page does.

import uPlot from "./uplot.js";
import { api, setStatus, change, el, clock, fixed } from "./common.js";

/** What each card was drawn from, so that an unchanged rollout is not redrawn (which
 * would take the keyboard's focus away from its buttons every refresh). */
const drawnFrom = new Map();
/** Charts to free when their card goes. */
const charts = new Map();

const FINAL = ["Succeeded", "Failed"];

/** The phase in words, with the weight. */
function phaseText(spec, status) {
  const to = `${status.canaryWeight ?? 0} % to ${spec.canary} (stable ${spec.stable})`;
  const paused = status.paused ? ", paused" : "";
  switch (status.phase) {
    case "Progressing":
      return `Progressing: ${to}${paused}`;
    case "Promoting":
      return `Promoting: 100 % to ${spec.canary}`;
    case "Succeeded":
      return `Succeeded: ${spec.canary} serves all of ${spec.targetRef.name}'s traffic`;
    case "Failed":
      return `Rolled back: ${spec.stable} serves all of ${spec.targetRef.name}'s traffic`;
    default:
      return `${status.phase || "Initializing"}: ${to}${paused}`;
  }
}

/** The canary's weight after each event, as a step chart's series (unix seconds). */
export function weightSeries(events) {
  const xs = [];
  const ys = [];
  for (const e of events) {
    const t = Date.parse(e.time) / 1000;
    if (Number.isNaN(t)) continue;
    xs.push(t);
    ys.push(e.weight);
  }
  if (xs.length) {
    xs.push(Math.max(Date.now() / 1000, xs[xs.length - 1]));
    ys.push(ys[ys.length - 1]);
  }
  return [xs, ys];
}

function chart(key, host, events) {
  charts.get(key)?.destroy();
  const data = weightSeries(events);
  if (!data[0].length) {
    host.replaceChildren(el("p", {}, "No step yet."));
    return;
  }
  const plot = new uPlot(
    {
      width: Math.min(640, Math.max(320, host.clientWidth || 560)),
      height: 170,
      legend: { show: false },
      cursor: { show: false },
      scales: { x: { time: true }, y: { range: [0, 100] } },
      axes: [{ stroke: "#1b1f24" }, { stroke: "#1b1f24", size: 56, values: (u, ticks) => ticks.map((v) => `${v} %`) }],
      series: [{}, { label: "canary weight", stroke: "#1d4ed8", width: 2, fill: "rgba(29, 78, 216, 0.12)", paths: uPlot.paths.stepped({ align: 1 }) }],
    },
    data,
    host,
  );
  charts.set(key, plot);
}

/** Presses `action` on the Canary `key` (`namespace/name`), saying what came of it. */
async function press(key, action, say) {
  const [namespace, name] = key.split("/");
  say.className = "status";
  say.textContent = `Asking to ${action} ${key}…`;
  try {
    await change(`/api/v1/canaries/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}/${action}`);
    say.textContent = `${action} of ${key} requested: the controller carries it out at its next pass.`;
    setTimeout(() => canaries(), 400);
  } catch (e) {
    say.className = "status error";
    say.textContent = `Cannot ${action} ${key}: ${e.message}`;
  }
}

function card(c, role) {
  const key = `${c.metadata.namespace}/${c.metadata.name}`;
  const spec = c.spec;
  const status = c.status || {};
  const over = FINAL.includes(status.phase);
  const viewer = role !== "admin";
  const why = viewer
    ? "A read-only session cannot change rollouts; log in with the admin token to use these buttons."
    : over
      ? "The rollout is over; a change of the Canary's spec starts the next one."
      : "";
  const say = el("p", { class: "status", role: "status" });
  const button = (action, text) => {
    const b = el("button", { type: "button", "data-action": action, disabled: viewer || over, "aria-describedby": why ? `${id}-why` : null }, text);
    b.addEventListener("click", () => press(key, action, say));
    return b;
  };
  const id = idOf(key);
  const plotHost = el("div", { class: "plot" });
  const checks = (status.checks || []).slice(-12);
  const article = el(
    "article",
    { class: "canary", "data-canary": key, "data-phase": status.phase || "Initializing", "aria-labelledby": `${id}-title` },
    el("h2", { id: `${id}-title` }, key),
    el("p", { class: `phase ${status.phase === "Failed" ? "bad" : ""}` }, phaseText(spec, status)),
    status.message ? el("p", { class: "message" }, status.message) : null,
    el(
      "p",
      { class: "facts" },
      `Target ${spec.targetRef.name}; steps ${(spec.analysis?.stepWeights || []).join(" → ") || "–"} %; a check every ${spec.analysis?.interval ?? "–"}; failed checks ${status.failedChecks ?? 0} of ${spec.analysis?.threshold ?? "–"} allowed`,
      status.nextCheckTime && !over ? `; next check at ${clock(status.nextCheckTime)}` : "",
    ),
    el(
      "div",
      { class: "actions", role: "group", "aria-label": `Change the rollout of ${key}` },
      button("promote", "Promote"),
      status.paused ? button("resume", "Resume") : button("pause", "Pause"),
      button("abort", "Abort (roll back)"),
    ),
    why ? el("p", { class: "note", id: `${id}-why` }, why) : null,
    say,
    el("figure", {}, plotHost, el("figcaption", {}, `The canary's share of ${spec.targetRef.name}'s requests over time (the events below in words)`)),
    el(
      "table",
      { class: "grid checks" },
      el("caption", {}, `The newest checks and the values that decided them`),
      el("thead", {}, el("tr", {}, ...["Time", "Weight", "Result", "Requests", "Success", "p99 (ms)", "Why"].map((h) => el("th", { scope: "col" }, h)))),
      el(
        "tbody",
        {},
        ...checks.map((k) =>
          el(
            "tr",
            { "data-result": k.result },
            el("td", {}, clock(k.time)),
            el("td", { class: "num" }, `${k.weight} %`),
            el("td", { class: k.result === "failed" ? "bad" : "" }, k.result),
            el("td", { class: "num" }, String(k.requests)),
            el("td", { class: "num" }, k.successRate === undefined ? "–" : `${fixed(k.successRate, 2)} %`),
            el("td", { class: "num" }, fixed(k.p99Ms, 1)),
            el("td", {}, k.message || ""),
          ),
        ),
      ),
    ),
    el("h3", {}, "Events"),
    el(
      "ol",
      { class: "events" },
      ...(status.events || []).slice(-16).map((e) => el("li", {}, `${clock(e.time)} · ${e.weight} % · ${e.phase} · ${e.message}`)),
    ),
  );
  return { article, plotHost, key, events: status.events || [] };
}

let role = "viewer";

/** Element ids for each rollout's card, unique whatever its name holds. */
const ids = new Map();
function idOf(key) {
  if (!ids.has(key)) ids.set(key, `canary-${ids.size + 1}`);
  return ids.get(key);
}

/** The page, for a session whose role is `sessionRole`. */
export async function canaries(sessionRole) {
  if (sessionRole) role = sessionRole;
  const status = document.getElementById("canaries-status");
  const host = document.getElementById("canary-list");
  try {
    const list = await api("/api/v1/resources/canaries");
    const items = [...list.items].sort((a, b) =>
      `${a.metadata.namespace}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace}/${b.metadata.name}`),
    );
    const keep = new Set();
    for (const c of items) {
      const key = `${c.metadata.namespace}/${c.metadata.name}`;
      keep.add(key);
      const from = JSON.stringify([role, c.spec, c.status]);
      if (drawnFrom.get(key) === from) continue;
      drawnFrom.set(key, from);
      const made = card(c, role);
      const old = host.querySelector(`[data-canary="${CSS.escape(key)}"]`);
      if (old) old.replaceWith(made.article);
      else host.append(made.article);
      chart(key, made.plotHost, made.events);
    }
    for (const old of host.querySelectorAll("[data-canary]")) {
      if (!keep.has(old.dataset.canary)) {
        charts.get(old.dataset.canary)?.destroy();
        charts.delete(old.dataset.canary);
        drawnFrom.delete(old.dataset.canary);
        old.remove();
      }
    }
    setStatus(status.id, items.length
      ? `${items.length} rollouts`
      : "No Canary exists; `skein apply` one to release a new version step by step (docs/resources.md).");
  } catch (e) {
    setStatus(status.id, `Cannot read the rollouts: ${e.message}`, true);
  }
}
