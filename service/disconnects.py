"""Work that stops when its client leaves: a run whose caller disconnected is cancelled, so no
model call is made (or paid) for nobody."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

log = logging.getLogger(__name__)
T = TypeVar("T")
CLIENT_LEFT = "the client disconnected before the answer"


class ClientGone(Exception):
    """The client disconnected before its answer was ready; the work was cancelled."""


async def _disconnected(receive: Receive) -> None:
    """Return when the client disconnects (the request body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``; cancel it and raise ClientGone when the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        task.cancel(CLIENT_LEFT)  # a no-op when it is done
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        log.info("the client left: its run was cancelled")
        raise ClientGone
    return task.result()
