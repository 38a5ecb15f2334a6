"""Drives Debian's Chromium (headless, over WebDriver with Selenium) through the dashboard
of a running `skein demo`, and prints what it saw as one JSON object for the Rust test
(tests/dashboard.rs) to judge. It judges nothing itself: it logs in, reads the pages, runs
axe-core in them, tabs through their controls, tries a change as the logged-in viewer,
takes a screenshot of each page, and collects every URL the browser asked for.

Usage: dashboard_browser.py URL TOKEN AXE_JS SHOTS_DIR
"""

import json
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

url, token, axe_path, shots = sys.argv[1:5]
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

    def keyboard():
        """Every control on the page (links, buttons, fields), and which of them focus
        reaches by pressing Tab from the top, as `tag#id:text`."""
        describe = (
            "const d = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + ':' +"
            " (e.getAttribute('aria-label') || e.textContent || e.name || '').trim().slice(0, 40);"
        )
        controls = driver.execute_script(
            describe + "return [...document.querySelectorAll('a[href], button, input, select, textarea')]"
            ".filter(e => !e.disabled && e.getClientRects().length).map(d);"
        )
        driver.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);")
        reached = []
        for _ in range(len(controls) + 2):
            driver.switch_to.active_element.send_keys(Keys.TAB)
            reached.append(driver.execute_script(describe + "return document.activeElement ? d(document.activeElement) : null;"))
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
    driver.save_screenshot(f"{shots}/login.png")

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
    report["overview_url"] = driver.current_url
    report["overview_rows"] = rows
    report["who"] = driver.find_element(By.ID, "who").text
    report["cookie_http_only"] = [c.get("httpOnly") for c in driver.get_cookies() if c["name"] == "skein_session"]
    report["cookie_visible_to_script"] = driver.execute_script("return document.cookie")
    report["overview_axe"] = axe()
    report["overview_keyboard"] = keyboard()
    driver.save_screenshot(f"{shots}/overview.png")

    # A change from the page, as a viewer, with the header the dashboard sends: the API's
    # answer.
    report["viewer_change"] = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/api/v1/canaries/default/restaurant/promote', {method: 'POST', headers: {'X-Skein-Csrf': '1'}})"
        ".then(async r => done({status: r.status, body: await r.text()}), e => done({error: String(e)}));"
    )

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
