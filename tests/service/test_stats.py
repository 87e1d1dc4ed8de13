"""Stats, failures and Prometheus numbers equal what the scripted upstream made happen."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.service.helpers import GOOD, spec
from tests.upstream import Reply, Upstream


def test_stats_match_scripted_outcomes(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    task = unique_name
    assert client.put(f"/v1/tasks/{task}", json=spec("up/primary", "up/backup")).status_code == 201
    upstream.script(
        "primary",
        GOOD,  # 1: valid first time
        '{"label": "eggs", "score": 0.5}',  # 2: schema violation, then valid on re-ask
        GOOD,
        "no",  # 3: invalid twice, falls back
        "no",
        Reply(status=500),  # 5: upstream error, falls back, fails there too
    )
    upstream.script("backup", GOOD, "still no", "never")
    codes = [
        client.post(f"/v1/tasks/{task}/run", json={"input": text}).status_code
        for text in ["one", "two", "three", "one", "five"]  # 4 is a cache hit of 1
    ]
    assert codes == [200, 200, 200, 200, 502]

    stats = client.get(f"/v1/tasks/{task}/stats", params={"window": "15m"}).json()
    latency = {"latency_ms_p50": stats["latency_ms_p50"], "latency_ms_p95": stats["latency_ms_p95"]}
    assert all(value is not None and value > 0 for value in latency.values())

    def model(m: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in m.items() if not k.startswith("latency") and k != "format_tax"}

    def taxed(m: dict[str, Any]) -> tuple[int, int, int, float]:
        t = m["format_tax"]
        return t["attempts"], t["prompt_tokens"], t["completion_tokens"], t["tokens_per_request"]

    # the format tax (test_tax.py has the whole of it): 4 requests reached a model; 2 and 3 pay
    # every attempt, 5 pays its upstream error (no tokens) and the backup's two
    assert taxed(stats["models"]["up/primary"]) == (5, 44, 28, 18.0)
    assert taxed(stats["models"]["up/backup"]) == (3, 33, 21, 13.5)
    assert taxed(stats["total"]) == taxed(stats) == (8, 77, 49, 31.5)
    assert stats["format_budget"] is None

    top = ("total", "models", "format_tax", "format_budget", *latency)
    assert {k: v for k, v in stats.items() if k not in top} == {
        "task": task,
        "window": "15m",
        "requests": 5,
        "cache_hits": 1,
        "succeeded": 4,
        "failed": 1,
        "fell_back": 2,
        "re_asked": 3,
        "final_failure_rate": 0.2,
    }
    assert model(stats["models"]["up/primary"]) == {
        "requests": 2,
        "attempts": 6,
        "first_attempts": 4,
        "first_attempt_valid_rate": 0.25,
        "repaired": 0,
        "re_asked": 2,
        "format_failures": 3,
        "format_failure_rate": 0.6,
        "outcomes": {"invalid_json": 2, "schema_violation": 1, "upstream_error": 1, "valid": 2},
        "failing_paths": [["$.label (enum)", 1]],
    }
    assert model(stats["models"]["up/backup"]) == {
        "requests": 1,
        "attempts": 3,
        "first_attempts": 2,
        "first_attempt_valid_rate": 0.5,
        "repaired": 0,
        "re_asked": 1,
        "format_failures": 2,
        "format_failure_rate": 0.6667,
        "outcomes": {"invalid_json": 2, "valid": 1},
        "failing_paths": [],
    }
    assert model(stats["total"]) == {
        "requests": 3,
        "attempts": 9,
        "first_attempts": 6,
        "first_attempt_valid_rate": 0.3333,
        "repaired": 0,
        "re_asked": 3,
        "format_failures": 5,
        "format_failure_rate": 0.625,
        "outcomes": {"invalid_json": 4, "schema_violation": 1, "upstream_error": 1, "valid": 3},
        "failing_paths": [["$.label (enum)", 1]],
    }

    failures = client.get(f"/v1/tasks/{task}/failures", params={"limit": 10}).json()
    assert [(f["model"], f["outcome"], f["raw_output"]) for f in failures] == [
        ("up/backup", "invalid_json", "never"),
        ("up/backup", "invalid_json", "still no"),
        ("up/primary", "upstream_error", ""),
        ("up/primary", "invalid_json", "no"),
        ("up/primary", "invalid_json", "no"),
        ("up/primary", "schema_violation", '{"label": "eggs", "score": 0.5}'),
    ]
    assert failures[-1]["errors"] == [
        {"path": "$.label", "message": "'eggs' is not one of ['spam', 'ham']"}
    ]
    assert {f["version"] for f in failures} == {1}

    exposition = client.get("/metrics").text
    assert (
        f'formwork_attempts_total{{model="up/primary",outcome="valid",task="{task}"}} 2.0'
        in exposition
    )
    assert f'formwork_requests_total{{result="cached",task="{task}"}} 1.0' in exposition
    assert f'formwork_requests_total{{result="failed",task="{task}"}} 1.0' in exposition


def test_unknown_window_is_422(client: TestClient, unique_name: str) -> None:
    assert client.put(f"/v1/tasks/{unique_name}", json=spec()).status_code == 201
    response = client.get(f"/v1/tasks/{unique_name}/stats", params={"window": "2h"})
    assert (response.status_code, response.json()) == (
        422,
        {
            "type": "https://formwork.dev/problems/invalid-input",
            "title": "Invalid input",
            "status": 422,
            "detail": "the request is not valid",
            "instance": f"/v1/tasks/{unique_name}/stats",
            "request_id": response.headers["x-request-id"],
            "errors": [
                {"path": "$.query.window", "message": "Input should be '15m', '1h', '24h' or '7d'"}
            ],
        },
    )


def test_stats_of_unknown_task_is_404(client: TestClient) -> None:
    assert client.get("/v1/tasks/nope/stats").status_code == 404
