"""The shipped tasks on the real embedded model with their shipped LoRA adapters: the service
routes each task to its adapter first, switches adapters per request, and gives the README's
"Try it" answers right."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from formwork.config import LocalModelSettings, Settings
from formwork.protocol import TaskFile
from formwork.providers.adapters import ADAPTER_FILE, find_adapter

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
SHIPPED = SCHEMAS / "adapters"
TASKS = ("contact-extraction", "ticket-triage", "midjourney-prompt")


def task_file(name: str) -> TaskFile:
    return TaskFile.model_validate_json((SCHEMAS / f"{name}.json").read_text())


@pytest.mark.parametrize("name", TASKS)
def test_each_shipped_task_routes_to_its_shipped_adapter_first(name: str) -> None:
    first, *rest = task_file(name).routes
    assert first.model == f"local/smollm2-135m+{name}-shipped"
    assert (first.prompt, first.constrained) == ("finetuned", True)
    assert [(r.model, r.prompt) for r in rest] == [("local/smollm2-135m", "instructed")]
    adapter = SHIPPED / f"{name}-shipped"
    assert (adapter / ADAPTER_FILE).is_file()
    assert (adapter / ADAPTER_FILE).stat().st_size < 12 << 20  # about 10 MB: r=16 in F16
    meta = json.loads((adapter / "formwork.json").read_text())
    assert meta["task"] == name
    assert meta["train_file"].endswith(f"{name}.train.jsonl")  # what it was trained on


def test_an_adapter_in_adapters_dir_takes_precedence(tmp_path: Path) -> None:
    mine, shipped = tmp_path / "mine", tmp_path / "shipped"
    for root in (mine, shipped):
        (root / "x").mkdir(parents=True)
        (root / "x" / ADAPTER_FILE).write_bytes(b"gguf")
    (shipped / "y").mkdir()
    (shipped / "y" / ADAPTER_FILE).write_bytes(b"gguf")
    assert find_adapter([mine, shipped], "x") == mine / "x" / ADAPTER_FILE
    assert find_adapter([mine, shipped], "y") == shipped / "y" / ADAPTER_FILE
    assert find_adapter([mine, shipped], "z") is None
    settings = LocalModelSettings(adapters_dir=mine, shipped_adapters_dir=shipped)
    assert settings.adapter_roots == [mine, shipped]


@pytest.fixture(scope="module")
def shipped_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    pytest.importorskip("llama_cpp")
    from pydantic import SecretStr

    from service.app import create_app
    from tests.redis_server import RedisServer

    server = RedisServer.launch(tmp_path_factory.mktemp("redis"))
    settings = Settings(
        redis_url=SecretStr(server.url),
        providers={},
        local=LocalModelSettings(
            enabled=True,
            adapters_dir=tmp_path_factory.mktemp("adapters"),  # empty: the shipped ones answer
            shipped_adapters_dir=SHIPPED,
        ),
        schemas_dir=SCHEMAS,
        request_deadline_s=120,
        registry_refresh_s=0,
    )
    try:
        with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
            deadline = time.monotonic() + 120
            while client.get("/readyz").status_code != 200:  # the model loads in the background
                assert time.monotonic() < deadline, client.get("/readyz").text
                time.sleep(0.1)
            yield client
    finally:
        server.stop()


def run(client: TestClient, task: str, text: str) -> dict[str, object]:
    response = client.post(f"/v1/tasks/{task}/run", json={"input": text})
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    assert answer["model"] == f"local/smollm2-135m+{task}-shipped", answer["attempts"]
    return answer


@pytest.mark.slow
def test_the_readme_examples_answer_right_switching_adapters_per_request(
    shipped_client: TestClient,
) -> None:
    contact = "Reach me at jane.doe@acme.io or +1 415 555 0101. Jane Doe, CTO, Acme"
    ticket = "I was charged twice this month"
    image = "phone wallpaper of a neon city at night"
    for _ in range(2):  # interleaved: each request selects its own adapter
        found = run(shipped_client, "contact-extraction", contact)["output"]
        assert found == {
            "name": "Jane Doe",
            "email": "jane.doe@acme.io",
            "phone": "+1 415 555 0101",
            "company": "Acme",
            "title": "CTO",
        }
        triage = run(shipped_client, "ticket-triage", ticket)["output"]
        assert isinstance(triage, dict)
        assert (triage["label"], triage["urgency"]) == ("billing", "high")
        prompt = run(shipped_client, "midjourney-prompt", image)["output"]
        assert isinstance(prompt, dict)
        assert (prompt["aspect_ratio"], prompt["style"]) == ("9:16", "default")
        assert "neon city at night" in str(prompt["prompt"])
