"""What a local fine-tune costs on this machine, measured: a few real LoRA steps and prefills.

``calibrate`` runs ``python -m training.calibration IN OUT`` in a process of its own (its peak
memory is then the trainer's alone, and the CLI never imports torch). It loads the trainer as a
fine-tune does, times ``STEPS`` optimizer steps on the dataset's own batches (the first warms up
and is not counted), notes the peak resident memory, then loads the embedded engine (llama.cpp)
and times the prefill of the task's instructed and finetuned prompts, cold and with their
static prefix cached as the service caches it. The result is kept in the cache folder, named by
the machine, the knobs, the data and the prompts, so an estimate measures once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .adapters import Knobs
from .jobs import FineTuneError

STEPS = 3
TIMEOUT_S = 900.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Prompt(BaseModel):
    """One input's two prompts, as the service sends them (the last message is the input)."""

    instructed: list[dict[str, str]]
    finetuned: list[dict[str, str]]


class CalibrationJob(BaseModel):
    train_file: Path
    knobs: Knobs
    threads: int = 0
    steps: int = STEPS
    prompts: list[Prompt] = []


class Calibration(BaseModel):
    """Measured on this machine; seconds are wall time."""

    machine: str
    device: str
    threads: int
    load_s: float  # tokenizer, base model, LoRA wrap, frozen layers (lora_layers): once a run
    steps: int  # timed steps (after one warm-up)
    s_per_step: float
    examples_per_s: float
    tokens_per_step: float  # padded tokens in a timed batch
    peak_rss_bytes: int  # the trainer's, after its steps
    prompt_tokens_instructed: float | None = None  # the engine's own tokens, mean
    prompt_tokens_finetuned: float | None = None
    prefill_instructed_s: float | None = None  # cold: nothing cached
    prefill_finetuned_s: float | None = None
    warm_instructed_s: float | None = None  # static prefix cached (the service's steady state)
    warm_finetuned_s: float | None = None
    load_average: float | None = None  # 1-minute, as the steps ran: a busy machine is slower
    measured_at: float


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}|{platform.machine()}|{os.cpu_count()} cpus|{model}"


