"""``compile`` on the scripted upstream (OpenAI fine-tunes and answers): every step, reuse on the
same inputs, a new run on new data, resuming after a kill at each step, the API, and Ctrl-C."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from formwork import keys
from formwork.config import Settings
from formwork.protocol import CompileJob, CompileRequest, Example, TaskSpec
from tests.training.helpers import example, spec_body
from tests.upstream import Upstream
from training.assembly import Services, open_services
from training.compilations import served_evaluate
from training.compiler import Compiler, ShadowUndecided
from training.dataset import Row

BASE = "gpt-4o-mini-2024-07-18"
ROOT = Path(__file__).resolve().parents[2]
ANSWER = '{"item": "item 1", "count": 1}'  # every model's answer: candidate and current tie
DONE = ["done", "done", "done", "done", "skipped", "done"]
DONE_NAMES = ["dataset", "checks", "finetune", "eval", "shadow", "promote"]


class Killed(BaseException):
    """Stands for the process dying: nothing in the compile catches it."""


@pytest.fixture
def upstream_answers(upstream: Upstream) -> Upstream:
    upstream.set_default("*", ANSWER)
    return upstream


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    async with open_services(settings, local="skip") as opened:
        yield opened


@pytest.fixture
async def task(services: Services, unique_name: str) -> str:
    await services.core.registry.put(unique_name, TaskSpec.model_validate(spec_body(20)))
    return unique_name


def compiler(services: Services) -> Compiler:
    made = services.compiler(served_evaluate(services.core))
    made.poll_s = 0.01
    return made


REQUEST = CompileRequest(provider="openai")


async def compile_once(
    services: Services, task: str, request: CompileRequest = REQUEST, **prepare: Any
) -> CompileJob:
    made = compiler(services)
    return await made.run(await made.prepare(task, request, **prepare))


def statuses(job: CompileJob) -> list[str]:
    return [step.status for step in job.steps]


def reused(job: CompileJob) -> list[str]:
    return [step.name for step in job.steps if step.reused]


async def test_every_step_runs_then_the_same_inputs_reuse_them(
    services: Services, task: str, upstream_answers: Upstream
) -> None:
    job = await compile_once(services, task)
    model = f"up/ft:{BASE}:formwork:{task}:0001"
    assert (job.status, statuses(job), reused(job)) == ("succeeded", DONE, [])
    assert (job.train_examples, job.validation_examples, job.test_examples) == (16, 0, 4)
    assert job.finetune is not None
    assert job.finetune.model == model
    assert (job.promoted, job.base_version, job.version) == (True, 1, 2)
    assert [s.detail for s in job.steps][:2] == [
        "16 train + 0 validation rows, 4 held out (seeded split of 20 rows (seed 0))",
        "passed, 1 warning(s): count: 16 training examples; 50 or more usually train better",
    ]
    assert job.steps[4].detail == "no shadow asked for: the held-out evaluation decides"
    assert job.steps[5].detail == f"version 2 routes first to {model}"
    assert job.candidate is not None
    assert job.current is not None
    assert (job.candidate.model, job.current.model) == (model, "up/primary")
    assert (job.candidate.valid_rate, job.eval_done, job.eval_total) == (1.0, 8, 8)
    current = await services.core.registry.get(task)
    assert [(r.model, r.prompt) for r in current.routes] == [
        (model, "finetuned"),
        ("up/primary", "instructed"),
    ]
    assert (len(upstream_answers.jobs), upstream_answers.calls()) == (1, 8)
    stored = await services.compilations.store.get(job.id)
    assert stored.model_dump(exclude={"updated_at"}) == job.model_dump(exclude={"updated_at"})

    again = await compile_once(services, task)  # the same inputs: the promoted compile, done
    assert (again.id, again.status, statuses(again)) == (job.id, "succeeded", DONE)
    assert reused(again) == ["dataset", "checks", "finetune", "eval", "shadow", "promote"]
    assert (len(upstream_answers.jobs), upstream_answers.calls()) == (1, 8)
    assert (await services.core.registry.get(task)).version == 2


async def test_new_data_compiles_again_against_the_promoted_route(
    services: Services, task: str, upstream_answers: Upstream, tmp_path: Path
) -> None:
    first = await compile_once(services, task)
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps(example(i)) + "\n" for i in range(20, 30)))
    second = await compile_once(services, task, files=[extra])
    assert second.id != first.id
    assert (second.status, statuses(second), reused(second)) == ("succeeded", DONE, [])
    assert (second.base_version, second.version, second.train_examples) == (2, 3, 24)
    assert second.current is not None
    assert second.candidate is not None
    assert (second.current.model[-5:], second.candidate.model[-5:]) == (":0001", ":0002")
    assert (len(upstream_answers.jobs), upstream_answers.calls()) == (2, 8 + 12)  # 6 held out


async def test_a_given_test_set_is_kept_out_of_training(
    services: Services, task: str, upstream_answers: Upstream
) -> None:
    test = [Row(example(i)["input"], example(i)["output"], f"t{i}") for i in (0, 1, 2)]
    job = await compile_once(services, task, test=test, test_label="three rows")
    assert job.steps[0].detail == (
        "17 train + 0 validation rows, 3 held out (three rows); "
        "3 row(s) left out of training: their input is a test row"
    )
    trained = {
        json.loads(line)["messages"][1]["content"]
        for upload in upstream_answers.files.values()
        if upload.purpose == "fine-tune"
        for line in upload.content.decode().splitlines()
    }
    assert trained == {example(i)["input"] for i in range(3, 20)}


@pytest.mark.parametrize("killed_in", DONE_NAMES)
async def test_a_compile_killed_in_any_step_resumes_there(
    services: Services, task: str, upstream_answers: Upstream, killed_in: str
) -> None:
    upstream_answers.script_job(statuses=["validating_files", *["running"] * 5, "succeeded"])
    made = compiler(services)
    compilation = await made.prepare(task, REQUEST)
    dead = {"once": False}

    def die(job: CompileJob) -> None:
        if job.step != killed_in or dead["once"]:
            return
        if killed_in == "finetune" and (job.finetune is None or job.finetune.status != "running"):
            return
        if killed_in == "eval" and job.eval_done < 3:
            return
        dead["once"] = True
        raise Killed

    with pytest.raises(Killed):
        await made.run(compilation, on_change=die)
    # a killed process leaves its lease behind: one of this host whose process is gone
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    lease = f"{socket.gethostname()}:{dead.pid}:gone"
    await services.core.store.redis.set(keys.compile_lease(compilation.job.id), lease)
    calls_before = upstream_answers.calls()
    killed = await services.compilations.store.get(compilation.job.id)
    assert (killed.status, killed.step) == ("running", killed_in)

    job = await compile_once(services, task)
    order = ["dataset", "checks", "finetune", "eval", "shadow", "promote"]
    assert (job.id, job.status, statuses(job)) == (compilation.job.id, "succeeded", DONE)
    assert reused(job) == order[: order.index(killed_in)]
    assert (job.promoted, job.version) == (True, 2)
    assert len(upstream_answers.jobs) == 1  # the fine-tune was started once, and followed on
    evaluated = order.index(killed_in) > order.index("eval")
    assert upstream_answers.calls() - calls_before == (0 if evaluated else 8)
    assert (await services.core.registry.get(task)).version == 2


async def test_a_running_compile_is_not_driven_twice(
    services: Services, task: str, upstream_answers: Upstream
) -> None:
    made = compiler(services)
    compilation = await made.prepare(task, REQUEST)
    await services.core.store.redis.set(keys.compile_lease(compilation.job.id), "elsewhere:1:x")
    from training.compiles import CompileBusy

    with pytest.raises(CompileBusy) as caught:
        await made.run(compilation)
    assert caught.value.detail == (
        f"compile {compilation.job.id} of {task} is running in elsewhere:1:x"
    )
    assert (caught.value.status, upstream_answers.calls(), len(upstream_answers.jobs)) == (
        409,
        0,
        0,
    )


async def test_a_failed_finetune_fails_the_compile_and_a_new_run_starts_it_again(
    services: Services, task: str, upstream_answers: Upstream
) -> None:
    upstream_answers.script_job(error={"code": "x", "message": "bad data"})
    from training.compiler import FinetuneFailed

    with pytest.raises(FinetuneFailed):
        await compile_once(services, task)
    failed = (await services.compilations.store.latest(task)) or pytest.fail("no record")
    assert (failed.status, failed.step, statuses(failed)[:3]) == (
        "failed",
        "finetune",
        ["done", "done", "failed"],
    )
    assert (failed.error or "").startswith("Fine-tune failed: fine-tune ftj-")
    job = await compile_once(services, task)
    assert (job.status, reused(job), len(upstream_answers.jobs)) == (
        "succeeded",
        ["dataset", "checks"],
        2,
    )


# -- the API ----------------------------------------------------------------------------------


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    settings.training.poll_interval_s = 0.02
    return settings


def wait_for(client: TestClient, url: str, done: Any, limit_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while True:
        body: dict[str, Any] = client.get(url).json()
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


@pytest.mark.usefixtures("fast_settings")
def test_the_api_compiles_in_the_background(
    client: TestClient, upstream_answers: Upstream, unique_name: str
) -> None:
    assert client.put(f"/v1/tasks/{unique_name}", json=spec_body(20)).status_code == 201
    test = [example(i) for i in (0, 1)]
    body = {"provider": "openai", "test": test, "candidate": {"constrained": False}}
    response = client.post(f"/v1/tasks/{unique_name}/compile", json=body)
    assert response.status_code == 202, response.text
    started = response.json()
    assert (started["status"], started["task"], started["test_examples"]) == (
        "running",
        unique_name,
        2,
    )
    url = f"/v1/compiles/{started['id']}"
    job = wait_for(client, url, lambda b: b["status"] != "running")
    assert (job["status"], [s["status"] for s in job["steps"]], job["promoted"]) == (
        "succeeded",
        DONE,
        True,
    )
    assert job["candidate"]["model"] == f"up/ft:{BASE}:formwork:{unique_name}:0001"
    assert client.get(f"/v1/tasks/{unique_name}/compile").json() == job
    routes = client.get(f"/v1/tasks/{unique_name}").json()["routes"]
    assert routes[0] == {**routes[0], "model": job["candidate"]["model"], "constrained": False}

    again = client.post(f"/v1/tasks/{unique_name}/compile", json=body)
    assert (again.status_code, again.json()["id"]) == (202, job["id"])
    done = wait_for(client, url, lambda b: b["status"] != "running")
    assert [s["reused"] for s in done["steps"]] == [True] * 6


@pytest.mark.usefixtures("fast_settings")
def test_the_api_cancels_a_compile_and_its_finetune(
    client: TestClient, upstream_answers: Upstream, unique_name: str
) -> None:
    assert client.put(f"/v1/tasks/{unique_name}", json=spec_body(20)).status_code == 201
    upstream_answers.script_job(statuses=["validating_files", *["running"] * 10_000])
    started = client.post(f"/v1/tasks/{unique_name}/compile", json={"provider": "openai"}).json()
    url = f"/v1/compiles/{started['id']}"
    running = wait_for(client, url, lambda b: (b["finetune"] or {}).get("status") == "running")
    assert running["step"] == "finetune"
    response = client.post(f"{url}/cancel")
    assert response.status_code == 202
    assert (response.json()["status"], response.json()["finetune"]["status"]) == (
        "cancelled",
        "cancelled",
    )
    assert client.get(url).json()["status"] == "cancelled"
    assert [job.status for job in upstream_answers.jobs.values()] == ["cancelled"]


# -- the shadow step: live traffic decides --------------------------------------------------


def shadowing(*, min_comparisons: int = 3, wait_s: float = 60, **extra: Any) -> dict[str, Any]:
    rule = {"min_comparisons": min_comparisons, "min_field_agreement": 1.0, **extra}
    return {"mode": "shadow", "share": 1.0, "rule": rule, "wait_s": wait_s}


def decided(client: TestClient, task: str) -> list[tuple[str, int, int | None]]:
    found = client.get(f"/v1/tasks/{task}/decisions").json()
    return [(d["action"], d["from_version"], d["version"]) for d in found]


@pytest.mark.usefixtures("fast_settings")
def test_the_shadow_step_waits_for_live_traffic_and_the_rule_promotes(
    client: TestClient, upstream_answers: Upstream, unique_name: str
) -> None:
    assert client.put(f"/v1/tasks/{unique_name}", json=spec_body(20)).status_code == 201
    body = {"provider": "openai", "shadow": shadowing(min_comparisons=3)}
    started = client.post(f"/v1/tasks/{unique_name}/compile", json=body).json()
    url = f"/v1/compiles/{started['id']}"
    waiting = wait_for(client, url, lambda b: b["shadow_version"] is not None)
    model = f"up/ft:{BASE}:formwork:{unique_name}:0001"
    assert (waiting["status"], waiting["step"], waiting["shadow_version"]) == (
        "running",
        "shadow",
        2,
    )
    task = client.get(f"/v1/tasks/{unique_name}").json()
    assert (task["version"], task["candidate"]["route"]["model"]) == (2, model)
    # the held-out rows agreed on every field: the live bound is that, less the 0.1 margin
    assert task["candidate"]["rule"]["min_field_agreement"] == 0.9
    assert [r["model"] for r in task["routes"]] == ["up/primary"]  # not promoted yet
    time.sleep(0.2)
    assert client.get(url).json()["status"] == "running"  # no traffic: it waits

    for n in range(3):  # live traffic on the server: the caller gets the current route's answer
        answer = client.post(f"/v1/tasks/{unique_name}/run", json={"input": f"{n} cups of tea"})
        assert (answer.status_code, answer.json()["model"]) == (200, "up/primary")
    job = wait_for(client, url, lambda b: b["status"] != "running")
    assert (job["status"], [s["status"] for s in job["steps"]]) == ("succeeded", ["done"] * 6)
    assert (job["promoted"], job["shadow_version"], job["version"]) == (True, 2, 3)
    assert job["live"]["comparisons"] == 3
    assert (job["live"]["candidate"]["valid_rate"], job["live"]["field_agreement"]) == (1.0, 1.0)
    assert (
        job["steps"][5]["detail"] == f"version 3 routes first to {model} (promoted on live traffic)"
    )
    routes = client.get(f"/v1/tasks/{unique_name}").json()["routes"]
    assert [r["model"] for r in routes] == [model, "up/primary"]
    assert decided(client, unique_name) == [("promoted", 2, 3), ("candidate", 1, 2)]


async def test_a_shadow_step_that_times_out_fails_and_resumes_on_the_same_candidate(
    services: Services, task: str, upstream_answers: Upstream
) -> None:
    from formwork.candidates import Side

    request = CompileRequest.model_validate(
        {
            "provider": "openai",
            "shadow": shadowing(min_comparisons=2, wait_s=0.3, auto_promote=False),
        }
    )
    made = compiler(services)
    compilation = await made.prepare(task, request)
    with pytest.raises(ShadowUndecided, match="0 of 2 comparisons"):
        await made.run(compilation)
    failed = await services.compilations.store.get(compilation.job.id)
    assert (failed.status, failed.step, statuses(failed)[4]) == ("failed", "shadow", "failed")
    on_traffic = await services.core.registry.get(task)
    assert (on_traffic.version, failed.shadow_version) == (2, 2)
    assert on_traffic.candidate is not None

    good = Side(True, {"item": "item 1", "count": 1}, 10.0, 50, 9)
    for _ in range(2):  # what a serving replica records for each sampled request
        await services.core.candidates.record(on_traffic, good, good)
    assert (await services.core.registry.get(task)).version == 2  # auto_promote is off

    job = await compile_once(services, task, request)
    assert (job.id, job.status, job.promoted, job.version) == (failed.id, "succeeded", True, 3)
    assert reused(job) == ["dataset", "checks", "finetune", "eval"]
    assert job.live is not None
    assert job.live.comparisons == 2
    promoted = await services.core.registry.get(task)
    assert (promoted.version, promoted.candidate, promoted.watch is not None) == (3, None, True)
    assert len(upstream_answers.jobs) == 1


async def test_a_candidate_worse_on_the_held_out_rows_never_goes_live(
    services: Services, task: str, upstream_answers: Upstream
) -> None:
    upstream_answers.set_default(f"ft:{BASE}:formwork:{task}:0001", '{"item": "x", "count": 0}')
    request = CompileRequest.model_validate({"provider": "openai", "shadow": shadowing()})
    job = await compile_once(services, task, request)
    assert (job.status, statuses(job)) == ("succeeded", DONE)
    assert job.steps[4].detail.startswith(
        "not put on live traffic: the held-out evaluation is worse on field accuracy"
    )
    assert (job.promoted, job.shadow_version, job.version) == (False, None, None)
    current = await services.core.registry.get(task)
    assert (current.version, current.candidate) == (1, None)


def test_the_api_refuses_bad_compiles_with_problems(client: TestClient, unique_name: str) -> None:
    assert client.put(f"/v1/tasks/{unique_name}", json=spec_body(20)).status_code == 201
    response = client.post(f"/v1/tasks/{unique_name}/compile", json={"provider": "nope"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert (
        problem["detail"] == "no fine-tune provider 'nope' is configured here (configured: openai)"
    )
    assert problem["errors"] == [{"path": "$.provider", "message": "unknown provider 'nope'"}]
    few = client.post(f"/v1/tasks/{unique_name}/compile", json={"test_fraction": 0.9})
    assert few.status_code == 422
    assert few.json()["errors"][0]["path"].endswith("test_fraction")
    missing = client.get("/v1/compiles/cmp-0123456789abcdef")
    assert (missing.status_code, missing.json()["detail"]) == (
        404,
        "no compile 'cmp-0123456789abcdef'",
    )
    assert client.get("/v1/compiles/nope").status_code == 422
    none_yet = client.get(f"/v1/tasks/{unique_name}/compile")
    assert (none_yet.status_code, none_yet.json()["title"]) == (404, "Compile not found")
    assert client.post("/v1/tasks/t-absent/compile", json={}).status_code == 404


# -- Ctrl-C ---------------------------------------------------------------------------------


@pytest.fixture
def cli_env(settings: Settings, upstream: Upstream) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("FORMWORK_")}
    env |= {
        "FORMWORK_REDIS_URL": settings.redis_url.get_secret_value(),
        "FORMWORK_PROVIDERS__UP__BASE_URL": upstream.base_url,
        "FORMWORK_PROVIDERS__UP__API_KEY": "sk-test-secret",
        "FORMWORK_TRAINING__OPENAI_PROVIDER": "up",
        "FORMWORK_TRAINING__DATA_DIR": str(settings.training.data_dir),
        "FORMWORK_LOCAL__ENABLED": "false",
        "FORMWORK_CONFIG": str(ROOT / "absent-formwork.toml"),
        "PYTHONPATH": str(ROOT),
        "PYTHONFAULTHANDLER": "1",
    }
    return env


def interrupt(argv: list[str], env: dict[str, str], upstream: Upstream) -> tuple[str, str, int]:
    """Run ``formwork ARGV`` until its fine-tune runs, then Ctrl-C it: (stdout, stderr, exit)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(job.status == "running" for job in upstream.jobs.values()):
            if child.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(child.communicate(timeout=5))
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        try:
            out, err = child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)
            raise AssertionError(child.communicate(timeout=10)) from None
    finally:
        if child.poll() is None:
            child.kill()
    return out, err, child.returncode


