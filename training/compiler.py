"""``compile``: from a task to a promoted fine-tune in one resumable run.

The steps, in order: ``dataset`` (gather the rows, hold out the test rows, split and render),
``checks``, ``finetune`` (start or reuse the job, follow it), ``eval`` (the candidate against the
task's current route on the held-out rows), ``shadow`` (a seam: ``Compiler(shadow=…)`` takes a
step that puts the candidate on live traffic and waits for its rule's decision; without one it
is skipped) and ``promote`` (from the evaluation the ``eval`` step made, never run again).

A compile is named by its inputs: the task version it starts from, the data, the held-out rows,
the model and the knobs (``Compilation.job.id``). Its record in Redis (``training.compiles``)
says which steps are done, so running the same compile again resumes at the first step not
done; a step is done again only when its result is missing. The fine-tune is the job
``JobManager`` already has for the same data and knobs (running or finished, from any run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from formwork.digests import digest
from formwork.errors import FormworkError, InvalidInput
from formwork.metrics import Metrics
from formwork.protocol import (
    COMPILE_STEPS,
    CompileJob,
    CompileRequest,
    CompileStep,
    Hyperparameters,
    Route,
    RouteScore,
    TaskVersion,
)
from formwork.registry import Registry

from .adapters import local_epochs
from .compiles import CompileBusy, CompileStore, new_owner
from .dataset import Row, input_key, split
from .evaluation import Comparison, RouteReport
from .jobs import RETRYABLE_STATUSES, JobManager, JobNotFound
from .launcher import DatasetBuilder, Prepared, gather_rows
from .promotion import promote

log = logging.getLogger(__name__)

DEFAULT_BASE_MODELS = {"openai": "gpt-4o-mini-2024-07-18", "local": "smollm2-135m"}
SAVE_EVERY_S = 2.0  # progress is written at most this often; step changes at once
LOCAL_POLL_S = 2.0  # a local job's state is a file: polled more often than a provider's API

# (the base task version, the candidate route, the held-out rows, cases in flight, a tick a case)
Evaluate = Callable[[TaskVersion, Route, list[Row], int, Callable[[], None]], Awaitable[Comparison]]
OnChange = Callable[[CompileJob], None]


class FinetuneFailed(FormworkError):
    status, slug, title = 502, "finetune-failed", "Fine-tune failed"


class _Cancelled(Exception):
    """A cancel was asked for (``CompileStore.request_cancel``)."""


@dataclass(frozen=True, slots=True)
class Skip:
    """A step's answer when it has nothing to do here."""

    detail: str


@dataclass
class Compilation:
    """One compile ready to run: its record and everything its steps need."""

    job: CompileJob
    base: TaskVersion  # the version the candidate is measured against
    prepared: Prepared
    test: list[Row]
    test_label: str
    hyperparameters: Hyperparameters
    request: CompileRequest
    notes: list[str] = field(default_factory=list)

    def step(self, name: str) -> CompileStep:
        return next(s for s in self.job.steps if s.name == name)


Step = Callable[[Compilation], Awaitable[str | Skip]]


async def no_shadow(compilation: Compilation) -> Skip:
    return Skip("no shadow rule here: the held-out evaluation decides")


def score(report: RouteReport) -> RouteScore:
    return RouteScore(
        model=report.route.model,
        valid_rate=report.valid_rate,
        first_attempt_valid_rate=report.first_attempt_valid_rate,
        exact_match=report.exact_match,
        field_accuracy=report.field_accuracy,
        prompt_tokens=report.prompt_tokens,
        latency_ms_p50=report.latency_ms_p50,
    )


def given_rows(request: CompileRequest) -> list[Row] | None:
    if request.test is None:
        return None
    return [Row(e.input, e.output, f"test[{i}]") for i, e in enumerate(request.test)]


