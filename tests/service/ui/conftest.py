"""Dashboard fixtures: keys for each scope, a real uvicorn server on a free port, and headless
Chromium driven by Selenium (Debian's ``chromium`` and ``chromium-driver``)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from formwork.auth import digest
from formwork.config import ApiKeySettings, Settings

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

KEYS = {"reader": "fw_read-key", "runner": "fw_run-key", "operator": "fw_admin-key"}
SCOPES = {"reader": ["read"], "runner": ["read", "run"], "operator": ["admin"]}
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def keyed_settings(settings: Settings) -> Settings:
    """The test settings with a read key, a read+run key and an admin key."""
    keys = {
        name: ApiKeySettings(sha256=digest(KEYS[name]), scopes=scopes)  # type: ignore[arg-type]
        for name, scopes in SCOPES.items()
    }
    return settings.model_copy(update={"api_keys": keys})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveServer:
    """``create_app(settings)`` under a real uvicorn, in a thread, on a free loopback port."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from service.app import create_app

        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


@pytest.fixture
def live(keyed_settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(keyed_settings) as server:
        yield server


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the session; it records every request it makes."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("browser tests need Debian's chromium and chromium-driver (scripts/setup.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: WebDriver) -> Iterator[WebDriver]:
    """The browser on a blank page, with no cookies and no requests recorded by another test."""
    browser.get("about:blank")
    browser.delete_all_cookies()
    browser.get_log("performance")
    yield browser
    browser.get("about:blank")
    browser.delete_all_cookies()
