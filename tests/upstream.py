"""A scripted OpenAI-compatible server on loopback, for the paths a real model cannot be made
to take on demand: truncation, refusals, 429s, 5xx, slow replies, fine-tune job lifecycles.
A strict ``response_format`` that breaks OpenAI's strict-mode rules is refused with a 400, as
OpenAI refuses it (``tests.strict_rules``).

It speaks real HTTP (uvicorn in a background thread), so the real ``openai`` client talks to it::

    with Upstream() as upstream:
        upstream.script("gpt-4o-mini", '{"n": 3}', Reply(status=429, headers={"Retry-After": "1"}))
        client = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k")

Chat replies are queued per model; ``set_default`` answers when a queue is empty (the model
``"*"`` is the default for every model). Fine-tune jobs advance one status per retrieve.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.served import Served
from tests.strict_rules import strict_problems

ANY_MODEL = "*"
JOB_STATUSES = frozenset(
    {"validating_files", "queued", "running", "succeeded", "failed", "cancelled"}
)
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
DEFAULT_JOB_STATUSES = ("validating_files", "running", "succeeded")
DEFAULT_JOB_ERROR = {
    "code": "invalid_training_file",
    "message": "The job failed due to an invalid training file.",
    "param": "training_file",
}
ORGANIZATION = "formwork"
HOLD_MAX_S = 30.0
_ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def _strict_problems(body: dict[str, Any], model: str) -> list[str]:
    """A strict ``response_format`` is checked as OpenAI checks it; anything else passes."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return []
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or spec.get("strict") is not True:
        return []
    return strict_problems(spec.get("schema"), fine_tuned=model.startswith("ft:"))


@dataclass
class Reply:
    """One scripted answer to a chat completion request."""

    content: str | None = None
    status: int = 200
    finish_reason: str = "stop"
    refusal: str | None = None
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 11
    completion_tokens: int = 7
    drip_s: float = 0.0  # send the body one byte at a time, this long apart (a slow drip)
    body: str | None = None  # send exactly this 200 body instead of a chat completion
    hold: threading.Event | None = None  # answer only once this is set (30 s at most)


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


@dataclass
class JobScript:
    """How the next created fine-tune job behaves: the statuses it takes, one per retrieve."""

    statuses: tuple[str, ...] = DEFAULT_JOB_STATUSES
    error: dict[str, Any] | None = None
    trained_tokens: int = 4096


@dataclass
class Job:
    id: str
    body: dict[str, Any]  # the create request as received
    script: JobScript
    created_at: int
    step: int = 0
    status: str = ""
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    error: dict[str, Any] | None = None
    result_files: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first

    @property
    def model(self) -> str:
        return str(self.body["model"])

    def to_json(self) -> dict[str, Any]:
        method = self.body.get("method") or {}
        given = self.body.get("hyperparameters") or (method.get("supervised") or {}).get(
            "hyperparameters"
        )
        hyperparameters = {
            "batch_size": "auto",
            "learning_rate_multiplier": "auto",
            "n_epochs": "auto",
            **(given or {}),
        }
        method = method or {
            "type": "supervised",
            "supervised": {"hyperparameters": hyperparameters},
        }
        return {
            "id": self.id,
            "object": "fine_tuning.job",
            "created_at": self.created_at,
            "model": self.model,
            "organization_id": f"org-{ORGANIZATION}",
            "training_file": self.body["training_file"],
            "validation_file": self.body.get("validation_file"),
            "status": self.status,
            "fine_tuned_model": self.fine_tuned_model,
            "finished_at": self.finished_at,
            "trained_tokens": self.trained_tokens,
            "error": self.error,
            "hyperparameters": hyperparameters,
            "method": method,
            "result_files": list(self.result_files),
            "seed": self.body.get("seed", 42),
            "estimated_finish": None,
            "integrations": [],
            "metadata": self.body.get("metadata"),
            "user_provided_suffix": self.body.get("suffix"),
        }


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind, default_code = _ERROR_KINDS.get(status, ("server_error", None))
    return {
        "error": {"message": message, "type": kind, "param": param, "code": code or default_code}
    }


def _error(status: int, message: str, **kwargs: Any) -> JSONResponse:
    return JSONResponse(error_body(status, message, **kwargs), status_code=status)


