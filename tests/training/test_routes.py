"""``/v1/tasks/{task}/finetunes`` and ``/v1/finetunes/{id}``, whole bodies asserted."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from formwork import prompts
from formwork.auth import digest
from formwork.config import ApiKeySettings, Settings
from tests.training.helpers import example, spec_body
from tests.upstream import Upstream

BASE = "gpt-4o-mini-2024-07-18"


def job_body(response: dict[str, Any], task: str, **fields: Any) -> dict[str, Any]:
    """The job as the API returns it; its id and times are taken from ``response``."""
    return {
        "id": response["id"],
        "task": task,
        "provider": "openai",
        "base_model": BASE,
        "status": "validating",
        "progress": 0.02,
        "dataset_hash": response["dataset_hash"],
        "train_examples": 11,
        "validation_examples": 1,
        "created_at": response["created_at"],
        "updated_at": response["updated_at"],
        "model": None,
        "error": None,
        "hyperparameters": {
            "batch_size": "auto",
            "learning_rate_multiplier": "auto",
            "n_epochs": 2,
        },
        "external_id": "ftjob-0001",
        "trained_tokens": None,
        "step": None,  # OpenAI's jobs say no steps, loss or ETA
        "steps": None,
        "loss": None,
        "eta_s": None,
        **fields,
    }


def test_start_follow_and_use_a_finetune(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    assert client.put(f"/v1/tasks/{unique_name}", json=spec_body(12)).status_code == 201
    upstream.script_job(statuses=["validating_files", "running", "succeeded"])
    body = {"provider": "openai", "base_model": BASE, "hyperparameters": {"n_epochs": 2}}
    started = client.post(f"/v1/tasks/{unique_name}/finetunes", json=body)
    assert started.status_code == 201
    job = started.json()
    assert job == job_body(job, unique_name)
    assert len(job["dataset_hash"]) == 64

    again = client.post(f"/v1/tasks/{unique_name}/finetunes", json=body)
    assert (again.status_code, again.json()) == (200, job)
    assert list(upstream.jobs) == ["ftjob-0001"]

    running = client.get(f"/v1/finetunes/{job['id']}").json()
    assert running == job_body(running, unique_name, status="running", progress=0.1)
    done = client.get(f"/v1/finetunes/{job['id']}").json()
    model = f"up/ft:{BASE}:formwork:{unique_name}:0001"
    assert done == job_body(
        done, unique_name, status="succeeded", progress=1.0, model=model, trained_tokens=4096
    )
    assert client.get(f"/v1/tasks/{unique_name}/finetunes").json() == [done]

    # The model it made serves the task with the short prompt it was trained on.
    route = {"model": model, "prompt": "finetuned", "constrained": False}
    assert client.put(f"/v1/tasks/{unique_name}", json=spec_body(12, route)).status_code == 200
    upstream.script(model.removeprefix("up/"), '{"item":"tea","count":3}')
    run = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "3 boxes of tea"})
    assert (run.json()["output"], run.json()["model"]) == ({"item": "tea", "count": 3}, model)
    assert upstream.requests[-1]["messages"] == prompts.finetuned_messages(
        unique_name, "3 boxes of tea"
    )


def test_failed_checks_are_named(client: TestClient, unique_name: str) -> None:
    examples = [example(i) for i in range(8)] + [
        {"input": " ", "output": {"item": "x", "count": 0}}
    ]
    task = {**spec_body(0), "examples": examples}
    assert client.put(f"/v1/tasks/{unique_name}", json=task).status_code == 201
    body = {"base_model": BASE, "validation_fraction": 0}
    response = client.post(f"/v1/tasks/{unique_name}/finetunes", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "https://formwork.dev/problems/invalid-input",
        "title": "Invalid input",
        "status": 422,
        "detail": "the dataset fails 2 check(s): count, format",
        "instance": f"/v1/tasks/{unique_name}/finetunes",
        "errors": [
            {"path": "examples[8]", "message": "format: message 1 (user) has empty content"},
            {"path": "dataset", "message": "count: 9 training examples; at least 10 are needed"},
        ],
        "checks": ["count", "format"],
        "request_id": response.headers["x-request-id"],
    }


def test_refusals(client: TestClient, unique_name: str) -> None:
    url = f"/v1/tasks/{unique_name}/finetunes"
    missing = client.post(url, json={"base_model": BASE})
    assert missing.json() == {
        "type": "https://formwork.dev/problems/task-not-found",
        "title": "Task not found",
        "status": 404,
        "detail": f"no task named {unique_name!r}",
        "instance": url,
        "request_id": missing.headers["x-request-id"],
    }
    assert client.put(f"/v1/tasks/{unique_name}", json=spec_body(12)).status_code == 201
    unknown = client.post(url, json={"provider": "azure", "base_model": BASE})
    assert unknown.json() == {
        "type": "https://formwork.dev/problems/invalid-input",
        "title": "Invalid input",
        "status": 422,
        "detail": "no fine-tune provider 'azure' is configured here (configured: openai)",
        "instance": url,
        "errors": [{"path": "$.provider", "message": "unknown provider 'azure'"}],
        "request_id": unknown.headers["x-request-id"],
    }
    loose = client.post(url, json={"base_model": BASE, "hyperparameters": {"epochs": 2}})
    assert (loose.status_code, loose.json()["errors"]) == (
        422,
        [{"path": "$.hyperparameters.epochs", "message": "Extra inputs are not permitted"}],
    )
    gone = client.get("/v1/finetunes/ftj-nope")
    assert gone.json() == {
        "type": "https://formwork.dev/problems/finetune-not-found",
        "title": "Fine-tune job not found",
        "status": 404,
        "detail": "no fine-tune job 'ftj-nope'",
        "instance": "/v1/finetunes/ftj-nope",
        "request_id": gone.headers["x-request-id"],
    }
    assert client.get(f"/v1/tasks/{unique_name}/finetunes").json() == []


def test_harvested_runs_train_the_model(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    """The distillation flywheel: a big model's validated answers become the training set."""
    big = {"model": "up/big", "max_attempts": 1, "constrained": False}
    assert client.put(f"/v1/tasks/{unique_name}", json=spec_body(1, big)).status_code == 201
    upstream.set_default("big", '{"item": "tea", "count": 3}')
    inputs = [f"order {i}: 3 boxes of tea" for i in range(12)]
    for text in inputs:
        assert client.post(f"/v1/tasks/{unique_name}/run", json={"input": text}).status_code == 200
    body = {
        "base_model": BASE,
        "validation_fraction": 0,
        "source": {"examples": False, "harvest": True, "harvest_model": "up/big"},
    }
    response = client.post(f"/v1/tasks/{unique_name}/finetunes", json=body)
    assert response.status_code == 201
    assert response.json()["train_examples"] == 12
    uploaded = upstream.files["file-0001"].content.decode().splitlines()
    trained = [json.loads(line)["messages"] for line in uploaded]
    assert (
        trained
        == [
            [
                *prompts.finetuned_messages(unique_name, text),
                {"role": "assistant", "content": '{"item":"tea","count":3}'},
            ]
            for text in inputs
        ][::-1]
    )  # newest first


def test_scopes(settings: Settings, upstream: Upstream, unique_name: str) -> None:
    from service.app import create_app

    settings.api_keys = {
        "ops": ApiKeySettings(sha256=digest("admin-key"), scopes=["admin"]),
        "dash": ApiKeySettings(sha256=digest("read-key"), scopes=["read"]),
    }
    admin, read = {"Authorization": "Bearer admin-key"}, {"Authorization": "Bearer read-key"}
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        url = f"/v1/tasks/{unique_name}"
        assert client.put(url, json=spec_body(12), headers=admin).status_code == 201
        denied = client.post(f"{url}/finetunes", json={"base_model": BASE}, headers=read)
        assert (denied.status_code, denied.json()["detail"]) == (
            403,
            "this key lacks the 'admin' scope",
        )
        job = client.post(f"{url}/finetunes", json={"base_model": BASE}, headers=admin).json()
        assert client.get(f"{url}/finetunes", headers=read).status_code == 200
        assert client.get(f"/v1/finetunes/{job['id']}", headers=read).status_code == 200
        assert client.get(f"/v1/finetunes/{job['id']}").status_code == 401
