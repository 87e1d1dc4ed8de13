"""Worker processes for CPU work on large values (parsing and validating long model answers,
large inputs and task definitions), so that it never holds the server's GIL: a thread would
keep the event loop waiting for the GIL, a process does not.

``Workers.call(fn, *args)`` runs ``fn(*args)`` in one of at most ``size`` processes, started on
first use (from a fork server that has the validation modules imported) and reused. A call whose
caller stops waiting (the request deadline, a client that left) kills its process, so that
nothing later queues behind work nobody waits for; a process that died is replaced and the call
tried once more on a fresh one. ``fn`` must be a module-level function; what it returns or
raises travels back pickled.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
# Imported once by the fork server, not by each worker: the main module (which each worker
# would import otherwise, as multiprocessing does) and what the workers run.
PRELOAD = ["__main__", "formwork.validation", "formwork.verdicts", "formwork.registry"]
TRIES = 2  # a process that dies is replaced and the call tried once more
NICENESS = 10  # workers yield the CPU to the server, whose event loop answers every request


class WorkerLost(Exception):
    """The worker process died during the call (killed, out of memory, crashed), twice."""


class WorkerFailed(Exception):
    """``fn`` raised an exception that cannot travel between processes; its repr is kept."""


def _serve(
    conn: Connection, initializer: Callable[..., object] | None, args: Sequence[object]
) -> None:
    """A worker's loop: one call at a time, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    os.nice(NICENESS)
    if initializer is not None:
        initializer(*args)
    while True:
        try:
            fn, fn_args = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            reply = pickle.dumps((True, fn(*fn_args)))
        except Exception as e:  # everything goes back to the caller, who decides
            try:
                reply = pickle.dumps((False, e))
            except Exception:
                reply = pickle.dumps((False, WorkerFailed(repr(e))))
        conn.send_bytes(reply)


class _Worker:
    def __init__(
        self,
        context: multiprocessing.context.BaseContext,
        initializer: Callable[..., object] | None,
        args: Sequence[object],
    ) -> None:
        self.conn, child = context.Pipe()
        self.process: BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=_serve, args=(child, initializer, args), name="formwork-worker", daemon=True
        )
        self.process.start()
        child.close()

    def exchange(self, data: bytes) -> bytes:
        """Send a call and wait for its reply (on an I/O thread: both may block). The pipe is
        closed when the last user lets go of it, never under a thread that is reading it."""
        self.conn.send_bytes(data)
        return self.conn.recv_bytes()

    def kill(self) -> None:
        """End the process (a reader of its pipe then gets EOF) and reap it."""
        self.process.kill()
        self.process.join()


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


class Workers:
    """At most ``size`` worker processes, started when first needed."""

    def __init__(
        self,
        size: int = 1,
        *,
        initializer: Callable[..., object] | None = None,
        args: Sequence[object] = (),
    ) -> None:
        self.size = size
        self._initializer, self._args = initializer, tuple(args)
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        # I/O threads: sending and waiting for replies, starting and reaping processes
        self._io = ThreadPoolExecutor(max_workers=2 * size + 1, thread_name_prefix="workers")
        self._closed = False
        self.calls = 0  # calls made (not counting ``warm``)

    @property
    def pids(self) -> list[int]:
        """The worker processes alive now, idle or busy."""
        workers = (*self._idle, *self._busy)
        return [w.process.pid for w in workers if w.process.pid is not None]

    async def warm(self) -> None:
        """Start a worker process now (the first start also launches the fork server, which
        imports the validation modules: seconds of CPU on a busy machine), so that the first
        request that needs one does not wait for it."""
        try:
            await self._once(pickle.dumps((os.getpid, ())))
        except WorkerLost as e:
            log.warning("no worker process could be started: %s", e)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker process: its result, or what it raised. WorkerLost when the
        process died twice; the caller's cancellation kills the process working for it."""
        data = pickle.dumps((fn, args))
        self.calls += 1
        lost = WorkerLost("no worker process")
        for _ in range(TRIES):
            try:
                ok, result = await self._once(data)
            except WorkerLost as e:
                lost = e
                continue
            if ok:
                return result  # type: ignore[no-any-return]
            raise result
        raise lost

    async def _once(self, data: bytes) -> tuple[bool, Any]:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:  # one event loop at a time
            self._slots = (loop, asyncio.Semaphore(self.size))
        async with self._slots[1]:
            if self._closed:
                raise WorkerLost("the worker processes are closed")
            worker = self._idle.pop() if self._idle else await self._start(loop)
            self._busy.add(worker)
            try:
                reply = await loop.run_in_executor(self._io, worker.exchange, data)
            except (EOFError, OSError) as e:  # it died before or during the call
                self._drop(worker)
                log.warning("a worker process died (exit code %s)", worker.process.exitcode)
                raise WorkerLost(f"the worker process ended ({type(e).__name__})") from e
            except BaseException:  # the caller stopped waiting; the work may still be running
                self._drop(worker)
                raise
            self._busy.discard(worker)
            self._idle.append(worker)
        return pickle.loads(reply)  # type: ignore[no-any-return]

    async def _start(self, loop: asyncio.AbstractEventLoop) -> _Worker:
        # the first start launches the fork server, which imports the validation modules once
        started = loop.run_in_executor(self._io, _Worker, _context(), self._initializer, self._args)
        try:
            return await asyncio.shield(started)
        except asyncio.CancelledError:
            started.add_done_callback(self._adopt)
            raise
        except OSError as e:
            raise WorkerLost(f"no worker process could be started: {e}") from e

    def _adopt(self, started: asyncio.Future[_Worker]) -> None:
        """A worker whose caller left while it started: kept idle, or ended when not needed."""
        if started.cancelled() or started.exception() is not None:
            return
        worker = started.result()
        if self._closed:  # no I/O thread is left to reap it
            worker.kill()
        elif len(self._idle) + len(self._busy) >= self.size:
            self._io.submit(worker.kill)
        else:
            self._idle.append(worker)

    def _drop(self, worker: _Worker) -> None:
        self._busy.discard(worker)
        if not self._closed:
            self._io.submit(worker.kill)

    def close(self) -> None:
        """End every worker process (a call in flight fails with WorkerLost)."""
        self._closed = True
        for worker in (*self._idle, *self._busy):
            worker.kill()
        self._idle.clear()
        self._busy.clear()
        self._io.shutdown(wait=True, cancel_futures=True)
