"""Drives Debian's Chromium (headless, over WebDriver with Selenium) through the dashboard
of a running `skein demo --canary`, and prints what it saw as one JSON object for the Rust
test (tests/dashboard.rs) to judge. It judges nothing itself: it logs in as a viewer,
reads the overview, the network map and the canaries, runs axe-core in each page, tabs
through their controls, tries a change as the viewer; then, as the admin, starts a new
rollout through the API, presses its Promote button and watches the map until the
promoted version's failures show; it takes a screenshot of each page and collects every
URL the browser asked for.

Usage: dashboard_browser.py URL VIEWER_TOKEN ADMIN_TOKEN AXE_JS SHOTS_DIR
"""

import json
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

url, token, admin_token, axe_path, shots = sys.argv[1:6]
origin = url.rsplit("/ui/", 1)[0]

# The next release the admin starts from the API: restaurant-v3 again, with a check only
# every ten minutes, so that it waits at its first step for someone to press Promote.
NEXT_RELEASE = """apiVersion: skein.dev/v1alpha1
kind: Canary
metadata: {name: restaurant}
spec:
  targetRef: {name: restaurant, port: 8080}
  stable: restaurant-v2
  canary: restaurant-v3
  analysis: {interval: 10m, threshold: 2, stepWeights: [20, 50], minRequests: 5}
"""


def admin_api(method, path, body=None):
    """The control plane's API with the admin token, as the CLI calls it."""
    request = urllib.request.Request(
        origin + path,
        data=body.encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read() or b"{}")

axe_js = open(axe_path, encoding="utf-8").read()

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--window-size=1280,900",
]:
    options.add_argument(flag)
