// A service's page (#service/NAMESPACE/NAME): its signals over a chosen window (uPlot
// charts of requests, success and latency), the workloads it selects (connected, the
// configuration version each acknowledged, certificate expiry), the HTTPRoutes attached
// to it with their traffic, the AuthorizationPolicies that govern it and what
// authorization decided for each caller, and its top paths from a live tap that runs
// while the page is shown.

import uPlot from "./uplot.js";
import { api, el, clock, fixed, percent, qualified, health, eachLine } from "./common.js";

/** The service shown, as [namespace, name], or null. */
export function chosen() {
  const [page, ns, name, ...more] = window.location.hash.slice(1).split("/");
  if (page !== "service" || !ns || !name || more.length) return null;
  // Names are DNS labels (namespaces) and subdomains (services): anything else is no
  // service, and never becomes part of an API path.
  const label = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
  const subdomain = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
  try {
    const which = [decodeURIComponent(ns), decodeURIComponent(name)];
    return label.test(which[0]) && subdomain.test(which[1]) && !which[1].includes("..") ? which : null;
  } catch {
    return null;
  }
}

/** The address of a service's page. */
export function serviceHref(namespace, name) {
  return `#service/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`;
}

const charts = new Map();
let drawnKey = null;

/** A chart of `series` (label, values, colour) over times `t`, in `host`. */
function chart(key, host, t, series, unit, range) {
  const data = [t, ...series.map((s) => s.values)];
  const old = charts.get(key);
  if (old && old.series.length === series.length + 1) {
    old.setData(data);
    return;
  }
  old?.destroy();
  const plot = new uPlot(
    {
      width: 380,
      height: 160,
      legend: { show: series.length > 1, live: false },
      cursor: { show: false },
      scales: { x: { time: true }, y: range ? { range } : {} },
      axes: [{ stroke: "#1b1f24" }, { stroke: "#1b1f24", size: 56, values: (u, ticks) => ticks.map((v) => `${v}${unit}`) }],
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.colour, width: 2, spanGaps: false, points: { show: false } }))],
    },
    data,
    host,
  );
  charts.set(key, plot);
}

/** Top paths from the tap running while the page shows: method and path → counts. */
const paths = new Map();
let tapping = null;
let tapped = null;

function tapStart(ns, name) {
  const key = `${ns}/${name}`;
  if (tapped === key && tapping) return;
  tapStop();
  tapped = key;
  paths.clear();
  const controller = new AbortController();
  tapping = controller;
  const q = new URLSearchParams({ to: name, max_rps: "20" });
  (async () => {
    const r = await fetch(`/api/v1/tap?${q}`, { credentials: "same-origin", signal: controller.signal });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    await eachLine(r, (e) => {
      if (e.direction !== "inbound" || e.dst !== key) return;
      const k = `${e.method} ${e.path}`;
      const p = paths.get(k) || { method: e.method, path: e.path, count: 0, failed: 0, denied: 0 };
      p.count += 1;
      if (e.error === "denied") p.denied += 1;
      else if (e.status >= 500) p.failed += 1;
      paths.set(k, p);
    });
  })().catch((e) => {
    if (e.name !== "AbortError") document.getElementById("svc-paths-status").textContent = `The tap stopped: ${e.message}`;
  });
}

/** Ends the page's tap. */
export function tapStop() {
  tapping?.abort();
  tapping = null;
  tapped = null;
}

function table(id, caption, heads, rows) {
  return el(
    "table",
    { class: "grid", id },
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, ...heads.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows),
  );
}

/** Whether an HTTPRoute names the service among its parents. */
function attached(route, ns, name) {
  return (route.spec.parentRefs || []).some(
    (p) => (p.kind || "Service") === "Service" && (p.group || "") === "" && p.name === name && (p.namespace || route.metadata.namespace) === ns,
  );
}

/** A rule's matches in words. */
function matches(rule) {
  const m = rule.matches || [];
  if (!m.length) return "every request";
  return m
    .map((x) => {
      const said = [];
      if (x.path) said.push(`${x.path.type || "PathPrefix"} ${x.path.value}`);
      if (x.method) said.push(x.method);
      for (const h of x.headers || []) said.push(`header ${h.name}: ${h.value}`);
      for (const q of x.queryParams || []) said.push(`query ${q.name}=${q.value}`);
      return said.join(", ") || "every request";
    })
    .join(" or ");
}

async function pick() {
  const list = await api("/api/v1/resources/services");
  const host = document.getElementById("service-body");
  host.replaceChildren(
    el("p", {}, "Choose a service:"),
    el(
      "ul",
      { class: "pick" },
      ...list.items.map((s) => el("li", {}, el("a", { href: serviceHref(s.metadata.namespace, s.metadata.name) }, qualified(s.metadata.namespace, s.metadata.name)))),
    ),
  );
}

