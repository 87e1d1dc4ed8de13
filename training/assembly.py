"""The whole graph: the core (``formwork.assembly``) and, on the same exit stack, the fine-tune
jobs, their launcher and the compiles. The app's lifespan and the training CLI open it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from formwork.assembly import Core, open_core
from formwork.config import Settings
from formwork.providers.base import Provider

from .compilations import Compilations, served_evaluate
from .compiler import Compiler, Evaluate
from .compiles import CompileStore
from .finetuners import build_finetuners
from .jobs import JobManager
from .launcher import DatasetBuilder, Launcher


@dataclass(frozen=True, slots=True)
class Services:
    core: Core
    jobs: JobManager
    launcher: Launcher
    compilations: Compilations

    def compiler(self, evaluate: Evaluate) -> Compiler:
        """A compiler on these services whose held-out evaluation runs through ``evaluate``."""
        core = self.core
        return Compiler(
            registry=core.registry,
            jobs=self.jobs,
            builder=self.launcher.builder,
            metrics=core.metrics,
            store=self.compilations.store,
            evaluate=evaluate,
            candidates=core.candidates,
            poll_s=core.settings.training.poll_interval_s,
        )


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    local: Provider | Literal["load", "skip"] = "load",
    background: bool = False,
) -> AsyncIterator[Services]:
    """The core, then the jobs on every fine-tuner that can run here; closed in reverse."""
    async with AsyncExitStack() as stack:
        core = await stack.enter_async_context(
            open_core(settings, local=local, background=background)
        )
        jobs = JobManager(core.store, build_finetuners(settings))
        stack.push_async_callback(jobs.aclose)
        builder = DatasetBuilder(settings.training, core.validators)
        launcher = Launcher(builder, core.metrics, jobs, retirements=core.guard.retirements)
        services: Services

        def compiler() -> Compiler:
            return services.compiler(served_evaluate(core))

        compilations = Compilations(compiler, CompileStore(core.store), jobs)
        stack.push_async_callback(compilations.aclose)
        services = Services(core, jobs, launcher, compilations)
        yield services
