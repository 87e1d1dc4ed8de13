"""From a task to a running fine-tune: gather rows, split, count, check, write, start.

The API and the CLI share this path, so a dataset is checked the same way wherever it starts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from formwork.config import TrainingSettings
from formwork.errors import InvalidInput
from formwork.metrics import Metrics
from formwork.protocol import FinetuneJob, FinetuneRequest, Source, TaskSpec
from formwork.retirement import Retirements
from formwork.validation import Validators

from . import checks
from .adapters import local_epochs
from .checks import Problem, Report
from .cost import Estimate, Tables, estimate
from .dataset import Dataset, Row, from_examples, harvest, merge, read_jsonl, split
from .jobs import JobManager
from .tokens import counter_for


@dataclass(frozen=True, slots=True)
class Prepared:
    """A split dataset with its token counts (train rows first) and its check report."""

    spec: TaskSpec
    dataset: Dataset
    counts: list[int]
    report: Report
    base_model: str

    def estimate(
        self, tables: Tables, *, compare_model: str | None = None, epochs: int | None = None
    ) -> Estimate:
        return estimate(
            self.dataset,
            self.spec,
            self.counts[: len(self.dataset.train)],
            tables,
            base_model=self.base_model,
            compare_model=compare_model,
            epochs=epochs,
        )


class DatasetBuilder:
    """Splits, counts and checks rows into a ``Prepared`` dataset: CPU work, no I/O."""

    def __init__(self, settings: TrainingSettings, validators: Validators) -> None:
        self.settings = settings
        self.tables = Tables(settings)
        self._validators = validators

    def prepare(
        self,
        task: str,
        spec: TaskSpec,
        rows: list[Row],
        *,
        base_model: str,
        fraction: float | None = None,
        seed: int | None = None,
    ) -> Prepared:
        fraction = self.settings.validation_fraction if fraction is None else fraction
        seed = self.settings.seed if seed is None else seed
        train, validation = split(rows, fraction=fraction, seed=seed)
        dataset = Dataset(task, train, validation)
        counter = counter_for(base_model)
        counts = [counter.messages(m) for m in dataset.messages()]
        report = checks.check(
            rows,
            dataset,
            spec,
            self._validators,
            counts,
            base_model=base_model,
            token_limit=self.tables.limit(base_model),
            minimum=self.settings.min_examples,
            recommended=self.settings.recommended_examples,
        )
        return Prepared(spec, dataset, counts, report, base_model)


async def gather_rows(
    task: str,
    spec: TaskSpec,
    source: Source,
    *,
    files: list[Path] | None = None,
    metrics: Metrics | None = None,
    harvest_limit: int,
) -> list[Row]:
    """The task's examples, then the JSONL files, then harvested runs they lack (harvesting
    reads the request log through ``metrics``)."""
    given = from_examples(spec) if source.examples else []
    for path in files or []:
        given += await asyncio.to_thread(read_jsonl, path)
    if not source.harvest:
        return given
    if metrics is None:
        raise InvalidInput(
            "harvesting needs the request log in Redis",
            errors=[{"path": "$.source.harvest", "message": "no request log here"}],
        )
    logged = await harvest(metrics, task, model=source.harvest_model, limit=harvest_limit)
    return merge(given, logged)


def retirement_warnings(
    request: FinetuneRequest, settings: TrainingSettings, retirements: Retirements
) -> list[Problem]:
    """OpenAI's announced ends: of new fine-tuning jobs (from the retirement warning days
    before), and of serving fine-tunes of the base model (whenever one is announced)."""
    if request.provider != "openai":
        return []
    notes = []
    ends = settings.openai_jobs_end
    days = None if ends is None else (ends - retirements.today()).days
    if days is not None and days <= 0:
        notes.append(
            f"OpenAI stopped accepting new fine-tuning jobs on {ends}: the job is likely "
            "refused; train with --provider local"
        )
    elif days is not None and days <= retirements.warning_days:
        notes.append(
            f"OpenAI stops accepting new fine-tuning jobs on {ends} ({days} days from now); "
            "plan on --provider local"
        )
    tuned = f"{retirements.openai_provider}/ft:{request.base_model}"
    if (serves_until := retirements.date_of_model(tuned)) is not None:
        notes.append(
            f"fine-tunes of {request.base_model} stop serving on {serves_until}: routes to "
            "them are skipped from that day"
        )
    return [
        Problem(check="provider-retirement", level="warning", where="provider", message=n)
        for n in notes
    ]


@dataclass(frozen=True, slots=True)
class Launched:
    job: FinetuneJob
    created: bool  # False: the job this dataset already had
    warnings: list[Problem]


class Launcher:
    """From a task to a running fine-tune job; dataset work runs off the event loop."""

    def __init__(
        self,
        builder: DatasetBuilder,
        metrics: Metrics,
        jobs: JobManager,
        *,
        retirements: Retirements | None = None,
    ) -> None:
        self.builder = builder
        self.metrics = metrics
        self.jobs = jobs
        self.retirements = retirements or Retirements()

    async def launch(
        self,
        task: str,
        spec: TaskSpec,
        request: FinetuneRequest,
        *,
        files: list[Path] | None = None,
    ) -> Launched:
        """Check, write and start; InvalidInput (422) names every failed check."""
        self.jobs.finetuner(request.provider)  # an unknown provider fails before any work
        settings = self.builder.settings
        rows = await gather_rows(
            task,
            spec,
            request.source,
            files=files,
            metrics=self.metrics,
            harvest_limit=settings.harvest_limit,
        )
        prepared = await asyncio.to_thread(
            self.builder.prepare,
            task,
            spec,
            rows,
            base_model=request.base_model,
            fraction=request.validation_fraction,
            seed=request.seed,
        )
        prepared.report.raise_for_errors()
        stored = await asyncio.to_thread(prepared.dataset.write, settings.data_dir / task)
        knobs = request.hyperparameters
        if request.provider == "local" and knobs.n_epochs is None:  # by data size
            knobs = knobs.model_copy(update={"n_epochs": local_epochs(stored.train_examples)})
        job, created = await self.jobs.start(
            stored, provider=request.provider, base_model=request.base_model, hyperparameters=knobs
        )
        notes = retirement_warnings(request, settings, self.retirements)
        return Launched(job, created, notes + prepared.report.warnings)
