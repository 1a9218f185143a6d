"""The console in a real browser: Debian's Chromium, headless, through chromedriver.

Run by tests/console.rs against a gateway it started; everything comes from the environment:
GATEHOUSE_ADMIN, GATEHOUSE_PROXY, GATEHOUSE_TOKEN, NODE1 and NODE2 (free echo backends, host:port),
CHROMEDRIVER, CHROMIUM, AXE (axe.min.js), SCREENSHOTS (a folder). Exits non-zero with the reason.
"""

import json
import os
import sys
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ADMIN = os.environ["GATEHOUSE_ADMIN"]
PROXY = os.environ["GATEHOUSE_PROXY"]
TOKEN = os.environ["GATEHOUSE_TOKEN"]
NODE1 = os.environ["NODE1"].rsplit(":", 1)
NODE2 = os.environ["NODE2"].rsplit(":", 1)
SHOTS = os.environ["SCREENSHOTS"]
AXE = open(os.environ["AXE"], encoding="utf-8").read()

options = webdriver.ChromeOptions()
options.binary_location = os.environ["CHROMIUM"]
for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000",
            "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"]:
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service(executable_path=os.environ["CHROMEDRIVER"]), options=options)
# generous: a cold browser on a loaded machine is slow to start; each wait ends as soon as it holds
driver.set_page_load_timeout(120)
wait = WebDriverWait(driver, 60)
violations = []


def h1(text):
    wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), text))


def shot(name):
    driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


def accessibility(page):
    """axe-core on the page as it is: serious and critical violations fail the test."""
    driver.execute_script(AXE)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations)).catch(e => done([{id: 'axe-error', impact: 'critical', description: String(e), nodes: []}]));")
    serious = [v for v in result if v["impact"] in ("serious", "critical")]
    print(f"axe-core on {page}: {len(result)} violation(s), {len(serious)} serious or critical")
    for v in serious:
        if True:
            targets = [n["target"] for n in v["nodes"]][:5]
            violations.append(f"{page}: {v['id']} ({v['impact']}): {v['description']} at {targets}")


def field(path):
    return driver.find_element(By.CSS_SELECTOR, f'[data-path="{path}"]')


def error_of(path):
    el = field(path)
    ids = el.get_attribute("aria-describedby").split()
    return driver.find_element(By.ID, ids[-1]).text


def submit_and_apply():
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(EC.element_to_be_clickable((By.ID, "apply")))


def check(cond, what):
    if not cond:
        raise AssertionError(what)


