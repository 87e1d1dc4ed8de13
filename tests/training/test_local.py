"""The local fine-tuner on the real embedded model: tiny LoRA runs (a few steps, rank 2, four
examples), served by the local provider, resumed from a checkpoint, and cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from formwork.config import LocalModelSettings, Settings
from formwork.protocol import Hyperparameters
from service.app import create_app
from training.adapters import HF_BASE_MODEL, Knobs, RunConfig, publish
from training.dataset import Dataset, read_jsonl
from training.jobs import DatasetFiles, JobState, StartOptions
from training.local import LocalFineTuner
from training.lora import (
    IGNORE,
    Step,
    answer_loss,
    bottom_states,
    checkpoints,
    collate,
    encode,
    load_base_model,
    load_tokenizer,
    lora_model,
    train,
)

TASK = "contact-extraction"
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "training" / "data"
TASK_FILE = ROOT / "schemas" / f"{TASK}.json"
TINY = Knobs(n_epochs=1, batch_size=2, lora_rank=2, lora_alpha=4, max_length=384)
WAIT_S = 600.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetFiles:
    rows = read_jsonl(DATA / f"{TASK}.train.jsonl")[:4]
    return Dataset(TASK, rows, []).write(tmp_path_factory.mktemp("data"))


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A folder for adapters and jobs; a worker a failed test leaves running is stopped."""
    yield tmp_path
    for path in (tmp_path / "work").glob("*/state.json"):
        state = json.loads(path.read_text())
        if state["status"] in ("queued", "running") and "pid" in state:
            (path.parent / "cancel").touch()
            with contextlib.suppress(ProcessLookupError):
                os.kill(state["pid"], signal.SIGTERM)


def finetuner(root: Path, **knobs: int) -> LocalFineTuner:
    return LocalFineTuner(
        adapters_dir=root / "adapters",
        work_dir=root / "work",
        defaults=TINY.model_copy(update=knobs),
    )


async def final_state(tuner: LocalFineTuner, job: str, seen: list[JobState]) -> JobState:
    async with asyncio.timeout(WAIT_S):
        while True:
            state = await tuner.poll(job)
            seen.append(state)
            if state.status in ("succeeded", "failed", "cancelled"):
                return state
            await asyncio.sleep(0.5)


def run_on_adapter(settings: Settings, adapters: Path, name: str) -> tuple[int, str]:
    """Start the app with the local model and run the task on the adapter, as a client would."""
    served = settings.model_copy(
        update={
            "local": LocalModelSettings(enabled=True, adapters_dir=adapters),
            "request_deadline_s": 300,
        }
    )
    task = json.loads(TASK_FILE.read_text())
    del task["name"]
    route = {"model": f"local/smollm2-135m+{name}", "prompt": "finetuned", "constrained": True}
    task["routes"] = [{**route, "timeout_s": 300, "max_attempts": 1}]
    text = read_jsonl(DATA / f"{TASK}.test.jsonl")[0].input
    with TestClient(create_app(served), client=("127.0.0.1", 50000)) as client:
        assert client.put(f"/v1/tasks/{TASK}", json=task).status_code == 201
        response = client.post(f"/v1/tasks/{TASK}/run", json={"input": text})
    return response.status_code, response.text


def start_options(job: str, **given: int) -> StartOptions:
    return StartOptions(job, "smollm2-135m", TASK, Hyperparameters.model_validate(given))