options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
report = {}
try:
    wait = WebDriverWait(driver, 30)

    def axe():
        """axe-core's violations on the page as it is: id, impact and how many nodes."""
        driver.execute_script(axe_js)
        result = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations']})"
            ".then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.length,"
            " targets: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))), e => done('axe failed: ' + e));"
        )
        return result

    def shot(name):
        """A screenshot of the whole page: the window grows to the page's height (at most
        4,000 px) for it, then returns to its size."""
        height = driver.execute_script("return Math.min(4000, document.documentElement.scrollHeight);")
        driver.set_window_size(1280, max(900, height + 140))
        driver.save_screenshot(f"{shots}/{name}.png")
        driver.set_window_size(1280, 900)

    def keyboard():
        """Every control on the page (links, buttons, fields), and which of them focus
        reaches by pressing Tab from the top, as `tag#id:text`."""
        describe = (
            "const d = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + ':' +"
            " (e.getAttribute('aria-label') || e.textContent || e.name || '').trim().slice(0, 40);"
        )
        # Pause the page's redrawing (the header's button): lists that change while Tab
        # moves through them would make the count meaningless.
        live = driver.find_elements(By.ID, "live")
        paused = bool(live) and live[0].get_attribute("aria-pressed") == "true"
        if paused:
            live[0].click()
        controls = driver.execute_script(
            describe + "return [...document.querySelectorAll('a[href], button, input, select, textarea, [tabindex=\"0\"]')]"
            ".filter(e => !e.disabled && e.getClientRects().length).map(d);"
        )
        driver.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);")
        reached = []
        for _ in range(len(controls) + 2):
            ActionChains(driver).send_keys(Keys.TAB).perform()
            reached.append(driver.execute_script(describe + "return document.activeElement ? d(document.activeElement) : null;"))
        if paused:
            driver.find_element(By.ID, "live").click()
        return {"controls": controls, "reached": reached}

    def busy(row):
        try:
            return float(row["cells"][1]) > 0
        except ValueError:
            return False

    # No session: the dashboard sends the browser to its login page.
    driver.get(url)
    wait.until(ec.presence_of_element_located((By.ID, "token")))
    report["login_url"] = driver.current_url
    report["login_axe"] = axe()
    report["login_keyboard"] = keyboard()
    shot("login")

    # Log in with the read-only token.
    field = driver.find_element(By.ID, "token")
    field.send_keys(token)
    field.send_keys(Keys.ENTER)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#services tbody tr")))
    # Give the overview a refresh so every service with traffic shows.
    deadline = time.time() + 30
    rows = []
    while time.time() < deadline:
        rows = driver.execute_script(
            "return [...document.querySelectorAll('#services tbody tr')].map(tr => ({"
            " service: tr.dataset.service,"
            " cells: [...tr.cells].map(c => c.textContent),"
            " stateClass: tr.cells[tr.cells.length - 1].className}));"
        )
        if len(rows) >= 3 and sum(busy(r) for r in rows) >= 2:
            break
        time.sleep(1)
    # Changes are pushed: the page follows the control plane's server-sent events.
    WebDriverWait(driver, 15).until(lambda d: d.execute_script("return document.body.dataset.updates") == "pushed")
    report["updates"] = driver.execute_script("return [document.body.dataset.updates, document.body.dataset.pushed]")
    report["overview_url"] = driver.current_url
    report["overview_rows"] = rows
    report["who"] = driver.find_element(By.ID, "who").text
    report["cookie_http_only"] = [c.get("httpOnly") for c in driver.get_cookies() if c["name"] == "skein_session"]
    report["cookie_visible_to_script"] = driver.execute_script("return document.cookie")
    report["overview_axe"] = axe()
    report["overview_keyboard"] = keyboard()
    shot("overview")

    def open_page(name, ready_css):
        """Follows the navigation link to `#name` and waits for `ready_css`."""
        driver.find_element(By.CSS_SELECTOR, f'header nav a[href="#{name}"]').click()
        wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ready_css)))

    def map_state():
        """The map as drawn: nodes, and each edge's colour class, authorization, mutual
        TLS, and the stroke the browser computed for its line."""
        return driver.execute_script(
            "return {nodes: [...document.querySelectorAll('#map-svg .node')].map(n => n.dataset.node),"
            " edges: [...document.querySelectorAll('#map-svg .edge')].map(g => {"
            "  const line = g.querySelector('.line'); const css = getComputedStyle(line);"
            "  return {edge: g.dataset.edge, health: g.dataset.health, authorization: g.dataset.authorization,"
            "   mtls: g.dataset.mtls, lock: g.querySelector('.lock') ? g.querySelector('.lock').getAttribute('class') : null,"
            "   stroke: css.stroke, dash: css.strokeDasharray, label: g.getAttribute('aria-label')}; }),"
            " rows: [...document.querySelectorAll('#map-edges tbody tr')].map(r => r.dataset.edge)};"
        )

    def edge(state, name):
        return next((e for e in state["edges"] if e["edge"] == name), None)

    # The network map, as the viewer: the traffic generator's direct calls to the
    # restaurant are denied by the mesh, so that pair shows, denied.
    open_page("map", "#map-svg")
    deadline = time.time() + 40
    seen_map = map_state()
    while time.time() < deadline:
        seen_map = map_state()
        denied = edge(seen_map, "default/traffic → default/restaurant")
        if denied and denied["authorization"] == "denied" and edge(seen_map, "default/frontend → default/ledger"):
            break
        time.sleep(1)
    report["map"] = seen_map
    # Selecting an edge (from the keyboard: focus, Enter) shows its signals.
    chosen = driver.find_element(By.CSS_SELECTOR, '#map-svg .edge[data-edge="default/traffic → default/frontend"]')
    driver.execute_script("arguments[0].focus();", chosen)
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    WebDriverWait(driver, 10).until(lambda d: "Requests/s" in d.find_element(By.ID, "map-detail").text)
    report["map_detail"] = driver.find_element(By.ID, "map-detail").text
    report["map_axe"] = axe()
    report["map_keyboard"] = keyboard()
    shot("map")

    # The canaries, as the viewer: the buttons are there, and disabled.
    open_page("canaries", '#canary-list article[data-canary="default/restaurant"]')
    report["viewer_buttons"] = driver.execute_script(
        "return [...document.querySelectorAll('article[data-canary=\"default/restaurant\"] .actions button')]"
        ".map(b => ({action: b.dataset.action, disabled: b.disabled}));"
    )
    report["viewer_canaries_axe"] = axe()
    shot("canaries-viewer")

    # The live tap: requests stream in; filtered to 4xx, the mesh's denials of the traffic
    # generator's direct calls to the restaurant.
    open_page("tap", "#tap-events")

    def tapped(minimum, timeout):
        deadline = time.time() + timeout
        rows = []
        while time.time() < deadline:
            rows = driver.execute_script(
                "return [...document.querySelectorAll('#tap-events tbody tr')].map(tr => [...tr.cells].map(c => c.textContent));"
            )
            if len(rows) >= minimum:
                break
            time.sleep(0.5)
        return rows

    report["tap_rows"] = tapped(5, 20)[:10]
    Select(driver.find_element(By.NAME, "status")).select_by_value("4xx")
    driver.find_element(By.CSS_SELECTOR, '#tap-form button[type="submit"]').click()
    time.sleep(0.5)
    report["tap_denied_rows"] = tapped(2, 20)[:10]
    report["tap_axe"] = axe()
    report["tap_keyboard"] = keyboard()
    shot("tap")
    driver.find_element(By.ID, "tap-stop").click()

    # Traces: the failing ones (v3's answers of 500 during its canary), one's waterfall,
    # and what the proxies decided about its request.
    open_page("traces", "#traces-list")
    driver.find_element(By.CSS_SELECTOR, '#traces-form input[name="errors"]').click()
    driver.find_element(By.CSS_SELECTOR, '#traces-form button[type="submit"]').click()
    deadline = time.time() + 20
    failing_traces = []
    while time.time() < deadline:
        failing_traces = driver.execute_script(
            "return [...document.querySelectorAll('#traces-list tbody tr')].map(tr => ({trace: tr.dataset.trace,"
            " cells: [...tr.cells].map(c => c.textContent)}));"
        )
        # The list redraws with the filter once its answer comes.
        if failing_traces and all(t["cells"][5] != "0" for t in failing_traces):
            break
        time.sleep(1)
    report["failing_traces"] = failing_traces[:5]
    if failing_traces:
        driver.find_element(By.CSS_SELECTOR, "#traces-list tbody tr button.link").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#trace-waterfall svg")))
        report["waterfall_spans"] = driver.execute_script(
            "return [...document.querySelectorAll('#trace-waterfall .span')].map(g => ({error: g.classList.contains('error'),"
            " text: g.querySelector('text').textContent}));"
        )
        asked = driver.find_elements(By.CSS_SELECTOR, "#trace-waterfall tr.bad button[data-request-id]")
        if asked:
            report["why_request_id"] = asked[0].get_attribute("data-request-id")
            asked[0].click()
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#why-hops tbody tr")))
            report["why_hops"] = driver.execute_script(
                "return [...document.querySelectorAll('#why-hops tbody tr')].map(tr => [...tr.cells].map(c => c.textContent));"
            )
    report["traces_axe"] = axe()
    report["traces_keyboard"] = keyboard()
    shot("traces")

    # A service's page, chosen from the list: its workloads, callers, charts and top paths.
    open_page("service", "#service-body")
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, '#service-body a[href="#service/default/restaurant"]'))).click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#svc-workload-table tbody tr")))
    deadline = time.time() + 30
    while time.time() < deadline:
        if driver.find_elements(By.CSS_SELECTOR, "#svc-path-table tbody tr"):
            break
        time.sleep(1)

    def rows(css):
        return driver.execute_script(
            f"return [...document.querySelectorAll('{css} tbody tr')].map(tr => [...tr.cells].map(c => c.textContent));"
        )

    report["service_heading"] = driver.find_element(By.ID, "service-heading").text
    report["service_workloads"] = rows("#svc-workload-table")
    report["service_callers"] = rows("#svc-callers")
    report["service_paths"] = rows("#svc-path-table")
    report["service_rules"] = rows("#svc-route-table")
    report["service_charts"] = len(driver.find_elements(By.CSS_SELECTOR, "#service-body .charts canvas"))
    report["service_axe"] = axe()
    report["service_keyboard"] = keyboard()
    shot("service")

    # Policies: deny by default, the caller authorization denied, and the suggested
    # policies ready to copy.
    open_page("policies", "#policies-yaml")
    WebDriverWait(driver, 20).until(lambda d: "AuthorizationPolicy" in d.find_element(By.ID, "policies-yaml").text)
    default = driver.find_element(By.ID, "policies-default")
    report["policies_default"] = [default.get_attribute("data-policy"), default.text]
    report["policies_listed"] = [r[0] for r in rows("#policies-list")]
    report["policies_denied"] = rows("#policies-denied")
    # The demo's audit policy: the frontend's connections to the ledger, would-be denials.
    deadline = time.time() + 30
    while time.time() < deadline and not rows("#policies-audited"):
        time.sleep(1)
    report["policies_audited"] = rows("#policies-audited")
    report["policies_yaml"] = driver.find_element(By.ID, "policies-yaml").text
    driver.find_element(By.ID, "policies-copy").click()
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "policies-copied").text)
    report["policies_copied"] = driver.find_element(By.ID, "policies-copied").text
    report["policies_axe"] = axe()
    report["policies_keyboard"] = keyboard()
    shot("policies")

    # A change from the page, as a viewer, with the header the dashboard sends: the API's
    # answer.
    report["viewer_change"] = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/api/v1/canaries/default/restaurant/promote', {method: 'POST', headers: {'X-Skein-Csrf': '1'}})"
        ".then(async r => done({status: r.status, body: await r.text()}), e => done({error: String(e)}));"
    )

    # The admin starts the next release (as `skein apply` would) and waits for its first
    # step.
    admin_api("POST", "/api/v1/apply", NEXT_RELEASE)
    deadline = time.time() + 30
    phase = None
    while time.time() < deadline:
        phase = admin_api("GET", "/api/v1/resources/canaries/restaurant").get("status", {}).get("phase")
        if phase == "Progressing":
            break
        time.sleep(0.5)
    report["next_release_phase"] = phase

    # Log out, and in again as the admin: the same page, with buttons that work.
    driver.find_element(By.CSS_SELECTOR, ".logout button").click()
    wait.until(ec.presence_of_element_located((By.ID, "token")))
    field = driver.find_element(By.ID, "token")
    field.send_keys(admin_token)
    field.send_keys(Keys.ENTER)
    wait.until(ec.text_to_be_present_in_element((By.ID, "who"), "admin"))
    report["admin_who"] = driver.find_element(By.ID, "who").text
    open_page("canaries", '#canary-list article[data-canary="default/restaurant"][data-phase="Progressing"]')
    card = '#canary-list article[data-canary="default/restaurant"]'
    report["admin_phase_before"] = driver.find_element(By.CSS_SELECTOR, card).get_attribute("data-phase")
    report["admin_buttons"] = driver.execute_script(
        f"return [...document.querySelectorAll('{card} .actions button')].map(b => ({{action: b.dataset.action, disabled: b.disabled}}));"
    )
    report["canaries_axe"] = axe()
    report["canaries_keyboard"] = keyboard()
    shot("canaries")
    driver.find_element(By.CSS_SELECTOR, f'{card} button[data-action="promote"]').click()
    try:
        WebDriverWait(driver, 20).until(
            lambda d: d.find_element(By.CSS_SELECTOR, card).get_attribute("data-phase") in ("Promoting", "Succeeded")
        )
    except Exception:
        pass
    report["admin_phase_after"] = driver.find_element(By.CSS_SELECTOR, card).get_attribute("data-phase")
    report["admin_phase_text"] = driver.find_element(By.CSS_SELECTOR, f"{card} .phase").text
    report["promoted_status"] = admin_api("GET", "/api/v1/resources/canaries/restaurant").get("status", {})
    shot("canaries-promoted")

    # All of the restaurant's traffic now goes to v3, which fails one request in ten: the
    # map's edge into the restaurant turns red within its one-minute window.
    open_page("map", "#map-svg")
    deadline = time.time() + 120
    failing = map_state()
    while time.time() < deadline:
        failing = map_state()
        e = edge(failing, "default/frontend → default/restaurant")
        if e and e["health"] == "failing":
            break
        time.sleep(2)
    report["map_failing"] = failing
    shot("map-failing")

    # Every URL the browser asked for, from Chromium's own network log.
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message.get("method") == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    report["requested"] = urls
finally:
    driver.quit()
print(json.dumps(report))