export async function service() {
  const status = document.getElementById("service-status");
  const which = chosen();
  if (!which) {
    tapStop();
    document.getElementById("service-heading").textContent = "Services";
    drawnKey = null;
    try {
      await pick();
      status.textContent = "";
    } catch (e) {
      status.className = "status error";
      status.textContent = `Cannot list the services: ${e.message}`;
    }
    return;
  }
  const [ns, name] = which;
  const key = `${ns}/${name}`;
  document.getElementById("service-heading").textContent = `Service ${key}`;
  const span = document.getElementById("service-window").value;
  tapStart(ns, name);
  try {
    const q = (o) => new URLSearchParams(o).toString();
    const [svc, endpoints, series, workloads, edges, routes, policies, ruleStats] = await Promise.all([
      api(`/api/v1/resources/services/${encodeURIComponent(name)}?${q({ namespace: ns })}`),
      api(`/api/v1/endpoints/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`),
      api(`/api/v1/series/services?${q({ window: span, namespace: ns, name })}`),
      api(`/api/v1/stat/workloads?${q({ window: span })}`),
      api(`/api/v1/edges?${q({ window: span, service: name })}`),
      api(`/api/v1/resources/httproutes?${q({ namespace: ns })}`),
      api(`/api/v1/resources/authorizationpolicies?${q({ namespace: ns })}`),
      api(`/api/v1/stat/rules?${q({ window: span })}`),
    ]);
    const host = document.getElementById("service-body");
    if (drawnKey !== key) {
      charts.forEach((c) => c.destroy());
      charts.clear();
      host.replaceChildren(
        el("p", { id: "svc-facts" }),
        el(
          "div",
          { class: "charts" },
          el("figure", {}, el("div", { id: "svc-chart-rps" }), el("figcaption", {}, "Requests per second")),
          el("figure", {}, el("div", { id: "svc-chart-success" }), el("figcaption", {}, "Success rate (%)")),
          el("figure", {}, el("div", { id: "svc-chart-latency" }), el("figcaption", {}, "Latency p50 and p99 (ms)")),
        ),
        el("h2", {}, "Workloads"),
        el("div", { id: "svc-workloads" }),
        el("h2", {}, "Routes"),
        el("div", { id: "svc-routes" }),
        el("h2", {}, "Authorization"),
        el("div", { id: "svc-authz" }),
        el("h2", {}, "Top paths"),
        el("p", { id: "svc-paths-status", class: "status" }, "From a live tap of the requests the service receives, since this page opened."),
        el("div", { id: "svc-paths" }),
      );
      drawnKey = key;
    }
    const ports = svc.spec.ports.map((p) => `${p.port}/${p.protocol || "detect"}`).join(", ");
    document.getElementById("svc-facts").textContent = `Ports ${ports}; selects ${Object.entries(svc.spec.selector)
      .map(([k, v]) => `${k}=${v}`)
      .join(", ")}; accounts ${endpoints.accounts.join(", ")}; ${endpoints.items.length} workloads.`;

    // Charts over the window.
    const row = series.rows[0] || { rps: series.t.map(() => 0), success_rate: series.t.map(() => null), p50_ms: series.t.map(() => null), p99_ms: series.t.map(() => null) };
    chart("rps", document.getElementById("svc-chart-rps"), series.t, [{ label: "requests/s", values: row.rps, colour: "#1d4ed8" }], "", null);
    chart(
      "success",
      document.getElementById("svc-chart-success"),
      series.t,
      [{ label: "success", values: row.success_rate.map((s) => (s === null ? null : s * 100)), colour: "#15803d" }],
      " %",
      (u, min, max) => [Math.min(90, Math.floor(min ?? 90)), 100],
    );
    chart(
      "latency",
      document.getElementById("svc-chart-latency"),
      series.t,
      [
        { label: "p50", values: row.p50_ms, colour: "#1d4ed8" },
        { label: "p99", values: row.p99_ms, colour: "#b45309" },
      ],
      "",
      null,
    );

    // Workloads: registration, connection, certificate, and their signals.
    const signals = new Map(workloads.rows.filter((r) => r.namespace === ns).map((r) => [r.name, r]));
    document.getElementById("svc-workloads").replaceChildren(
      table(
        "svc-workload-table",
        `The workloads ${key} selects, and what each received over the last ${span}`,
        ["Workload", "Address", "Connected", "Config version", "Certificate expires", "Requests/s", "Success"],
        endpoints.items.map((w) => {
          const s = signals.get(w.name);
          const expires = w.certificate ? clock(w.certificate.notAfter) : "–";
          return el(
            "tr",
            { "data-workload": w.name },
            el("td", {}, w.name),
            el("td", {}, `${w.address}:${w.inboundPort}`),
            el("td", { class: w.connected ? "" : "bad" }, w.connected ? "yes" : "no"),
            el("td", { class: "num" }, w.acknowledgedVersion === null || w.acknowledgedVersion === undefined ? "–" : String(w.acknowledgedVersion)),
            el("td", {}, w.certificate ? `${expires} (${w.certificate.expires})` : "not connected to this replica"),
            el("td", { class: "num" }, s ? fixed(s.rps, 1) : "–"),
            el("td", { class: `num ${s && health(s.success_rate) === "failing" ? "bad" : ""}` }, s ? percent(s.success_rate) : "–"),
          );
        }),
      ),
    );

    // Routes attached to the service, each rule in words, with the rule's traffic.
    const mine = routes.items.filter((r) => attached(r, ns, name));
    const byRule = new Map(ruleStats.rows.filter((r) => r.rule !== undefined).map((r) => [`${r.name}#${r.rule}`, r]));
    document.getElementById("svc-routes").replaceChildren(
      mine.length
        ? table(
            "svc-route-table",
            `HTTPRoutes attached to ${key}, rule by rule, with what callers sent through each rule over the last ${span}`,
            ["Route", "Rule", "Matches", "Backends (weight)", "Requests/s", "Success", "p99"],
            mine.flatMap((r) => {
              const route = `${r.metadata.namespace}/${r.metadata.name}`;
              return (r.spec.rules || []).map((rule, i) => {
                const s = byRule.get(`${route}#${i}`);
                return el(
                  "tr",
                  { "data-rule": `${route}#${i}` },
                  el("td", {}, i === 0 ? `${r.metadata.namespace}/${r.metadata.name}` : ""),
                  el("td", { class: "num" }, String(i)),
                  el("td", {}, matches(rule)),
                  el("td", {}, (rule.backendRefs || []).map((b) => `${b.name} (${b.weight ?? 1})`).join(", ") || "–"),
                  el("td", { class: "num" }, s ? fixed(s.rps, 1) : "–"),
                  el("td", { class: `num ${s && health(s.success_rate) === "failing" ? "bad" : ""}` }, s ? percent(s.success_rate) : "–"),
                  el("td", { class: "num" }, s && s.p99_ms !== null ? `${fixed(s.p99_ms, 1)} ms` : "–"),
                );
              });
            }),
          )
        : el("p", {}, "No HTTPRoute is attached: every request goes to the service's own workloads."),
    );

    // Authorization: the policies targeting the service, and each caller's decisions.
    const governing = policies.items.filter((p) => p.spec.targetRef.name === name);
    document.getElementById("svc-authz").replaceChildren(
      el(
        "ul",
        { class: "policies" },
        ...governing.map((p) =>
          el("li", {}, `${p.metadata.namespace}/${p.metadata.name}: ${p.spec.action || "allow"} ${JSON.stringify(p.spec.rules || [])}`),
        ),
        governing.length ? null : el("li", {}, "No AuthorizationPolicy targets it: the mesh's default policy decides."),
      ),
      table(
        "svc-callers",
        `What authorization decided for each caller over the last ${span} (audited: let through only because authorization audits; deny would refuse them)`,
        ["Caller", "Requests", "Allowed", "Denied", "Audited", "Connections", "Mutual TLS", "Success"],
        edges.rows
          .filter((e) => e.dst === name && e.dst_namespace === ns)
          .map((e) =>
            el(
              "tr",
              { "data-caller": qualified(e.src_namespace, e.src) },
              el("td", {}, qualified(e.src_namespace, e.src)),
              el("td", { class: "num" }, String(e.requests)),
              el("td", { class: "num" }, String(e.requests - e.denied)),
              el("td", { class: `num ${e.denied ? "bad" : ""}` }, String(e.denied)),
              el("td", { class: `num ${e.audited ? "warn" : ""}` }, String(e.audited)),
              el("td", { class: "num" }, String(e.tcp_connections)),
              el("td", {}, e.mtls === true ? "yes" : e.mtls === false ? "no" : "–"),
              el("td", { class: "num" }, percent(e.success_rate)),
            ),
          ),
      ),
    );

    // Top paths so far.
    const top = [...paths.values()].sort((a, b) => b.count - a.count || a.path.localeCompare(b.path)).slice(0, 10);
    document.getElementById("svc-paths").replaceChildren(
      table(
        "svc-path-table",
        "The paths it received most, since this page opened (sampled by the tap, at most 20 a second)",
        ["Method", "Path", "Requests", "Failed", "Denied"],
        top.map((p) =>
          el(
            "tr",
            {},
            el("td", {}, p.method),
            el("td", { class: "path" }, p.path),
            el("td", { class: "num" }, String(p.count)),
            el("td", { class: `num ${p.failed ? "bad" : ""}` }, String(p.failed)),
            el("td", { class: `num ${p.denied ? "bad" : ""}` }, String(p.denied)),
          ),
        ),
      ),
    );
    status.className = "status";
    status.textContent = "";
  } catch (e) {
    status.className = "status error";
    status.textContent = `Cannot read ${key}: ${e.message}`;
  }
}
