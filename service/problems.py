"""Every error as RFC 9457 problem+json: ours, FastAPI's request validation and HTTP errors.
The unexpected (a 500) is answered by ``middleware.RequestIdMiddleware``, with the request id."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import JsonValue
from starlette.exceptions import HTTPException
from starlette.routing import Match

from formwork import compat, logs
from formwork.errors import FormworkError, InvalidInput
from formwork.validation import json_path

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"
OPENAI_PATHS = ("/v1/models", "/v1/chat/completions")  # errors in OpenAI's envelope there
METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def problem_response(error: FormworkError, request: Request) -> JSONResponse:
    headers = {}
    if error.retry_after is not None and math.isfinite(error.retry_after):
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    if request.url.path.startswith(OPENAI_PATHS):
        body = compat.error_envelope(error, request_id=logs.request_id.get())
        status = 400 if error.status == 422 else error.status  # what OpenAI clients expect
        return JSONResponse(body, status_code=status, headers=headers)
    problem = error.problem(instance=request.url.path)
    problem["request_id"] = logs.request_id.get()
    return JSONResponse(problem, status_code=error.status, headers=headers, media_type=MEDIA_TYPE)


async def on_formwork_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FormworkError)
    if exc.status >= 500:
        log.warning("%s %s: %s", exc.status, exc.slug, exc.detail)
    return problem_response(exc, request)


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors: list[JsonValue] = [
        {
            "path": json_path(e["loc"][1:] if e["loc"][:1] == ("body",) else e["loc"]),
            "message": e["msg"],
        }
        for e in exc.errors()
    ]
    return problem_response(InvalidInput("the request is not valid", errors=errors), request)


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    error = FormworkError(str(exc.detail))
    error.status, error.slug, error.title = exc.status_code, str(exc.status_code), str(exc.detail)
    response = problem_response(error, request)
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:
        response.headers["Allow"] = allowed(request)
    return response


def allowed(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only one route's)."""
    routes = request.app.router.routes
    served = [
        method
        for method in METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
               for route in routes)
    ]  # fmt: skip
    return ", ".join(served)


def install(app: FastAPI) -> None:
    app.add_exception_handler(FormworkError, on_formwork_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
