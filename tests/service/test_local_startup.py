"""Start-up with the embedded model: the app answers at once while the model loads in the
background; runs that cannot wait for it get 503 with Retry-After, later ones are served."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

pytest.importorskip("llama_cpp")

from formwork.config import LocalModelSettings, Settings
from formwork.providers import engine as engine_module
from service.app import create_app
from tests.service.helpers import spec

LOCAL = "local/smollm2-135m"


@pytest.mark.slow
def test_healthz_at_once_readyz_loading_and_runs_refused_then_served(
    settings: Settings, unique_name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gate = threading.Event()
    real_load = engine_module.Engine.load

    def held_load(self: Any) -> None:  # the real load, once the test lets it go on
        gate.wait(60)
        real_load(self)

    monkeypatch.setattr(engine_module.Engine, "load", held_load)
    settings.local = LocalModelSettings(adapters_dir=tmp_path / "adapters", max_tokens=64)
    task = spec(LOCAL, max_attempts=1)
    task["routes"][0]["timeout_s"] = 1
    try:
        with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            loading = client.get("/readyz")
            assert (loading.status_code, loading.json()) == (
                503,
                {
                    "status": "loading",
                    "redis": True,
                    "providers": {"local": False, "up": True},
                    "loading": ["local"],
                },
            )
            assert client.put(f"/v1/tasks/{unique_name}", json=task).status_code == 201
            refused = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "hi"})
            assert refused.status_code == 503
            assert refused.headers["content-type"] == "application/problem+json"
            assert int(refused.headers["retry-after"]) >= 1
            body = refused.json()
            for attempt in body["attempts"]:
                attempt.pop("latency_ms")
            assert body == {
                "type": "https://formwork.dev/problems/unavailable",
                "title": "Service unavailable",
                "status": 503,
                "detail": "every model is rate limited or busy; retry later",
                "instance": f"/v1/tasks/{unique_name}/run",
                "request_id": body["request_id"],
                "attempts": [
                    {
                        "model": LOCAL,
                        "outcome": "rate_limited",
                        "errors": [{"path": "$", "message": "the embedded model is still loading"}],
                        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
                    }
                ],
            }
            gate.set()
            for _ in range(600):
                if client.get("/readyz").json()["status"] == "ready":
                    break
                time.sleep(0.1)
            assert client.get("/readyz").json() == {
                "status": "ready",
                "redis": True,
                "providers": {"local": True, "up": True},
            }
            task["routes"][0]["timeout_s"] = 60  # room for the prefill on a shared CPU
            assert client.put(f"/v1/tasks/{unique_name}", json=task).status_code == 200
            served = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "WIN A PRIZE"})
            assert served.status_code == 200, served.text
            assert served.json()["model"] == LOCAL
            assert [a["outcome"] for a in served.json()["attempts"]] == ["valid"]
    finally:
        gate.set()