@pytest.mark.parametrize("command", ["compile", "start"])
async def test_ctrl_c_says_the_finetune_goes_on_and_how_to_follow_or_cancel_it(
    services: Services,
    task: str,
    upstream: Upstream,
    cli_env: dict[str, str],
    command: str,
) -> None:
    upstream.script_job(statuses=["validating_files", *["running"] * 10_000])
    argv = ["train", command, task, "--provider", "openai", "--interval", "0.05"]
    if command == "start":
        argv += ["--base-model", BASE, "--wait"]
    out, err, returncode = await asyncio.to_thread(interrupt, argv, cli_env, upstream)
    jobs = await services.jobs.of_task(task)
    assert len(jobs) == 1
    ft = jobs[0].id
    lines = err.splitlines()
    at = lines.index(f"stopped following: fine-tune {ft} goes on in the background.")
    assert lines[at + 1 : at + 3] == [
        f"  follow it: formwork train status {ft} --wait",
        f"  cancel it: formwork train cancel {ft}",
    ]
    if command == "compile":
        assert lines[at + 3] == (
            "  resume:    run the same `formwork train compile` again (finished steps are kept)"
        )
        record = await services.compilations.store.latest(task)
        assert record is not None
        assert (record.status, record.step) == ("stopped", "finetune")
    assert returncode == 130, (out, err)
    assert (await services.jobs.refresh(ft)).status == "running"  # it goes on
    assert [job.status for job in upstream.jobs.values()] == ["running"]


