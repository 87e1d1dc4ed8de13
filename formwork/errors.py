"""The errors Formwork answers with, each rendered as RFC 9457 problem+json.

FormworkError                 500  base: status, type, title, detail, extensions
├── InvalidSchema             400  a task definition fails the meta-schema or its examples
├── Unauthorized              401  missing or unknown API key
├── Forbidden                 403  the key lacks the scope
├── TaskNotFound              404
├── InvalidInput              422  request body or task input; carries ``errors``
├── RateLimited               429  carries ``retry_after``
├── AllRoutesFailed           502  carries ``attempts``
├── Unavailable               503  overloaded or a store is down; may carry ``retry_after``
└── DeadlineExceeded          504  carries ``attempts``
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import JsonValue

PROBLEM_BASE = "https://formwork.dev/problems/"


class FormworkError(Exception):
    status = 500
    slug = "internal"
    title = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float | None = None,
        **extensions: JsonValue,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.extensions: Mapping[str, JsonValue] = extensions

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled whole: errors raised in a worker process are raised again in the server."""
        return (_rebuilt, (type(self), self.detail), self.__dict__)

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def problem(self, instance: str | None = None) -> dict[str, JsonValue]:
        body: dict[str, JsonValue] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extensions)
        return body


def _rebuilt(cls: type[FormworkError], detail: str) -> FormworkError:
    return cls(detail)


class InvalidSchema(FormworkError):
    status, slug, title = 400, "invalid-task", "Invalid task definition"


class Unauthorized(FormworkError):
    status, slug, title = 401, "unauthorized", "Unauthorized"


class Forbidden(FormworkError):
    status, slug, title = 403, "forbidden", "Forbidden"


class TaskNotFound(FormworkError):
    status, slug, title = 404, "task-not-found", "Task not found"


class InvalidInput(FormworkError):
    status, slug, title = 422, "invalid-input", "Invalid input"


class RateLimited(FormworkError):
    status, slug, title = 429, "rate-limited", "Too many requests"


class AllRoutesFailed(FormworkError):
    status, slug, title = 502, "all-routes-failed", "No route produced valid output"


class Unavailable(FormworkError):
    status, slug, title = 503, "unavailable", "Service unavailable"


class DeadlineExceeded(FormworkError):
    status, slug, title = 504, "deadline-exceeded", "Deadline exceeded"


def from_problem(
    problem: Mapping[str, JsonValue], *, retry_after: float | None = None
) -> FormworkError:
    """Rebuild an error from its problem+json body (a single-flight follower re-raises it; the
    client raises what the server answered)."""
    slug = str(problem.get("type", "")).removeprefix(PROBLEM_BASE)
    cls = next((c for c in FormworkError.__subclasses__() if c.slug == slug), FormworkError)
    base = {"type", "title", "status", "detail", "instance"}
    extensions = {k: v for k, v in problem.items() if k not in base}
    error = cls(str(problem.get("detail", "")), retry_after=retry_after)
    error.extensions = extensions
    if cls is FormworkError:  # a problem this process has no class for keeps what it said
        status = problem.get("status")
        error.status = status if isinstance(status, int) else 500
        error.slug = slug or FormworkError.slug
        error.title = str(problem.get("title", FormworkError.title))
    return error
