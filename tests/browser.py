"""Selenium helpers that drive the real Prefect UI and MLflow UI in headless Chromium.

For browser integration tests: `chrome()`, `start_custom_run()`, `wait_flow_run_state_in_ui()`,
`open_mlflow_model()`. Each waits explicitly and, on failure, saves a screenshot and the page source
and names both in the `BrowserError` it raises. What was verified, and against which versions, is
noted at the bottom of this file.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import (ElementClickInterceptedException, NoSuchElementException,
                                        StaleElementReferenceException, TimeoutException, WebDriverException)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = os.environ.get("GANPIPE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GANPIPE_CHROMEDRIVER", "/usr/bin/chromedriver")
TERMINAL_STATES = {"Completed", "Cached", "Failed", "Crashed", "Cancelled", "TimedOut"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The state badge: in Prefect's V2 UI a data-slot="badge" coloured by a bg-state-* class (tags are
# badges too, so the colour class is what tells them apart); the V1 UI gives it the class state-badge.
_BADGE = ("//*[(@data-slot='badge' and contains(@class, 'bg-state-')) or "
          "contains(concat(' ', @class, ' '), ' state-badge ')]")


class BrowserError(AssertionError):
    """A UI step failed; the message names the screenshot and page source saved for it."""


def chrome(download_dir: str | Path | None = None) -> webdriver.Chrome:
    """Headless Debian Chromium driven by Debian's chromedriver (never Selenium Manager: no internet)."""
    for what, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise BrowserError(f"{what} not found at {path}: apt-get install chromium chromium-driver "
                               f"(or set GANPIPE_{what.upper()})")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--lang=en-US"):  # the selectors below match English button texts
        opts.add_argument(arg)
    if download_dir is not None:
        Path(download_dir).mkdir(parents=True, exist_ok=True)
        opts.add_experimental_option("prefs", {"download.default_directory": str(Path(download_dir).resolve()),
                                               "download.prompt_for_download": False})
    try:  # a Service with an explicit path makes Selenium skip Selenium Manager entirely
        driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    except WebDriverException as e:  # typically chromium and chromedriver of different major versions
        raise BrowserError(f"{CHROMEDRIVER} could not start {CHROMIUM}: {e.msg}") from e
    driver.set_page_load_timeout(120)  # 2 shared cores: first loads of the UI bundles are slow
    return driver


def save_artifacts(driver: webdriver.Chrome, artifacts_dir: str | Path | None, label: str) -> tuple[Path, Path]:
    """Screenshot + page source as <artifacts_dir>/<label>-<time>.{png,html} (a temp dir when None)."""
    folder = Path(artifacts_dir or os.environ.get("GANPIPE_UI_ARTIFACTS") or tempfile.mkdtemp(prefix="ui-"))
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{label}-{time.strftime('%H%M%S')}-{time.monotonic_ns() % 10**6}"
    png, html = stem.with_suffix(".png"), stem.with_suffix(".html")
    with contextlib.suppress(Exception):  # a dead browser must not hide the original error
        driver.save_screenshot(str(png))
    with contextlib.suppress(Exception):
        html.write_text(driver.page_source)
    return png, html


@contextlib.contextmanager
def _artifacts_on_failure(driver, artifacts_dir, label: str):
    try:
        yield
    except Exception as exc:
        png, html = save_artifacts(driver, artifacts_dir, label)
        msg = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
        with contextlib.suppress(Exception):
            msg += f" (url: {driver.current_url})"
        raise BrowserError(f"{label}: {msg}\n  screenshot: {png}\n  page source: {html}") from exc


def _lit(text: str) -> str:
    """`text` as an XPath string literal, whatever quotes it holds."""
    if "'" not in text:
        return f"'{text}'"
    return "concat(" + ", \"'\", ".join(f"'{p}'" for p in text.split("'")) + ")"


