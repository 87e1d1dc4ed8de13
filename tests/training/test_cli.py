"""``formwork train …`` offline from task files, and against Redis and the scripted upstream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from formwork.config import Settings
from service.cli import main
from tests.training.helpers import example, spec_body
from tests.upstream import Upstream
from training.dataset import jsonl, read_jsonl

BASE = "gpt-4o-mini-2024-07-18"


@pytest.fixture
def env(settings: Settings, upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's own Settings(): the test Redis, the upstream as provider ``up``."""
    monkeypatch.setenv("FORMWORK_REDIS_URL", settings.redis_url.get_secret_value())
    monkeypatch.setenv("FORMWORK_PROVIDERS__UP__BASE_URL", upstream.base_url)
    monkeypatch.setenv("FORMWORK_PROVIDERS__UP__API_KEY", "sk-test-secret")
    monkeypatch.setenv("FORMWORK_TRAINING__OPENAI_PROVIDER", "up")
    monkeypatch.setenv("FORMWORK_TRAINING__DATA_DIR", str(settings.training.data_dir))
    monkeypatch.setenv("FORMWORK_LOCAL__ENABLED", "false")


def task_file(tmp_path: Path, name: str, n: int = 12) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, **spec_body(n)}))
    return path


def test_dataset_offline_from_a_task_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps(example(i)) + "\n" for i in range(12, 20)))
    path = task_file(tmp_path, "orders")
    out = tmp_path / "out"
    argv = ["train", "dataset", "orders", "--file", str(path), "--jsonl", str(extra)]
    assert main([*argv, "--out", str(out), "--validation-fraction", "0.1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == [
        "warning: [count] dataset: 18 training examples; 50 or more usually train better",
        "checks: passed (0 errors, 1 warnings)",
        "orders: 18 train, 2 validation examples",
    ]
    assert printed[3].startswith("tokens per training example (cl100k_base, approximate): min ")
    train, validation = out / "orders.train.jsonl", out / "orders.validation.jsonl"
    assert printed[4:6] == [f"wrote {train} and {validation}", printed[5]]
    assert printed[5].startswith("dataset hash ")
    lines = train.read_bytes().splitlines() + validation.read_bytes().splitlines()
    rows = read_jsonl(extra)
    assert len(lines) == 20
    assert jsonl("orders", rows[-1:]).rstrip(b"\n") in lines


def test_dataset_that_fails_its_checks_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = task_file(tmp_path, "orders", n=5)
    assert main(["train", "dataset", "orders", "--file", str(path), "--out", str(tmp_path)]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == [
        "error: [count] dataset: 5 training examples; at least 10 are needed",
        "checks: FAILED (1 errors, 0 warnings)",
    ]
    assert not list(tmp_path.glob("*.jsonl"))


def test_estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = task_file(tmp_path, "orders", n=20)
    argv = ["train", "estimate", "orders", "--file", str(path), "--json"]
    assert main([*argv, "--compare-model", "gpt-4o", "--validation-fraction", "0"]) == 0
    answer = json.loads(capsys.readouterr().out)
    estimate = answer["estimate"]
    assert (estimate["train_examples"], estimate["epochs"], estimate["default_epochs"]) == (
        20,
        5,
        True,
    )
    assert estimate["trained_tokens"] == 5 * estimate["billed_tokens_per_epoch"]
    assert estimate["compare_model"] == "gpt-4o"
    assert estimate["break_even_requests"] > 0
    assert answer["problems"] == [
        {
            "check": "count",
            "level": "warning",
            "where": "dataset",
            "message": "20 training examples; 50 or more usually train better",
        }
    ]
    assert main(["train", "estimate", "orders", "--file", str(path), "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "epochs          2\n" in printed
    assert "break-even      after " in printed


@pytest.mark.usefixtures("env")
def test_start_wait_status_cancel(
    tmp_path: Path,
    upstream: Upstream,
    unique_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = task_file(tmp_path, unique_name)
    upstream.script_job(statuses=["validating_files", "queued", "running", "succeeded"])
    argv = ["train", "start", unique_name, "--file", str(path), "--epochs", "2"]
    assert main([*argv, "--wait", "--interval", "0.01"]) == 0
    out, err = capsys.readouterr()
    printed = out.splitlines()
    model = f"up/ft:{BASE}:formwork:{unique_name}:0001"
    assert printed[0] == (
        "warning: [provider-retirement] provider: fine-tunes of gpt-4o-mini-2024-07-18 stop "
        "serving on 2027-01-14: routes to them are skipped from that day"
    )
    assert printed[1].startswith("warning: [count]")
    job = printed[2].removeprefix("started ")
    assert printed[2:] == [
        f"started {job}",
        f"{job}  {unique_name}  openai/{BASE}  validating  2%  11+1 examples",
        f"{job}  {unique_name}  openai/{BASE}  succeeded  100%  11+1 examples",
        f"  model: {model}",
    ]
    assert f"{job}: queued" in err
    assert f"{job}: succeeded" in err

    assert main([*argv]) == 0
    assert f"already started: {job}" in capsys.readouterr().out

    assert main(["train", "status", job, "--events", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{job}  {unique_name}  openai/{BASE}  succeeded  100%  11+1 examples",
        f"  model: {model}",
        f"  info  New fine-tuned model created: {model.removeprefix('up/')}",
        "  info  The job has successfully completed",
    ]

    upstream.script_job(statuses=["validating_files", "running", "succeeded"])
    assert main(["train", "start", unique_name, "--file", str(path)]) == 0
    other = capsys.readouterr().out.splitlines()[2].removeprefix("started ")
    assert main(["train", "cancel", other]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{other}  {unique_name}  openai/{BASE}  cancelled  10%  11+1 examples",
    ]


@pytest.mark.usefixtures("env")
def test_unknown_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "status", "ftj-nope"]) == 1
    assert (
        capsys.readouterr().err
        == "formwork: Fine-tune job not found: no fine-tune job 'ftj-nope'\n"
    )


@pytest.mark.usefixtures("env")
def test_harvest_and_estimate_from_the_registry(
    client: TestClient,
    upstream: Upstream,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    routes = [{"model": "up/small", "max_attempts": 1}, {"model": "up/big", "max_attempts": 1}]
    assert client.put(f"/v1/tasks/{unique_name}", json=spec_body(12, *routes)).status_code == 201
    upstream.script("small", '{"item": "tea", "count": 3}', "no", "no")
    upstream.set_default("big", '{"item": "tea", "count": 3}')
    for text in ["3 tea", "three tea", "tea x3"]:
        assert client.post(f"/v1/tasks/{unique_name}/run", json={"input": text}).status_code == 200
    portal = client.portal
    assert portal is not None
    portal.call(client.app.state.formwork.services.core.metrics.flush)  # type: ignore[attr-defined]

    out = tmp_path / "big.jsonl"
    assert main(["train", "harvest", unique_name, "--model", "up/big", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"harvested 2 validated runs of {unique_name} (up/big)",
        f"wrote {out}",
    ]
    assert [(r.input, r.output) for r in read_jsonl(out)] == [
        ("tea x3", {"item": "tea", "count": 3}),
        ("three tea", {"item": "tea", "count": 3}),
    ]

    argv = ["train", "estimate", unique_name, "--harvest", "--json", "--validation-fraction", "0"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["estimate"]["train_examples"] == 15
