"""Large JSON request bodies parsed off the event loop.

FastAPI decodes a JSON body and validates it against the route's model on the event loop: for a
body of a few hundred kilobytes (a large task definition, a large input) that holds the loop for
tens of milliseconds. ``OffLoopBody`` routes hand a body of at least ``off_loop_body_bytes`` to
a worker process, which decodes and validates it there and sends back the model instance (that
FastAPI then takes as it is) or the same errors FastAPI would have raised. The OpenAPI document
is unchanged: the route and its body model are FastAPI's own.
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from formwork.workers import WorkerLost

from .deps import validators_of

UNPARSABLE = "There was an error parsing the body"  # FastAPI's words for a body it cannot read


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a body was refused, as FastAPI would say it: its errors (422), or none (400)."""

    errors: list[dict[str, Any]] | None


def parse(model: type[BaseModel], body: bytes) -> BaseModel | Refused:
    """(In a worker process) ``body`` as ``model``, the way FastAPI reads a JSON body."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        error = {"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error"}
        return Refused([{**error, "input": {}, "ctx": {"error": e.msg}}])
    except (ValueError, RecursionError):  # not UTF-8, or nested too deep for the decoder
        return Refused(None)
    if value is None:  # FastAPI: a required body that is null is missing
        return Refused([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        return model.model_validate(value, from_attributes=True)
    except ValidationError as e:
        return Refused(
            [
                {"type": err["type"], "loc": ("body", *err["loc"]), "msg": err["msg"]}
                for err in e.errors(include_url=False)
            ]
        )


def _is_json(request: Request) -> bool:
    """Whether FastAPI would decode this body as JSON (its own test)."""
    content_type = request.headers.get("content-type")
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class OffLoopBody(APIRoute):
    """A route whose large JSON body is decoded and validated in a worker process."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        field = self.body_field
        model = field.field_info.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return handler
        body_model: type[BaseModel] = model

        async def parse_then_handle(request: Request) -> Response:
            await _parse_off_loop(request, body_model)
            return await handler(request)

        return parse_then_handle


async def _parse_off_loop(request: Request, model: type[BaseModel]) -> None:
    validators = validators_of(request)
    body = await request.body()
    if len(body) < validators.limits.off_loop_body_bytes or not _is_json(request):
        return
    try:
        parsed = await validators.off_loop(parse, model, body)
    except WorkerLost:
        return  # FastAPI reads it, as it reads a small body
    if isinstance(parsed, Refused):
        if parsed.errors is None:
            raise HTTPException(status_code=400, detail=UNPARSABLE)
        raise RequestValidationError(parsed.errors)
    # FastAPI takes the body from ``request.json()``, which returns what Starlette cached here;
    # an instance of the route's model then passes its validation as it is.
    request._json = parsed
