"""Worker processes: results and errors travel back, a caller that stops waiting has its process
killed, a process that dies is replaced. Real processes, no doubles."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest

from formwork.errors import InvalidInput
from formwork.workers import WorkerFailed, WorkerLost, Workers


def double(n: int) -> int:
    return 2 * n


def pid() -> int:
    return os.getpid()


def refuse(detail: str) -> None:
    raise InvalidInput(detail, errors=[{"path": "$.input", "message": "no"}])


class Unpicklable(Exception):
    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("not this one")


def raise_unpicklable() -> None:
    raise Unpicklable("odd")


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def die() -> None:
    os._exit(3)


@pytest.fixture
def workers() -> Iterator[Workers]:
    pool = Workers(1)
    yield pool
    pool.close()


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended and been reaped (polled: the kill is asynchronous)."""
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def test_results_come_back_from_another_process(workers: Workers) -> None:
    async def calls() -> tuple[int, int]:
        return await workers.call(double, 21), await workers.call(pid)

    result, worker = asyncio.run(calls())
    assert result == 42
    assert worker != os.getpid()
    assert workers.pids == [worker]


def test_errors_travel_back_whole(workers: Workers) -> None:
    with pytest.raises(InvalidInput) as raised:
        asyncio.run(workers.call(refuse, "bad input"))
    assert raised.value.problem() == {
        "type": "https://formwork.dev/problems/invalid-input",
        "title": "Invalid input",
        "status": 422,
        "detail": "bad input",
        "errors": [{"path": "$.input", "message": "no"}],
    }
    with pytest.raises(WorkerFailed, match="Unpicklable"):
        asyncio.run(workers.call(raise_unpicklable))


def test_a_caller_that_stops_waiting_has_its_process_killed(workers: Workers) -> None:
    async def scenario() -> tuple[int, int, float]:
        first = await workers.call(pid)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(workers.call(sleep, 60), 0.2)
        return first, await workers.call(pid), await workers.call(sleep, 0)

    first, second, slept = asyncio.run(scenario())
    assert gone(first)  # not left sleeping for 60 s, holding the only slot
    assert second != first
    assert slept == 0


def test_a_process_that_dies_is_replaced(workers: Workers) -> None:
    first = asyncio.run(workers.call(pid))
    os.kill(first, signal.SIGKILL)
    assert gone(first)
    second = asyncio.run(workers.call(pid))  # the dead one fails the call, which is tried again
    assert second != first
    with pytest.raises(WorkerLost):
        asyncio.run(workers.call(die))  # dies on both tries
    assert asyncio.run(workers.call(double, 2)) == 4


def test_calls_share_the_processes(workers: Workers) -> None:
    async def many() -> list[int]:
        return list(await asyncio.gather(*(workers.call(double, n) for n in range(20))))

    assert asyncio.run(many()) == [2 * n for n in range(20)]
    assert len(workers.pids) == 1