def test_compile_request_examples_are_rows() -> None:
    request = CompileRequest(test=[Example(input="a", output={"item": "a", "count": 1})])
    from training.compiler import given_rows

    assert given_rows(request) == [Row("a", {"item": "a", "count": 1}, "test[0]")]


# -- the real local trainer and embedded model ----------------------------------------------


@pytest.mark.slow
async def test_a_tiny_local_compile_trains_evaluates_and_promotes(
    settings: Settings, tmp_path: Path, unique_name: str
) -> None:
    from formwork.config import LocalModelSettings
    from formwork.protocol import CandidateOptions, Hyperparameters, TaskFile
    from training.compile_cli import cli_evaluate
    from training.dataset import read_jsonl

    data = ROOT / "training" / "data"
    rows = read_jsonl(data / "contact-extraction.train.jsonl")[:12]
    test = read_jsonl(data / "contact-extraction.test.jsonl")[:2]
    spec = TaskFile.model_validate_json((ROOT / "schemas/contact-extraction.json").read_text())
    examples = [Example(input=r.input, output=r.output) for r in rows]
    local = settings.model_copy(
        update={
            "local": LocalModelSettings(enabled=True, adapters_dir=tmp_path / "adapters"),
            "request_deadline_s": 300,
        }
    )
    request = CompileRequest(
        provider="local",
        hyperparameters=Hyperparameters(n_epochs=1, lora_rank=2, lora_alpha=4),
        candidate=CandidateOptions(timeout_s=120),
        force=True,  # one epoch on 12 rows: promoted whatever its accuracy
    )
    async with open_services(local, local="skip") as opened:
        await opened.core.registry.put(
            unique_name, spec.spec().model_copy(update={"examples": examples, "routes": []})
        )
        made = opened.compiler(cli_evaluate(local))
        made.poll_s = 0.5
        job = await made.run(await made.prepare(unique_name, request, test=test))
        assert (job.status, statuses(job), job.promoted) == ("succeeded", DONE, True), job.error
        assert job.finetune is not None
        assert (job.finetune.model, job.finetune.step, job.finetune.steps) == (
            f"local/smollm2-135m+{unique_name}-1",
            2,
            2,
        )
        assert (job.eval_done, job.eval_total) == (4, 4)
        assert (tmp_path / "adapters" / f"{unique_name}-1" / "adapter.gguf").is_file()
        routes = (await opened.core.registry.get(unique_name)).routes
        assert routes[0].model == job.finetune.model

        again = await made.run(await made.prepare(unique_name, request, test=test))
        assert (again.id, reused(again)) == (job.id, [s.name for s in job.steps])


