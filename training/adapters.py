"""What a local LoRA fine-tune is, without torch: its knobs and run config, its job folder (the
files a worker and every other process share), and how a trained adapter is published.

A job's folder (``<work_dir>/<job id>``) holds ``config.json``, ``state.json``, ``events.jsonl``
and ``train.log``; the worker (``training.worker``) writes its state after every step, and any
process reads it. The result is a PEFT adapter in ``adapters_dir/<task>-<n>``, served by the
local provider as ``local/smollm2-135m+<task>-<n>``; a ``vllm.txt`` beside it says how vLLM
serves it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from formwork.protocol import JobEvent

BASE_MODEL = "smollm2-135m"
HF_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what vLLM loads: HF weights, not GGUF
# The embedded model learns a task's format from about 800 examples seen: 200 contact-extraction
# rows needed 4 epochs for 100 % unconstrained validity, 2 epochs gave 82 % (bench/finetune.md).
LOCAL_EXAMPLES_SEEN = 800
LOCAL_MAX_EPOCHS = 10


def local_epochs(train_examples: int) -> int:
    """Epochs for a local fine-tune of this many examples: ~800 examples seen, 1 to 10 epochs."""
    wanted = math.ceil(LOCAL_EXAMPLES_SEEN / max(train_examples, 1))
    return max(1, min(LOCAL_MAX_EPOCHS, wanted))


class Knobs(BaseModel):
    """Resolved training settings: the job's hyperparameters over these defaults."""

    n_epochs: int = Field(2, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    lora_rank: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_layers: int = Field(
        0,
        ge=0,
        description="LoRA on the top N transformer layers only (0: all of them). The layers "
        "below are frozen, so their outputs are computed once per example, not every epoch.",
    )
    seed: int = Field(0, ge=0)
    max_length: int = Field(512, ge=16, description="Longer examples are skipped, not cut.")
    checkpoint_every: int = Field(10, ge=1, description="Steps between checkpoints.")
    warmup_fraction: float = Field(0.1, ge=0, lt=1)

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class RunConfig(BaseModel):
    """What one worker trains: written to ``config.json`` in the job folder."""

    task: str
    train_file: Path
    validation_file: Path | None = None
    run_dir: Path  # checkpoints, shared by every job with the same data and knobs
    adapters_dir: Path
    knobs: Knobs = Field(default_factory=Knobs)
    threads: int = 0


# -- publishing -----------------------------------------------------------------------------


def adapter_ref(name: str) -> str:
    return f"local/{BASE_MODEL}+{name}"


def vllm_note(name: str, path: Path, rank: int) -> str:
    return (
        f"LoRA adapter {name} for {HF_BASE_MODEL} (trained on the dequantized Q4_1 GGUF).\n\n"
        f"Embedded (local provider): route the task to {adapter_ref(name)}\n\n"
        "vLLM serves LoRA adapters by name and needs the base model in Hugging Face format,\n"
        "not the GGUF:\n\n"
        f"  vllm serve {HF_BASE_MODEL} --enable-lora --max-lora-rank {max(rank, 16)} \\\n"
        f"    --lora-modules {name}={path.resolve()}\n\n"
        "then configure the provider (FORMWORK_PROVIDERS__VLLM__BASE_URL=http://HOST:8000/v1)\n"
        f"and route the task to: vllm/{name}\n"
    )


def next_number(adapters_dir: Path, task: str) -> int:
    """1 + the highest n of the task's adapters ``<task>-<n>``."""
    numbers = [
        int(suffix)
        for path in adapters_dir.iterdir()
        if (suffix := path.name.removeprefix(f"{task}-")) != path.name and suffix.isdigit()
    ]
    return max(numbers, default=0) + 1


def publish(final: Path, adapters_dir: Path, task: str, rank: int, meta: dict[str, Any]) -> str:
    """Move the adapter to ``adapters_dir/<task>-<n>`` (the next free n); its name."""
    adapters_dir.mkdir(parents=True, exist_ok=True)
    n = next_number(adapters_dir, task)
    while True:
        name = f"{task}-{n}"
        target = adapters_dir / name
        try:
            target.mkdir()  # the claim: fails if another job took this number
        except FileExistsError:
            n += 1
            continue
        (final / "vllm.txt").write_text(vllm_note(name, target, rank))
        (final / "formwork.json").write_text(json.dumps({**meta, "name": name}, indent=2))
        final.rename(target)  # onto the empty folder just claimed
        return name


# -- the job folder -------------------------------------------------------------------------


class JobFolder:
    """The files one job is known by, read and written from any process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config = path / "config.json"
        self.state = path / "state.json"
        self.events = path / "events.jsonl"
        self.cancel_flag = path / "cancel"
        self.log = path / "train.log"

    def read_state(self) -> dict[str, Any]:
        try:
            found: dict[str, Any] = json.loads(self.state.read_text())
        except FileNotFoundError:
            return {}
        return found

    def write_state(self, **values: Any) -> None:
        state = {**self.read_state(), **values, "updated_at": time.time()}
        partial = self.state.with_suffix(".partial")
        partial.write_text(json.dumps(state))
        partial.replace(self.state)

    def event(self, message: str, level: Literal["info", "warn", "error"] = "info") -> None:
        line = JobEvent(at=time.time(), level=level, message=message).model_dump_json()
        with self.events.open("a", encoding="utf-8") as out:
            out.write(line + "\n")

    def read_events(self, limit: int) -> list[JobEvent]:
        try:
            lines = self.events.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [JobEvent.model_validate_json(line) for line in lines[-limit:] if line]

    @property
    def cancelled(self) -> bool:
        return self.cancel_flag.exists()