def _until(driver, condition: Callable, timeout: float, what: str, reload_every: float | None = None):
    """Poll `condition(driver)` until truthy; reload the page every `reload_every` s in case it went stale."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        chunk = min(left, reload_every) if reload_every else left
        try:
            return WebDriverWait(driver, max(chunk, 0.1), poll_frequency=0.25,
                                 ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                                 ).until(condition)
        except TimeoutException:
            if time.monotonic() >= deadline:
                raise TimeoutException(f"timed out after {timeout:.0f}s waiting for {what}") from None
            driver.refresh()


def _visible(driver, xpath: str) -> WebElement | bool:
    els = [e for e in driver.find_elements(By.XPATH, xpath) if e.is_displayed()]
    return els[0] if els else False


def _settled(xpath: str) -> Callable:
    """A wait condition: the element at `xpath`, once shown at the same place on two polls in a row.

    A popover is laid out after it opens: Radix first renders it translated off-screen (-200%) and
    moves it in once measured, so a list read on the first poll can miss the options above the
    viewport (CI once saw all options but the first two), and a click can land mid-move.
    """
    last: list = [None]

    def condition(driver):
        el = _visible(driver, xpath)
        rect = el and tuple(el.rect.values())
        settled = bool(el) and rect == last[0]
        last[0] = rect
        return el if settled else False
    return condition


def _click(driver, el: WebElement) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    try:
        el.click()
    except ElementClickInterceptedException:  # a toast or sticky footer over it: click it directly
        driver.execute_script("arguments[0].click()", el)


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def _prefect_ui(ui_url: str, ui: str) -> tuple[str, str]:
    """(base URL of the chosen UI, API URL the UI talks to), both from the server's /ui-settings."""
    try:
        settings = _get_json(ui_url.rstrip("/") + "/ui-settings")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise BrowserError(f"no Prefect UI answers at {ui_url} ({e})") from e
    if ui not in settings.get("available_uis", ["v1"]):
        raise BrowserError(f"Prefect UI {ui!r} not served at {ui_url}: {settings.get('available_uis')}")
    base = urllib.parse.urljoin(ui_url.rstrip("/") + "/", settings.get(f"{ui}_base_url") or "/").rstrip("/")
    api = settings["api_url"].rstrip("/")
    try:  # the UI's API URL comes from PREFECT_UI_API_URL (default port 4200), not from --port
        _get_json(api + "/health")
    except (urllib.error.URLError, OSError) as e:
        raise BrowserError(f"the Prefect UI at {ui_url} talks to {api}, which does not answer ({e}): start the "
                           "server with PREFECT_UI_API_URL (or PREFECT_API_URL) set to its own /api") from e
    return base, api


def _param_block(driver, name: str) -> WebElement | bool:
    """The form block of one parameter, found from its visible label (False: not rendered yet).

    Labels read "name" or "name (Optional)"; the block is the label's nearest ancestor holding a
    <fieldset> (V1's label `for` does not point at the control, so no @for/@id).
    """
    label = f"//label[normalize-space(.)={_lit(name)} or starts-with(normalize-space(.), {_lit(name + ' (')})]"
    blocks = driver.find_elements(By.XPATH, f"{label}/ancestor::*[.//fieldset][1]")
    return blocks[0] if blocks else False


def _control(block: WebElement) -> WebElement | bool:
    """The editable control in a block: number input, textarea, <select>, combobox or switch."""
    xp = (".//fieldset//*[self::input[not(@aria-hidden='true') and not(@type='hidden')] or self::textarea"
          " or self::select or @role='switch' or @aria-haspopup='listbox']")
    return next((e for e in block.find_elements(By.XPATH, xp) if e.is_displayed()), False)


def _pick_union_member(driver, name: str, value) -> bool:
    """Optional[X] = None fields show type tabs ("int" | "None") with None active and no control:
    select the member matching `value` (the None tab for None). Returns False for plain fields."""
    tabs = [t for t in _param_block(driver, name).find_elements(By.XPATH, ".//button[@aria-selected]")
            if t.is_displayed() and t.text.strip()]  # V1's kebab menu button has aria-selected but no text
    names = [t.text.strip() for t in tabs]
    if "None" not in names:
        return False
    want = "None" if value is None else {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value))
    tab = next((t for t in tabs if t.text.strip() == want), None) or next(t for t in tabs if t.text.strip() != "None")
    if tab.get_attribute("aria-selected") != "true":
        _click(driver, tab)
    return True


