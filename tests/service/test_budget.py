"""Token budgets on the run path: the default ``max_tokens`` scales with the schema, and an
answer cut off at it is re-asked with the errors and a larger budget (and, on the embedded
model, a briefer grammar)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from formwork import budget
from formwork.config import LocalModelSettings, Settings
from formwork.providers.coverage import BRIEF_LENGTH
from tests.service.helpers import GOOD, OUTPUT, SCHEMA, attempt, spec
from tests.upstream import Reply, Upstream


def test_cut_off_answer_is_re_asked_with_a_larger_budget(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    assert client.put(f"/v1/tasks/{unique_name}", json=spec("up/primary")).status_code == 201
    upstream.script("primary", Reply(content='{"label": "sp', finish_reason="length"), GOOD)
    response = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "WIN"})
    assert response.status_code == 200, response.text
    message = "the answer was cut off at max_tokens; answer more briefly"
    assert response.json()["output"] == OUTPUT
    assert response.json()["attempts"] == [
        attempt("up/primary", "truncated", [{"path": "$", "message": message}]),
        attempt("up/primary", "valid", []),
    ]
    first, second = upstream.requests[-2:]
    scaled = budget.default_max_tokens(SCHEMA)
    assert scaled == budget.BASE_TOKENS + 2 * budget.PER_PROPERTY
    assert (first["max_tokens"], second["max_tokens"]) == (scaled, 2 * scaled)
    assert second["messages"][-1]["content"].startswith("Your answer is not valid for the schema")


def test_a_route_max_tokens_is_kept(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    definition = spec("up/primary")
    definition["routes"][0]["max_tokens"] = 64
    assert client.put(f"/v1/tasks/{unique_name}", json=definition).status_code == 201
    upstream.script("primary", GOOD)
    assert client.post(f"/v1/tasks/{unique_name}/run", json={"input": "x"}).status_code == 200
    assert upstream.requests[-1]["max_tokens"] == 64


@pytest.mark.slow
def test_a_cut_off_answer_of_the_embedded_model_is_re_asked_for_a_brief_one(
    settings: Settings, unique_name: str, tmp_path: Path
) -> None:
    pytest.importorskip("llama_cpp")
    from service.app import create_app

    settings.local = LocalModelSettings(adapters_dir=tmp_path / "adapters")
    settings.request_deadline_s = 120
    schema = {
        "type": "object",
        "properties": {"story": {"type": "string"}, "moral": {"type": "string"}},
        "required": ["story"],
    }
    route = {"model": "local/smollm2-135m", "max_tokens": 12, "timeout_s": 110}
    definition = {"description": "Tell a very long story.", "output_schema": schema}
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        put = client.put(f"/v1/tasks/{unique_name}", json={**definition, "routes": [route]})
        assert put.status_code == 201, put.text
        response = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "A dragon."})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [a["outcome"] for a in body["attempts"]] == ["truncated", "valid"]
    assert body["attempts"][0]["usage"]["completion_tokens"] == 12
    assert list(body["output"]) == ["story"]
    assert len(body["output"]["story"]) <= BRIEF_LENGTH