def test_publish_takes_the_next_free_number(tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    (adapters / f"{TASK}-7").mkdir(parents=True)
    (adapters / f"{TASK}-x").mkdir()
    (adapters / "other-task-9").mkdir()
    final = tmp_path / "final"
    final.mkdir()
    assert publish(final, adapters, TASK, 4, {"steps": 2}) == f"{TASK}-8"
    note = (adapters / f"{TASK}-8" / "vllm.txt").read_text()
    assert f"--enable-lora --max-lora-rank 16 \\\n    --lora-modules {TASK}-8=" in note
    assert f"route the task to: vllm/{TASK}-8" in note
    assert f"vllm serve {HF_BASE_MODEL}" in note
    meta = json.loads((adapters / f"{TASK}-8" / "formwork.json").read_text())
    assert meta == {"steps": 2, "name": f"{TASK}-8"}


@pytest.mark.slow
def test_loss_covers_the_answer_and_its_end_token_only() -> None:
    tokenizer = load_tokenizer()
    chat = [
        {"role": "system", "content": "Task: t. Reply with JSON only."},
        {"role": "user", "content": "Ann"},
        {"role": "assistant", "content": '{"name":"Ann"}'},
    ]
    short = encode(tokenizer, chat)
    longer = encode(tokenizer, [*chat[:1], {"role": "user", "content": "Ann " * 20}, chat[2]])
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end == tokenizer.pad_token_id  # the trap: padding and the end token share an id
    answer = tokenizer(chat[2]["content"], add_special_tokens=False)["input_ids"]
    assert short.labels[-len(answer) - 1 :] == [*answer, end]
    assert set(short.labels[: -len(answer) - 1]) == {IGNORE}
    batch = collate([short, longer], end)
    pad = len(longer.input_ids) - len(short.input_ids)
    assert batch["labels"][0].tolist() == [*short.labels, *[IGNORE] * pad]
    assert batch["attention_mask"][0].tolist() == [1] * len(short.input_ids) + [0] * pad
    assert batch["labels"][0, len(short.input_ids) - 1] == end  # the end token keeps its label


def ann_chats(*lengths: int) -> list[list[dict[str, str]]]:
    """Tiny chats whose prompts are ``n`` words long."""
    return [
        [
            {"role": "system", "content": "Task: t. Reply with JSON only."},
            {"role": "user", "content": "Ann " * n},
            {"role": "assistant", "content": '{"name":"Ann"}'},
        ]
        for n in lengths
    ]


@pytest.mark.slow
def test_the_answer_loss_is_the_models_own_loss() -> None:
    tokenizer = load_tokenizer()
    chats = ann_chats(1, 9)
    batch = collate([encode(tokenizer, chat) for chat in chats], tokenizer.pad_token_id)
    model = lora_model(load_base_model(torch.device("cpu")), Knobs(lora_rank=2))
    with torch.no_grad():
        assert float(answer_loss(model, batch)) == pytest.approx(float(model(**batch).loss), 1e-5)


@pytest.mark.slow
def test_lora_on_the_top_layers_runs_them_alone_on_the_frozen_layers_output() -> None:
    tokenizer = load_tokenizer()
    chats = ann_chats(1, 9, 4)
    examples = [encode(tokenizer, chat) for chat in chats]
    model = lora_model(load_base_model(torch.device("cpu")), Knobs(lora_rank=2, lora_layers=6))

    def layer(name: str) -> int:
        return int(name.split(".layers.")[1].split(".")[0])

    lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert {layer(n) for n in lora} == set(range(24, 30))  # SmolLM2-135M has 30 layers
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero: make the adapter change the top layers
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    states = bottom_states(model, examples, tokenizer.pad_token_id, 24, batch_size=2)
    assert [len(s) for s in states] == [len(e.input_ids) for e in examples]
    plain = collate(examples, tokenizer.pad_token_id)
    cached = collate(examples, tokenizer.pad_token_id, states)
    with torch.no_grad():
        own = float(model(**plain).loss)
        base = lora_model(load_base_model(torch.device("cpu")), Knobs(lora_rank=2))
        assert own != pytest.approx(float(base(**plain).loss), 1e-3)  # the adapter counts
        assert float(answer_loss(model, cached, 24)) == pytest.approx(own, 1e-4)
    answer_loss(model, cached, 24).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == lora


@pytest.mark.slow
async def test_a_tiny_finetune_is_served_by_the_local_provider(
    settings: Settings, dataset: DatasetFiles, root: Path
) -> None:
    tuner = finetuner(root)
    started = await tuner.start(dataset, start_options("ftj-tiny"))
    assert (started.external_id, started.status) == ("ftj-tiny", "queued")
    seen: list[JobState] = []
    state = await final_state(tuner, "ftj-tiny", seen)
    events = [e.message for e in await tuner.events("ftj-tiny")]
    assert state.status == "succeeded", (state, events, (root / "work/ftj-tiny/train.log"))
    name = f"{TASK}-1"
    assert (state.model, state.progress, state.error) == (f"local/smollm2-135m+{name}", 1.0, None)
    assert state.hyperparameters == TINY.model_dump()
    assert state.trained_tokens
    assert any(s.status == "running" and 0 < s.progress < 1 for s in seen)
    assert events[0] == "queued: LoRA r=2 on 4 examples"
    assert events[-1] == f"adapter {name} saved: route local/smollm2-135m+{name}"
    adapter = root / "adapters" / name
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 2
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "adapter.gguf").read_bytes()[:4] == b"GGUF"  # what the local provider serves
    assert f"--lora-modules {name}={adapter.resolve()}" in (adapter / "vllm.txt").read_text()
    await tuner.aclose()

    status, text = run_on_adapter(settings, root / "adapters", name)
    assert status == 200, text
    body = json.loads(text)
    assert body["model"] == f"local/smollm2-135m+{name}"
    assert [a["outcome"] for a in body["attempts"]] == ["valid"]
    assert set(body["output"]) == {"name", "email", "phone", "company", "title"}