def _set_param(driver, name: str, value) -> None:
    try:  # the fields render only once the deployment's parameter schema has loaded, after the Run Name
        _until(driver, lambda d: _param_block(d, name), 30, f"parameter field {name!r}")
    except TimeoutException:
        labels = [e.text for e in driver.find_elements(By.XPATH, "//form//label") if e.text]
        raise BrowserError(f"no parameter field labelled {name!r} in the form (labels: {labels})") from None
    if _pick_union_member(driver, name, value) and value is None:
        return
    try:  # re-found on each poll: switching a union tab re-renders the block
        el = _until(driver, lambda d: _control(_param_block(d, name)), 10, f"the control of {name!r}")
    except TimeoutException:
        raise BrowserError(f"parameter {name!r} has no control these helpers fill (int, str, enum, bool "
                           "only: list/dict/JSON editors are not supported)") from None
    text = str(value)
    if el.get_attribute("role") == "switch":  # bool: a toggle, V1 <label role=switch>, V2 <button role=switch>
        want = value if isinstance(value, bool) else text.lower() in ("true", "1", "yes", "on")
        if (el.get_attribute("aria-checked") == "true") != want:
            _click(driver, el)
        elif not want:  # V2 leaves an untouched Optional[bool] switch unset (None): toggle on and off
            _click(driver, el)
            _until(driver, lambda d: el.get_attribute("aria-checked") == "true", 10, f"{name} toggled on")
            _click(driver, el)
        _until(driver, lambda d: (el.get_attribute("aria-checked") == "true") == want, 10, f"{name} toggled")
    elif el.tag_name == "select":  # Literal/enum in the V1 UI: a native <select>
        options = [o.text.strip() for o in Select(el).options]
        if text not in options:
            raise BrowserError(f"{name}: no option {text!r} (options: {options})")
        Select(el).select_by_visible_text(text)
    elif el.get_attribute("aria-haspopup") == "listbox":  # Literal/enum in the V2 UI: a combobox popover
        _click(driver, el)
        try:
            option = _until(driver, _settled(f"//*[@role='option'][normalize-space(.)={_lit(text)}]"), 15,
                            f"option {text!r} of {name}")
        except TimeoutException:  # textContent: options scrolled or clipped out of view have no .text
            options = [o.get_attribute("textContent").strip()
                       for o in driver.find_elements(By.XPATH, "//*[@role='option']")]
            raise BrowserError(f"{name}: no option {text!r} shown (options: {options})") from None
        _click(driver, option)
        _until(driver, lambda d: el.text.strip() == text, 10, f"{name} = {text!r}")
    else:  # int / str: <input type=number> or <textarea>; select-all + type so React/Vue see real key events
        el.send_keys(Keys.CONTROL, "a")
        el.send_keys(Keys.DELETE)
        el.send_keys(text)
        _until(driver, lambda d: el.get_attribute("value") == text, 10, f"{name} = {text!r}")


def _deployment_id(api: str, flow_name: str, deployment_name: str) -> str:
    q = urllib.parse.quote
    try:
        return _get_json(f"{api}/deployments/name/{q(flow_name, safe='')}/{q(deployment_name, safe='')}")["id"]
    except urllib.error.HTTPError as e:
        raise BrowserError(f"no deployment {flow_name}/{deployment_name} at {api} (HTTP {e.code})") from e


def _new_run_id(driver, run_name: str) -> str | bool:
    """The new run's id, from the V2 toast's "View run" link or the runs list link named after it."""
    # Both UIs toast "Error creating flow run: <reason>" (V2 also marks its toast data-type=error);
    # the innermost element holding that text is the message itself.
    starts = "starts-with(normalize-space(.), 'Error creating flow run')"
    err = _visible(driver, f"//*[{starts}][not(*[{starts}])] | //*[@data-sonner-toast][@data-type='error']")
    if err:  # e.g. "Validation failed for field 'steps'": fail now, not at the timeout
        raise BrowserError(f"the UI refused the run: {err.text.strip()}")
    name = _lit(run_name)
    link = _visible(driver, f"//a[contains(@href, '/runs/flow-run/')][normalize-space(.)={name} or "
                            f"ancestor::*[@data-sonner-toast][contains(normalize-space(.), {name})]]")
    found = link and _UUID.search(link.get_attribute("href").rsplit("/runs/flow-run/", 1)[-1])
    return found.group(0) if found else False


def start_custom_run(driver: webdriver.Chrome, ui_url: str, flow_name: str, deployment_name: str,
                     params: Mapping[str, str | int | bool | None], *, artifacts_dir: str | Path | None = None,
                     timeout: float = 120, ui: str = "v2") -> str:
    """Deployment page -> "Run" -> "Custom run", fill `params` in the typed form, Submit; returns the run id.

    Values: int, str, bool, a Literal's option text, or None (for an Optional[...] = None field, whose
    type tab is picked from the value's type); list/dict fields are not supported. `timeout` is per step.
    `ui` picks Prefect's V2 UI (the default one, under /v2) or the classic V1 UI; both work with this code.
    The deployment id is read from the API (the URL the UI itself uses) instead of clicking through the
    deployments list, where deployment names like "on-demand" repeat across flows and pages.
    """
    base, api = _prefect_ui(ui_url, ui)  # plain HTTP checks first: their errors need no screenshot
    deployment_id = _deployment_id(api, flow_name, deployment_name)
    with _artifacts_on_failure(driver, artifacts_dir, "prefect-custom-run"):
        driver.get(f"{base}/deployments/deployment/{deployment_id}")
        # The "Run" button opens a menu: V1 renders its items as buttons, V2 as role=menuitem.
        run_button = _until(driver, lambda d: _visible(d, "//button[normalize-space(.)='Run']"), timeout, "Run button")
        _click(driver, run_button)
        _click(driver, _until(driver, lambda d: _visible(
            d, "//*[self::button or @role='menuitem'][normalize-space(.)='Custom run']"), 30, "Custom run menu item"))
        run_name_xp = "//label[normalize-space(.)='Run Name']/ancestor::*[.//input][1]//input"
        # The generated run name is how the new run is recognised after Submit.
        run_name = _until(driver, lambda d: (el := _visible(d, run_name_xp)) and el.get_attribute("value"),
                          timeout, "the custom run form")
        for name, value in params.items():
            _set_param(driver, name, value)
        submit = "//form//button[@type='submit'][normalize-space(.)='Submit']"
        _click(driver, driver.find_element(By.XPATH, submit))
        return _until(driver, lambda d: _new_run_id(d, run_name), timeout, f"the new flow run {run_name!r}")


