// The overview: every service's golden signals over the last minute, with a red mark on
// what is failing or denied, and a sparkline of its requests per second over the last
// hour (uPlot, vendored), red where it was failing.

import uPlot from "./uplot.js";
import { api, setStatus, cell, el, fixed, percent, trouble, qualified, FAILING_BELOW } from "./common.js";
import { serviceHref } from "./service.js";

/** Each service's sparkline, kept across refreshes and moved into its new row. */
const sparks = new Map();

/** The series a sparkline draws: times, requests per second, and the same where the
 * step was failing (elsewhere empty, so only those points show, in red). */
export function sparkData(t, row) {
  const failing = row.rps.map((r, i) => {
    const s = row.success_rate[i];
    return s !== null && s !== undefined && s < FAILING_BELOW ? r : null;
  });
  return [t, row.rps, failing];
}

/** What a sparkline shows, in words. */
function sparkWords(row) {
  const peak = Math.max(0, ...row.rps);
  const bad = row.success_rate.filter((s) => s !== null && s !== undefined && s < FAILING_BELOW).length;
  const now = row.rps.length ? row.rps[row.rps.length - 1] : 0;
  return `Requests per second over the last hour: now ${fixed(now, 1)}, peak ${fixed(peak, 1)}${bad ? `, failing in ${bad} of ${row.rps.length} minutes` : ""}`;
}

function spark(key, t, row) {
  const data = sparkData(t, row);
  let plot = sparks.get(key);
  if (plot) {
    plot.setData(data);
  } else {
    plot = new uPlot(
      {
        width: 140,
        height: 30,
        cursor: { show: false },
        select: { show: false },
        legend: { show: false },
        scales: { x: { time: false }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
        axes: [{ show: false }, { show: false }],
        series: [
          {},
          { stroke: "#1d4ed8", width: 1.5, fill: "rgba(29, 78, 216, 0.12)", points: { show: false } },
          { stroke: "#b91c1c", width: 0, paths: () => null, points: { show: true, size: 5, fill: "#b91c1c", stroke: "#b91c1c" } },
        ],
      },
      data,
    );
    sparks.set(key, plot);
  }
  const holder = el("div", { class: "spark", role: "img", "aria-label": sparkWords(row) });
  holder.append(plot.root);
  return holder;
}

/** The hour of series the sparklines draw, and when it was read: its steps are minutes,
 * so it is read again once a minute, not at every redraw (an hour over 200 services is
 * the costliest query the page makes). */
let lastHour = { at: 0, series: null };
const HOUR_EVERY_MS = 60000;

async function hour() {
  if (!lastHour.series || Date.now() - lastHour.at >= HOUR_EVERY_MS) {
    lastHour = { at: Date.now(), series: await api("/api/v1/series/services?window=1h") };
  }
  return lastHour.series;
}

export async function overview() {
  const status = document.getElementById("overview-status");
  try {
    const [stat, series] = await Promise.all([api("/api/v1/stat/services?window=1m"), hour()]);
    const history = new Map(series.rows.map((r) => [qualified(r.namespace, r.name), r]));
    const body = document.querySelector("#services tbody");
    const rows = [...stat.rows].sort((a, b) =>
      qualified(a.namespace, a.name).localeCompare(qualified(b.namespace, b.name)),
    );
    // The keyboard's focus stays on the row it was on, although the rows are new.
    const focused = body.contains(document.activeElement) ? document.activeElement.getAttribute("href") : null;
    body.replaceChildren(
      ...rows.map((row) => {
        const key = qualified(row.namespace, row.name);
        const tr = document.createElement("tr");
        tr.dataset.service = key;
        const problems = trouble(row);
        const past = history.get(key);
        tr.append(
          el("td", {}, el("a", { href: serviceHref(row.namespace, row.name) }, key)),
          cell(fixed(row.rps, 1), "num rps"),
          cell(percent(row.success_rate), "num"),
          cell(fixed(row.p50_ms, 1), "num"),
          cell(fixed(row.p99_ms, 1), "num"),
          cell(row.mtls === null || row.mtls === undefined ? "–" : row.mtls ? "yes" : "no", row.mtls === false ? "bad" : ""),
          cell(String(row.denied), row.denied > 0 ? "num bad" : "num"),
          cell(String(row.tcp_connections), "num tcp"),
          cell(problems.length ? problems.join(", ") : "ok", problems.length ? "bad state" : "ok state"),
          el("td", { class: "hour" }, past ? spark(key, series.t, past) : "–"),
        );
        return tr;
      }),
    );
    if (focused) body.querySelector(`a[href="${CSS.escape(focused)}"]`)?.focus();
    for (const key of [...sparks.keys()]) {
      if (!history.has(key)) {
        sparks.get(key).destroy();
        sparks.delete(key);
      }
    }
    setStatus(status.id, rows.length
      ? `${rows.length} services, ${stat.window} window`
      : "No service has reported traffic yet.");
  } catch (e) {
    setStatus(status.id, `Cannot read the services: ${e.message}`, true);
  }
}