@pytest.mark.slow
def test_a_resumed_run_ends_where_an_uninterrupted_one_ends(
    dataset: DatasetFiles, tmp_path: Path
) -> None:
    knobs = TINY.model_copy(update={"n_epochs": 2, "checkpoint_every": 3})  # 4 steps

    def config(run: str) -> RunConfig:
        return RunConfig(
            task=TASK,
            train_file=dataset.train,
            run_dir=tmp_path / run,
            adapters_dir=tmp_path / "adapters",
            knobs=knobs,
        )

    whole = train(config("whole"), progress=False)
    assert (whole.status, whole.step, whole.total, whole.resumed_from) == ("finished", 4, 4, 0)

    done: list[Step] = []
    first = train(config("split"), on_step=done.append, should_stop=lambda: len(done) == 2)
    assert (first.status, first.step, first.final_dir) == ("stopped", 2, None)
    assert [p.name for p in checkpoints(tmp_path / "split")] == ["checkpoint-000002"]
    rest = train(config("split"), on_step=done.append, progress=False)
    assert (rest.status, rest.step, rest.resumed_from) == ("finished", 4, 2)
    assert [s.step for s in done] == [1, 2, 3, 4]

    assert whole.final_dir is not None
    assert rest.final_dir is not None
    a = load_file(whole.final_dir / "adapter_model.safetensors")
    b = load_file(rest.final_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-5, key


@pytest.mark.slow
async def test_cancel_stops_the_worker_and_a_new_start_resumes(
    dataset: DatasetFiles, root: Path
) -> None:
    tuner = finetuner(root, checkpoint_every=1)
    options = start_options("ftj-first", n_epochs=3, batch_size=1)  # 12 steps
    await tuner.start(dataset, options)
    async with asyncio.timeout(WAIT_S):
        while (state := await tuner.poll("ftj-first")).progress == 0:
            assert state.status in ("queued", "running"), state
            await asyncio.sleep(0.5)
    cancelled = await tuner.cancel("ftj-first")
    assert cancelled.status == "cancelled"
    assert (await final_state(tuner, "ftj-first", [])).status == "cancelled"
    await tuner.aclose()  # the worker has ended
    events = [e.message for e in await tuner.events("ftj-first")]
    stopped_at = int(events[-1].removeprefix("cancelled at step ").split()[0])
    assert events[-1] == f"cancelled at step {stopped_at} of 12"
    assert 1 <= stopped_at < 12
    assert not (root / "adapters").exists() or not any((root / "adapters").iterdir())

    again = finetuner(root, checkpoint_every=1)
    await again.start(dataset, start_options("ftj-again", n_epochs=3, batch_size=1))
    state = await final_state(again, "ftj-again", [])
    events = [e.message for e in await again.events("ftj-again")]
    assert state.status == "succeeded", (state, events)
    assert f"resuming from the checkpoint at checkpoint-{stopped_at:06d}" in events
    assert state.model == f"local/smollm2-135m+{TASK}-1"
    await again.aclose()
