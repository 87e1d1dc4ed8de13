"""Start-up without the embedded model's packages: the service runs on its other providers."""

from __future__ import annotations

import logging
import sys

import pytest
from fastapi.testclient import TestClient

from formwork.config import LocalModelSettings, Settings
from service.app import create_app
from tests.service.helpers import GOOD, spec
from tests.upstream import Upstream


def test_without_the_local_extra_the_service_starts_and_says_why(
    settings: Settings,
    upstream: Upstream,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # ``import llama_cpp`` now fails
    settings.local = LocalModelSettings(enabled=True)
    upstream.set_default("primary", GOOD)
    with (
        caplog.at_level(logging.WARNING),
        TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client,
    ):
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "redis": True,
            "providers": {"local": False, "up": True},
            "unavailable": {
                "local": "not installed: llama_cpp (install the 'local' extra)",
            },
        }
        registered = client.put(f"/v1/tasks/{unique_name}", json=spec("up/primary"))
        assert registered.status_code == 201
        run = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "hi"})
        assert run.status_code == 200
        assert run.json()["model"] == "up/primary"
        local_only = client.put(f"/v1/tasks/{unique_name}-b", json=spec("local/smollm2-135m"))
        assert local_only.json()["warnings"] == [
            "route 'local/smollm2-135m': provider 'local' is unavailable here (not installed: "
            "llama_cpp (install the 'local' extra)), so the route is skipped"
        ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "embedded model unavailable: not installed: llama_cpp (install the 'local' extra)" in (
        warnings
    )
    assert not any(r.exc_info for r in caplog.records)  # a warning, not a traceback
