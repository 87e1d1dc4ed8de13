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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from .cache import Cache
from .config import LOCAL_PROVIDER, Settings
from .errors import Unavailable
from .flight import SingleFlight
from .metrics import Metrics
from .protocol import TaskFile
from .providers import Providers
from .providers.base import Provider
from .registry import Registry, read_task_files
from .runner import Runner
from .store import Store
from .validation import Validators

log = logging.getLogger(__name__)
NO_FLUSH_S = 365 * 86400.0  # metrics that are never flushed (evaluation stays out of stats)


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


async def keep_shipped(registry: Registry, files: list[TaskFile], retry_s: float) -> None:
    """Register shipped tasks, retrying until Redis answers; serve them from memory meanwhile."""
    while True:
        try:
            await registry.load(files)
            return
        except Unavailable:
            registry.seed(files)
            log.warning("redis unreachable: shipped tasks served from memory until it returns")
            await asyncio.sleep(max(retry_s, 1.0))


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
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
        validators = Validators()
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
        registry = Registry(
            store, validators, refresh_s=settings.registry_refresh_s, warn=providers.warnings
        )
        cache = Cache(store)
        metrics = Metrics(
            store,
            flush_s=settings.metrics_flush_s if record else NO_FLUSH_S,
            failures_kept=settings.failures_kept,
            request_log_kept=settings.request_log_kept if record else 0,
        )
        if record:
            stack.push_async_callback(metrics.flush)
        runner = Runner(
            registry,
            providers,
            cache,
            SingleFlight(store, cache),
            metrics,
            validators,
            deadline_s=settings.request_deadline_s,
            retry_after_max_s=settings.retry_after_max_s,
        )
        core = Core(settings, store, validators, providers, registry, cache, metrics, runner)
        if background:
            start_background(stack, core)
        yield core


def start_background(stack: AsyncExitStack, core: Core) -> None:
    """The server's upkeep: shipped tasks kept registered, metrics flushed."""
    settings = core.settings
    files = read_task_files(settings.schemas_dir) if settings.schemas_dir.is_dir() else []
    _in_background(stack, lambda: keep_shipped(core.registry, files, settings.redis_retry_s))
    if settings.metrics_flush_s > 0:
        _in_background(stack, core.metrics.flush_forever)
