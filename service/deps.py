"""Request-scoped access to the resources the lifespan owns: one accessor and alias each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from formwork.assembly import Core
from formwork.auth import Keys
from formwork.batches import BatchJobs
from formwork.candidates import Candidates
from formwork.config import Scope, Settings
from formwork.guard import Guard
from formwork.metrics import Metrics
from formwork.protocol import TASK_NAME
from formwork.providers import Providers
from formwork.registry import Registry
from formwork.runner import Runner
from formwork.store import Store
from formwork.validation import Validators
from training.assembly import Services
from training.compilations import Compilations
from training.jobs import JobManager
from training.launcher import Launcher


@dataclass(frozen=True, slots=True)
class AppState:
    """What the lifespan opened, and the keys that guard it."""

    settings: Settings
    services: Services
    keys: Keys


def _state(request: Request) -> AppState:
    found: AppState = request.app.state.formwork
    return found


async def get_core(request: Request) -> Core:
    return _state(request).services.core


def validators_of(request: Request) -> Validators:
    """The validators and their worker processes (also used outside dependencies)."""
    return _state(request).services.core.validators


async def get_registry(request: Request) -> Registry:
    return _state(request).services.core.registry


async def get_runner(request: Request) -> Runner:
    return _state(request).services.core.runner


async def get_metrics(request: Request) -> Metrics:
    return _state(request).services.core.metrics


async def get_guard(request: Request) -> Guard:
    return _state(request).services.core.guard


async def get_store(request: Request) -> Store:
    return _state(request).services.core.store


async def get_providers(request: Request) -> Providers:
    return _state(request).services.core.providers


async def get_launcher(request: Request) -> Launcher:
    return _state(request).services.launcher


async def get_jobs(request: Request) -> JobManager:
    return _state(request).services.jobs


async def get_compilations(request: Request) -> Compilations:
    return _state(request).services.compilations


async def get_batches(request: Request) -> BatchJobs:
    return _state(request).services.core.batches


async def get_candidates(request: Request) -> Candidates:
    return _state(request).services.core.candidates


async def get_settings(request: Request) -> Settings:
    return _state(request).settings


async def get_keys(request: Request) -> Keys:
    return _state(request).keys


CoreDep = Annotated[Core, Depends(get_core)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
KeysDep = Annotated[Keys, Depends(get_keys)]
RunnerDep = Annotated[Runner, Depends(get_runner)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
StoreDep = Annotated[Store, Depends(get_store)]
GuardDep = Annotated[Guard, Depends(get_guard)]
ProvidersDep = Annotated[Providers, Depends(get_providers)]
LauncherDep = Annotated[Launcher, Depends(get_launcher)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
CompilationsDep = Annotated[Compilations, Depends(get_compilations)]
BatchesDep = Annotated[BatchJobs, Depends(get_batches)]
CandidatesDep = Annotated[Candidates, Depends(get_candidates)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
TaskName = Annotated[str, Path(pattern=TASK_NAME, description="Task slug.")]


BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key (`formwork keys new`) with the operation's scope: run, read or admin.",
)


def require(scope: Scope) -> Callable[..., Awaitable[str | None]]:
    """A dependency that lets the request through when its key has ``scope``."""

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> str | None:
        given = f"Bearer {credentials.credentials}" if credentials else None
        return _state(request).keys.check(given, scope)

    return check


CanRun = Depends(require("run"))
CanRead = Depends(require("read"))
IsAdmin = Depends(require("admin"))
