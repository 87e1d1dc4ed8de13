"""The compiles a server drives in the background (``POST /v1/tasks/{task}/compile``).

Each runs as a task of this process, kept referenced and cancelled at shutdown (its record then
says ``stopped``, and posting the compile again resumes it). Any replica answers for any compile
from its record in Redis; a cancel is a flag there that the driving process reads before each
step and while it follows the fine-tune, and the fine-tune job itself is cancelled at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from formwork.assembly import Core, unrecorded_runner
from formwork.errors import FormworkError
from formwork.protocol import CompileJob, CompileRequest, Route, TaskVersion

from .compiler import Compilation, Compiler, Evaluate
from .compiles import CompileBusy, CompileStore
from .dataset import Row
from .evaluation import Comparison, Evaluator
from .jobs import JobManager

log = logging.getLogger(__name__)


def served_evaluate(core: Core) -> Evaluate:
    """Evaluation on the server's own providers and model, kept out of the task's stats."""

    async def evaluate(
        task: TaskVersion,
        route: Route,
        rows: list[Row],
        concurrency: int,
        tick: Callable[[], None],
    ) -> Comparison:
        evaluator = Evaluator(unrecorded_runner(core), concurrency=concurrency, on_case=tick)
        return await evaluator.compare(task, route, rows)

    return evaluate


class Compilations:
    def __init__(
        self, compiler: Callable[[], Compiler], store: CompileStore, jobs: JobManager
    ) -> None:
        self._compiler = compiler  # one per run: a run keeps its own progress state
        self.store = store
        self._jobs = jobs
        self._running: dict[str, asyncio.Task[None]] = {}

    async def start(self, task: str, request: CompileRequest) -> tuple[CompileJob, bool]:
        """Start (or resume) the compile: (its record, True); or the one already running
        elsewhere: (its record, False)."""
        compiler = self._compiler()
        compilation = await compiler.prepare(task, request)
        job = compilation.job
        if job.id in self._running or await self.store.holder(job.id) is not None:
            return (await self.store.find(job.id)) or job, False
        job.status = "running"
        await self.store.save(job)  # readable at once, from any replica
        self._running[job.id] = asyncio.create_task(self._drive(compiler, compilation))
        return job.model_copy(deep=True), True

    async def get(self, compile_id: str) -> CompileJob:
        """The record, with its fine-tune brought up to date while that runs."""
        job = await self.store.get(compile_id)
        if job.finetune is not None and not job.finetune.final:
            with contextlib.suppress(FormworkError):
                job.finetune = await self._jobs.refresh(job.finetune.id)
        return job

    async def latest(self, task: str) -> CompileJob | None:
        job = await self.store.latest(task)
        return None if job is None else await self.get(job.id)

    async def cancel(self, compile_id: str) -> CompileJob:
        job = await self.store.get(compile_id)
        await self.store.request_cancel(compile_id)
        finetune = job.finetune
        if finetune is not None and not finetune.final:
            finetune = await self._jobs.cancel(finetune.id)
        work = self._running.get(compile_id)
        if work is None:  # driven elsewhere (it reads the flag), or stopped
            job.finetune = finetune
            if job.status == "stopped":
                job.status = "cancelled"
                await self.store.save(job)
            return job
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        job = await self.store.get(compile_id)
        job.status, job.finetune = "cancelled", finetune
        await self.store.save(job)
        return job

    async def _drive(self, compiler: Compiler, compilation: Compilation) -> None:
        job = compilation.job
        try:
            await compiler.run(compilation)
        except CompileBusy:
            log.info("compile %s: already driven by another process", job.id)
        except FormworkError as e:
            log.info("compile %s of %s failed: %s", job.id, job.task, e.detail)
        except Exception:
            log.exception("compile %s of %s failed", job.id, job.task)
        finally:
            self._running.pop(job.id, None)

    async def aclose(self) -> None:
        for work in list(self._running.values()):
            work.cancel()
        for work in list(self._running.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await work
