"""The format tax equals the scripted re-asks and fallbacks; a format budget is shown, exported
and, when the task says so, enforced by skipping the fallback routes."""

from __future__ import annotations

from typing import Any
from unittest.mock import ANY

import pytest
from fastapi.testclient import TestClient

from tests.service.helpers import GOOD, OUTPUT, attempt, spec
from tests.service.helpers import metric_samples as samples
from tests.upstream import Reply, Upstream

CHEAP, DEAR = "gpt-4o-mini", "gpt-4o"  # priced by the built-in table: $0.15/$0.60, $2.50/$10 per 1M


def tax(
    attempts: int, prompt: int, completion: int, usd: float | None, requests: int
) -> dict[str, Any]:
    return {
        "attempts": attempts,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "ms": ANY,
        "usd": None if usd is None else round(usd, 6),
        "tokens_per_request": round((prompt + completion) / requests, 2),
        "ms_per_request": ANY,
        "usd_per_request": None if usd is None else round(usd / requests, 8),
    }


def test_the_format_tax_is_the_scripted_reasks_and_fallbacks(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    task = unique_name
    routes = spec(f"up/{CHEAP}", f"up/{DEAR}")
    assert client.put(f"/v1/tasks/{task}", json=routes).status_code == 201
    upstream.script(
        CHEAP,
        Reply(GOOD, prompt_tokens=100, completion_tokens=10),  # 1: valid first time: no tax
        Reply("no", prompt_tokens=101, completion_tokens=11),  # 2: invalid, valid on the re-ask
        Reply(GOOD, prompt_tokens=150, completion_tokens=12),
        Reply("no", prompt_tokens=102, completion_tokens=13),  # 3: invalid twice, falls back
        Reply("no", prompt_tokens=160, completion_tokens=14),
        Reply(status=500),  # 5: upstream error, falls back, fails there twice
    )
    upstream.script(
        DEAR,
        Reply(GOOD, prompt_tokens=500, completion_tokens=20),  # 3's answer
        Reply("no", prompt_tokens=501, completion_tokens=21),
        Reply("no", prompt_tokens=600, completion_tokens=22),
    )
    codes = [
        client.post(f"/v1/tasks/{task}/run", json={"input": text}).status_code
        for text in ["one", "two", "three", "one", "five"]  # 4 is a cache hit of 1
    ]
    assert codes == [200, 200, 200, 200, 502]

    stats = client.get(f"/v1/tasks/{task}/stats", params={"window": "15m"}).json()
    cheap_usd = ((101 + 150 + 102 + 160) * 0.15 + (11 + 12 + 13 + 14) * 0.6) / 1e6
    dear_usd = ((500 + 501 + 600) * 2.5 + (20 + 21 + 22) * 10) / 1e6
    requests = 4  # that reached a model: the cache hit paid nothing
    cheap = tax(2 + 2 + 1, 101 + 150 + 102 + 160, 11 + 12 + 13 + 14, cheap_usd, requests)
    dear = tax(3, 500 + 501 + 600, 20 + 21 + 22, dear_usd, requests)
    total = tax(8, 513 + 1601, 50 + 63, cheap_usd + dear_usd, requests)
    assert stats["models"][f"up/{CHEAP}"]["format_tax"] == cheap
    assert stats["models"][f"up/{DEAR}"]["format_tax"] == dear
    assert stats["format_tax"] == stats["total"]["format_tax"] == total
    assert stats["format_budget"] is None
    assert isinstance(stats["format_tax"]["ms"], int)

    assert samples(client, "formwork_format_tax_attempts_total", task) == {
        (f"up/{CHEAP}",): 5.0,
        (f"up/{DEAR}",): 3.0,
    }
    assert samples(client, "formwork_format_tax_tokens_total", task) == {
        ("completion", f"up/{CHEAP}"): 50.0,
        ("prompt", f"up/{CHEAP}"): 513.0,
        ("completion", f"up/{DEAR}"): 63.0,
        ("prompt", f"up/{DEAR}"): 1601.0,
    }
    usd = samples(client, "formwork_format_tax_usd_total", task)
    assert usd == {
        (f"up/{CHEAP}",): pytest.approx(cheap_usd),
        (f"up/{DEAR}",): pytest.approx(dear_usd),
    }


def test_an_unpriced_model_leaves_the_total_unpriced(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    assert client.put(f"/v1/tasks/{unique_name}", json=spec("up/primary")).status_code == 201
    upstream.script("primary", "no", GOOD)
    assert client.post(f"/v1/tasks/{unique_name}/run", json={"input": "x"}).status_code == 200
    stats = client.get(f"/v1/tasks/{unique_name}/stats", params={"window": "15m"}).json()
    assert stats["format_tax"] == tax(2, 22, 14, None, 1)


def over_fallback_budget(
    client: TestClient, upstream: Upstream, task: str, *, enforce: bool
) -> dict[str, Any]:
    """Two requests that fall back, against a budget of half: over it; the stats body."""
    budget = {"max_fallback_share": 0.5, "window": "15m", "min_requests": 2, "enforce": enforce}
    body = spec("up/primary", "up/backup", format_budget=budget)
    assert client.put(f"/v1/tasks/{task}", json=body).status_code == 201
    upstream.script("primary", "no", "no", "no", "no")
    upstream.script("backup", GOOD, GOOD)
    for text in ("a", "b"):
        assert client.post(f"/v1/tasks/{task}/run", json={"input": text}).status_code == 200
    stats = client.get(f"/v1/tasks/{task}/stats", params={"window": "15m"}).json()
    status: dict[str, Any] = stats["format_budget"]
    return status


def test_an_enforced_budget_skips_the_fallback_once_over(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    status = over_fallback_budget(client, upstream, unique_name, enforce=True)
    assert status == {
        "window": "15m",
        "requests": 2,
        "min_requests": 2,
        "over_budget": True,
        "exceeded": ["max_fallback_share"],
        "figures": [{"limit": "max_fallback_share", "bound": 0.5, "value": 1.0, "exceeded": True}],
        "enforce": True,
        "enforced": True,
    }
    assert samples(client, "formwork_format_budget_exceeded", unique_name) == {
        ("max_fallback_share",): 1.0
    }

    upstream.script("primary", "no", "no")
    upstream.script("backup", GOOD)
    response = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "c"})
    assert response.status_code == 502
    body = response.json()
    assert body == {
        "type": "https://formwork.dev/problems/all-routes-failed",
        "title": "No route produced valid output",
        "status": 502,
        "detail": f"the first route gave no valid output, and task {unique_name!r} is over its "
        "format budget (max_fallback_share 1 > 0.5, over 15m): its fallback routes "
        "('up/backup') were skipped",
        "instance": f"/v1/tasks/{unique_name}/run",
        "request_id": body["request_id"],
        "attempts": [attempt("up/primary", "invalid_json")] * 2,
        "skipped": ["up/backup"],
        "format_budget": status,
    }
    assert upstream.pending("backup") == 1  # never called
    assert samples(client, "formwork_routes_skipped_total", unique_name) == {
        ("up/backup", "format_budget"): 1.0
    }
    # the first route still answers when it can
    upstream.script("primary", GOOD)
    answer = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "d"})
    assert answer.status_code == 200
    assert answer.json()["output"] == OUTPUT


