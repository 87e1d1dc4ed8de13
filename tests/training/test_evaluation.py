"""Evaluation and promotion on the scripted upstream: the numbers are the scripted outcomes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from formwork import prompts
from formwork.assembly import open_core
from formwork.config import Settings
from formwork.errors import InvalidInput
from formwork.protocol import Route, RunOptions, TaskSpec, TaskVersion
from formwork.runner import Runner
from service.cli import main as formwork
from tests.service.helpers import SCHEMA
from tests.upstream import Reply, Upstream
from training.dataset import Row
from training.evaluation import Evaluator, render
from training.promotion import judge, promote

ROWS = [
    Row("WIN A PRIZE NOW", {"label": "spam", "score": 0.9}, "test.jsonl:1"),
    Row("lunch at noon?", {"label": "ham", "score": 0.1}, "test.jsonl:2"),
    Row("cheap pills", {"label": "spam", "score": 0.8}, "test.jsonl:3"),
    Row("see you tomorrow", {"label": "ham", "score": 0.2}, "test.jsonl:4"),
]
CANDIDATE = Route(model="up/cand", prompt="finetuned", constrained=False, max_attempts=2)
CURRENT = Route(model="up/current", max_attempts=1, timeout_s=2)


def answer(value: dict[str, Any], prompt_tokens: int = 11) -> Reply:
    return Reply(content=json.dumps(value), prompt_tokens=prompt_tokens, completion_tokens=5)


def spec_of(task: TaskVersion) -> dict[str, Any]:
    return task.model_dump(include=set(TaskSpec.model_fields))


def script_mixed(upstream: Upstream, model: str) -> None:
    """Exact; valid with a wrong score; invalid then fixed by the re-ask; wrong twice."""
    upstream.script(
        model,
        answer({"label": "spam", "score": 0.9}, 20),
        answer({"label": "ham", "score": 0.5}, 20),
        Reply(content="not json", prompt_tokens=20),
        answer({"label": "spam", "score": 0.8}, 40),
        answer({"label": "eggs", "score": 0.2}, 20),
        answer({"label": "ham", "score": 7}, 40),
    )


def script_exact(upstream: Upstream, model: str) -> None:
    upstream.script(model, *(answer(row.output) for row in ROWS))  # type: ignore[arg-type]


@pytest.fixture
async def runner(settings: Settings) -> AsyncIterator[Runner]:
    async with open_core(settings, record=False) as core:
        yield core.runner


@pytest.fixture
async def task(runner: Runner, unique_name: str) -> TaskVersion:
    spec = TaskSpec(output_schema=SCHEMA, instructions="Label the message.", routes=[CURRENT])
    await runner.registry.put(unique_name, spec)
    return await runner.registry.get(unique_name)


async def test_numbers_are_the_scripted_outcomes(
    runner: Runner, task: TaskVersion, upstream: Upstream
) -> None:
    script_mixed(upstream, "cand")
    report = await Evaluator(runner).route(task, CANDIDATE, ROWS)
    assert report.model_dump(exclude={"results", "latency_ms_p50"}) == {
        "route": CANDIDATE.model_dump(),
        "cases": 4,
        "valid": 3,
        "first_valid": 2,
        "exact": 2,
        "valid_rate": 0.75,
        "first_attempt_valid_rate": 0.5,
        "exact_match": 0.5,
        "field_accuracy": 5 / 8,
        "fields": {"label": 0.75, "score": 0.5},
        "prompt_tokens": (20 + 20 + 60 + 60) / 4,
        "completion_tokens": (5 + 5 + (7 + 5) + (5 + 5)) / 4,  # "not json" counts the default 7
        "outcomes": {"invalid_json": 1, "schema_violation": 2, "valid": 3},
    }
    assert [(r.outcome, r.attempts, r.exact, r.fields) for r in report.results] == [
        ("valid", 1, True, {"label": True, "score": True}),
        ("valid", 1, False, {"label": True, "score": False}),
        ("valid", 2, True, {"label": True, "score": True}),
        ("schema_violation", 2, False, {"label": False, "score": False}),
    ]
    assert report.latency_ms_p50 > 0
    # the service's own prompt for a finetuned route, unconstrained: no response_format
    first = upstream.requests[0]
    assert first["messages"] == prompts.finetuned_messages(task.name, "WIN A PRIZE NOW")
    assert "response_format" not in first
    # the re-ask carries the validation errors, as in the service
    assert upstream.requests[3]["messages"][-2] == {"role": "assistant", "content": "not json"}


async def test_compare_measures_the_current_route_too(
    runner: Runner, task: TaskVersion, upstream: Upstream
) -> None:
    script_mixed(upstream, "cand")
    script_exact(upstream, "current")
    comparison = await Evaluator(runner).compare(task, CANDIDATE, ROWS, test="test.jsonl")
    assert comparison.current.route == CURRENT
    assert (comparison.current.valid_rate, comparison.current.field_accuracy) == (1.0, 1.0)
    sent = upstream.requests[-1]
    assert sent["messages"] == prompts.instructed_messages(task, "see you tomorrow")
    assert sent["response_format"]["type"] == "json_schema"
    lines = render(comparison).splitlines()
    assert lines[0] == f"{task.name} v1: 4 held-out cases from test.jsonl"
    assert [line.split()[:3] for line in lines[5:8]] == [
        ["max", "attempts", "2"],
        ["schema-valid", "75.0%", "(3/4)"],
        ["valid", "at", "1st"],
    ]
    assert lines[6].split()[-2:] == ["100.0%", "(4/4)"]


async def test_promotion_refuses_a_worse_candidate_and_says_why(
    runner: Runner, task: TaskVersion, upstream: Upstream
) -> None:
    script_mixed(upstream, "cand")
    script_exact(upstream, "current")
    comparison = await Evaluator(runner).compare(task, CANDIDATE, ROWS)
    decision = await promote(runner.registry, comparison)
    assert (decision.promoted, decision.forced, decision.version) == (False, False, None)
    assert decision.reason == (
        "worse on schema-valid and field accuracy: schema-valid 75.0% vs 100.0%; "
        "field accuracy 62.5% vs 100.0% (candidate up/cand vs current up/current)"
    )
    assert decision.routes == [CURRENT]
    assert (await runner.registry.get(task.name)).version == 1


async def test_promotion_accepts_a_better_candidate_as_a_new_version(
    runner: Runner, task: TaskVersion, upstream: Upstream
) -> None:
    script_exact(upstream, "cand")
    script_mixed(upstream, "current")
    current = CURRENT.model_copy(update={"max_attempts": 2})
    await runner.registry.put(
        task.name, TaskSpec.model_validate(spec_of(task) | {"routes": [current]})
    )
    task = await runner.registry.get(task.name)
    comparison = await Evaluator(runner).compare(task, CANDIDATE, ROWS)
    decision = await promote(runner.registry, comparison)
    assert (decision.promoted, decision.forced, decision.version) == (True, False, 3)
    assert decision.reason == (
        "not worse on validity or accuracy: schema-valid 100.0% vs 75.0%; "
        "field accuracy 100.0% vs 62.5% (candidate up/cand vs current up/current)"
    )
    promoted = await runner.registry.get(task.name)
    assert (promoted.version, promoted.routes) == (3, [CANDIDATE, current])
    upstream.script("cand", answer({"label": "ham", "score": 0.3}))
    result = await runner.run(task.name, "hi", RunOptions(cache="bypass"), request_id="r1")
    assert (result.model, result.version, result.output) == (
        "up/cand",
        3,
        {"label": "ham", "score": 0.3},
    )


async def test_force_promotes_a_worse_candidate_and_says_so(
    runner: Runner, task: TaskVersion, upstream: Upstream
) -> None:
    script_mixed(upstream, "cand")
    script_exact(upstream, "current")
    comparison = await Evaluator(runner).compare(task, CANDIDATE, ROWS)
    assert judge(comparison)[0] is False
    decision = await promote(runner.registry, comparison, force=True)
    assert (decision.promoted, decision.forced, decision.version) == (True, True, 2)
    assert decision.reason.startswith("forced although worse on schema-valid and field accuracy")
    assert (await runner.registry.get(task.name)).routes == [CANDIDATE, CURRENT]


async def test_promotion_refuses_a_stale_evaluation(
    runner: Runner, task: TaskVersion, upstream: Upstream
) -> None:
    script_exact(upstream, "cand")
    script_mixed(upstream, "current")
    comparison = await Evaluator(runner).compare(task, CANDIDATE, ROWS)
    await runner.registry.put(
        task.name, TaskSpec.model_validate(spec_of(task) | {"description": "changed"})
    )
    with pytest.raises(InvalidInput) as caught:
        await promote(runner.registry, comparison)
    assert caught.value.detail == (
        f"task {task.name!r} is at version 2, but version 1 was evaluated; evaluate again"
    )


def test_the_eval_command_prints_the_table(
    client: TestClient,
    settings: Settings,
    upstream: Upstream,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = {"output_schema": SCHEMA, "routes": [CURRENT.model_dump()]}
    assert client.put(f"/v1/tasks/{unique_name}", json=spec).status_code == 201
    monkeypatch.setenv("FORMWORK_REDIS_URL", settings.redis_url.get_secret_value())
    monkeypatch.setenv("FORMWORK_PROVIDERS__UP__BASE_URL", upstream.base_url)
    monkeypatch.setenv("FORMWORK_LOCAL__ENABLED", "false")
    test = tmp_path / "test.jsonl"
    test.write_text(
        "".join(json.dumps({"input": r.input, "output": r.output}) + "\n" for r in ROWS)
    )
    script_mixed(upstream, "cand")
    script_exact(upstream, "current")
    args = ["--candidate", "up/cand", "--no-constrained", "--test", str(test)]
    assert formwork(["train", "eval", unique_name, *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{unique_name} v1: 4 held-out cases from {test}"
    assert lines[1].split() == ["candidate", "current"]
    assert lines[2].split() == ["model", "up/cand", "up/current"]
    assert lines[3].split() == ["prompt", "finetuned", "instructed"]
    assert lines[4].split() == ["constrained", "no", "yes"]
    assert lines[6].split() == ["schema-valid", "75.0%", "(3/4)", "100.0%", "(4/4)"]
    assert lines[9].split() == ["field", "accuracy", "62.5%", "100.0%"]
    assert lines[10].split() == ["label", "75.0%", "100.0%"]


def test_promote_on_a_saved_evaluation_asks_no_model(
    client: TestClient,
    settings: Settings,
    upstream: Upstream,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = {"output_schema": SCHEMA, "routes": [CURRENT.model_dump()]}
    assert client.put(f"/v1/tasks/{unique_name}", json=spec).status_code == 201
    monkeypatch.setenv("FORMWORK_REDIS_URL", settings.redis_url.get_secret_value())
    monkeypatch.setenv("FORMWORK_PROVIDERS__UP__BASE_URL", upstream.base_url)
    monkeypatch.setenv("FORMWORK_LOCAL__ENABLED", "false")
    test, report = tmp_path / "test.jsonl", tmp_path / "eval.json"
    test.write_text(
        "".join(json.dumps({"input": r.input, "output": r.output}) + "\n" for r in ROWS)
    )
    script_exact(upstream, "cand")
    script_mixed(upstream, "current")
    args = ["--candidate", "up/cand", "--no-constrained", "--test", str(test)]
    assert formwork(["train", "eval", unique_name, *args, "--out", str(report)]) == 0
    capsys.readouterr()
    calls = upstream.calls()
    assert formwork(["train", "promote", unique_name, "--evaluation", str(report)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{unique_name} v1: 4 held-out cases from {test}"
    assert lines[-2:] == [
        f"promoted: {unique_name} version 2 routes first to up/cand",
        "  not worse on validity or accuracy: schema-valid 100.0% vs 75.0%; "
        "field accuracy 100.0% vs 37.5% (candidate up/cand vs current up/current)",
    ]
    assert upstream.calls() == calls  # promoted on the report: nothing evaluated again
    assert client.get(f"/v1/tasks/{unique_name}").json()["routes"][0]["model"] == "up/cand"

    with pytest.raises(SystemExit) as caught:
        formwork(
            ["train", "promote", unique_name, "--evaluation", str(report), "--candidate", "up/x"]
        )
    assert caught.value.code == f"formwork: {report} evaluates up/cand, not up/x"
    assert formwork(["train", "promote", unique_name, "--evaluation", str(report)]) == 1
    assert capsys.readouterr().err == (
        f"formwork: Invalid input: task {unique_name!r} is at version 2, but version 1 was "
        "evaluated; evaluate again\n  $.version: changed since the evaluation\n"
    )
