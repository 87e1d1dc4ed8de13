"""Token budgets on the run path: the default ``max_tokens`` scales with the schema, and an
answer cut off at it is re-asked with the errors and a larger budget."""

from __future__ import annotations

from fastapi.testclient import TestClient

from formwork import budget
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
