// The dashboard's script: reads the control plane's API (the one the CLI uses) with the
// session cookie, and redraws without reloading the page.

const REFRESH_MS = 5000;

/** GET an API path as JSON; a lapsed session goes back to the login page. */
async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (r.status === 401) {
    window.location.assign("/ui/login");
    throw new Error("the session ended");
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `${path}: HTTP ${r.status}`);
  return body;
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

const fixed = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const percent = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)} %`);

/** What is wrong with a row of signals, in words: failing, denied, or nothing. */
export function trouble(row) {
  const said = [];
  if (row.success_rate !== null && row.success_rate !== undefined && row.success_rate < 0.95) said.push("failing");
  if (row.denied > 0) said.push("denied");
  return said;
}

async function overview() {
  const status = document.getElementById("overview-status");
  try {
    const stat = await api("/api/v1/stat/services?window=1m");
    const body = document.querySelector("#services tbody");
    const rows = [...stat.rows].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
    body.replaceChildren(
      ...rows.map((row) => {
        const tr = document.createElement("tr");
        tr.dataset.service = `${row.namespace}/${row.name}`;
        const problems = trouble(row);
        tr.append(
          cell(`${row.namespace}/${row.name}`),
          cell(fixed(row.rps, 1), "num rps"),
          cell(percent(row.success_rate), "num"),
          cell(fixed(row.p50_ms, 1), "num"),
          cell(fixed(row.p99_ms, 1), "num"),
          cell(row.mtls === null || row.mtls === undefined ? "–" : row.mtls ? "yes" : "no", row.mtls === false ? "bad" : ""),
          cell(String(row.denied), row.denied > 0 ? "num bad" : "num"),
          cell(String(row.tcp_connections), "num tcp"),
          cell(problems.length ? problems.join(", ") : "ok", problems.length ? "bad state" : "ok state"),
        );
        return tr;
      }),
    );
    status.className = "status";
    status.textContent = rows.length
      ? `${rows.length} services, ${stat.window} window, updated ${new Date().toLocaleTimeString()}`
      : "No service has reported traffic yet.";
  } catch (e) {
    status.className = "status error";
    status.textContent = `Cannot read the services: ${e.message}`;
  }
}

async function who() {
  try {
    const s = await api("/api/v1/session");
    document.getElementById("who").textContent = s.role === "viewer" ? "read-only viewer" : "admin";
    document.body.dataset.role = s.role;
  } catch (e) {
    document.getElementById("who").textContent = "";
  }
}

async function tick() {
  await overview();
  setTimeout(tick, REFRESH_MS);
}

who();
tick();
