"""Local estimates: the prediction from a calibration, the ETA from a worker's pace, and (slow) a
real calibration of the LoRA trainer and the embedded engine on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from formwork import prompts
from formwork.protocol import TaskFile
from service.cli import main
from training.adapters import Knobs, local_epochs
from training.calibration import Calibration, CalibrationJob, Prompt, calibrate
from training.cost import local_cost
from training.dataset import Dataset, read_jsonl
from training.local import eta_s

TASK = "contact-extraction"
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "training" / "data"
TASK_FILE = ROOT / "schemas" / f"{TASK}.json"

MEASURED = Calibration(
    machine="m",
    device="cpu",
    threads=2,
    load_s=20.0,
    steps=2,
    s_per_step=6.0,
    examples_per_s=8 / 6.0,
    tokens_per_step=1600,
    peak_rss_bytes=900 << 20,
    prefill_instructed_s=5.0,
    prefill_finetuned_s=0.5,
    warm_instructed_s=0.6,
    warm_finetuned_s=0.7,
    measured_at=1.0,
)


@pytest.mark.parametrize(
    ("examples", "epochs"), [(1, 10), (50, 10), (80, 10), (100, 8), (200, 4), (400, 2), (5000, 1)]
)
def test_local_epochs_reach_about_800_examples_seen(examples: int, epochs: int) -> None:
    assert local_epochs(examples) == epochs


def test_the_prediction_is_the_calibrated_pace_times_the_steps() -> None:
    cost = local_cost(
        MEASURED, train_examples=200, validation_examples=20, batch_size=8, epochs=4, cached=True
    )
    assert cost.steps == 100  # 25 batches x 4 epochs
    assert cost.training_s == round(20.0 + 100 * 6.0 + 3 * 6.0 / 3, 1)
    assert (cost.saved_s_cold, cost.break_even_requests_cold) == (4.5, 140)  # 626 s / 4.5 s
    # with the prefix cached the instructed prompt costs no more: nothing to pay back
    assert (cost.saved_s_warm, cost.break_even_requests_warm) == (-0.1, None)
    assert (cost.peak_rss_bytes, cost.cached) == (900 << 20, True)


def test_the_eta_follows_the_pace_of_this_worker() -> None:
    state = {"step": 30, "steps": 100, "pace_step": 10, "pace_at": 100.0, "updated_at": 140.0}
    assert eta_s(state) == 140.0  # 20 steps in 40 s, 70 to go
    assert eta_s({**state, "step": 10}) is None  # no step timed yet
    assert eta_s({"step": 3}) is None


def rows_file(tmp: Path, n: int) -> tuple[Path, str, list[Prompt]]:
    rows = read_jsonl(DATA / f"{TASK}.train.jsonl")[:n]
    spec = TaskFile.model_validate_json(TASK_FILE.read_text()).spec()
    files = Dataset(TASK, rows, []).write(tmp)
    pair = Prompt(
        instructed=list(prompts.instructed_messages(spec, rows[0].input)),
        finetuned=list(prompts.finetuned_messages(TASK, rows[0].input)),
    )
    return files.train, files.digest, [pair]


@pytest.mark.slow
async def test_a_real_calibration_has_sane_numbers_and_is_kept(tmp_path: Path) -> None:
    train, digest, pairs = rows_file(tmp_path, 4)
    knobs = Knobs(n_epochs=1, batch_size=2, lora_rank=2, lora_alpha=4, max_length=384)
    job = CalibrationJob(train_file=train, knobs=knobs, threads=0, prompts=pairs)
    found, cached = await calibrate(job, cache_dir=tmp_path / "cache", data_digest=digest)
    assert cached is False
    assert (found.steps, found.device in ("cpu", "cuda")) == (2, True)
    assert 0 < found.s_per_step < 600
    assert 0 < found.load_s < 600
    assert found.examples_per_s == pytest.approx(2 / found.s_per_step, rel=0.01)
    assert 100 << 20 < found.peak_rss_bytes < 16 << 30  # the trainer: torch and a 135M model
    assert found.prompt_tokens_instructed is not None
    assert found.prompt_tokens_finetuned is not None
    assert found.prompt_tokens_instructed > 3 * found.prompt_tokens_finetuned > 0
    measured = [found.prefill_instructed_s, found.prefill_finetuned_s]
    assert all(s is not None and 0 < s < 600 for s in measured)
    warm = [found.warm_instructed_s, found.warm_finetuned_s]
    assert all(s is not None and 0 < s < 600 for s in warm)
    again, cached = await calibrate(job, cache_dir=tmp_path / "cache", data_digest=digest)
    assert (again, cached) == (found, True)
    kept = list((tmp_path / "cache" / "calibration").glob("*.json"))
    assert [Calibration.model_validate_json(p.read_text()) for p in kept] == [found]


@pytest.mark.slow
def test_the_local_estimate_prints_time_memory_and_break_even(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FORMWORK_LOCAL__CACHE_DIR", str(tmp_path / "cache"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(
        json.dumps({"input": r.input, "output": r.output}) + "\n"
        for r in read_jsonl(DATA / f"{TASK}.train.jsonl")[:12]
    ))  # fmt: skip
    argv = ["train", "estimate", TASK, "--file", str(TASK_FILE), "--jsonl", str(rows)]
    argv += ["--provider", "local", "--no-examples", "--validation-fraction", "0"]
    assert (
        main([*argv, "--json", "--batch-size", "4", "--lora-rank", "2", "--lora-layers", "10"]) == 0
    )
    estimate = json.loads(capsys.readouterr().out)["estimate"]
    local = estimate["local"]
    assert (estimate["epochs"], estimate["training_cost_usd"]) == (10, 0.0)
    assert (local["steps"], local["batch_size"], local["cached"]) == (30, 4, False)
    assert local["training_s"] > local["load_s"] + 29 * local["s_per_step"]
    assert local["peak_rss_bytes"] > 100 << 20
    assert main([*argv, "--batch-size", "4", "--lora-rank", "2", "--lora-layers", "10"]) == 0
    printed = capsys.readouterr().out
    assert "epochs          10 (by data size: ~800 examples seen)\n" in printed
    assert "training time   " in printed
    assert " examples/s on " in printed
    assert "calibration     cached " in printed
    assert "break-even      money: none to pay back ($0); compute: " in printed
