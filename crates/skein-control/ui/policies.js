// Policies: whether the mesh denies by default, the AuthorizationPolicies of a namespace,
// the callers authorization denied, what it only audited (would-be denials), and the
// least-privilege policies the observed traffic suggests, ready to copy and apply
// (`skein policy suggest` gives the same).

import { api, setStatus, el, qualified } from "./common.js";

/** What the suggestion was drawn from, so an unchanged one keeps its place and focus. */
let suggested = null;

/** The mesh's default in words. */
export function defaultWords(mesh) {
  const spec = mesh?.spec || {};
  const policy = spec.defaultPolicy || "allow";
  const mtls = spec.mtls || "strict";
  const said = {
    deny: "Deny by default: a request no AuthorizationPolicy allows is refused (403).",
    audit: "Audit by default: a request no AuthorizationPolicy allows passes, and is counted and logged as audited; switch to deny once the audited count stays at zero.",
    allow: "Allow by default: every request passes unless a policy denies it. Not least privilege: apply the suggested policies, then set the Mesh's defaultPolicy to audit, then deny.",
  }[policy];
  return { policy, text: `${said} Mutual TLS: ${mtls}.` };
}

const say = (text, bad) => setStatus("policies-status", text, bad);

export async function policies() {
  const form = document.getElementById("policies-form");
  const ns = form.elements.namespace.value.trim() || "default";
  const span = form.elements.window.value;
  try {
    const q = (o) => new URLSearchParams(o).toString();
    const [meshes, list, edges, suggestion] = await Promise.all([
      api("/api/v1/resources/meshes"),
      api(`/api/v1/resources/authorizationpolicies?${q({ namespace: ns })}`),
      api(`/api/v1/edges?${q({ window: span })}`),
      api(`/api/v1/policy/suggest?${q({ namespace: ns, window: span })}`),
    ]);
    const mesh = meshes.items.find((m) => m.metadata.name === "default") || meshes.items[0];
    const { policy, text } = defaultWords(mesh);
    const status = document.getElementById("policies-default");
    status.dataset.policy = policy;
    status.className = policy === "deny" ? "ok" : "bad";
    status.textContent = text;

    document.querySelector("#policies-list tbody").replaceChildren(
      ...list.items.map((p) =>
        el(
          "tr",
          { "data-policy": `${p.metadata.namespace}/${p.metadata.name}` },
          el("td", {}, `${p.metadata.namespace}/${p.metadata.name}`),
          el("td", {}, p.spec.targetRef.name + (p.spec.targetRef.port ? `:${p.spec.targetRef.port}` : "")),
          el("td", {}, p.spec.action || "allow"),
          el("td", { class: "rules" }, JSON.stringify(p.spec.rules || [])),
        ),
      ),
    );

    const denied = edges.rows.filter((e) => e.denied > 0 && e.dst_namespace === ns);
    document.querySelector("#policies-denied tbody").replaceChildren(
      ...denied.map((e) =>
        el(
          "tr",
          { "data-edge": `${qualified(e.src_namespace, e.src)} → ${qualified(e.dst_namespace, e.dst)}` },
          el("td", {}, qualified(e.src_namespace, e.src)),
          el("td", {}, qualified(e.dst_namespace, e.dst)),
          el("td", { class: "num bad" }, String(e.denied)),
          el("td", { class: "num" }, String(e.requests - e.denied)),
          el("td", {}, e.mtls === true ? "yes" : e.mtls === false ? "no" : "–"),
        ),
      ),
    );
    document.getElementById("policies-denied-none").hidden = denied.length > 0;

    const audited = edges.rows.filter((e) => e.audited > 0 && e.dst_namespace === ns);
    document.querySelector("#policies-audited tbody").replaceChildren(
      ...audited.map((e) =>
        el(
          "tr",
          { "data-edge": `${qualified(e.src_namespace, e.src)} → ${qualified(e.dst_namespace, e.dst)}` },
          el("td", {}, qualified(e.src_namespace, e.src)),
          el("td", {}, qualified(e.dst_namespace, e.dst)),
          el("td", { class: "num warn" }, String(e.audited)),
          el("td", { class: "num" }, String(e.requests)),
          el("td", { class: "num" }, String(e.tcp_connections)),
        ),
      ),
    );
    document.getElementById("policies-audited-none").hidden = audited.length > 0;

    if (suggestion.yaml !== suggested) {
      suggested = suggestion.yaml;
      document.getElementById("policies-yaml").textContent = suggestion.yaml;
    }
    say(`Namespace ${ns}, traffic of the last ${span}`);
  } catch (e) {
    say(`Cannot read the policies: ${e.message}`, true);
  }
}

document.getElementById("policies-form").addEventListener("submit", (e) => {
  e.preventDefault();
  suggested = null;
  policies();
});
document.getElementById("policies-copy").addEventListener("click", async () => {
  const text = document.getElementById("policies-yaml").textContent;
  const note = document.getElementById("policies-copied");
  try {
    await navigator.clipboard.writeText(text);
    note.textContent = "Copied: apply it with `skein apply -f FILE` after reading it.";
  } catch (e) {
    // Without clipboard access (an address the browser does not trust), select the text
    // so that the keyboard's copy takes it.
    const range = document.createRange();
    range.selectNodeContents(document.getElementById("policies-yaml"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    note.textContent = "Selected: press Ctrl+C (or ⌘C) to copy.";
  }
});
