// The network map: every service (and every caller) as a node, every caller → service
// pair the callee's proxy saw as an arrow. Thickness follows requests per second, colour
// the success rate, a lock marks mutual TLS, a dashed line what authorization denied.
// dagre (vendored) lays the graph out; the same nodes and edges, which the API sorts,
// always give the same drawing, and the layout is only recomputed when they change.
// Selecting an edge (click, or Enter on it) shows its signals; the same edges are listed
// in a table for screen readers and keyboards.

import dagre from "./dagre.js";
import { api, setStatus, el, svg, fixed, percent, health, qualified, cell } from "./common.js";
import { serviceHref } from "./service.js";

const NODE_HEIGHT = 34;

/** The drawn layout and what it was computed for. */
let drawn = { key: null, graph: null };
/** The edge whose signals show (`src → dst`), kept across refreshes. */
let selected = null;
/** The newest map the API answered. */
let view = null;

const srcOf = (e) => qualified(e.src_namespace, e.src);
const dstOf = (e) => qualified(e.dst_namespace, e.dst);
const edgeId = (e) => `${srcOf(e)} → ${dstOf(e)}`;

/** A node's label: its name, or what an unnamed caller is. */
function label(node) {
  if (!node.namespace && node.name === "unauthenticated") return "no mesh identity";
  return qualified(node.namespace, node.name);
}

/** Width for a label, from its length: deterministic, so layouts do not depend on fonts. */
const nodeWidth = (text) => Math.max(96, Math.round(7.4 * text.length) + 30);

/** The nodes and edges a layout is for. */
const shapeOf = (v) =>
  JSON.stringify([v.nodes.map((n) => qualified(n.namespace, n.name)), v.edges.map(edgeId)]);

/** dagre's layered layout of the map, left (callers) to right (callees). */
function layout(v) {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 26, ranksep: 120, edgesep: 18, marginx: 18, marginy: 18 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of v.nodes) {
    g.setNode(qualified(n.namespace, n.name), { width: nodeWidth(label(n)), height: NODE_HEIGHT });
  }
  for (const e of v.edges) g.setEdge(srcOf(e), dstOf(e));
  dagre.layout(g);
  return g;
}

/** How an edge is drawn: its colour class, whether dashed, and its width. */
export function edgeLook(e) {
  const colour = e.authorization === "denied" ? "denied" : health(e.success_rate);
  const rate = e.requests > 0 ? e.rps : 0;
  return {
    colour: colour === "none" ? "tcp" : colour,
    dashed: e.authorization !== "allowed",
    width: Math.min(9, 1.5 + 1.6 * Math.log2(1 + rate)),
  };
}

/** An edge in words, for its label and its row. */
function describe(e) {
  const said = [edgeId(e), e.protocol.toUpperCase()];
  if (e.requests > 0) said.push(`${fixed(e.rps, 1)} requests/s`);
  if (e.requests > 0 && e.authorization !== "denied") said.push(`${percent(e.success_rate)} success`);
  if (e.tcp_connections > 0) said.push(`${e.tcp_connections} TCP connections`);
  said.push(e.mtls === true ? "mutual TLS" : e.mtls === false ? "not mutual TLS" : "no traffic");
  said.push(e.authorization === "allowed" ? "allowed" : `${e.authorization} (${e.denied} requests denied)`);
  if (e.audited > 0) said.push(`${e.audited} audited (would be denied)`);
  return said.join(", ");
}

/** A closed padlock (mutual TLS) or an open one (plaintext) centred on (x, y). */
function lock(x, y, closed) {
  const shackle = closed ? `M${x - 3.5} ${y - 1}v-3a3.5 3.5 0 0 1 7 0v3` : `M${x - 3.5} ${y - 1}v-3a3.5 3.5 0 0 1 7 0v-1`;
  return svg(
    "g",
    { class: closed ? "lock" : "lock open", "aria-hidden": "true" },
    svg("title", {}, closed ? "mutual TLS" : "not mutual TLS"),
    svg("path", { d: shackle, class: "shackle" }),
    svg("rect", { x: x - 5.5, y: y - 1, width: 11, height: 8, rx: 1.5, class: "body" }),
  );
}