try:
    # log in: a wrong token is refused with a message, the right one opens the console
    driver.get(f"{ADMIN}/ui/")
    h1("Log in")
    accessibility("login")
    shot("01-login")
    token = driver.find_element(By.CSS_SELECTOR, "input[type=password]")
    token.send_keys("not-the-token-0123456789", Keys.ENTER)
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "[role=alert]"), "refused the token"))
    token = driver.find_element(By.CSS_SELECTOR, "input[type=password]")
    token.send_keys(TOKEN, Keys.ENTER)  # the keyboard alone logs in
    h1("VPC upstreams")
    check("users" in driver.find_element(By.TAG_NAME, "table").text, "the configured upstream is listed")
    check(driver.execute_script("return document.cookie") == "", "no cookie is set")
    accessibility("upstream list")
    shot("02-upstreams")

    # search filters the list
    search = driver.find_element(By.CSS_SELECTOR, "input[type=search]")
    search.send_keys("no-such-upstream")
    check("users" not in driver.find_element(By.TAG_NAME, "tbody").text, "search filters")
    search.clear()
    search.send_keys(Keys.BACKSPACE)

    # create an upstream with two nodes; a bad port is refused next to its field
    driver.find_element(By.LINK_TEXT, "Create upstream").click()
    h1("Create a VPC upstream")
    check(field("retries").get_attribute("value") == "5", "retries default to 5")
    field("name").send_keys("orders")
    field("vpc").send_keys("vpc-main")
    field("description").send_keys("order API pool")
    field("nodes[0].host").send_keys(NODE1[0])
    field("nodes[0].port").send_keys("70000")
    driver.find_element(By.XPATH, "//button[text()='Add node']").click()
    field("nodes[1].host").send_keys(NODE2[0])
    field("nodes[1].port").send_keys(NODE2[1])
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(lambda d: "65535" in error_of("nodes[0].port"))
    check(field("nodes[0].port").get_attribute("aria-invalid") == "true", "the bad field is marked")
    check(error_of("nodes[1].port") == "", "the good node has no error")
    accessibility("upstream form with an error")
    shot("03-upstream-form-error")
    port = field("nodes[0].port")
    port.clear()
    port.send_keys(NODE1[1])
    submit_and_apply()
    check("orders" in driver.find_element(By.CSS_SELECTOR, ".form-status pre").text, "the dry run shows the change")
    shot("04-upstream-dry-run")
    driver.find_element(By.ID, "apply").click()
    h1("Upstream orders")
    accessibility("upstream details")
    shot("05-upstream-details")

    # bind an API to it and call it through the proxy
    driver.get(f"{ADMIN}/ui/#/services/shop/apis/new")
    h1("Create an API in shop")
    field("name").send_keys("list_orders")
    field("path").send_keys("/orders")
    driver.find_element(By.CSS_SELECTOR, "input[type=checkbox][value=GET]").click()
    field("backend.upstream").send_keys("orders")
    accessibility("API form")
    shot("06-api-form")
    submit_and_apply()
    driver.find_element(By.ID, "apply").click()
    h1("Services and APIs")
    with urllib.request.urlopen(f"{PROXY}/orders", timeout=10) as resp:
        check(resp.status == 200, f"the new API answers through the proxy: {resp.status}")

    # Associated APIs, and a delete that is refused while an API is bound
    driver.get(f"{ADMIN}/ui/#/upstreams/orders/apis")
    wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "main"), "shop.list_orders"))
    accessibility("associated APIs")
    shot("07-associated-apis")
    driver.find_element(By.ID, "delete-upstream").click()
    wait.until(EC.alert_is_present()).accept()
    wait.until(EC.text_to_be_present_in_element((By.ID, "delete-result"), "still serves 1 API"))
    shot("08-delete-refused")
    driver.find_element(By.CSS_SELECTOR, "#delete-result a").click()
    h1("Edit API shop.list_orders")
    driver.find_element(By.ID, "delete-api").click()
    wait.until(EC.alert_is_present()).accept()
    h1("Services and APIs")
    check("list_orders" not in driver.find_element(By.TAG_NAME, "main").text, "the API is gone")

    # now the upstream can go
    driver.get(f"{ADMIN}/ui/#/upstreams/orders")
    h1("Upstream orders")
    driver.find_element(By.ID, "delete-upstream").click()
    wait.until(EC.alert_is_present()).accept()
    h1("VPC upstreams")
    wait.until(lambda d: "orders" not in d.find_element(By.TAG_NAME, "tbody").text)

    # an edit made from a form opened before someone else's change is refused, and says why
    driver.get(f"{ADMIN}/ui/#/upstreams/users/edit")
    h1("Edit upstream users")
    current = json.load(urllib.request.urlopen(urllib.request.Request(
        f"{ADMIN}/upstreams/users", headers={"Authorization": f"Bearer {TOKEN}"}), timeout=10))
    current["description"] = "changed elsewhere"
    urllib.request.urlopen(urllib.request.Request(
        f"{ADMIN}/upstreams/users", method="PUT", data=json.dumps(current).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}), timeout=10)
    field("description").send_keys("mine")
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".form-status"), "Someone else changed the configuration"))
    shot("10-edit-conflict")

    # the keyboard alone: Tab walks the form's fields in order, Enter on "Add node" adds a row
    driver.get(f"{ADMIN}/ui/#/upstreams/new")
    h1("Create a VPC upstream")
    field("name").click()
    order = []
    for _ in range(12):
        active = driver.switch_to.active_element
        order.append(active.get_attribute("data-path") or active.text)
        active.send_keys(Keys.TAB)
    check(order[:7] == ["name", "vpc", "protocol", "description", "host_header", "retries", "nodes[0].host"],
          f"tab order: {order}")
    add = driver.find_element(By.XPATH, "//button[text()='Add node']")
    for _ in range(30):
        if driver.switch_to.active_element == add:
            break
        driver.switch_to.active_element.send_keys(Keys.TAB)
    check(driver.switch_to.active_element == add, "Tab reaches the Add node button")
    add.send_keys(Keys.ENTER)
    wait.until(lambda d: d.switch_to.active_element.get_attribute("data-path") == "nodes[1].host")

    driver.get(f"{ADMIN}/ui/#/status")
    h1("Status")
    check("/metrics" in driver.find_element(By.ID, "metrics").get_attribute("href"), "a link to metrics")
    accessibility("status")
    shot("09-status")

    # log out: the token is gone from the tab
    driver.find_element(By.ID, "logout").click()
    h1("Log in")
    check(driver.execute_script("return sessionStorage.length") == 0, "logging out forgets the token")

    if violations:
        raise AssertionError("accessibility violations:\n" + "\n".join(violations))
    print("console: every step passed")
except Exception as e:  # the page as it was, for the failure
    shot("failure")
    print(f"console test failed: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"page: {driver.current_url}\n{driver.find_element(By.TAG_NAME, 'body').text}", file=sys.stderr)
    logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
    print(json.dumps(logs, indent=1), file=sys.stderr)
    sys.exit(1)
finally:
    driver.quit()
