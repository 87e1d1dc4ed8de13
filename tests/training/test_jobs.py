"""Fine-tune jobs on OpenAI's API (the scripted upstream) through the JobManager and Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
import redis.asyncio as aioredis

from formwork import keys
from formwork.config import ProviderSettings, Settings
from formwork.errors import InvalidInput, Unavailable
from formwork.protocol import Hyperparameters
from formwork.store import Store
from tests.training.helpers import spec
from tests.upstream import Upstream
from training.dataset import Dataset, from_examples
from training.jobs import DatasetFiles, FineTuneError, JobManager, JobNotFound
from training.openai import OpenAIFineTuner, masked

BASE = "gpt-4o-mini-2024-07-18"


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    store = Store.from_settings(settings)
    yield store
    await store.aclose()


@pytest.fixture
async def jobs(store: Store, settings: Settings) -> AsyncIterator[JobManager]:
    manager = JobManager(store, {"openai": OpenAIFineTuner("up", settings.providers["up"])})
    yield manager
    await manager.aclose()


@pytest.fixture
def dataset(tmp_path: Path, unique_name: str) -> DatasetFiles:
    rows = from_examples(spec(12))
    return Dataset(unique_name, rows[:10], rows[10:]).write(tmp_path)


def record(dataset: DatasetFiles, **fields: Any) -> dict[str, Any]:
    """A job record as stored and returned; ids and times are not asserted."""
    return {
        "id": ANY,
        "task": dataset.task,
        "provider": "openai",
        "base_model": BASE,
        "status": "queued",
        "progress": 0.0,
        "dataset_hash": dataset.digest,
        "train_examples": 10,
        "validation_examples": 2,
        "created_at": ANY,
        "updated_at": ANY,
        "model": None,
        "error": None,
        "hyperparameters": {},
        "external_id": "ftjob-0001",
        "trained_tokens": None,
        "step": None,  # OpenAI's jobs say no steps, loss or ETA
        "steps": None,
        "loss": None,
        "eta_s": None,
        **fields,
    }


RESOLVED = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": 2}


async def test_a_job_runs_to_a_model(
    jobs: JobManager, dataset: DatasetFiles, upstream: Upstream
) -> None:
    upstream.script_job(statuses=["validating_files", "queued", "running", "succeeded"])
    job, created = await jobs.start(
        dataset, provider="openai", base_model=BASE, hyperparameters=Hyperparameters(n_epochs=2)
    )
    assert created
    assert job.model_dump() == record(
        dataset, status="validating", progress=0.02, hyperparameters=RESOLVED
    )
    assert job.id.startswith("ftj-")

    train, validation = upstream.files["file-0001"], upstream.files["file-0002"]
    assert (train.purpose, train.filename) == ("fine-tune", dataset.train.name)
    assert train.content == dataset.train.read_bytes()
    assert dataset.validation is not None
    assert validation.content == dataset.validation.read_bytes()
    assert upstream.jobs["ftjob-0001"].body == {
        "model": BASE,
        "training_file": "file-0001",
        "validation_file": "file-0002",
        "suffix": dataset.task,
        "metadata": {"formwork_job": job.id, "task": dataset.task},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    }

    seen = [(j.status, j.progress) async for j in jobs.watch(job.id, interval_s=0.01)]
    assert seen == [("queued", 0.05), ("running", 0.1), ("succeeded", 1.0)]
    done = await jobs.get(job.id)
    model = f"up/ft:{BASE}:formwork:{dataset.task}:0001"
    assert done.model_dump() == record(
        dataset,
        id=job.id,
        status="succeeded",
        progress=1.0,
        model=model,
        trained_tokens=4096,
        hyperparameters=RESOLVED,
    )
    assert [e.message for e in await jobs.events(job.id)] == [
        "Created fine-tuning job: ftjob-0001",
        "Validating training file: file-0001",
        "Fine-tuning job queued",
        "Fine-tuning job started",
        f"New fine-tuned model created: {model.removeprefix('up/')}",
        "The job has successfully completed",
    ]
    assert [j.id for j in await jobs.of_task(dataset.task)] == [job.id]


async def test_a_failed_job_keeps_its_error(
    jobs: JobManager, dataset: DatasetFiles, upstream: Upstream
) -> None:
    upstream.script_job(
        statuses=["validating_files", "running", "failed"],
        error={"code": "invalid_n_examples", "message": "Training file has 10 examples."},
    )
    job, _ = await jobs.start(
        dataset, provider="openai", base_model=BASE, hyperparameters=Hyperparameters()
    )
    assert (await jobs.refresh(job.id)).status == "running"
    failed = await jobs.refresh(job.id)
    resolved = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
    assert failed.model_dump() == record(
        dataset,
        id=job.id,
        status="failed",
        progress=0.1,
        error="invalid_n_examples: Training file has 10 examples.",
        hyperparameters=resolved,
    )
    assert await jobs.refresh(job.id) == failed  # final: the provider is not asked again
    assert upstream.jobs["ftjob-0001"].step == 2

    again, created = await jobs.start(
        dataset, provider="openai", base_model=BASE, hyperparameters=Hyperparameters()
    )
    assert created  # a failed job does not hold the dataset
    assert (again.id != job.id, again.external_id) == (True, "ftjob-0002")


async def test_cancel(jobs: JobManager, dataset: DatasetFiles, upstream: Upstream) -> None:
    upstream.script_job(statuses=["validating_files", "running", "running", "succeeded"])
    job, _ = await jobs.start(
        dataset, provider="openai", base_model=BASE, hyperparameters=Hyperparameters()
    )
    await jobs.refresh(job.id)
    cancelled = await jobs.cancel(job.id)
    assert (cancelled.status, cancelled.progress, cancelled.model) == ("cancelled", 0.1, None)
    assert upstream.jobs["ftjob-0001"].status == "cancelled"
    assert (await jobs.get(job.id)).status == "cancelled"
    assert (await jobs.cancel(job.id)).status == "cancelled"  # cancelling twice is harmless


async def test_starting_the_same_dataset_twice_gives_the_same_job(
    jobs: JobManager, dataset: DatasetFiles, upstream: Upstream, tmp_path: Path
) -> None:
    knobs = Hyperparameters(n_epochs=3)
    first, created = await jobs.start(
        dataset, provider="openai", base_model=BASE, hyperparameters=knobs
    )
    same = Dataset(dataset.task, *_rows(12)).write(tmp_path / "again")
    assert same.digest == dataset.digest
    second, created_again = await jobs.start(
        same, provider="openai", base_model=BASE, hyperparameters=knobs
    )
    assert (created, created_again, second.id) == (True, False, first.id)
    assert list(upstream.jobs) == ["ftjob-0001"]
    assert len(upstream.files) == 2

    other_model, created = await jobs.start(
        dataset, provider="openai", base_model="gpt-3.5-turbo-0125", hyperparameters=knobs
    )
    assert created
    assert other_model.id != first.id
    other_data = Dataset(dataset.task, *_rows(13)).write(tmp_path / "other")
    _, created = await jobs.start(
        other_data, provider="openai", base_model=BASE, hyperparameters=knobs
    )
    assert created
    assert len(upstream.jobs) == 3
    listed = await jobs.of_task(dataset.task)
    assert len(listed) == 3
    assert listed[-1].id == first.id


def _rows(n: int) -> tuple[list[Any], list[Any]]:
    rows = from_examples(spec(n))
    return rows[:10], rows[10:]


async def test_records_live_in_redis_under_their_keys(
    jobs: JobManager, dataset: DatasetFiles, redis_url: str
) -> None:
    job, _ = await jobs.start(
        dataset, provider="openai", base_model=BASE, hyperparameters=Hyperparameters()
    )
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        stored = await client.hgetall(keys.finetune(job.id))
        assert {k: json.loads(v) for k, v in stored.items()} == job.model_dump()
        assert 0 < await client.ttl(keys.finetune(job.id)) <= keys.FINETUNE_TTL_S
        assert await client.zrange(keys.finetunes_of(dataset.task), 0, -1) == [job.id]
        claims = await client.keys(keys.finetune_by_dataset("openai", "*"))
        assert [await client.get(k) for k in claims] == [job.id]
    finally:
        await client.aclose()


async def test_what_a_provider_does_not_take_is_refused(
    jobs: JobManager, dataset: DatasetFiles
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await jobs.start(
            dataset,
            provider="openai",
            base_model=BASE,
            hyperparameters=Hyperparameters(lora_rank=8, learning_rate=0.001),
        )
    assert caught.value.detail == "provider 'openai' does not take learning_rate, lora_rank"
    assert caught.value.extensions["errors"] == [
        {"path": "$.hyperparameters.learning_rate", "message": "not used by openai"},
        {"path": "$.hyperparameters.lora_rank", "message": "not used by openai"},
    ]
    with pytest.raises(InvalidInput) as unknown:
        await jobs.start(
            dataset, provider="azure", base_model=BASE, hyperparameters=Hyperparameters()
        )
    assert unknown.value.detail == (
        "no fine-tune provider 'azure' is configured here (configured: openai)"
    )
    with pytest.raises(JobNotFound) as missing:
        await jobs.get("ftj-nope")
    assert (missing.value.status, missing.value.detail) == (404, "no fine-tune job 'ftj-nope'")


async def test_provider_errors_are_translated_without_the_key(
    store: Store, dataset: DatasetFiles, upstream: Upstream
) -> None:
    secret = "sk-live-abcdefghijklmnop"
    down = ProviderSettings(base_url="http://127.0.0.1:9/v1", api_key=secret)  # nothing listens
    jobs = JobManager(store, {"openai": OpenAIFineTuner("up", down)})
    try:
        with pytest.raises(Unavailable) as caught:
            await jobs.start(
                dataset, provider="openai", base_model=BASE, hyperparameters=Hyperparameters()
            )
    finally:
        await jobs.aclose()
    assert caught.value.detail == "openai: up: connection failed"
    [failed] = await JobManager(store, {}).of_task(dataset.task)
    assert (failed.status, failed.error) == ("failed", "up: connection failed")


async def test_refusals_are_passed_on_with_keys_masked(
    settings: Settings, upstream: Upstream
) -> None:
    tuner = OpenAIFineTuner("up", settings.providers["up"])
    try:
        with pytest.raises(FineTuneError) as missing:
            await tuner.poll("ftjob-9999")
    finally:
        await tuner.aclose()
    assert str(missing.value) == "up: Could not find fine-tune job: ftjob-9999"
    assert not missing.value.retryable
    assert masked("Incorrect API key provided: sk-live-abc123. Check it.") == (
        "Incorrect API key provided: sk-***. Check it."
    )