def wait_flow_run_state_in_ui(driver: webdriver.Chrome, ui_url: str, flow_run_id: str, state: str = "Completed",
                              timeout: float = 300, *, artifacts_dir: str | Path | None = None,
                              ui: str = "v2") -> str:
    """Open the flow run's page and wait for its state badge to read `state`; returns the badge text.

    Fails early when the run ends in another terminal state. The page polls the API by itself; it is
    reloaded every 30 s anyway so a dropped poll cannot stall the wait.
    """
    base, _ = _prefect_ui(ui_url, ui)
    with _artifacts_on_failure(driver, artifacts_dir, f"prefect-run-{state.lower()}"):
        driver.get(f"{base}/runs/flow-run/{flow_run_id}")

        def badge_reads_state(d):
            badge = _visible(d, _BADGE)  # the first badge is the run's own, in the page header
            text = badge.text.strip() if badge else ""
            if text in TERMINAL_STATES and text != state:
                raise BrowserError(f"flow run {flow_run_id} ended {text!r}, expected {state!r}")
            return text == state and text

        return _until(driver, badge_reads_state, timeout, f"state {state!r} of flow run {flow_run_id}", 30)


def open_mlflow_model(driver: webdriver.Chrome, mlflow_url: str, model_name: str, *, timeout: float = 120,
                      artifacts_dir: str | Path | None = None) -> str:
    """Open the registered model's page (MLflow 3: #/models/<name>); wait for its name and a version link.

    Returns the page's visible text.
    """
    with _artifacts_on_failure(driver, artifacts_dir, "mlflow-model"):
        # about:blank first: a hash-only change of the same URL does not reload the SPA, which then
        # shows its cached (possibly version-less) model.
        driver.get("about:blank")
        driver.get(f"{mlflow_url.rstrip('/')}/#/models/{urllib.parse.quote(model_name, safe='')}")
        heading = f"//*[self::h1 or self::h2 or self::h3][normalize-space(.)={_lit(model_name)}]"
        version = "//a[contains(@href, '/versions/')][starts-with(normalize-space(.), 'Version ')]"
        _until(driver, lambda d: _visible(d, heading) and _visible(d, version), timeout,
               f"model {model_name!r} with a version", reload_every=20)
        return driver.find_element(By.TAG_NAME, "body").text


# What was verified
# -----------------
# Prefect 3.8.8 UI (V2 under /v2, the default, and the classic V1 under /), MLflow 3.17.2 UI, Debian
# Chromium/chromedriver 156.0.8078.79, Selenium 4.51.0, against real servers on 127.0.0.1:
# - start_custom_run on a served flow with int (Annotated gt=0), str, Literal and bool parameters, and on
#   one with Optional[...] = None parameters (the union "int | None" tabs) and one with required ones: the
#   values set in the form (including Literal options, True/False, None) are exactly the flow run's
#   `parameters` read back through the Prefect client, and the run reaches Completed, in both UIs.
# - wait_flow_run_state_in_ui sees the badge change live (Scheduled -> Completed without a reload) and
#   fails at once when the run sits in another terminal state.
# - open_mlflow_model shows "<name>" and "Version N" for names with spaces too.
# - Failures name their cause: a server-side validation toast ("0 is less than or equal to the minimum
#   of 0"), an unknown field (with the labels present), an unknown option (with the options), an unknown
#   deployment, a UI whose API URL does not answer, a missing binary.
# Timings on 2 shared cores: chrome() ~0.5-2 s, start_custom_run 4-7 s, run Completed 6-17 s later
# (mostly the served flow's 10 s poll), open_mlflow_model ~2 s; one UI-driven run end to end ~20 s.
# Pitfalls found: the server's UI uses PREFECT_UI_API_URL (default port 4200), not --port; the form's
# parameter fields render after the Run Name field; V2 sends an untouched Optional[bool] switch as unset
# (None), not False; V1 menu buttons hold Vue comment nodes, so match normalize-space(.), not text();
# MLflow's SPA does not reload on a hash-only navigation to the same URL.
