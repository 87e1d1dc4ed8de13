"""One assembly of the core object graph, for the app, the CLI and evaluation alike.

``open_core(settings)`` opens every resource in order (Redis, the embedded model, providers,
registry, metrics, runner) on one ``AsyncExitStack`` and closes them in reverse, also when
start-up fails half-way. With ``background=True`` (the server) it also keeps shipped tasks
registered and flushes metrics until it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from .batches import BatchJobs
from .cache import Cache
from .candidates import Candidates
from .config import LOCAL_PROVIDER, Settings
from .errors import Unavailable
from .flight import SingleFlight
from .guard import Guard
from .metrics import Metrics
from .prices import Prices
from .protocol import TaskFile
from .providers import Providers
from .providers.base import Provider
from .registry import Registry, read_task_files
from .retirement import Retirements
from .rollout import Rollout
from .runner import Runner
from .store import Store
from .validation import Validators

log = logging.getLogger(__name__)
NO_FLUSH_S = 365 * 86400.0  # metrics that are never flushed (evaluation stays out of stats)
CANCEL_AGAIN_S = 0.5  # a background task still running this long after a cancel gets another


@dataclass(frozen=True, slots=True)
class Core:
    settings: Settings
    store: Store
    validators: Validators
    providers: Providers
    registry: Registry
    cache: Cache
    metrics: Metrics
    runner: Runner
    batches: BatchJobs
    candidates: Candidates
    guard: Guard


async def start_local(settings: Settings) -> tuple[Provider | None, str | None]:
    """The embedded model, loading in the background (runs wait for it within their deadline);
    or None and why it is unavailable (None when disabled)."""
    if not settings.local.enabled:
        return None, None
    from .providers import local

    reason = local.unavailable()
    if reason is None:
        provider = local.LocalProvider(settings.local)
        provider.start()
        return provider, None
    log.warning("embedded model unavailable: %s", reason)
    return None, reason


async def keep_registered(registry: Registry, files: list[TaskFile], check_s: float) -> None:
    """Apply shipped task files, retrying until Redis answers (serving them from memory
    meanwhile); then, every ``check_s``, re-publish what Redis lost if it comes back empty."""
    registry.ship(files)
    said = False  # the log says a state once, and again when it changes
    while True:
        try:
            await registry.republish()
            break
        except Unavailable:
            registry.seed(files)
            if not said:
                log.warning("redis unreachable: shipped tasks served from memory until it returns")
                said = True
            await asyncio.sleep(check_s)
    said = False
    while True:
        await asyncio.sleep(check_s)
        try:
            if await registry.lost():
                restored = await registry.republish()
                log.warning("redis had lost its data: %d tasks re-published", restored)
            said = False
        except Unavailable:
            if not said:
                log.warning(
                    "redis unreachable: tasks served from this replica's copies until it returns"
                )
                said = True


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` until it ends: a cancellation that lands in a call with a timeout of its
    own (Redis, HTTP) can come back as that timeout, handled, and the loop would go on."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=CANCEL_AGAIN_S)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _in_background(stack: AsyncExitStack, work: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        await work()

    stack.push_async_callback(_cancelled, asyncio.create_task(run()))


@asynccontextmanager
async def open_core(
    settings: Settings,
    *,
    local: Provider | Literal["load", "skip"] = "load",
    record: bool = True,
    background: bool = False,
) -> AsyncIterator[Core]:
    """The core graph. ``local``: load the embedded model, skip it, or use one already loaded
    (the caller keeps it: it is not closed here). ``record=False`` keeps runs out of the stats."""
    async with AsyncExitStack() as stack:
        store = Store.from_settings(settings)
        stack.push_async_callback(store.aclose)
        validators = Validators(limits=settings.limits)
        stack.callback(validators.close)
        unavailable: dict[str, str] = {}
        embedded: Provider | None = None
        if local == "load":
            embedded, reason = await start_local(settings)
            if embedded is not None:
                stack.push_async_callback(embedded.aclose)
            elif reason is not None:
                unavailable[LOCAL_PROVIDER] = reason
        elif local != "skip":
            embedded = local
        providers = Providers.from_settings(settings, local=embedded, unavailable=unavailable)
        stack.push_async_callback(providers.aclose)
        retirements = Retirements(
            settings.retirements,
            warning_days=settings.retirement_warning_days,
            openai_provider=settings.training.openai_provider,
        )
        registry = Registry(
            store,
            validators,
            refresh_s=settings.registry_refresh_s,
            warn=lambda spec: providers.warnings(spec) + retirements.warnings(spec),
        )
        cache = Cache(store)
        metrics = Metrics(
            store,
            flush_s=settings.metrics_flush_s if record else NO_FLUSH_S,
            failures_kept=settings.failures_kept,
            request_log_kept=settings.request_log_kept if record else 0,
            prices=Prices(settings.training.prices),
        )
        if record:
            stack.push_async_callback(metrics.flush)
        guard = Guard(
            registry,
            metrics,
            retirements,
            refresh_s=settings.format_budget_refresh_s,
            shutdowns=providers.shutdowns if settings.retirement_check_s else None,
            shutdowns_every_s=settings.retirement_check_s or 3600.0,
        )
        rollout = Rollout(store, registry, default_route=providers.default_route)
        seed = settings.candidate_seed
        sample = random.random if seed is None else random.Random(seed).random
        candidates = Candidates(store, rollout, random=sample)
        stack.push_async_callback(candidates.aclose)
        runner = _runner(
            settings,
            store,
            registry,
            providers,
            cache,
            metrics,
            validators,
            guard,
            candidates=candidates if background else None,  # on a server's live traffic only
        )
        batches = BatchJobs(store, runner, concurrency=settings.batch_concurrency)
        stack.push_async_callback(batches.aclose)
        core = Core(
            settings,
            store,
            validators,
            providers,
            registry,
            cache,
            metrics,
            runner,
            batches,
            candidates,
            guard,
        )
        if background:
            start_background(stack, core)
        yield core


def _runner(
    settings: Settings,
    store: Store,
    registry: Registry,
    providers: Providers,
    cache: Cache,
    metrics: Metrics,
    validators: Validators,
    guard: Guard,
    *,
    candidates: Candidates | None = None,
) -> Runner:
    return Runner(
        registry,
        providers,
        cache,
        SingleFlight(store, cache),
        metrics,
        validators,
        deadline_s=settings.request_deadline_s,
        retry_after_max_s=settings.retry_after_max_s,
        limits=settings.limits,
        guard=guard,
        candidates=candidates,
    )


def unrecorded_runner(core: Core) -> Runner:
    """A runner on the core's registry, providers and validators whose attempts stay out of the
    stats and logs: evaluation inside a running service. Make one per evaluation."""
    metrics = Metrics(core.store, flush_s=NO_FLUSH_S, failures_kept=10, request_log_kept=0)
    return _runner(
        core.settings,
        core.store,
        core.registry,
        core.providers,
        core.cache,
        metrics,
        core.validators,
        core.guard,
    )


def start_background(stack: AsyncExitStack, core: Core) -> None:
    """The server's upkeep: shipped and known tasks kept registered, metrics flushed, format
    budgets and retirement gauges refreshed, batches resumed, a worker process started."""
    settings = core.settings
    files = read_task_files(settings.schemas_dir) if settings.schemas_dir.is_dir() else []
    check_s = max(settings.redis_retry_s, 1.0)
    _in_background(stack, lambda: keep_registered(core.registry, files, check_s))
    _in_background(stack, core.metrics.flush_forever)
    _in_background(stack, core.guard.refresh_forever)
    _in_background(stack, core.batches.resume_forever)
    _in_background(stack, core.validators.workers.warm)
