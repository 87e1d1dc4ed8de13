"""Python clients of a Formwork server: ``Client`` (blocking) and ``AsyncClient``.

    from formwork.client import Client

    with Client("http://127.0.0.1:8000", key="fw_...") as formwork:
        answer = formwork.run("ticket-triage", "I was charged twice")
        print(answer.output, answer.attempts)

Answers are the API's own models (``formwork.protocol``); an error answer is raised as the
``FormworkError`` subclass it names (``TaskNotFound``, ``InvalidInput``, ``AllRoutesFailed``…)
with its problem fields: ``status``, ``detail`` and ``extensions`` (``errors``, ``attempts``).
A server that cannot be reached raises ``Unavailable``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import httpx
from pydantic import BaseModel, JsonValue, TypeAdapter

from .errors import Unavailable, from_problem
from .protocol import (
    BatchJob,
    BatchPage,
    BatchResult,
    FailureRecord,
    FinetuneJob,
    FinetuneRequest,
    Registered,
    RunResult,
    TaskSpec,
    TaskStats,
    TaskSummary,
    TaskVersion,
)

DEFAULT_URL = "http://127.0.0.1:8000"
T = TypeVar("T")
CacheMode = Literal["use", "refresh", "bypass"]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One API call: what to send and how to read the answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    params: dict[str, str | int] = field(default_factory=dict)


def _model(cls: type[BaseModel]) -> Callable[[Any], Any]:
    return cls.model_validate


def _list(cls: type[T]) -> Callable[[Any], list[T]]:
    return TypeAdapter(list[cls]).validate_python  # type: ignore[valid-type]


def _body(value: BaseModel | Mapping[str, Any]) -> Any:
    return (
        value.model_dump(mode="json", exclude_unset=True) if isinstance(value, BaseModel) else value
    )


def _options(cache: CacheMode, route: str | None, version: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {"cache": cache}
    if route is not None:
        options["route"] = route
    if version is not None:
        options["version"] = version
    return options


class Calls:
    """Every call the clients make, built once for both."""

    @staticmethod
    def run(task: str, value: JsonValue, options: dict[str, Any]) -> Call[RunResult]:
        body = {"input": value, "options": options}
        return Call("POST", f"/v1/tasks/{task}/run", _model(RunResult), body)

    @staticmethod
    def batch(task: str, inputs: Sequence[JsonValue], options: dict[str, Any]) -> Call[BatchResult]:
        body = {"inputs": list(inputs), "options": options}
        return Call("POST", f"/v1/tasks/{task}/batch", _model(BatchResult), body)

    @staticmethod
    def start_batch(
        task: str, inputs: Sequence[JsonValue], options: dict[str, Any]
    ) -> Call[BatchJob]:
        body = {"inputs": list(inputs), "options": options}
        return Call("POST", f"/v1/tasks/{task}/batches", _model(BatchJob), body)

    @staticmethod
    def batch_job(batch_id: str) -> Call[BatchJob]:
        return Call("GET", f"/v1/batches/{batch_id}", _model(BatchJob))

    @staticmethod
    def batch_results(batch_id: str, offset: int, limit: int) -> Call[BatchPage]:
        params: dict[str, str | int] = {"offset": offset, "limit": limit}
        return Call("GET", f"/v1/batches/{batch_id}/results", _model(BatchPage), params=params)

    @staticmethod
    def tasks() -> Call[list[TaskSummary]]:
        return Call("GET", "/v1/tasks", _list(TaskSummary))

    @staticmethod
    def task(name: str, version: int | None) -> Call[TaskVersion]:
        path = f"/v1/tasks/{name}" + (f"/versions/{version}" if version else "")
        return Call("GET", path, _model(TaskVersion))

    @staticmethod
    def apply(name: str, spec: TaskSpec | Mapping[str, Any]) -> Call[Registered]:
        return Call("PUT", f"/v1/tasks/{name}", _model(Registered), _body(spec))

    @staticmethod
    def delete(name: str) -> Call[None]:
        return Call("DELETE", f"/v1/tasks/{name}", lambda _: None)

    @staticmethod
    def stats(task: str, window: str) -> Call[TaskStats]:
        return Call("GET", f"/v1/tasks/{task}/stats", _model(TaskStats), params={"window": window})

    @staticmethod
    def failures(task: str, limit: int) -> Call[list[FailureRecord]]:
        params: dict[str, str | int] = {"limit": limit}
        return Call("GET", f"/v1/tasks/{task}/failures", _list(FailureRecord), params=params)

    @staticmethod
    def finetune(task: str, request: FinetuneRequest | Mapping[str, Any]) -> Call[FinetuneJob]:
        path = f"/v1/tasks/{task}/finetunes"
        return Call("POST", path, _model(FinetuneJob), _body(request))

    @staticmethod
    def finetune_job(job_id: str) -> Call[FinetuneJob]:
        return Call("GET", f"/v1/finetunes/{job_id}", _model(FinetuneJob))

    @staticmethod
    def finetunes(task: str) -> Call[list[FinetuneJob]]:
        return Call("GET", f"/v1/tasks/{task}/finetunes", _list(FinetuneJob))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(when.timestamp() - time.time(), 0.0) if when else None


def read(call: Call[T], response: httpx.Response) -> T:
    """The parsed answer, or the error it carries raised as a ``FormworkError``."""
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            problem = None
        if not isinstance(problem, dict):
            problem = {"status": response.status_code, "detail": response.text[:500]}
        raise from_problem(problem, retry_after=_retry_after(response))
    return call.parse(response.json() if response.content else None)


def unreachable(url: httpx.URL, error: httpx.TransportError) -> Unavailable:
    return Unavailable(f"cannot reach Formwork at {url} ({type(error).__name__})")


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


class Client:
    """A blocking client; ``with Client(url, key=...) as c:`` closes its connections."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        key: str | None = None,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=_headers(key), timeout=timeout, transport=transport
        )

    def _send(self, call: Call[T]) -> T:
        try:
            response = self._http.request(
                call.method, call.path, json=call.json, params=call.params or None
            )
        except httpx.TransportError as e:
            raise unreachable(self._http.base_url, e) from e
        return read(call, response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def run(
        self,
        task: str,
        value: JsonValue,
        *,
        cache: CacheMode = "use",
        route: str | None = None,
        version: int | None = None,
    ) -> RunResult:
        """Run ``task`` on one input: the validated output and how it was made."""
        return self._send(Calls.run(task, value, _options(cache, route, version)))

    def batch(
        self, task: str, inputs: Sequence[JsonValue], *, cache: CacheMode = "use"
    ) -> BatchResult:
        """Up to the server's ``batch_max_items`` inputs in one request, answered in order."""
        return self._send(Calls.batch(task, inputs, _options(cache, None, None)))

    def start_batch(
        self, task: str, inputs: Sequence[JsonValue], *, cache: CacheMode = "use"
    ) -> BatchJob:
        """A background batch job; follow it with ``batch_job`` and ``batch_results``."""
        return self._send(Calls.start_batch(task, inputs, _options(cache, None, None)))

    def batch_job(self, batch_id: str) -> BatchJob:
        return self._send(Calls.batch_job(batch_id))

    def batch_results(self, batch_id: str, *, offset: int = 0, limit: int = 100) -> BatchPage:
        return self._send(Calls.batch_results(batch_id, offset, limit))

    def tasks(self) -> list[TaskSummary]:
        return self._send(Calls.tasks())

    def task(self, name: str, *, version: int | None = None) -> TaskVersion:
        """The current version of a task, or the one asked for."""
        return self._send(Calls.task(name, version))

    def apply(self, name: str, spec: TaskSpec | Mapping[str, Any]) -> Registered:
        """Register a task, or a new version of it (admin)."""
        return self._send(Calls.apply(name, spec))

    def delete(self, name: str) -> None:
        return self._send(Calls.delete(name))

    def stats(self, task: str, *, window: str = "1h") -> TaskStats:
        return self._send(Calls.stats(task, window))

    def failures(self, task: str, *, limit: int = 20) -> list[FailureRecord]:
        return self._send(Calls.failures(task, limit))

    def finetune(self, task: str, request: FinetuneRequest | Mapping[str, Any]) -> FinetuneJob:
        """Start a fine-tune job (admin)."""
        return self._send(Calls.finetune(task, request))

    def finetune_job(self, job_id: str) -> FinetuneJob:
        return self._send(Calls.finetune_job(job_id))

    def finetunes(self, task: str) -> list[FinetuneJob]:
        return self._send(Calls.finetunes(task))


class AsyncClient:
    """The same calls, awaited; ``async with AsyncClient(url, key=...) as c:``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        key: str | None = None,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"), headers=_headers(key), timeout=timeout, transport=transport
        )

    async def _send(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method, call.path, json=call.json, params=call.params or None
            )
        except httpx.TransportError as e:
            raise unreachable(self._http.base_url, e) from e
        return read(call, response)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def run(
        self,
        task: str,
        value: JsonValue,
        *,
        cache: CacheMode = "use",
        route: str | None = None,
        version: int | None = None,
    ) -> RunResult:
        """Run ``task`` on one input: the validated output and how it was made."""
        return await self._send(Calls.run(task, value, _options(cache, route, version)))

    async def batch(
        self, task: str, inputs: Sequence[JsonValue], *, cache: CacheMode = "use"
    ) -> BatchResult:
        """Up to the server's ``batch_max_items`` inputs in one request, answered in order."""
        return await self._send(Calls.batch(task, inputs, _options(cache, None, None)))

    async def start_batch(
        self, task: str, inputs: Sequence[JsonValue], *, cache: CacheMode = "use"
    ) -> BatchJob:
        """A background batch job; follow it with ``batch_job`` and ``batch_results``."""
        return await self._send(Calls.start_batch(task, inputs, _options(cache, None, None)))

    async def batch_job(self, batch_id: str) -> BatchJob:
        return await self._send(Calls.batch_job(batch_id))

    async def batch_results(self, batch_id: str, *, offset: int = 0, limit: int = 100) -> BatchPage:
        return await self._send(Calls.batch_results(batch_id, offset, limit))

    async def tasks(self) -> list[TaskSummary]:
        return await self._send(Calls.tasks())

    async def task(self, name: str, *, version: int | None = None) -> TaskVersion:
        """The current version of a task, or the one asked for."""
        return await self._send(Calls.task(name, version))

    async def apply(self, name: str, spec: TaskSpec | Mapping[str, Any]) -> Registered:
        """Register a task, or a new version of it (admin)."""
        return await self._send(Calls.apply(name, spec))

    async def delete(self, name: str) -> None:
        return await self._send(Calls.delete(name))

    async def stats(self, task: str, *, window: str = "1h") -> TaskStats:
        return await self._send(Calls.stats(task, window))

    async def failures(self, task: str, *, limit: int = 20) -> list[FailureRecord]:
        return await self._send(Calls.failures(task, limit))

    async def finetune(
        self, task: str, request: FinetuneRequest | Mapping[str, Any]
    ) -> FinetuneJob:
        """Start a fine-tune job (admin)."""
        return await self._send(Calls.finetune(task, request))

    async def finetune_job(self, job_id: str) -> FinetuneJob:
        return await self._send(Calls.finetune_job(job_id))

    async def finetunes(self, task: str) -> list[FinetuneJob]:
        return await self._send(Calls.finetunes(task))
