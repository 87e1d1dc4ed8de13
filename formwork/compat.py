"""The OpenAI chat-completions dialect: a task is a model, the last user message is the input,
the validated output is the assistant's content.

``POST /v1/chat/completions`` with ``model`` = ``task`` or ``task@version`` runs the task on the
run path (cache, single-flight, re-ask, fallback) and answers a standard chat completion, or a
standard event stream that carries the answer once it is validated. Formwork's own account of
the run (attempts, the model that answered, cached) rides along under ``formwork``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from .errors import FormworkError, InvalidInput
from .protocol import RunOptions, RunResult, TaskSummary

TASK_REF = re.compile(r"^(?P<task>[a-z0-9][a-z0-9_-]{0,62})(?:@(?P<version>[1-9][0-9]{0,8}))?$")
OWNER = "formwork"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, JsonValue]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """What OpenAI clients send; sampling fields are accepted and left to the task's routes."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="A task name, or `task@version`.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="One answer per request.")


def task_ref(model: str) -> tuple[str, int | None]:
    """``task`` or ``task@version``; InvalidInput names the ``model`` field otherwise."""
    found = TASK_REF.match(model)
    if found is None:
        raise InvalidInput(
            f"model {model!r} is not a task name (or task@version)",
            errors=[{"path": "$.model", "message": "expected a task name such as 'my-task'"}],
        )
    version = found.group("version")
    return found.group("task"), int(version) if version else None


def _text(content: str | list[dict[str, JsonValue]] | None) -> str:
    if isinstance(content, str):
        return content
    parts = content or []
    return "".join(str(p.get("text", "")) for p in parts if p.get("type") == "text")


def run_input(request: ChatRequest) -> JsonValue:
    """The last user message: its JSON value when it parses as JSON, else its text."""
    users = [m for m in request.messages if m.role == "user"]
    if not users:
        raise InvalidInput(
            "the messages hold no user message to use as the task's input",
            errors=[{"path": "$.messages", "message": "add a message with role 'user'"}],
        )
    text = _text(users[-1].content)
    try:
        value: JsonValue = json.loads(text)
    except ValueError:
        return text
    return value


def run_options(request: ChatRequest) -> RunOptions:
    _, version = task_ref(request.model)
    return RunOptions(version=version)


def _usage(result: RunResult) -> dict[str, JsonValue]:
    u = result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def _extension(result: RunResult) -> dict[str, JsonValue]:
    return {
        "task": result.task,
        "version": result.version,
        "model": result.model,
        "cached": result.cached,
        "attempts": [a.model_dump(mode="json") for a in result.attempts],
        "request_id": result.request_id,
    }


def completion(model: str, result: RunResult) -> dict[str, JsonValue]:
    """A ``chat.completion`` whose content is the validated output as JSON text."""
    message: dict[str, JsonValue] = {
        "role": "assistant",
        "content": json.dumps(result.output, ensure_ascii=False),
        "refusal": None,
    }
    return {
        "id": f"chatcmpl-{result.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": _usage(result),
        "system_fingerprint": None,
        OWNER: _extension(result),
    }


def stream_events(model: str, result: RunResult, *, include_usage: bool) -> Iterator[str]:
    """Server-sent events of a ``chat.completion.chunk`` stream: the validated answer in one
    delta, then the stop (and the usage when asked), then ``[DONE]``."""
    head: dict[str, JsonValue] = {
        "id": f"chatcmpl-{result.request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }
    content = json.dumps(result.output, ensure_ascii=False)
    chunks: list[dict[str, JsonValue]] = [
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": content},
                    "finish_reason": None,
                    "logprobs": None,
                }
            ],
        },
        {
            **head,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}],
            OWNER: _extension(result),
        },
    ]
    if include_usage:
        chunks.append({**head, "choices": [], "usage": _usage(result)})
    for chunk in chunks:
        yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"


def models(summaries: list[TaskSummary]) -> dict[str, JsonValue]:
    return {"object": "list", "data": [model_entry(s) for s in summaries]}


def model_entry(summary: TaskSummary) -> dict[str, JsonValue]:
    return {
        "id": summary.task,
        "object": "model",
        "created": int(summary.created_at),
        "owned_by": OWNER,
    }


ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "rate_limit_error",
    "api_error",
]


def error_envelope(error: FormworkError, *, request_id: str) -> dict[str, JsonValue]:
    """OpenAI's error shape for one of ours; the problem's own fields ride along."""
    kind: ErrorType = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        422: "invalid_request_error",
        429: "rate_limit_error",
    }.get(error.status, "api_error")  # type: ignore[assignment]
    errors = error.extensions.get("errors")
    param = None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        path = errors[0].get("path")
        param = path.removeprefix("$.") if isinstance(path, str) else None
    return {
        "error": {
            "message": error.detail,
            "type": kind,
            "param": param,
            "code": error.slug,
            OWNER: {**error.problem(), "request_id": request_id},
        }
    }