def test_a_budget_not_enforced_is_shown_and_exported_but_falls_back(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    status = over_fallback_budget(client, upstream, unique_name, enforce=False)
    assert (status["over_budget"], status["enforce"], status["enforced"]) == (True, False, False)
    assert samples(client, "formwork_format_budget_exceeded", unique_name) == {
        ("max_fallback_share",): 1.0
    }
    upstream.script("primary", "no", "no")
    upstream.script("backup", GOOD)
    response = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "c"})
    assert response.status_code == 200
    assert response.json()["model"] == "up/backup"


def test_the_tokens_limit_and_the_minimum_of_requests(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    budget = {"max_extra_tokens_per_request": 20, "window": "1h", "min_requests": 2}
    body = spec("up/primary", format_budget=budget)
    assert client.put(f"/v1/tasks/{unique_name}", json=body).status_code == 201
    upstream.script("primary", "no", GOOD, GOOD)  # a re-ask: 2 x (11 + 7) tokens of tax
    assert client.post(f"/v1/tasks/{unique_name}/run", json={"input": "a"}).status_code == 200

    def figures() -> tuple[bool, list[dict[str, Any]]]:
        stats = client.get(f"/v1/tasks/{unique_name}/stats", params={"window": "15m"}).json()
        return stats["format_budget"]["over_budget"], stats["format_budget"]["figures"]

    # one request: 36 tokens over a bound of 20, but under the 2 requests a verdict needs
    limit = {"limit": "max_extra_tokens_per_request", "bound": 20.0}
    assert figures() == (False, [{**limit, "value": 36.0, "exceeded": False}])
    assert samples(client, "formwork_format_budget_exceeded", unique_name) == {
        ("max_extra_tokens_per_request",): 0.0
    }
    assert client.post(f"/v1/tasks/{unique_name}/run", json={"input": "b"}).status_code == 200
    assert figures() == (False, [{**limit, "value": 18.0, "exceeded": False}])
    upstream.script("primary", "no", "no")  # failed: 36 more tokens of tax
    assert client.post(f"/v1/tasks/{unique_name}/run", json={"input": "c"}).status_code == 502
    assert figures() == (True, [{**limit, "value": 24.0, "exceeded": True}])
    assert samples(client, "formwork_format_budget_exceeded", unique_name) == {
        ("max_extra_tokens_per_request",): 1.0
    }


def test_a_bad_budget_is_a_clear_422(client: TestClient, unique_name: str) -> None:
    body = spec("up/primary", format_budget={"max_fallback_share": 2, "enforced": True})
    response = client.put(f"/v1/tasks/{unique_name}", json=body)
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "https://formwork.dev/problems/invalid-input"
    paths = sorted(e["path"] for e in problem["errors"])
    assert paths == ["$.format_budget.enforced", "$.format_budget.max_fallback_share"]
