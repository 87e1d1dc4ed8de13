"""The ``local`` fine-tuner: LoRA adapters for the embedded SmolLM2-135M, trained on this machine.

``LocalFineTuner.start`` writes the job's folder (``training.adapters.JobFolder``) and starts
``python -m training.worker <folder>`` in its own process and session; ``poll`` reads the state
the worker writes, from any process sharing the folder, and ``cancel`` leaves a ``cancel`` file.
Checkpoints go to a run folder named after the data and the resolved hyperparameters, so
starting the same fine-tune again (after a cancel, a crash or a restart) resumes from the last
checkpoint. Training needs the ``train`` packages (torch, transformers, peft): ``missing()``
says which are absent, and without them there is no local fine-tuner.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from formwork import extras
from formwork.config import Settings
from formwork.protocol import FINAL_STATUSES, JobEvent, JobStatus

from .adapters import BASE_MODEL, JobFolder, Knobs, RunConfig
from .jobs import DatasetFiles, FineTuneError, JobState, StartOptions

log = logging.getLogger(__name__)

TRAINING_PACKAGES = ("torch", "transformers", "peft")
CANCEL_POLLS, CANCEL_POLL_S = 25, 0.2  # cancel waits up to 5 s for the worker
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # where ``-m training.worker`` runs


def missing() -> list[str]:
    """The packages local fine-tuning needs that are not installed (none: it can run)."""
    return extras.missing(TRAINING_PACKAGES)


class LocalFineTuner:
    """The ``local`` fine-tune provider: LoRA adapters for the embedded model."""

    name = "local"
    hyperparameters = frozenset(
        {
            "n_epochs",
            "batch_size",
            "learning_rate",
            "lora_rank",
            "lora_alpha",
            "lora_layers",
            "seed",
        }
    )

    def __init__(
        self,
        *,
        adapters_dir: Path,
        work_dir: Path,
        threads: int = 0,
        defaults: Knobs | None = None,
    ) -> None:
        self.adapters_dir = adapters_dir
        self.work_dir = work_dir
        self.threads = threads
        self.defaults = defaults or Knobs()
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalFineTuner:
        adapters = settings.local.adapters_dir
        return cls(
            adapters_dir=adapters,
            work_dir=adapters.parent / "finetunes",
            threads=settings.local.threads,
        )

    def folder(self, external_id: str) -> JobFolder:
        if not external_id or "/" in external_id or external_id.startswith("."):
            raise FineTuneError(f"not a local fine-tune id: {external_id!r}")
        return JobFolder(self.work_dir / external_id)

    def knobs(self, given: dict[str, JsonValue]) -> Knobs:
        return self.defaults.model_copy(update=given)

    async def start(self, dataset: DatasetFiles, options: StartOptions) -> JobState:
        if options.base_model.removeprefix("local/") != BASE_MODEL:
            raise FineTuneError(f"the local fine-tuner trains {BASE_MODEL} only")
        knobs = self.knobs(options.hyperparameters.given())
        run_key = hashlib.sha256(f"{dataset.digest}\n{knobs.digest()}".encode()).hexdigest()
        config = RunConfig(
            task=dataset.task,
            train_file=dataset.train.resolve(),
            validation_file=dataset.validation.resolve() if dataset.validation else None,
            run_dir=(self.work_dir / "runs" / f"{dataset.task}-{run_key[:12]}").resolve(),
            adapters_dir=self.adapters_dir.resolve(),
            knobs=knobs,
            threads=self.threads,
        )
        folder = self.folder(options.job_id)
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.config.write_text(config.model_dump_json(indent=2))
        folder.write_state(status="queued", progress=0.0)
        folder.event(f"queued: LoRA r={knobs.lora_rank} on {dataset.train_examples} examples")
        try:
            self._children[options.job_id] = await _spawn(folder)
        except OSError as e:
            folder.write_state(status="failed", error=f"the training process did not start: {e}")
            raise FineTuneError(f"the training process did not start: {e}") from e
        return self._state(options.job_id)

    async def poll(self, external_id: str) -> JobState:
        return self._state(external_id)

    async def events(self, external_id: str, *, limit: int = 20) -> list[JobEvent]:
        return self.folder(external_id).read_events(limit)

    async def cancel(self, external_id: str) -> JobState:
        folder = self.folder(external_id)
        state = self._state(external_id)
        if state.status in FINAL_STATUSES:
            return state
        folder.cancel_flag.touch()
        child = self._children.get(external_id)
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
        for _ in range(CANCEL_POLLS):  # let the worker stop at its next step and say so
            if folder.read_state()["status"] in FINAL_STATUSES:
                break
            await asyncio.sleep(CANCEL_POLL_S)
        return self._state(external_id)

    async def aclose(self) -> None:
        """Workers outlive this object: the CLI that starts a job exits at once, a restarted
        service finds its jobs running, and ``cancel`` from any process stops them."""
        self._children.clear()

    def _state(self, external_id: str) -> JobState:
        folder = self.folder(external_id)
        state = folder.read_state()
        if not state:
            raise FineTuneError(f"no local fine-tune {external_id!r} in {self.work_dir}")
        status: JobStatus = state["status"]
        error = state.get("error")
        if status not in FINAL_STATUSES and not self._alive(external_id, state.get("pid")):
            state = folder.read_state()  # it may have written its last state as it ended
            status, error = state["status"], state.get("error")
            if status not in FINAL_STATUSES:
                status = "failed"
                error = f"the training process ended unexpectedly; see {folder.log}"
        if status not in FINAL_STATUSES and folder.cancelled:
            status = "cancelled"
        knobs = RunConfig.model_validate_json(folder.config.read_text()).knobs
        return JobState(
            external_id=external_id,
            status=status,
            progress=float(state.get("progress", 0.0)),
            model=state.get("model"),
            error=error,
            trained_tokens=state.get("trained_tokens"),
            hyperparameters=knobs.model_dump(),
            step=state.get("step"),
            steps=state.get("steps"),
            loss=state.get("loss"),
            eta_s=None if status in FINAL_STATUSES else eta_s(state),
        )

    def _alive(self, external_id: str, pid: int | None) -> bool:
        child = self._children.get(external_id)
        if child is not None:
            return child.poll() is None
        if pid is None:
            return True  # queued by another process that has not started its worker yet
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def eta_s(state: dict[str, Any]) -> float | None:
    """Seconds left at the pace of the steps this worker made (None before its second step)."""
    try:
        done = int(state["step"]) - int(state["pace_step"])
        spent = float(state["updated_at"]) - float(state["pace_at"])
        left = int(state["steps"]) - int(state["step"])
    except (KeyError, TypeError, ValueError):
        return None
    if done <= 0 or spent <= 0:
        return None
    return round(spent / done * left, 1)


async def _spawn(folder: JobFolder) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",  # idle OpenMP threads must not spin against the service
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }

    def spawn() -> subprocess.Popen[bytes]:
        with folder.log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "training.worker", str(folder.path.resolve())],
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    return await asyncio.to_thread(spawn)
