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

from formwork import logs
from formwork.errors import PROBLEM_BASE, FormworkError, InvalidInput
from formwork.validation import json_path

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


def problem_response(error: FormworkError, request: Request) -> JSONResponse:
    body = error.problem(instance=request.url.path)
    body["request_id"] = logs.request_id.get()
    headers = {}
    if error.retry_after is not None and math.isfinite(error.retry_after):
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return JSONResponse(body, status_code=error.status, headers=headers, media_type=MEDIA_TYPE)


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
    body: dict[str, JsonValue] = {
        "type": PROBLEM_BASE + str(exc.status_code),
        "title": str(exc.detail),
        "status": exc.status_code,
        "detail": str(exc.detail),
        "instance": request.url.path,
        "request_id": logs.request_id.get(),
    }
    return JSONResponse(body, status_code=exc.status_code, media_type=MEDIA_TYPE)


def install(app: FastAPI) -> None:
    app.add_exception_handler(FormworkError, on_formwork_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
