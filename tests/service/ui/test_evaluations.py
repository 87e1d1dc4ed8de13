"""Evaluate a candidate against the current route from the dashboard, then promote it: the same
Evaluator and promotion as ``formwork train``, on the scripted upstream; evaluation runs stay
out of the task's stats."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.ui import evaluations
from tests.service.helpers import spec
from tests.service.ui.html import Page
from tests.upstream import Upstream

ROWS = [
    {"input": "cheap pills", "output": {"label": "spam", "score": 0.9}},
    {"input": "lunch at noon?", "output": {"label": "ham", "score": 0.1}},
]
TEST = "\n".join(json.dumps(row) for row in ROWS)


def csrf(client: TestClient, task: str) -> dict[str, str]:
    body = Page(client.get(f"/ui/tasks/{task}").text).all("body")[0]
    token: str = json.loads(body.attrs["hx-headers"])["X-CSRF-Token"]
    return {"x-csrf-token": token}


def test_evaluate_then_promote(
    client: TestClient, upstream: Upstream, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one case at a time, so that the candidate's scripted replies meet the rows in order
    monkeypatch.setattr(evaluations, "CONCURRENCY", 1)
    task = unique_name
    assert client.put(f"/v1/tasks/{task}", json=spec("up/primary")).status_code == 201
    headers = csrf(client, task)
    upstream.script("cand", json.dumps(ROWS[0]["output"]), json.dumps(ROWS[1]["output"]))
    # the current route answers valid JSON, but wrong, for both rows
    upstream.set_default("primary", '{"label": "ham", "score": 0.5}')
    form = {"candidate": "up/cand", "prompt": "finetuned", "test": TEST}
    response = client.post(f"/ui/tasks/{task}/evaluate", data=form, headers=headers)
    assert response.status_code == 200
    page = Page(response.text)
    rows = {
        row: page.text(f"eval-{row}")
        for row in ("valid", "first", "exact", "fields", "tokens", "latency")
    }
    assert {k: v for k, v in rows.items() if k != "latency"} == {
        "valid": "schema-valid 100.0 % 100.0 %",
        "first": "valid first try 100.0 % 100.0 %",
        "exact": "exact match 100.0 % 0.0 %",
        "fields": "field accuracy 100.0 % 25.0 %",
        "tokens": "prompt tokens / request 11.0 11.0",
    }
    assert page.text("eval-verdict") == (
        "not worse on validity or accuracy: schema-valid 100.0% vs 100.0%; "
        "field accuracy 100.0% vs 25.0% (candidate up/cand vs current up/primary)"
    )
    # the evaluation's runs are not the task's traffic
    stats = client.get(f"/v1/tasks/{task}/stats", params={"window": "15m"}).json()
    assert (stats["requests"], stats["total"]["attempts"]) == (0, 0)

    promote = page.by_id("promote-form").attrs["hx-post"]
    promoted = Page(client.post(promote, headers=headers).text)
    assert promoted.text("promotion-result").startswith(
        f"promoted : {task} is now at version 2, routed first to up/cand"
    )
    assert promoted.text("promotion-reason") == page.text("eval-verdict")
    routes = client.get(f"/v1/tasks/{task}").json()["routes"]
    assert [(r["model"], r["prompt"]) for r in routes] == [
        ("up/cand", "finetuned"),
        ("up/primary", "instructed"),
    ]
    # promoting the same evaluation again: the task moved on
    again = Page(client.post(promote, headers=headers).text)
    assert again.text("promotion-problem") == (
        f"422 Invalid input : task '{task}' is at version 2, but version 1 was evaluated; "
        "evaluate again"
    )


def test_bad_rows_and_a_worse_candidate(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    task = unique_name
    assert client.put(f"/v1/tasks/{task}", json=spec("up/primary")).status_code == 201
    headers = csrf(client, task)
    form = {"candidate": "up/cand", "test": 'not json\n{"input": 1}'}
    bad = Page(client.post(f"/ui/tasks/{task}/evaluate", data=form, headers=headers).text)
    assert bad.text("evaluation-problem") == (
        "422 Invalid input : the test rows: 2 malformed line(s) "
        "test:1 not JSON: Expecting value: line 1 column 1 (char 0) "
        'test:2 expected {"input": …, "output": …}'
    )
    upstream.set_default("cand", "no JSON here")
    upstream.set_default("primary", json.dumps(ROWS[0]["output"]))
    form = {"candidate": "up/cand", "test": TEST}
    page = Page(client.post(f"/ui/tasks/{task}/evaluate", data=form, headers=headers).text)
    assert page.text("eval-verdict").startswith("worse on schema-valid and field accuracy")
    promote = page.by_id("promote-form").attrs["hx-post"]
    kept = Page(client.post(promote, headers=headers).text)
    assert kept.text("promotion-result").startswith(f"not promoted : {task} stays at version 1")
    forced = Page(client.post(promote, data={"force": "true"}, headers=headers).text)
    assert forced.text("promotion-reason").startswith("forced although worse on schema-valid")
    gone = Page(client.post("/ui/evaluations/0123456789abcdef/promote", headers=headers).text)
    assert gone.text("promotion-problem") == (
        "422 Invalid input : this evaluation is no longer kept here; evaluate again"
    )