def cache_key(job: CalibrationJob, data_digest: str) -> str:
    prompts = [p.model_dump() for p in job.prompts]
    parts = [machine(), job.knobs.model_dump_json(), str(job.threads), data_digest]
    text = "\n".join([*parts, json.dumps(prompts, sort_keys=True)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


async def calibrate(
    job: CalibrationJob, *, cache_dir: Path, data_digest: str, fresh: bool = False
) -> tuple[Calibration, bool]:
    """The calibration for this machine, knobs, data and prompts: (it, True) from the cache,
    or (it, False) measured now (minutes on a small CPU)."""
    cached = cache_dir / "calibration" / f"{cache_key(job, data_digest)}.json"
    if cached.is_file() and not fresh:
        return Calibration.model_validate_json(cached.read_text()), True
    with tempfile.TemporaryDirectory(prefix="formwork-calibration-") as tmp:
        given, out = Path(tmp) / "in.json", Path(tmp) / "out.json"
        given.write_text(job.model_dump_json())
        returncode, log = await asyncio.to_thread(_run, given, out)
        if returncode != 0 or not out.is_file():
            tail = "\n".join(log.splitlines()[-5:])
            raise FineTuneError(f"calibration failed (exit {returncode}): {tail}")
        found = Calibration.model_validate_json(out.read_text())
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(found.model_dump_json(indent=2))
    return found, False


def _run(given: Path, out: Path) -> tuple[int, str]:
    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "training.calibration", str(given), str(out)],
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


# -- the measuring process ------------------------------------------------------------------


def measure(job: CalibrationJob) -> Calibration:
    import torch

    from .lora import (
        bottom_states,
        collate,
        device,
        encode_file,
        epoch_order,
        first_trained_layer,
        linear_schedule,
        load_base_model,
        load_tokenizer,
        lora_model,
        optimize,
    )

    knobs = job.knobs
    if job.threads:
        torch.set_num_threads(job.threads)
    started = time.perf_counter()
    tokenizer = load_tokenizer()
    pad = int(tokenizer.pad_token_id)
    examples, _ = encode_file(tokenizer, job.train_file, knobs.max_length)
    if not examples:
        raise FineTuneError(f"no training example fits in {knobs.max_length} tokens")
    where = device()
    base = load_base_model(where)
    first = first_trained_layer(base, knobs)
    model = lora_model(base, knobs)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=knobs.learning_rate, weight_decay=0.0)
    schedule = linear_schedule(optimizer, 1000, 0)
    load_s = time.perf_counter() - started
    order = epoch_order(len(examples), knobs.seed, 0)
    steps = max(job.steps, 2)
    used = sorted({order[k % len(order)] for k in range(steps * knobs.batch_size)})
    states: dict[int, Any] = {}
    if first:  # as training does: the frozen layers once per example, timed and scaled up
        t0 = time.perf_counter()
        computed = bottom_states(model, [examples[j] for j in used], pad, first, knobs.batch_size)
        states = dict(zip(used, computed, strict=True))
        load_s += (time.perf_counter() - t0) * len(examples) / len(used)
    times, tokens = [], []
    for i in range(steps):
        chosen = [order[(i * knobs.batch_size + k) % len(order)] for k in range(knobs.batch_size)]
        batch = collate(
            [examples[j] for j in chosen], pad, [states[j] for j in chosen] if states else None
        )
        t0 = time.perf_counter()
        optimize(model, batch, params, optimizer, schedule, first)
        times.append(time.perf_counter() - t0)
        tokens.append(int(batch["input_ids"].numel()))
    s_per_step = statistics.mean(times[1:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    del model, optimizer
    found = Calibration(
        machine=machine(),
        device=str(where),
        threads=torch.get_num_threads(),
        load_s=round(load_s, 2),
        steps=len(times) - 1,
        s_per_step=round(s_per_step, 3),
        examples_per_s=round(knobs.batch_size / s_per_step, 3),
        tokens_per_step=statistics.mean(tokens[1:]),
        peak_rss_bytes=peak,
        load_average=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        measured_at=time.time(),
    )
    if job.prompts:
        found = found.model_copy(update=prefills(job.prompts, job.threads))
    return found


def prefills(prompts: Sequence[Prompt], threads: int) -> dict[str, Any]:
    """Prefill seconds per request on the embedded engine, cold and with the static prefix
    (every message before the input) cached; and the prompts' tokens. Each call goes through
    the provider, on its worker thread, as the server makes it (a second thread calling
    llama.cpp would get a second OpenMP thread team, which slows both)."""
    from formwork.config import LocalModelSettings
    from formwork.providers.base import ChatRequest
    from formwork.providers.local import MODEL_ID, LocalProvider

    provider = LocalProvider(LocalModelSettings(threads=threads))
    provider.load()

    def timed(messages: list[Any], static: int) -> tuple[float, int]:
        request = ChatRequest(
            model=MODEL_ID, messages=messages, max_tokens=1, timeout_s=600, static_messages=static
        )
        started = time.perf_counter()
        answer = asyncio.run(provider.complete(request))
        return time.perf_counter() - started, answer.usage.prompt_tokens

    measured: dict[str, list[float]] = {}
    try:
        for prompt in prompts:
            for kind, messages in (
                ("instructed", prompt.instructed),
                ("finetuned", prompt.finetuned),
            ):
                cold, tokens = timed(list(messages), 0)
                timed(list(messages), len(messages) - 1)  # fills the prefix cache
                warm, _ = timed(list(messages), len(messages) - 1)
                measured.setdefault(f"prompt_tokens_{kind}", []).append(tokens)
                measured.setdefault(f"prefill_{kind}_s", []).append(cold)
                measured.setdefault(f"warm_{kind}_s", []).append(warm)
    finally:
        asyncio.run(provider.aclose())
    return {name: round(statistics.mean(values), 4) for name, values in measured.items()}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        sys.stderr.write("usage: python -m training.calibration IN.json OUT.json\n")
        return 2
    job = CalibrationJob.model_validate_json(Path(args[0]).read_text())
    Path(args[1]).write_text(measure(job).model_dump_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
