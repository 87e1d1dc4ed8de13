"""Fine-tune jobs: one interface for every provider, and the manager that keeps their state.

A ``FineTuner`` turns a checked dataset into a model on one provider: OpenAI's fine-tuning API
(``training/openai.py``) or a LoRA adapter trained on this machine (``training/local.py``).
``start`` hands the data over and returns at once; the work happens elsewhere (OpenAI's
servers, a worker thread or process) and ``poll`` reports on it from any process, since the CLI
and every API replica poll.

``JobManager`` keeps one record per job in a Redis hash (``keys.finetune(id)``), lists a task's
jobs (``keys.finetunes_of(task)``) and starts a dataset at most once per provider, base model and
hyperparameters (``keys.finetune_by_dataset``): starting it again returns the job already made,
unless that job failed or was cancelled.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar, cast

from pydantic import JsonValue
from redis.asyncio import Redis
from redis.exceptions import WatchError

from formwork import keys
from formwork.errors import FormworkError, InvalidInput, Unavailable
from formwork.protocol import (
    FINAL_STATUSES,
    FinetuneJob,
    Hyperparameters,
    JobEvent,
    JobStatus,
)
from formwork.registry import REDIS_DOWN
from formwork.store import Store, StoreDown

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_STATUSES: frozenset[str] = frozenset({"failed", "cancelled"})


class JobNotFound(FormworkError):
    status, slug, title = 404, "finetune-not-found", "Fine-tune job not found"


class FineTuneError(Exception):
    """A provider call failed. The message is safe to show: it never carries a key."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class DatasetFiles:
    """A checked dataset on disk as chat fine-tuning JSONL, one ``{"messages": [...]}`` a line."""

    task: str
    train: Path
    validation: Path | None
    digest: str  # sha256 over both files' bytes
    train_examples: int
    validation_examples: int


@dataclass(frozen=True, slots=True)
class StartOptions:
    job_id: str  # ours; a local fine-tuner may name its adapter and work folder after it
    base_model: str  # the provider's model id: ``gpt-4o-mini-2024-07-18``, ``smollm2-135m``
    suffix: str  # the task name, so that it shows in the fine-tuned model's name
    hyperparameters: Hyperparameters


@dataclass(frozen=True, slots=True)
class JobState:
    """What a provider says about one of its jobs."""

    external_id: str  # the provider's job id
    status: JobStatus
    progress: float = 0.0  # 0..1
    model: str | None = None  # a route ref once succeeded: ``openai/ft:…``, ``local/…+task-3``
    error: str | None = None
    trained_tokens: int | None = None
    hyperparameters: dict[str, JsonValue] = field(default_factory=dict)  # as resolved
    step: int | None = None  # training steps done, where the provider tells
    steps: int | None = None
    loss: float | None = None
    eta_s: float | None = None


class FineTuner(Protocol):
    """One fine-tuning provider. Methods raise FineTuneError when the provider fails."""

    name: str  # "openai" or "local": the job record's ``provider``
    hyperparameters: frozenset[str]  # the Hyperparameters fields it honours

    async def start(self, dataset: DatasetFiles, options: StartOptions) -> JobState:
        """Hand the dataset over and return at once (queued, validating or running)."""
        ...

    async def poll(self, external_id: str) -> JobState: ...

    async def events(self, external_id: str, *, limit: int = 20) -> list[JobEvent]:
        """The job's most recent events, oldest first."""
        ...

    async def cancel(self, external_id: str) -> JobState: ...

    async def aclose(self) -> None: ...


def launch_digest(dataset: DatasetFiles, base_model: str, hyperparameters: Hyperparameters) -> str:
    """What makes two starts the same job: the data, the base model and the knobs."""
    knobs = json.dumps(hyperparameters.given(), sort_keys=True)
    return hashlib.sha256(f"{dataset.digest}\n{base_model}\n{knobs}".encode()).hexdigest()


def _encode(values: Mapping[str, JsonValue]) -> dict[str, str]:
    return {name: json.dumps(value) for name, value in values.items()}


def _decode(fields: Mapping[str, str]) -> FinetuneJob:
    return FinetuneJob.model_validate({name: json.loads(v) for name, v in fields.items()})