def _page(items: list[dict[str, Any]], request: Request) -> dict[str, Any]:
    """One cursor page, as the OpenAI list endpoints return it (``after`` = the last id seen)."""
    limit = int(request.query_params.get("limit", 20))
    after = request.query_params.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}


async def _drip(body: bytes, interval_s: float) -> Any:
    for i in range(len(body)):
        yield body[i : i + 1]
        await asyncio.sleep(interval_s)


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``{field: (filename, bytes)}`` of a multipart/form-data body, bytes kept exact."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        return {}
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + match.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        params = dict(re.findall(r'(\w+)="([^"]*)"', head.decode("utf-8", "replace")))
        if "name" in params:
            fields[params["name"]] = (params.get("filename"), data.removesuffix(b"\r\n"))
    return fields


class Upstream:
    """The scripted server. ``start()``/``stop()`` or use it as a context manager."""

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._served: Served | None = None
        self.app = Starlette(routes=self._routes())
        self.reset()

    # -- scripting ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every script, default, counter, request, file and job."""
        with self._lock:
            self._queues: dict[str, deque[Reply]] = {}
            self._defaults: dict[str, Reply] = {}
            self._model_fields: dict[str, dict[str, Any]] = {}
            self._calls: dict[str, int] = {}
            self._job_scripts: deque[JobScript] = deque()
            self._serials: dict[str, int] = {}
            self.requests: list[dict[str, Any]] = []
            self.authorizations: list[str | None] = []
            self.files: dict[str, StoredFile] = {}
            self.jobs: dict[str, Job] = {}

    def script(self, model: str, *replies: Reply | str) -> None:
        """Queue replies for ``model``; a str is ``Reply(content=str)``."""
        with self._lock:
            queue = self._queues.setdefault(model, deque())
            queue.extend(Reply(content=r) if isinstance(r, str) else r for r in replies)

    def set_default(self, model: str, reply: Reply | str | None) -> None:
        """The answer for ``model`` (``"*"``: any model) when its queue is empty; None: none."""
        with self._lock:
            if reply is None:
                self._defaults.pop(model, None)
            else:
                self._defaults[model] = Reply(content=reply) if isinstance(reply, str) else reply

    def list_model(self, model: str, **fields: Any) -> None:
        """List ``model`` in ``/v1/models`` with these extra fields (``shutdown_date``...)."""
        with self._lock:
            self._model_fields[model] = fields

    def calls(self, model: str | None = None) -> int:
        """Chat completion requests received, for one model or in all."""
        with self._lock:
            return sum(self._calls.values()) if model is None else self._calls.get(model, 0)

    def pending(self, model: str) -> int:
        """Scripted replies not yet consumed for ``model``."""
        with self._lock:
            return len(self._queues.get(model, ()))

    def script_job(
        self,
        *,
        statuses: list[str] | tuple[str, ...] | None = None,
        error: dict[str, Any] | None = None,
        trained_tokens: int = 4096,
    ) -> None:
        """Script the next created fine-tune job (FIFO when called more than once).

        ``statuses`` is walked one step per retrieve (the first is the status at creation); with
        ``error`` and no ``statuses`` the job fails after running.
        """
        if statuses is None:
            statuses = DEFAULT_JOB_STATUSES if error is None else ("validating_files", "failed")
        unknown = set(statuses) - JOB_STATUSES
        if not statuses or unknown:
            raise ValueError(f"statuses must be non-empty job statuses, got {list(statuses)}")
        if error is not None:
            error = {"param": None, **error}
        with self._lock:
            self._job_scripts.append(JobScript(tuple(statuses), error, trained_tokens))

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._served is None:
            raise RuntimeError("Upstream is not started")
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> Upstream:
        self._served = Served(self.app, lifespan="off", host=self.host).start()
        self.port = self._served.port
        return self

    def stop(self) -> None:
        if self._served is not None:
            self._served.stop()
        self._served = None

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- HTTP --------------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/files", self._upload, methods=["POST"]),
            Route("/v1/files", self._list_files, methods=["GET"]),
            Route("/v1/files/{id}", self._file, methods=["GET", "DELETE"]),
            Route("/v1/files/{id}/content", self._file_content, methods=["GET"]),
            Route("/v1/fine_tuning/jobs", self._create_job, methods=["POST"]),
            Route("/v1/fine_tuning/jobs", self._list_jobs, methods=["GET"]),
            Route("/v1/fine_tuning/jobs/{id}", self._retrieve_job, methods=["GET"]),
            Route("/v1/fine_tuning/jobs/{id}/events", self._job_events, methods=["GET"]),
            Route("/v1/fine_tuning/jobs/{id}/cancel", self._cancel_job, methods=["POST"]),
        ]

    def _next_id(self, prefix: str) -> str:
        serial = self._serials[prefix] = self._serials.get(prefix, 0) + 1
        return f"{prefix}-{serial:04d}"

    def _take(
        self, model: str, body: dict[str, Any], authorization: str | None
    ) -> tuple[Reply | None, str]:
        """The reply and its completion id, both fixed on arrival (a slow reply finishing after
        a ``reset`` must not shift the next test's ids)."""
        with self._lock:
            completion_id = self._next_id("chatcmpl")
            self._calls[model] = self._calls.get(model, 0) + 1
            self.requests.append(body)
            self.authorizations.append(authorization)
            queue = self._queues.get(model)
            if queue:
                return queue.popleft(), completion_id
            return self._defaults.get(model) or self._defaults.get(ANY_MODEL), completion_id

    async def _chat(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str):
            return _error(400, "you must provide a model parameter", param="model")
        problems = _strict_problems(body, model)
        if problems:
            with self._lock:
                self.requests.append(body)
            name = body["response_format"]["json_schema"].get("name")
            return _error(
                400, f"Invalid schema for response_format {name!r}: " + "; ".join(problems)
            )
        reply, completion_id = self._take(model, body, request.headers.get("authorization"))
        if reply is None:
            return _error(500, f"no scripted reply for model {model!r}")
        if reply.hold is not None:
            await asyncio.to_thread(reply.hold.wait, HOLD_MAX_S)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            message = reply.content or f"scripted error {reply.status}"
            return JSONResponse(
                error_body(reply.status, message), status_code=reply.status, headers=reply.headers
            )
        completion = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": reply.content,
                        "refusal": reply.refusal,
                    },
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            },
        }
        text = json.dumps(completion) if reply.body is None else reply.body
        if reply.drip_s:
            return StreamingResponse(
                _drip(text.encode(), reply.drip_s), media_type="application/json"
            )
        return Response(text, media_type="application/json", headers=reply.headers)

    async def _models(self, request: Request) -> Response:
        with self._lock:
            listed = set(self._queues) | set(self._defaults) | set(self._model_fields)
            names = sorted(listed - {ANY_MODEL})
            fields = {n: dict(self._model_fields.get(n, {})) for n in names}
        data = [
            {"id": n, "object": "model", "created": 0, "owned_by": ORGANIZATION, **fields[n]}
            for n in names
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _upload(self, request: Request) -> Response:
        fields = _multipart(request.headers.get("content-type", ""), await request.body())
        if "file" not in fields:
            return _error(400, "file is required", param="file")
        if "purpose" not in fields:
            return _error(400, "purpose is required", param="purpose")
        filename, content = fields["file"]
        with self._lock:
            stored = StoredFile(
                id=self._next_id("file"),
                filename=filename or "upload",
                purpose=fields["purpose"][1].decode(),
                content=content,
                created_at=int(time.time()),
            )
            self.files[stored.id] = stored
        return JSONResponse(stored.to_json())

    async def _list_files(self, request: Request) -> Response:
        with self._lock:
            files = [f.to_json() for f in reversed(self.files.values())]
        return JSONResponse(_page(files, request))

    async def _file(self, request: Request) -> Response:
        file_id = request.path_params["id"]
        with self._lock:
            stored = self.files.get(file_id)
            if stored is not None and request.method == "DELETE":
                del self.files[file_id]
                return JSONResponse({"id": file_id, "object": "file", "deleted": True})
        if stored is None:
            return _error(404, f"No such File object: {file_id}", param="id", code="not_found")
        return JSONResponse(stored.to_json())

    async def _file_content(self, request: Request) -> Response:
        file_id = request.path_params["id"]
        with self._lock:
            stored = self.files.get(file_id)
        if stored is None:
            return _error(404, f"No such File object: {file_id}", param="id", code="not_found")
        return Response(stored.content, media_type="application/octet-stream")

    def _event(self, job: Job, message: str, level: str = "info") -> None:
        event = {
            "id": self._next_id("ftevent"),
            "object": "fine_tuning.job.event",
            "created_at": int(time.time()),
            "level": level,
            "message": message,
            "data": {},
            "type": "message",
        }
        job.events.append(event)

    def _enter(self, job: Job, status: str) -> None:
        """Move ``job`` to ``status``, with the events and results OpenAI shows for it."""
        job.status = status
        now = int(time.time())
        if status == "validating_files":
            self._event(job, f"Validating training file: {job.body['training_file']}")
        elif status == "queued":
            self._event(job, "Fine-tuning job queued")
        elif status == "running":
            self._event(job, "Fine-tuning job started")
        elif status == "succeeded":
            suffix = job.body.get("suffix") or ""
            short = job.id.removeprefix("ftjob-")
            job.fine_tuned_model = f"ft:{job.model}:{ORGANIZATION}:{suffix}:{short}"
            job.trained_tokens = job.script.trained_tokens
            job.finished_at = now
            results = StoredFile(
                self._next_id("file"), "step_metrics.csv", "fine-tune-results",
                b"step,train_loss\n1,0.5\n", now,
            )  # fmt: skip
            self.files[results.id] = results
            job.result_files = [results.id]
            self._event(job, f"New fine-tuned model created: {job.fine_tuned_model}")
            self._event(job, "The job has successfully completed")
        elif status == "failed":
            job.error = job.script.error or dict(DEFAULT_JOB_ERROR)
            job.finished_at = now
            self._event(job, job.error["message"], level="error")
        elif status == "cancelled":
            self._event(job, "Fine-tuning job cancelled")

    async def _create_job(self, request: Request) -> Response:
        body = await request.json()
        if not isinstance(body.get("model"), str):
            return _error(400, "you must provide a model parameter", param="model")
        with self._lock:
            for param in ("training_file", "validation_file"):
                file_id = body.get(param)
                if param == "training_file" or file_id is not None:
                    stored = self.files.get(file_id) if isinstance(file_id, str) else None
                    if stored is None or stored.purpose != "fine-tune":
                        message = f"invalid {param}: {file_id}"
                        return _error(400, message, param=param, code="invalid_file")
            script = self._job_scripts.popleft() if self._job_scripts else JobScript()
            job = Job(self._next_id("ftjob"), body, script, created_at=int(time.time()))
            self.jobs[job.id] = job
            self._event(job, f"Created fine-tuning job: {job.id}")
            self._enter(job, script.statuses[0])
            return JSONResponse(job.to_json())

    async def _list_jobs(self, request: Request) -> Response:
        with self._lock:
            jobs = [job.to_json() for job in reversed(self.jobs.values())]
        return JSONResponse(_page(jobs, request))

    def _job_or_404(self, request: Request) -> Job | Response:
        job = self.jobs.get(request.path_params["id"])
        if job is None:
            message = f"Could not find fine-tune job: {request.path_params['id']}"
            return _error(404, message, param="fine_tuning_job_id", code="not_found")
        return job

    async def _retrieve_job(self, request: Request) -> Response:
        with self._lock:
            job = self._job_or_404(request)
            if isinstance(job, Response):
                return job
            if job.status not in FINAL_STATUSES and job.step + 1 < len(job.script.statuses):
                job.step += 1
                self._enter(job, job.script.statuses[job.step])
            return JSONResponse(job.to_json())

    async def _job_events(self, request: Request) -> Response:
        with self._lock:
            job = self._job_or_404(request)
            if isinstance(job, Response):
                return job
            return JSONResponse(_page(job.events[::-1], request))

    async def _cancel_job(self, request: Request) -> Response:
        with self._lock:
            job = self._job_or_404(request)
            if isinstance(job, Response):
                return job
            if job.status in FINAL_STATUSES:
                return _error(400, f"Job has already completed: {job.status}", code="invalid_state")
            self._enter(job, "cancelled")
            return JSONResponse(job.to_json())
