"""``compile``: from a task to a promoted fine-tune in one resumable run.

The steps, in order: ``dataset`` (gather the rows, hold out the test rows, split and render),
``checks``, ``finetune`` (start or reuse the job, follow it), ``eval`` (the candidate against the
task's current route on the held-out rows), ``shadow`` and ``promote``.

Without ``request.shadow`` the held-out evaluation decides: ``shadow`` is skipped and ``promote``
judges the evaluation the ``eval`` step made (never run again). With it, a candidate the held-out
evaluation does not find worse goes on live traffic: ``shadow`` registers it as the task's
candidate (a new version, compare-and-set on the evaluated one, recorded in the task's
decisions) and waits, reading the live figures the serving replicas write, until the rule is met
(then whoever sees it first, a replica or this step, promotes it, once) or ``wait_s`` runs out
(the compile fails; the candidate stays, and running the compile again waits on). ``promote``
then reports the promotion the rule made.

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

from pydantic import JsonValue

from formwork import keys
from formwork.agreement import field_scores
from formwork.candidates import FIELDS_SCORED, Candidates
from formwork.digests import digest
from formwork.errors import FormworkError, InvalidInput
from formwork.metrics import Metrics
from formwork.protocol import (
    COMPILE_STEPS,
    Candidate,
    CompileJob,
    CompileRequest,
    CompileShadow,
    CompileStep,
    Hyperparameters,
    PromotionRule,
    RolloutDecision,
    Route,
    RouteScore,
    TaskVersion,
)
from formwork.registry import Registry
from formwork.rollout import journal, spec_of

from .adapters import local_epochs
from .compiles import CompileBusy, CompileStore, new_owner
from .dataset import Row, input_key, split
from .evaluation import Comparison, RouteReport
from .jobs import RETRYABLE_STATUSES, JobManager, JobNotFound
from .launcher import DatasetBuilder, Prepared, gather_rows
from .promotion import judge, promote

log = logging.getLogger(__name__)

DEFAULT_BASE_MODELS = {"openai": "gpt-4o-mini-2024-07-18", "local": "smollm2-135m"}
SAVE_EVERY_S = 2.0  # progress is written at most this often; step changes at once
LOCAL_POLL_S = 2.0  # a local job's state is a file: polled more often than a provider's API

# (the base task version, the candidate route, the held-out rows, cases in flight, a tick a case)
Evaluate = Callable[[TaskVersion, Route, list[Row], int, Callable[[], None]], Awaitable[Comparison]]
OnChange = Callable[[CompileJob], None]


class FinetuneFailed(FormworkError):
    status, slug, title = 502, "finetune-failed", "Fine-tune failed"


class TaskMoved(FormworkError):
    status, slug, title = 409, "task-moved", "Task changed under the compile"


class ShadowUndecided(FormworkError):
    status, slug, title = 504, "shadow-undecided", "Live traffic did not decide in time"


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


def held_out_agreement(comparison: Comparison) -> float | None:
    """The fine-tune's field agreement with the current route on the held-out rows, counted as
    live comparisons count it (``formwork.candidates``): over the rows the current route
    answered validly, the share of its top-level field values the fine-tune gave too."""
    seen = agreed = 0
    cases = zip(comparison.candidate.results, comparison.current.results, strict=True)
    for candidate, current in cases:
        if not current.valid:
            continue
        scores = field_scores(current.output, candidate.output, valid=candidate.valid)
        for name in sorted(scores)[:FIELDS_SCORED]:
            seen += 1
            agreed += int(scores[name])
    return agreed / seen if seen else None


def live_rule(comparison: Comparison, options: CompileShadow) -> PromotionRule:
    """The shadow's rule: the given one, its field agreement bound derived from the held-out
    rows unless ``agreement_margin`` is None."""
    held = held_out_agreement(comparison)
    if options.agreement_margin is None or held is None:
        return options.rule
    bound = round(max(0.0, held - options.agreement_margin), 4)
    return options.rule.model_copy(update={"min_field_agreement": bound})


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
        candidates: Candidates,
        poll_s: float = 2.0,
    ) -> None:
        self.registry = registry
        self.candidates = candidates
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
            ("shadow", self._shadow),
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
        named: dict[str, JsonValue] = {
            "task": task,
            "data": data,
            "test": [[row.input, row.output] for row in test],
            "provider": request.provider,
            "base_model": base_model,
            "hyperparameters": knobs.given(),
            "candidate": request.candidate.model_dump(mode="json"),
        }
        if request.shadow is not None:
            named["shadow"] = request.shadow.model_dump(mode="json")
        inputs = digest(named)
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
        """The compile these inputs already have on this version, or the one whose candidate
        (shadow step) or promotion made the current version; None when there is none."""
        found = await self.store.find(
            f"cmp-{digest({'inputs': inputs, 'base': current.digest})[:16]}"
        )
        if found is not None:
            return found, current
        latest = await self.store.latest(task)
        if (
            latest is not None
            and latest.inputs_digest == inputs
            and current.version in (latest.version, latest.shadow_version)
            and (latest.promoted or latest.version is None)
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

    async def _comparison(self, c: Compilation) -> Comparison:
        blob = await self.store.evaluation(c.job.id)
        if blob is None:
            raise InvalidInput(
                f"compile {c.job.id} has no evaluation to promote on",
                errors=[{"path": "$.eval", "message": "run the eval step again"}],
            )
        return Comparison.model_validate_json(blob)

    async def _shadow(self, c: Compilation) -> str | Skip:
        options = c.request.shadow
        if options is None:
            return Skip("no shadow asked for: the held-out evaluation decides")
        job = c.job
        comparison = await self._comparison(c)
        better, reason = judge(comparison)
        if not better and not c.request.force:
            return Skip(f"not put on live traffic: the held-out evaluation is {reason}")
        if job.shadow_version is None:
            rule = live_rule(comparison, options)
            job.shadow_version = await self._put_candidate(c, comparison.candidate.route, rule)
            await self._changed(c, save=True)
        deadline = time.monotonic() + options.wait_s
        while True:
            task = await self.registry.get(job.task)
            if task.version != job.shadow_version:
                return await self._decided(c, task)
            report = await self.candidates.report(task)
            job.live = report.figures
            if not report.unmet and report.figures is not None:
                # the rule is met: promote unless a replica does first (compare-and-set)
                await self.candidates.rollout.promote(task, report.figures)
                continue
            await self._changed(c)
            if time.monotonic() >= deadline:
                raise ShadowUndecided(
                    f"after {options.wait_s:g} s the rule still waits for: "
                    f"{'; '.join(report.unmet)}. The fine-tune stays the candidate of version "
                    f"{job.shadow_version}; run the compile again to wait on",
                )
            if await self.store.cancel_requested(job.id):
                raise _Cancelled
            await asyncio.sleep(self.poll_s)

    async def _put_candidate(self, c: Compilation, route: Route, rule: PromotionRule) -> int:
        """Register the evaluated version again with the fine-tune as its candidate."""
        job = c.job
        options = c.request.shadow
        assert options is not None
        task = await self.registry.get(job.task)
        candidate = Candidate(
            route=route,
            mode=options.mode,
            share=options.share,
            max_concurrency=options.max_concurrency,
            rule=rule,
        )
        spec = spec_of(task).model_copy(update={"candidate": candidate})
        made = RolloutDecision(
            at=time.time(),
            task=job.task,
            action="candidate",
            model=route.model,
            from_version=task.version,
            version=None,
            reason=f"compile {job.id} put its fine-tune on live traffic ({options.mode}, "
            f"{options.share:.0%} of requests) after the held-out evaluation; the rule "
            f"wants {rule.min_comparisons} comparisons and field agreement "
            f"{rule.min_field_agreement:.1%}",
            routes=task.routes,
            rule=rule,
        )
        version = None
        if task.version == job.base_version:
            version = await self.registry.put_if(
                job.task, spec, current=task.version, journal=journal(made)
            )
        if version is None:
            raise TaskMoved(
                f"task {job.task} is no longer at version {job.base_version}, which was "
                "evaluated; compile again"
            )
        return version

    async def _decided(self, c: Compilation, task: TaskVersion) -> str:
        """The task left the candidate's version: find the promotion its rule made."""
        job = c.job
        made: RolloutDecision | None = None
        for decision in await self.candidates.rollout.decisions(job.task, keys.DECISIONS_KEPT):
            if decision.action == "promoted" and decision.from_version == job.shadow_version:
                made = decision
                break
        if made is None or made.version is None:
            raise TaskMoved(
                f"task {job.task} moved from version {job.shadow_version} to {task.version} "
                "while its candidate was on live traffic, not by the candidate's rule"
            )
        job.promoted, job.version, job.reason = True, made.version, made.reason
        job.live = made.figures or job.live
        return f"the rule promoted it: version {made.version} ({made.reason})"

    async def _promote(self, c: Compilation) -> str:
        job = c.job
        if c.request.shadow is not None and c.step("shadow").status == "done":
            if not job.promoted or job.version is None:  # the shadow step ends promoted
                raise TaskMoved(f"compile {job.id}: its shadow step made no promotion")
            model = job.finetune.model if job.finetune is not None else "the fine-tune"
            return f"version {job.version} routes first to {model} (promoted on live traffic)"
        decision = await promote(self.registry, await self._comparison(c), force=c.request.force)
        job.promoted, job.version, job.reason = decision.promoted, decision.version, decision.reason
        if decision.promoted:
            return f"version {decision.version} routes first to {decision.routes[0].model}"
        return f"not promoted: {decision.reason}"