class Compiler:
    """Runs compiles; ``evaluate`` runs the held-out rows (with the CLI's or the server's model)."""

    def __init__(
        self,
        *,
        registry: Registry,
        jobs: JobManager,
        builder: DatasetBuilder,
        metrics: Metrics,
        store: CompileStore,
        evaluate: Evaluate,
        poll_s: float = 2.0,
        shadow: Step = no_shadow,
    ) -> None:
        self.registry = registry
        self.jobs = jobs
        self.builder = builder
        self.metrics = metrics
        self.store = store
        self.evaluate = evaluate
        self.poll_s = poll_s
        self.steps: list[tuple[str, Step]] = [
            ("dataset", self._dataset),
            ("checks", self._checks),
            ("finetune", self._finetune),
            ("eval", self._eval),
            ("shadow", shadow),
            ("promote", self._promote),
        ]
        self._lock = asyncio.Lock()
        self._saved_at = 0.0
        self._on_change: OnChange | None = None

    # -- planning ---------------------------------------------------------------------------

    async def prepare(
        self,
        task: str,
        request: CompileRequest,
        *,
        files: list[Path] | None = None,
        test: list[Row] | None = None,
        test_label: str = "",
    ) -> Compilation:
        """Gather and split the data and find the compile these inputs name (or a new one)."""
        current = await self.registry.get(task)
        self.jobs.finetuner(request.provider)  # an unknown provider fails before any work
        base_model = request.base_model or DEFAULT_BASE_MODELS.get(request.provider)
        if base_model is None:
            raise InvalidInput(
                f"give a base model for provider {request.provider!r}",
                errors=[{"path": "$.base_model", "message": "no default for this provider"}],
            )
        settings = self.builder.settings
        seed = settings.seed if request.seed is None else request.seed
        rows = await gather_rows(
            task,
            current,
            request.source,
            files=files,
            metrics=self.metrics,
            harvest_limit=settings.harvest_limit,
        )
        notes: list[str] = []
        test = test if test is not None else given_rows(request)
        if test is None:
            train_rows, test = split(rows, fraction=request.test_fraction, seed=seed)
            test_label = f"seeded split of {len(rows)} rows (seed {seed})"
        else:
            held = {input_key(row.input) for row in test}
            train_rows = [row for row in rows if input_key(row.input) not in held]
            if dropped := len(rows) - len(train_rows):
                notes.append(f"{dropped} row(s) left out of training: their input is a test row")
            test_label = test_label or f"{len(test)} given rows"
        if not test:
            raise InvalidInput(
                "no held-out rows to evaluate on",
                errors=[{"path": "$.test", "message": "give test rows or more data to split"}],
            )
        prepared = await asyncio.to_thread(
            self.builder.prepare,
            task,
            current,
            train_rows,
            base_model=base_model,
            fraction=request.validation_fraction or 0.0,  # the held-out eval judges
            seed=request.seed,
        )
        knobs = request.hyperparameters
        if request.provider == "local" and knobs.n_epochs is None:
            knobs = knobs.model_copy(update={"n_epochs": local_epochs(len(prepared.dataset.train))})
        data = prepared.dataset.digest()
        inputs = digest(
            {
                "task": task,
                "data": data,
                "test": [[row.input, row.output] for row in test],
                "provider": request.provider,
                "base_model": base_model,
                "hyperparameters": knobs.given(),
                "candidate": request.candidate.model_dump(mode="json"),
            }
        )
        job, base = await self._record(task, current, inputs)
        if job is None:
            now = time.time()
            job = CompileJob(
                id=f"cmp-{digest({'inputs': inputs, 'base': current.digest})[:16]}",
                task=task,
                status="stopped",
                steps=[CompileStep(name=name) for name in COMPILE_STEPS],
                created_at=now,
                updated_at=now,
                base_version=current.version,
                inputs_digest=inputs,
                provider=request.provider,
                base_model=base_model,
                hyperparameters=knobs.given(),
            )
        job.dataset_hash = data
        job.train_examples = len(prepared.dataset.train)
        job.validation_examples = len(prepared.dataset.validation)
        job.test_examples = len(test)
        return Compilation(job, base, prepared, test, test_label, knobs, request, notes)

    async def _record(
        self, task: str, current: TaskVersion, inputs: str
    ) -> tuple[CompileJob | None, TaskVersion]:
        """The compile these inputs already have on this version, or the one whose promotion
        made the current version (it is done); None when there is none."""
        found = await self.store.find(
            f"cmp-{digest({'inputs': inputs, 'base': current.digest})[:16]}"
        )
        if found is not None:
            return found, current
        latest = await self.store.latest(task)
        if (
            latest is not None
            and latest.inputs_digest == inputs
            and latest.promoted
            and latest.version == current.version
        ):
            return latest, await self.registry.version(task, latest.base_version)
        return None, current

    # -- running ----------------------------------------------------------------------------

    async def run(self, c: Compilation, *, on_change: OnChange | None = None) -> CompileJob:
        """Run the steps not done yet. Raises CompileBusy when another process drives it."""
        job = c.job
        owner = new_owner()
        holder = await self.store.acquire(job.id, owner)
        if holder is not None:
            raise CompileBusy(
                f"compile {job.id} of {job.task} is running in {holder}",
                compile=job.id,
            )
        self._on_change = on_change
        await self.store.clear_cancel(job.id)
        job.status, job.error = "running", None
        keeper = asyncio.create_task(self._keep(c, owner))
        try:
            await self._steps(c)
            job.status, job.step = "succeeded", None
        except asyncio.CancelledError:
            self._stopped(c, "stopped")
            raise
        except _Cancelled:
            self._stopped(c, "cancelled")
        except FormworkError as e:
            self._failed(c, f"{e.title}: {e.detail}")
            raise
        except Exception:
            self._failed(c, "an internal error; see the log")
            raise
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await self._finish(job, owner)
        return job

    async def _steps(self, c: Compilation) -> None:
        for name, run_step in self.steps:
            step = c.step(name)
            if await self.store.cancel_requested(c.job.id):
                raise _Cancelled
            if step.status in ("done", "skipped") and await self._still_done(c, name):
                step.reused = True
                continue
            step.status, step.reused, step.detail = "running", False, ""
            step.started_at, step.ended_at = time.time(), None
            c.job.step = name
            await self._changed(c, save=True)
            result = await run_step(c)
            step.status = "skipped" if isinstance(result, Skip) else "done"
            step.detail = result.detail if isinstance(result, Skip) else result
            step.ended_at = time.time()
            await self._changed(c, save=True)

    async def _still_done(self, c: Compilation, name: str) -> bool:
        """A step done before is done still when its result is there."""
        job = c.job
        if name == "finetune":
            return job.finetune is not None and job.finetune.status == "succeeded"
        if name == "eval":
            return await self.store.evaluation(job.id) is not None
        if name == "promote":
            return job.promoted is True or (job.promoted is False and not c.request.force)
        return True

    def _stopped(self, c: Compilation, status: str) -> None:
        job = c.job
        job.status = "cancelled" if status == "cancelled" else "stopped"
        if job.step is not None and c.step(job.step).status == "running":
            c.step(job.step).status = "pending"

    def _failed(self, c: Compilation, error: str) -> None:
        job = c.job
        job.status, job.error = "failed", error
        if job.step is not None:
            c.step(job.step).status = "failed"
            c.step(job.step).ended_at = time.time()

    async def _finish(self, job: CompileJob, owner: str) -> None:
        try:
            await self._save(job)
            await self.store.release(job.id, owner)
        except FormworkError:
            log.warning("compile %s: its last state could not be written", job.id)
        if self._on_change is not None:
            self._on_change(job)

    async def _keep(self, c: Compilation, owner: str) -> None:
        """Renew the lease and write progress while the steps run."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(SAVE_EVERY_S)
            try:
                if time.monotonic() - renewed >= 10.0:
                    await self.store.renew(c.job.id, owner)
                    renewed = time.monotonic()
                if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
                    await self._save(c.job)
            except FormworkError:
                log.warning("compile %s: Redis unavailable; progress not written", c.job.id)

    async def _changed(self, c: Compilation, *, save: bool = False) -> None:
        c.job.updated_at = time.time()
        if self._on_change is not None:
            self._on_change(c.job)
        if save:
            await self._save(c.job)

    def _ticked(self, c: Compilation) -> None:
        c.job.updated_at = time.time()
        if self._on_change is not None:
            self._on_change(c.job)

    async def _save(self, job: CompileJob) -> None:
        async with self._lock:
            self._saved_at = time.monotonic()
            await self.store.save(job.model_copy(deep=True))

    # -- the steps --------------------------------------------------------------------------

    async def _dataset(self, c: Compilation) -> str:
        job = c.job
        detail = (
            f"{job.train_examples} train + {job.validation_examples} validation rows, "
            f"{job.test_examples} held out ({c.test_label})"
        )
        return "; ".join([detail, *c.notes])

    async def _checks(self, c: Compilation) -> str:
        report = c.prepared.report
        report.raise_for_errors()
        warnings = [f"{p.check}: {p.message}" for p in report.warnings]
        return f"passed, {len(warnings)} warning(s)" + (
            ": " + "; ".join(warnings) if warnings else ""
        )

    async def _finetune(self, c: Compilation) -> str:
        job = c.job
        found = None
        if job.finetune is not None:
            with contextlib.suppress(JobNotFound):
                found = await self.jobs.refresh(job.finetune.id)
        if found is None or found.status in RETRYABLE_STATUSES:
            folder = self.builder.settings.data_dir / job.task
            stored = await asyncio.to_thread(c.prepared.dataset.write, folder)
            found, _ = await self.jobs.start(
                stored,
                provider=job.provider,
                base_model=job.base_model,
                hyperparameters=c.hyperparameters,
            )
        job.finetune = found
        await self._changed(c, save=True)
        poll_s = min(self.poll_s, LOCAL_POLL_S) if job.provider == "local" else self.poll_s
        while not found.final:
            await asyncio.sleep(poll_s)
            if await self.store.cancel_requested(job.id):
                job.finetune = await self.jobs.cancel(found.id)
                raise _Cancelled
            found = job.finetune = await self.jobs.refresh(found.id)
            await self._changed(c)
        if found.status != "succeeded" or found.model is None:
            raise FinetuneFailed(f"fine-tune {found.id} {found.status}: {found.error or '-'}")
        return f"{found.id}: {found.model}"

    async def _eval(self, c: Compilation) -> str:
        job = c.job
        assert job.finetune is not None
        assert job.finetune.model is not None
        options = c.request.candidate
        route = Route(
            model=job.finetune.model,
            prompt=options.prompt,
            constrained=options.constrained,
            max_attempts=options.max_attempts,
            timeout_s=options.timeout_s,
        )
        job.eval_done, job.eval_total = 0, 2 * len(c.test)

        def tick() -> None:
            job.eval_done += 1
            self._ticked(c)

        comparison = await self.evaluate(c.base, route, c.test, c.request.concurrency, tick)
        comparison = comparison.model_copy(update={"test": c.test_label})
        await self.store.save_evaluation(job.id, comparison.model_dump_json())
        job.candidate, job.current = score(comparison.candidate), score(comparison.current)
        return (
            f"{len(c.test)} cases: valid {job.candidate.valid_rate:.1%} vs "
            f"{job.current.valid_rate:.1%}, fields {job.candidate.field_accuracy:.1%} vs "
            f"{job.current.field_accuracy:.1%}, prompt tokens {job.candidate.prompt_tokens:.0f} "
            f"vs {job.current.prompt_tokens:.0f} (candidate vs current)"
        )

    async def _promote(self, c: Compilation) -> str:
        job = c.job
        blob = await self.store.evaluation(job.id)
        if blob is None:
            raise InvalidInput(
                f"compile {job.id} has no evaluation to promote on",
                errors=[{"path": "$.eval", "message": "run the eval step again"}],
            )
        decision = await promote(
            self.registry, Comparison.model_validate_json(blob), force=c.request.force
        )
        job.promoted, job.version, job.reason = decision.promoted, decision.version, decision.reason
        if decision.promoted:
            return f"version {decision.version} routes first to {decision.routes[0].model}"
        return f"not promoted: {decision.reason}"
