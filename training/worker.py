"""The local fine-tune worker: ``python -m training.worker JOB_FOLDER``.

``LocalFineTuner`` starts it in its own process and session, so the service's event loop and
memory stay clear of training and the job outlives the process that started it. It trains
(``training.lora``), publishes the adapter, and keeps the folder's state and events current; a
``cancel`` file or SIGTERM stops it at the next step.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .adapters import HF_BASE_MODEL, JobFolder, RunConfig, adapter_ref, publish
from .lora import Step, TrainResult, checkpoints, train

log = logging.getLogger(__name__)


def work(folder: JobFolder) -> int:
    """The worker: train, publish, and keep ``state.json`` and the events up to date."""
    config = RunConfig.model_validate_json(folder.config.read_text())
    stop = {"signal": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(signal=True))
    folder.write_state(status="running", pid=os.getpid())
    if found := checkpoints(config.run_dir):
        folder.event(f"resuming from the checkpoint at {found[-1].name}")
    pace: dict[str, float] = {}  # the first step this process made, and when: the ETA's base

    def on_step(step: Step) -> None:
        if not pace:
            pace.update(step=step.step, at=time.time())
        folder.write_state(
            progress=step.step / step.total,
            step=step.step,
            steps=step.total,
            loss=step.loss,
            pace_step=pace["step"],
            pace_at=pace["at"],
        )
        if step.step % config.knobs.checkpoint_every == 0:
            folder.event(f"step {step.step}/{step.total}: loss {step.loss:.4f}")

    try:
        result = train(
            config, on_step=on_step, should_stop=lambda: stop["signal"] or folder.cancelled
        )
    except Exception as e:
        log.exception("fine-tune of %s failed", config.task)
        folder.event(f"training failed: {e}", "error")
        folder.write_state(status="failed", error=f"training failed: {e}")
        return 1
    if result.skipped:
        folder.event(f"{result.skipped} example(s) over {config.knobs.max_length} tokens", "warn")
    if result.final_dir is None or folder.cancelled:
        return _stopped(folder, result, cancelled=folder.cancelled)
    meta = {
        "task": config.task,
        "base_model": HF_BASE_MODEL,
        "train_file": str(config.train_file),
        "knobs": config.knobs.model_dump(),
        "steps": result.step,
        "final_loss": result.loss,
        "validation_loss": result.validation_loss,
    }
    name = publish(result.final_dir, config.adapters_dir, config.task, config.knobs.lora_rank, meta)
    if result.validation_loss is not None:
        folder.event(f"validation loss {result.validation_loss:.4f}")
    folder.event(f"adapter {name} saved: route {adapter_ref(name)}")
    folder.write_state(
        status="succeeded",
        progress=1.0,
        model=adapter_ref(name),
        adapter=str(config.adapters_dir / name),
        trained_tokens=result.trained_tokens,
    )
    return 0


def _stopped(folder: JobFolder, result: TrainResult, *, cancelled: bool) -> int:
    where = f"at step {result.step} of {result.total}"
    if cancelled:
        folder.event(f"cancelled {where}")
        folder.write_state(status="cancelled")
    else:
        error = f"interrupted {where}; start it again to resume from the last checkpoint"
        folder.event(error, "warn")
        folder.write_state(status="failed", error=error)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m training.worker JOB_FOLDER\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return work(JobFolder(Path(args[0])))


if __name__ == "__main__":
    raise SystemExit(main())
