"""Shared fixtures: a real Redis, a scripted OpenAI-compatible upstream, explicit settings and
a ``TestClient`` whose lifespan runs.

With ``FORMWORK_TEST_REDIS_URL`` set the tests share that Redis and never flush it, so every
test names its tasks with ``unique_name``.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from pydantic import SecretStr

from tests.redis_server import RedisServer
from tests.upstream import Upstream

# Some tests press Ctrl-C on a child process. A suite started in the background of a
# non-interactive shell inherits SIGINT ignored, and so would every child it starts (an ignored
# signal survives exec): give them the default back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from formwork.config import Settings

TEST_REDIS_ENV = "FORMWORK_TEST_REDIS_URL"


@pytest.fixture(autouse=True)
def _isolated_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No FORMWORK_* variable (but FORMWORK_TEST_*) and no formwork.toml reach a test."""
    from formwork.config import Settings

    for name in list(os.environ):
        if name.startswith("FORMWORK_") and not name.startswith("FORMWORK_TEST_"):
            monkeypatch.delenv(name)
    absent = tmp_path_factory.getbasetemp() / "absent-formwork.toml"
    monkeypatch.setenv("FORMWORK_CONFIG", str(absent))
    # The toml path is read when formwork.config is imported; point it away for this test.
    monkeypatch.setitem(Settings.model_config, "toml_file", absent)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    url = os.environ.get(TEST_REDIS_ENV)
    if url:
        yield RedisServer.external(url)
        return
    server = RedisServer.launch(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The Redis URL; an owned server is (re)started if a test left it down, and flushed."""
    if redis_server.owned:
        redis_server.start()
        with redis.Redis.from_url(redis_server.url) as client:
            # a fault test may have left it full or read-only
            client.config_set("maxmemory", 0)
            client.replicaof("NO", "ONE")
            client.flushdb()
    return redis_server.url


@pytest.fixture
def unique_name() -> str:
    """A task slug no other test (or test run sharing the same Redis) uses."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture
def upstream(upstream_server: Upstream) -> Upstream:
    """The scripted OpenAI-compatible server, with nothing scripted or recorded."""
    upstream_server.reset()
    return upstream_server


@pytest.fixture
def settings(redis_url: str, upstream: Upstream, tmp_path: Path) -> Settings:
    """Explicit settings: the test Redis, the upstream as provider ``up``, no local model."""
    from formwork.config import LocalModelSettings, ProviderSettings, Settings

    schemas_dir = tmp_path / "schemas"
    schemas_dir.mkdir()
    return Settings(
        redis_url=SecretStr(redis_url),
        providers={
            "up": ProviderSettings(base_url=upstream.base_url, api_key=SecretStr("sk-test-secret"))
        },
        local=LocalModelSettings(enabled=False),
        schemas_dir=schemas_dir,
        request_deadline_s=10,
        metrics_flush_s=0.2,
        registry_refresh_s=0,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app with its lifespan running; requests come from 127.0.0.1 (loopback, no keys)."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as test_client:
        yield test_client


@contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port, lifespan and all; its base URL."""
    import uvicorn

    from service.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


@pytest.fixture
def server_url(settings: Settings) -> Iterator[str]:
    """The app served over real HTTP on loopback (for clients that need a socket)."""
    with live_server(settings) as url:
        yield url
