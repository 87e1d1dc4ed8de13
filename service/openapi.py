"""The OpenAPI document.

Every operation lists each status it answers; every error is ``application/problem+json``
(the ``Problem`` schema, FastAPI's own 422 included); with keys configured the bearer scheme is
declared on each operation that needs a key, and ``/openapi.json`` needs the ``read`` scope
itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from formwork.protocol import Problem

from .deps import CanRead

PROBLEM_MEDIA = "application/problem+json"
DESCRIPTIONS = {
    400: "The body cannot be parsed, or the task definition is invalid (each error named).",
    401: "Missing or unknown API key.",
    403: "The key lacks the scope (or, with no keys configured, the client is not on loopback).",
    404: "No such task, version or job.",
    413: "The request body is larger than the limit.",
    422: "The request or the task input is not valid: each error named with its path.",
    429: "Too many requests.",
    502: "No route produced valid output: every attempt listed.",
    503: "Redis or every model is unavailable now; may carry Retry-After.",
    504: "The request deadline passed: the attempts so far listed.",
}
Responses = dict[int | str, dict[str, Any]]


OPENAI_ERRORS = "x-openai-errors"  # an operation that answers errors in OpenAI's envelope
OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
                "formwork": {"$ref": "#/components/schemas/Problem"},
            },
        }
    },
}


def problem(code: int) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Problem"}
    return {"description": DESCRIPTIONS[code], "content": {PROBLEM_MEDIA: {"schema": schema}}}


def openai_error(code: int) -> dict[str, Any]:
    """An error in OpenAI's envelope (``application/json``), Formwork's problem inside."""
    return {
        "description": DESCRIPTIONS[code],
        "content": {"application/json": {"schema": OPENAI_ERROR}},
    }


def problems(*codes: int, also: Responses | None = None) -> Responses:
    """``responses=`` for a route: the problem+json answers it may give besides 401/403/422,
    and ``also`` its other successful answers."""
    return {**(also or {}), **{code: problem(code) for code in codes}}


def document(app: FastAPI, *, keys: bool) -> dict[str, Any]:
    """The OpenAPI document, built once."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    found = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in found.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas["Problem"] = found
    if not keys:  # no key is asked for: the loopback rule applies instead
        components.pop("securitySchemes", None)
    for item in schema["paths"].values():
        for operation in item.values():
            _complete(operation, keys=keys)
    app.openapi_schema = schema
    return schema


def _complete(operation: dict[str, Any], *, keys: bool) -> None:
    responses = operation["responses"]
    error = openai_error if operation.pop(OPENAI_ERRORS, False) else problem
    responses["403"] = error(403)
    if "422" in responses:
        if error is openai_error:  # OpenAI clients expect 400 for an invalid request
            del responses["422"]
            responses["400"] = error(400)
        else:
            responses["422"] = error(422)
    if "security" in operation:
        if keys:
            responses["401"] = error(401)
        else:
            del operation["security"]


def docs_router(app: FastAPI, *, keys: bool) -> APIRouter:
    """``/openapi.json``, needing the ``read`` scope (the pages that show it, ``/docs`` and
    ``/redoc``, are the dashboard's: ``service/ui/docs.py``)."""
    router = APIRouter(include_in_schema=False, dependencies=[CanRead])

    @router.get("/openapi.json")
    async def openapi() -> JSONResponse:
        return JSONResponse(document(app, keys=keys))

    return router


def install(app: FastAPI, *, keys: bool) -> None:
    app.include_router(docs_router(app, keys=keys))
    app.openapi = lambda: document(app, keys=keys)  # type: ignore[method-assign]
