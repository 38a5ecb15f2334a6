// The dashboard's script: one page whose sections are chosen by the address's fragment
// (#overview, #map, #service/NAMESPACE/NAME, #canaries, #tap, #traces, #policies), each redrawn from the control plane's API
// without reloading the page: when the control plane says something changed (server-sent
// events from /api/v1/updates: the store's revision or new telemetry), at most every
// PUSHED_MS; without that stream, every REFRESH_MS.

import { api } from "./common.js";
import { overview } from "./overview.js";
import { map } from "./map.js";
import { canaries } from "./canaries.js";
import * as tap from "./tap.js";
import { traces } from "./traces.js";
import { service, tapStop as serviceTapStop } from "./service.js";
import { policies } from "./policies.js";

const REFRESH_MS = 5000;
/** The least time between two redraws the stream asks for. */
const PUSHED_MS = 2000;
/** With the stream open, a redraw at least this often all the same. */
const QUIET_MS = 30000;

/** Every page: its fragment, its title, what redraws it, and what starts and stops
 * with it (the live tap streams instead of being redrawn). */
const PAGES = {
  overview: { title: "Overview", draw: () => overview() },
  map: { title: "Network map", draw: () => map() },
  canaries: { title: "Canaries", draw: () => canaries(session.role) },
  tap: { title: "Live tap", enter: tap.start, leave: tap.stop },
  traces: { title: "Traces", draw: () => traces() },
  service: { title: "Service", draw: () => service(), leave: serviceTapStop },
  policies: { title: "Policies", draw: () => policies() },
};

let session = { role: "viewer" };

/** The page the fragment names (the overview if it names none). */
function current() {
  const name = window.location.hash.slice(1).split("/")[0];
  return Object.hasOwn(PAGES, name) ? name : "overview";
}

/** Shows the current page's section and marks its link; with `focus`, moves the
 * keyboard's focus to its heading (as a new page would). */
function show(focus) {
  const now = current();
  for (const section of document.querySelectorAll("main > section[data-page]")) {
    section.hidden = section.dataset.page !== now;
  }
  for (const link of document.querySelectorAll("header nav a")) {
    if (link.getAttribute("href") === `#${now}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `Skein — ${PAGES[now].title}`;
  if (focus) document.getElementById(`${now}-title`)?.focus();
}

let timer = null;
let round = 0;
let shown = null;

/** Whether the control plane pushes changes (then redraws follow its events). */
let pushed = false;
/** Whether the person paused redrawing (to read or move through a page that holds still);
 * choosing another page still draws it once. */
let paused = false;
/** When the current page was last redrawn (ms). */
let drawnAt = 0;

/** Redraws the current page now, then again after REFRESH_MS (QUIET_MS while changes are
 * pushed); a newer round replaces an older. A page being left is stopped, one being
 * entered started. */
async function refresh() {
  clearTimeout(timer);
  const mine = ++round;
  const now = current();
  if (shown !== now) {
    PAGES[shown]?.leave?.();
    shown = now;
    PAGES[now].enter?.();
  } else if (paused) {
    return;
  }
  if (!PAGES[now].draw) return;
  drawnAt = Date.now();
  await PAGES[now].draw();
  // When the page was last redrawn, outside every live region (not news to announce).
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  if (mine === round) timer = setTimeout(refresh, pushed ? QUIET_MS : REFRESH_MS);
}

/** Follows the control plane's change events; on an error (refused, or the connection
 * lost) the page polls until the browser's reconnection succeeds. */
function follow() {
  const changes = new EventSource("/api/v1/updates");
  let events = 0;
  changes.addEventListener("change", () => {
    events += 1;
    if (paused) return;
    document.body.dataset.pushed = String(events);
    if (!pushed) {
      pushed = true;
      document.body.dataset.updates = "pushed";
    }
    const wait = Math.max(0, drawnAt + PUSHED_MS - Date.now());
    clearTimeout(timer);
    timer = setTimeout(refresh, wait);
  });
  changes.addEventListener("error", () => {
    pushed = false;
    document.body.dataset.updates = "polled";
    if (changes.readyState === EventSource.CLOSED) {
      // Refused outright (too many pages watching, or the session ended): poll, and try
      // the stream again in a minute.
      clearTimeout(timer);
      timer = setTimeout(refresh, REFRESH_MS);
      setTimeout(follow, 60000);
    }
  });
}

async function who() {
  try {
    session = await api("/api/v1/session");
    document.getElementById("who").textContent = session.role === "viewer" ? "read-only viewer" : "admin";
    document.body.dataset.role = session.role;
  } catch (e) {
    document.getElementById("who").textContent = "";
  }
}

const live = document.getElementById("live");
live.addEventListener("click", () => {
  paused = !paused;
  live.setAttribute("aria-pressed", String(!paused));
  live.textContent = paused ? "Updates paused" : "Live updates";
  document.body.dataset.paused = String(paused);
  if (paused) clearTimeout(timer);
  else refresh();
});

window.addEventListener("hashchange", () => {
  show(true);
  refresh();
});
document.getElementById("map-window").addEventListener("change", () => refresh());
document.getElementById("service-window").addEventListener("change", () => refresh());

show(false);
await who();
follow();
refresh();
