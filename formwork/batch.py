"""Many inputs of one task through the run path (cache, single-flight, re-ask, fallback) with
bounded concurrency; one answer per input, in input order: its output, or its problem."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from pydantic import JsonValue

from .errors import FormworkError
from .protocol import Attempt, BatchItem, BatchResult, RunOptions, Usage
from .runner import Runner


async def run_item(
    runner: Runner, task: str, index: int, value: JsonValue, options: RunOptions, *, request_id: str
) -> BatchItem:
    """One input: what ``POST /run`` would have answered, as an item."""
    try:
        result = await runner.run(task, value, options, request_id=f"{request_id}-{index}")
    except FormworkError as e:
        attempts = e.extensions.get("attempts")
        return BatchItem(
            index=index,
            ok=False,
            attempts=[Attempt.model_validate(a) for a in attempts]
            if isinstance(attempts, list)
            else [],
            problem=e.problem(),
        )
    return BatchItem(
        index=index,
        ok=True,
        output=result.output,
        model=result.model,
        cached=result.cached,
        attempts=result.attempts,
        usage=result.usage,
    )


async def run_batch(
    runner: Runner,
    task: str,
    inputs: Sequence[JsonValue],
    options: RunOptions,
    *,
    concurrency: int,
    request_id: str,
    done: Callable[[BatchItem], Awaitable[None]] | None = None,
    skip: frozenset[int] = frozenset(),
) -> list[BatchItem]:
    """Run ``inputs`` (but the indices in ``skip``), ``concurrency`` at a time; ``done`` hears
    of each item as it ends. The items come back in input order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, value: JsonValue) -> BatchItem:
        async with gate:
            item = await run_item(runner, task, index, value, options, request_id=request_id)
        if done is not None:
            await done(item)
        return item

    pending = [one(i, value) for i, value in enumerate(inputs) if i not in skip]
    return list(await asyncio.gather(*pending))


def summary(task: str, items: list[BatchItem]) -> BatchResult:
    ok = sum(item.ok for item in items)
    return BatchResult(
        task=task,
        items=items,
        succeeded=ok,
        failed=len(items) - ok,
        usage=sum((item.usage for item in items), Usage()),
    )