/** The SVG path through an edge's points: straight, then quadratic curves through the
 * midpoints, so bends are smooth. */
function pathOf(points) {
  if (points.length < 3) return `M${points.map((p) => `${p.x} ${p.y}`).join("L")}`;
  let d = `M${points[0].x} ${points[0].y}`;
  for (let i = 1; i < points.length - 1; i++) {
    const mid = { x: (points[i].x + points[i + 1].x) / 2, y: (points[i].y + points[i + 1].y) / 2 };
    d += ` Q${points[i].x} ${points[i].y} ${i === points.length - 2 ? `${points[i + 1].x} ${points[i + 1].y}` : `${mid.x} ${mid.y}`}`;
  }
  return d;
}

function draw(v, g) {
  const { width, height } = g.graph();
  const markers = ["good", "warn", "failing", "denied", "tcp"].map((c) =>
    svg(
      "marker",
      // In the drawing's units, not the line's width: a thick edge keeps a readable arrowhead.
      { id: `arrow-${c}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerUnits: "userSpaceOnUse", markerWidth: 11, markerHeight: 11, orient: "auto-start-reverse", class: `arrow ${c}` },
      svg("path", { d: "M0 0L10 5L0 10z" }),
    ),
  );
  const edges = v.edges.map((e) => {
    const look = edgeLook(e);
    const points = g.edge(srcOf(e), dstOf(e)).points;
    const mid = points[Math.floor(points.length / 2)];
    const group = svg(
      "g",
      {
        class: `edge ${look.colour}${look.dashed ? " dashed" : ""}${selected === edgeId(e) ? " selected" : ""}`,
        "data-edge": edgeId(e),
        "data-health": look.colour,
        "data-authorization": e.authorization,
        "data-mtls": String(e.mtls),
        tabindex: 0,
        role: "button",
        "aria-label": describe(e),
        "aria-pressed": String(selected === edgeId(e)),
      },
      // A wide transparent path under the line, so a thin edge is easy to click.
      svg("path", { d: pathOf(points), class: "hit" }),
      svg("path", { d: pathOf(points), class: "line", "stroke-width": look.width.toFixed(1), "marker-end": `url(#arrow-${look.colour})` }),
      e.mtls === null || e.mtls === undefined ? null : lock(mid.x, mid.y - 6, e.mtls),
    );
    group.addEventListener("click", () => select(edgeId(e)));
    group.addEventListener("keydown", (k) => {
      if (k.key === "Enter" || k.key === " ") {
        k.preventDefault();
        select(edgeId(e));
      }
    });
    return group;
  });
  const nodes = v.nodes.map((n) => {
    const id = qualified(n.namespace, n.name);
    const at = g.node(id);
    const failing = n.signals && health(n.signals.success_rate) === "failing";
    const shape = [
      svg("rect", { x: at.x - at.width / 2, y: at.y - at.height / 2, width: at.width, height: at.height, rx: 6 }),
      svg("text", { x: at.x, y: at.y + 4, "text-anchor": "middle" }, label(n)),
    ];
    // A service's box leads to its page; a caller that is no service has none.
    const inner = n.signals ? [svg("a", { href: serviceHref(n.namespace, n.name), "aria-label": `Service ${id}` }, ...shape)] : shape;
    return svg("g", { class: `node${n.signals ? "" : " caller"}${failing ? " failing" : ""}`, "data-node": id }, ...inner);
  });
  const picture = svg(
    "svg",
    {
      id: "map-svg",
      viewBox: `0 0 ${Math.ceil(width)} ${Math.ceil(height)}`,
      width: Math.ceil(width),
      height: Math.ceil(height),
      role: "group",
      "aria-label": `Network map: ${v.nodes.length} nodes, ${v.edges.length} edges`,
    },
    svg("defs", {}, ...markers),
    svg("g", { class: "edges" }, ...edges),
    svg("g", { class: "nodes" }, ...nodes),
  );
  const host = document.getElementById("map-picture");
  const focused = document.activeElement?.dataset?.edge;
  host.replaceChildren(picture);
  if (focused) host.querySelector(`[data-edge="${CSS.escape(focused)}"]`)?.focus();
}

/** The table of edges: the map in words. */
function table(v) {
  const body = document.querySelector("#map-edges tbody");
  body.replaceChildren(
    ...v.edges.map((e) => {
      const look = edgeLook(e);
      const row = el(
        "tr",
        { "data-edge": edgeId(e), "data-health": look.colour, "data-authorization": e.authorization },
        cell(srcOf(e)),
        cell(dstOf(e)),
        cell(e.protocol),
        cell(e.requests > 0 ? fixed(e.rps, 1) : "–", "num"),
        // A pair authorization denied outright reached no application: no success rate.
        cell(e.authorization === "denied" ? "–" : percent(e.success_rate), `num ${look.colour === "failing" ? "bad" : ""}`),
        cell(fixed(e.p99_ms, 1), "num"),
        cell(e.mtls === true ? "yes" : e.mtls === false ? "no" : "–", e.mtls === false ? "bad" : ""),
        cell(e.authorization, e.authorization === "allowed" ? "" : "bad"),
      );
      return row;
    }),
  );
}

/** Shows `id`'s signals beside the map. */
function select(id) {
  selected = id;
  for (const g of document.querySelectorAll("#map-svg .edge")) {
    const on = g.dataset.edge === id;
    g.classList.toggle("selected", on);
    g.setAttribute("aria-pressed", String(on));
  }
  detail();
}

function detail() {
  const box = document.getElementById("map-detail");
  const e = view?.edges.find((x) => edgeId(x) === selected);
  if (!e) {
    if (box.dataset.said !== "") {
      box.dataset.said = "";
      box.replaceChildren(el("p", {}, "Select an edge (click it, or Tab to it and press Enter) to see its signals."));
    }
    return;
  }
  const rows = [
    ["Protocol", e.protocol],
    ["Requests/s", e.requests > 0 ? fixed(e.rps, 2) : "–"],
    ["Requests", String(e.requests)],
    ["Success", percent(e.success_rate)],
    ["p50 (ms)", fixed(e.p50_ms, 1)],
    ["p99 (ms)", fixed(e.p99_ms, 1)],
    ["Retries", String(e.retries)],
    ["TCP connections", String(e.tcp_connections)],
    ["Mutual TLS", e.mtls === true ? "yes" : e.mtls === false ? "no" : "–"],
    ["Authorization", e.authorization],
    ["Denied", String(e.denied)],
    ["Audited (would be denied)", String(e.audited)],
  ];
  // A live region: rebuilt only when what it says changed, not at every redraw.
  const said = JSON.stringify([edgeId(e), rows]);
  if (box.dataset.said === said) return;
  box.dataset.said = said;
  box.replaceChildren(
    el("h2", { id: "map-detail-title" }, edgeId(e)),
    el("dl", {}, ...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
  );
}

export async function map() {
  const status = document.getElementById("map-status");
  const span = document.getElementById("map-window").value;
  try {
    view = await api(`/api/v1/map?window=${encodeURIComponent(span)}`);
    const key = shapeOf(view);
    if (key !== drawn.key) drawn = { key, graph: layout(view) };
    draw(view, drawn.graph);
    table(view);
    detail();
    setStatus(status.id, view.nodes.length
      ? `${view.nodes.length} nodes, ${view.edges.length} edges over the last ${view.window}`
      : `No traffic in the last ${view.window}.`);
  } catch (e) {
    setStatus(status.id, `Cannot read the map: ${e.message}`, true);
  }
}
