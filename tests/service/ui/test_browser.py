"""The dashboard in headless Chromium against a live server: sign in, read the numbers the API
gives, open a task, see its failing paths and an escaped raw output, run it from the page,
watch a value update without a reload; a read key sees no actions; no request leaves the
server. Screenshots of each page go to ``$FORMWORK_TEST_SCREENSHOTS`` when it is set."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from formwork.config import Settings
from service.ui.filters import pct
from tests.service.helpers import spec
from tests.service.ui.conftest import KEYS, LiveServer
from tests.service.ui.history import MODELS, record, simulated
from tests.service.ui.traffic import MARKUP, make_traffic
from tests.training.helpers import spec_body
from tests.upstream import Upstream

pytestmark = pytest.mark.browser
SHOTS = os.environ.get("FORMWORK_TEST_SCREENSHOTS")


@pytest.fixture
def live(keyed_settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    """A live server whose pages refresh every second, with OpenAI fine-tunes on the upstream."""
    keyed_settings.ui.refresh_s = 1
    keyed_settings.training.openai_provider = "up"
    keyed_settings.training.data_dir = tmp_path / "datasets"
    with LiveServer(keyed_settings) as server:
        yield server


def api(live: LiveServer, who: str = "operator") -> httpx.Client:
    headers = {"authorization": f"Bearer {KEYS[who]}"}
    return httpx.Client(base_url=live.url, headers=headers, timeout=10)


def wait(page: WebDriver, until: Any, timeout: float = 10) -> Any:
    """Until ``until`` holds; an element a refresh swapped out meanwhile means: look again."""
    waiting = WebDriverWait(
        page, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    )
    return waiting.until(until)


def sign_in(page: WebDriver, live: LiveServer, who: str, target: str = "/ui") -> None:
    page.get(live.url + target)
    assert page.current_url == f"{live.url}/ui/signin?next={target}"
    page.find_element(By.ID, "key").send_keys(KEYS[who])
    page.find_element(By.ID, "signin").click()
    wait(page, lambda d: d.current_url == live.url + target)


def text(page: WebDriver, element_id: str) -> str:
    found: str = page.find_element(By.ID, element_id).text
    return found


def texts(page: WebDriver, selector: str) -> list[str]:
    """The rendered text of every element ``selector`` matches, read in one step (a refresh
    cannot swap them out half-way)."""
    script = "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText)"
    found: list[str] = page.execute_script(script, selector)
    return found


def requested(page: WebDriver) -> list[str]:
    """Every URL the browser asked for since the log was last read."""
    urls = []
    for entry in page.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def assert_only_local(urls: list[str], live: LiveServer) -> None:
    assert urls, "the browser recorded no requests"
    elsewhere = [u for u in urls if not u.startswith((live.url + "/", "data:", "blob:"))]
    assert elsewhere == []


async def record_history(live: LiveServer, tasks: dict[str, float]) -> None:
    """A week of traffic for more tasks (task -> chance an attempt fails), for screenshots."""
    from formwork.metrics import Metrics
    from formwork.store import Store

    store = Store.from_settings(live.settings)
    metrics = Metrics(store, flush_s=1, failures_kept=10, request_log_kept=0)
    rng = random.Random(1)
    try:
        for task, fail in tasks.items():
            hours = [simulated(rng, 40, fail=fail * (1 + (h % 24) / 12)) for h in range(168)]
            minutes = [simulated(rng, 3, fail=fail) for _ in range(120)]
            await record(metrics, task, time.time(), hours=hours, minutes=minutes)
    finally:
        await store.aclose()


def with_history(page: WebDriver, live: LiveServer) -> None:
    """Screenshots of the overview and a task page with a week of history behind them."""
    tasks = {"invoice-fields": 0.02, "ticket-triage": 0.09, "contact-extraction": 0.04}
    with api(live) as http:
        for task in tasks:
            routes = [{"model": m} for m in MODELS]
            assert (
                http.put(f"/v1/tasks/{task}", json=spec("up/x", routes=routes)).status_code == 201
            )
    asyncio.run(record_history(live, tasks))
    page.get(live.url + "/ui?window=7d")
    shoot(page, "overview")
    page.get(live.url + "/ui/tasks/ticket-triage?window=24h")
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".chart canvas")) == 2)
    shoot(page, "task-history", height=1300)


def shoot(page: WebDriver, name: str, height: int | None = None) -> None:
    if not SHOTS:
        return
    if height:
        page.set_window_size(1400, height)
    page.save_screenshot(str(Path(SHOTS) / f"dashboard-{name}.png"))
    page.set_window_size(1400, 1000)


def test_sign_in_read_the_numbers_open_a_task_and_run_it(
    page: WebDriver, live: LiveServer, upstream: Upstream, unique_name: str
) -> None:
    with api(live) as http:
        assert make_traffic(http, upstream, unique_name) == [200, 200, 200, 200, 502]
        stats = http.get(f"/v1/tasks/{unique_name}/stats", params={"window": "1h"}).json()
    if SHOTS:
        page.get(live.url + "/ui/signin")
        shoot(page, "signin")
    sign_in(page, live, "runner")
    cells = page.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll(arguments[0]),"
        " c => [c.dataset.col, c.innerText]))",
        f"#task-{unique_name} td[data-col]",
    )
    cell = {k: v.strip() for k, v in cells.items()}
    assert cell["requests"] == str(stats["requests"]) == "5"
    assert cell["cache_hit"] == pct(stats["cache_hits"] / stats["requests"]) == "20.0 %"
    assert cell["first_valid"] == pct(stats["total"]["first_attempt_valid_rate"])
    assert cell["final_failure"] == pct(stats["final_failure_rate"]) == "20.0 %"
    assert cell["failure_rate"].startswith(pct(stats["total"]["format_failure_rate"]))
    assert texts(page, f"tr.over#task-{unique_name}")  # stands out: over the threshold

    wait(page, lambda d: d.find_element(By.LINK_TEXT, unique_name).click() or True)
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-chart=rates] canvas"))
    paths = [" ".join(t.split()) for t in texts(page, "tr.path-row")]
    assert paths == [
        "up/primary $.label (enum) 1 '<script>alert(1)</script>' is not one of ['spam', 'ham']"
    ]
    raw = wait(page, lambda d: texts(d, "#failures pre.raw"))
    assert raw[-1] == MARKUP  # shown as text, not run
    assert texts(page, "#failures pre.raw mark")[-1] == '"label"'
    assert page.find_elements(By.CSS_SELECTOR, "#failures script") == []
    shoot(page, "task", height=2600)

    # Live: the page keeps its state (no reload) while the numbers change under it.
    page.execute_script("window.stillThisPage = true")
    assert text(page, "stat-requests") == "5"
    upstream.script("primary", '{"label": "ham", "score": 0.25}')
    page.find_element(By.ID, "try-input").send_keys("a brand new message")
    page.find_element(By.ID, "try-run").click()
    output = wait(page, lambda d: d.find_elements(By.ID, "try-output"))
    assert json.loads(output[0].text) == {"label": "ham", "score": 0.25}
    assert "1 attempt(s)" in text(page, "try-ok")
    wait(page, lambda d: text(d, "stat-requests") == "6")
    assert page.execute_script("return window.stillThisPage") is True
    # the refreshed fragment's charts are drawn again
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".chart canvas")) == 2)
    if SHOTS:
        page.execute_script("document.getElementById('try').scrollIntoView()")
        shoot(page, "try")
    assert_only_local(requested(page), live)
    if SHOTS:
        with_history(page, live)


def test_a_read_key_sees_no_actions(page: WebDriver, live: LiveServer, unique_name: str) -> None:
    with api(live) as http:
        assert http.put(f"/v1/tasks/{unique_name}", json=spec_body(12)).status_code == 201
    sign_in(page, live, "reader", f"/ui/tasks/{unique_name}")
    wait(page, lambda d: d.find_element(By.ID, "jobs"))
    assert text(page, "who") == "reader"
    for absent in ("try-form", "finetune-form", "evaluate-form"):
        assert page.find_elements(By.ID, absent) == []
    assert "needs a key with the run scope" in text(page, "try")


def test_an_admin_starts_and_cancels_a_finetune(
    page: WebDriver, live: LiveServer, upstream: Upstream, unique_name: str
) -> None:
    with api(live) as http:
        assert http.put(f"/v1/tasks/{unique_name}", json=spec_body(12)).status_code == 201
    upstream.script_job(statuses=["validating_files", "running", "running", "running"])
    sign_in(page, live, "operator", f"/ui/tasks/{unique_name}")
    page.find_element(By.CSS_SELECTOR, "#finetune-form select[name=provider]").send_keys("openai")
    model = page.find_element(By.CSS_SELECTOR, "#finetune-form input[name=base_model]")
    model.clear()
    model.send_keys("gpt-4o-mini-2024-07-18")
    page.find_element(By.ID, "finetune-start").click()
    message = wait(page, lambda d: texts(d, "#finetune-message"))
    job_id = message[0].removeprefix("started job ")
    row = texts(page, f"#job-{job_id}")[0]
    # the page brings running jobs up to date: the upstream's job moved on to "running"
    assert row.split()[:4] == [job_id, "openai", "gpt-4o-mini-2024-07-18", "running"]
    wait(page, lambda d: d.find_element(By.CSS_SELECTOR, f"#job-{job_id} .danger").click() or 1)
    page.switch_to.alert.accept()
    wait(page, lambda d: "cancelled" in texts(d, f"#job-{job_id}")[0])
    with api(live, "reader") as http:
        assert http.get(f"/v1/finetunes/{job_id}").json()["status"] == "cancelled"


def test_api_docs_render_offline(page: WebDriver, live: LiveServer) -> None:
    page.get(live.url + "/docs")  # keys are configured: the docs need read
    assert "send an API key" in page.find_element(By.TAG_NAME, "body").text
    sign_in(page, live, "reader")  # a dashboard session is enough
    page.get(live.url + "/docs")
    title = wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"))
    assert title[0].text.startswith("Formwork")
    shoot(page, "docs")
    page.get(live.url + "/redoc")
    heading = wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "h1"))
    assert heading[0].text.startswith("Formwork")
    assert_only_local(requested(page), live)