# -- the command ----------------------------------------------------------------------------


@pytest.fixture
def env(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in cli_env.items():
        if name.startswith("FORMWORK_"):
            monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("env")
def test_the_command_shows_its_steps_and_a_second_run_reuses_them(
    client: TestClient,
    upstream_answers: Upstream,
    unique_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.cli import main

    assert client.put(f"/v1/tasks/{unique_name}", json=spec_body(20)).status_code == 201
    argv = ["train", "compile", unique_name, "--provider", "openai", "--interval", "0.01"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    model = f"up/ft:{BASE}:formwork:{unique_name}:0001"
    assert out.splitlines()[0] == f"promoted: {unique_name} version 2"
    lines = err.splitlines()
    assert lines[0].startswith(f"compile {unique_name} cmp-")
    assert lines[0].endswith(f"(from version 1, openai/{BASE})")
    finished = [line.split()[:2] for line in lines if line.startswith("  [x]")]
    assert finished == [["[x]", name] for name in ("dataset", "checks", "finetune", "eval")] + [
        ["[x]", "promote"]
    ]
    assert f"  [x] promote   version 2 routes first to {model}" in lines
    assert "  [-] shadow    no shadow asked for: the held-out evaluation decides" in lines

    assert main(argv) == 0
    again = capsys.readouterr().err.splitlines()
    assert [line for line in again if line.endswith("(done before)")] == [
        line + "  (done before)" for line in lines if line[:5] in ("  [x]", "  [-]")
    ]
    assert len(upstream_answers.jobs) == 1

    assert main([*argv, "--test-fraction", "0.9"]) == 1
    assert capsys.readouterr().err == (
        "formwork: Invalid input: invalid compile options\n"
        "  test_fraction: Input should be less than or equal to 0.5\n"
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_step_list_is_redrawn_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    from formwork.protocol import CompileStep, FinetuneJob
    from training.compile_cli import Display

    steps = [
        CompileStep(name=n, status="done" if n == "dataset" else "pending") for n in DONE_NAMES
    ]
    job = CompileJob(
        id="cmp-0123456789abcdef",
        task="orders",
        status="running",
        step="finetune",
        steps=steps,
        created_at=0,
        updated_at=0,
        base_version=3,
        inputs_digest="x",
        provider="local",
        base_model="smollm2-135m",
        hyperparameters={"n_epochs": 4},
    )
    monkeypatch.setenv("COLUMNS", "120")  # longer lines are cut: one screen line each
    screen = Terminal()
    display = Display(screen)
    display.update(job)
    job.steps[2].status = "running"
    job.finetune = FinetuneJob(
        id="ftj-1", task="orders", provider="local", base_model="smollm2-135m",
        status="running", progress=0.42, dataset_hash="d", train_examples=200,
        validation_examples=0, created_at=0, updated_at=0, step=42, steps=100, loss=0.03125,
        eta_s=430,
    )  # fmt: skip
    first = screen.getvalue()
    display.update(job)
    second = screen.getvalue()[len(first) :]
    assert first.startswith("\x1b[J")
    assert second.startswith("\x1b[7F\x1b[J")  # up over the 7 lines drawn, then clear
    assert second.splitlines()[0].endswith(
        "compile orders cmp-0123456789abcdef (from version 3, local/smollm2-135m, 4 epochs)"
    )
    assert second.splitlines()[3] == (
        "  [>] finetune  ftj-1 running  step 42/100  loss 0.0312  ETA 7m10s"
    )


@pytest.mark.parametrize(
    ("given", "agreement", "margin"),
    [([], 0.9, 0.1), (["--min-field-agreement", "0.5"], 0.5, None)],
)
def test_the_cli_shadow_rule_keeps_the_rule_default_unless_given(
    given: list[str], agreement: float, margin: float | None
) -> None:
    import argparse

    from training.compile_cli import add_compile_action, request_of

    parser = argparse.ArgumentParser()
    add_compile_action(parser.add_subparsers())
    args = parser.parse_args(["compile", "contact-extraction", "--shadow", *given])
    shadow = request_of(args).shadow
    assert shadow is not None
    assert (shadow.rule.min_field_agreement, shadow.agreement_margin) == (agreement, margin)