class JobManager:
    """Starts jobs on the registered fine-tuners and keeps their records in Redis."""

    def __init__(self, store: Store, finetuners: Mapping[str, FineTuner]) -> None:
        self._store = store
        self._finetuners = dict(finetuners)

    @property
    def providers(self) -> list[str]:
        return sorted(self._finetuners)

    def finetuner(self, provider: str) -> FineTuner:
        found = self._finetuners.get(provider)
        if found is None:
            known = ", ".join(self.providers) or "none"
            raise InvalidInput(
                f"no fine-tune provider {provider!r} is configured here (configured: {known})",
                errors=[{"path": "$.provider", "message": f"unknown provider {provider!r}"}],
            )
        return found

    async def start(
        self,
        dataset: DatasetFiles,
        *,
        provider: str,
        base_model: str,
        hyperparameters: Hyperparameters,
    ) -> tuple[FinetuneJob, bool]:
        """The job for this dataset: a new one (True), or the one already started (False)."""
        finetuner = self.finetuner(provider)
        unsupported = sorted(set(hyperparameters.given()) - finetuner.hyperparameters)
        if unsupported:
            raise InvalidInput(
                f"provider {provider!r} does not take {', '.join(unsupported)}",
                errors=[
                    {"path": f"$.hyperparameters.{name}", "message": f"not used by {provider}"}
                    for name in unsupported
                ],
            )
        now = time.time()
        job = FinetuneJob(
            id=f"ftj-{uuid.uuid4().hex[:16]}",
            task=dataset.task,
            provider=provider,
            base_model=base_model,
            status="queued",
            progress=0.0,
            dataset_hash=dataset.digest,
            train_examples=dataset.train_examples,
            validation_examples=dataset.validation_examples,
            created_at=now,
            updated_at=now,
            hyperparameters=hyperparameters.given(),
        )
        claim = keys.finetune_by_dataset(
            provider, launch_digest(dataset, base_model, hyperparameters)
        )
        claimed = await self._redis(lambda r: self._claim(r, claim, job))
        if claimed != job.id:
            return await self.get(claimed), False
        options = StartOptions(job.id, base_model, dataset.task, hyperparameters)
        try:
            state = await finetuner.start(dataset, options)
        except FineTuneError as e:
            await self._save(job.model_copy(update={"status": "failed", "error": str(e)}))
            raise _translated(provider, e) from e
        return await self._apply(job, state), True

    async def _claim(self, r: Redis, claim: str, job: FinetuneJob) -> str:
        """Atomically: the live job already claiming this dataset, or ours, written."""
        async with r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(claim)
                    existing = await pipe.get(claim)
                    if existing is not None:
                        status = await pipe.hget(keys.finetune(str(existing)), "status")
                        if status is not None and json.loads(status) not in RETRYABLE_STATUSES:
                            return str(existing)  # leaving the block unwatches
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(claim, job.id, ex=keys.FINETUNE_TTL_S)
                    self._write(pipe, job)
                    await pipe.execute()
                    return job.id
                except WatchError:
                    continue

    @staticmethod
    def _write(pipe: Redis, job: FinetuneJob) -> None:
        record = keys.finetune(job.id)
        pipe.hset(record, mapping=_encode(job.model_dump(mode="json")))  # type: ignore[arg-type]
        pipe.expire(record, keys.FINETUNE_TTL_S)
        pipe.zadd(keys.finetunes_of(job.task), {job.id: job.created_at})
        pipe.expire(keys.finetunes_of(job.task), keys.FINETUNE_TTL_S)

    async def _save(self, job: FinetuneJob) -> FinetuneJob:
        async def write(r: Redis) -> None:
            pipe = r.pipeline(transaction=True)
            self._write(pipe, job)
            await pipe.execute()

        await self._redis(write)
        return job

    async def _apply(self, job: FinetuneJob, state: JobState) -> FinetuneJob:
        progress = min(max(state.progress, 0.0), 1.0)
        if state.status == "succeeded":
            progress = 1.0
        elif state.status in RETRYABLE_STATUSES:
            progress = job.progress  # where it stopped
        updated = job.model_copy(
            update={
                "external_id": state.external_id,
                "status": state.status,
                "progress": progress,
                "model": state.model or job.model,
                "error": state.error,
                "trained_tokens": state.trained_tokens or job.trained_tokens,
                "hyperparameters": {**job.hyperparameters, **state.hyperparameters},
                "step": state.step if state.step is not None else job.step,
                "steps": state.steps or job.steps,
                "loss": state.loss if state.loss is not None else job.loss,
                "eta_s": state.eta_s if state.status not in FINAL_STATUSES else None,
                "updated_at": time.time(),
            }
        )
        if updated.status != job.status:
            log.info("fine-tune %s (%s): %s -> %s", job.id, job.task, job.status, updated.status)
        return await self._save(updated)

    async def get(self, job_id: str) -> FinetuneJob:
        """The stored record, as last seen."""
        fields = await self._redis(lambda r: r.hgetall(keys.finetune(job_id)))
        if not fields:
            raise JobNotFound(f"no fine-tune job {job_id!r}")
        return _decode(cast(dict[str, str], fields))

    async def refresh(self, job_id: str) -> FinetuneJob:
        """The record, updated from its provider while the job is not final."""
        job = await self.get(job_id)
        finetuner = self._finetuners.get(job.provider)
        if job.final or job.external_id is None or finetuner is None:
            return job
        try:
            state = await finetuner.poll(job.external_id)
        except FineTuneError as e:
            log.warning("fine-tune %s: polling %s failed: %s", job.id, job.provider, e)
            return job
        return await self._apply(job, state)

    async def of_task(self, task: str, *, limit: int = 100) -> list[FinetuneJob]:
        """A task's jobs, newest first, as last seen (``refresh`` brings one up to date)."""

        async def read(r: Redis) -> list[dict[str, str]]:
            ids = await r.zrevrange(keys.finetunes_of(task), 0, limit - 1)
            pipe = r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(keys.finetune(str(job_id)))
            return cast(list[dict[str, str]], await pipe.execute())

        return [_decode(fields) for fields in await self._redis(read) if fields]  # none: expired

    async def events(self, job_id: str, *, limit: int = 20) -> list[JobEvent]:
        job = await self.get(job_id)
        if job.external_id is None:
            return []
        finetuner = self.finetuner(job.provider)
        try:
            return await finetuner.events(job.external_id, limit=limit)
        except FineTuneError as e:
            raise _translated(job.provider, e) from e

    async def cancel(self, job_id: str) -> FinetuneJob:
        job = await self.refresh(job_id)
        if job.final:
            return job
        if job.external_id is None:
            return await self._save(job.model_copy(update={"status": "cancelled"}))
        finetuner = self.finetuner(job.provider)
        try:
            state = await finetuner.cancel(job.external_id)
        except FineTuneError as e:
            raise _translated(job.provider, e) from e
        return await self._apply(job, state)

    async def watch(
        self, job_id: str, *, interval_s: float, timeout_s: float | None = None
    ) -> AsyncIterator[FinetuneJob]:
        """Yield the record at once and on every change, until it is final or time runs out."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last: tuple[str, float] | None = None
        while True:
            job = await self.refresh(job_id)
            if (job.status, job.progress) != last:
                last = (job.status, job.progress)
                yield job
            if job.final or (deadline is not None and time.monotonic() >= deadline):
                return
            await asyncio.sleep(interval_s)

    async def aclose(self) -> None:
        for name, finetuner in reversed(list(self._finetuners.items())):
            try:
                await finetuner.aclose()
            except Exception:
                log.exception("closing fine-tuner %s failed", name)

    async def _redis(self, op: Callable[[Redis], Awaitable[T]]) -> T:
        try:
            return await self._store.call(op)
        except StoreDown as e:
            raise Unavailable(REDIS_DOWN) from e


def _translated(provider: str, error: FineTuneError) -> FormworkError:
    if error.retryable:
        return Unavailable(f"{provider}: {error}", retry_after=5.0)
    return InvalidInput(
        f"{provider} refused: {error}", errors=[{"path": "$", "message": str(error)}]
    )
