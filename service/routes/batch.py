"""Batches: many inputs of one task, answered in one response or run as a background job."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import JsonValue, ValidationError

from formwork import logs
from formwork.batch import run_batch, summary
from formwork.errors import InvalidInput
from formwork.protocol import BatchJob, BatchPage, BatchRequest, BatchResult

from ..bodies import OffLoopBody
from ..deps import BatchesDep, CanRun, RunnerDep, SettingsDep, TaskName
from ..openapi import problems

router = APIRouter(prefix="/v1", tags=["batches"], dependencies=[CanRun], route_class=OffLoopBody)
JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/x-jsonlines")


def inline_defs(schema: JsonValue, defs: dict[str, JsonValue] | None = None) -> JsonValue:
    """A pydantic JSON schema with its ``$defs`` inlined, for an OpenAPI document (where
    ``#/$defs/...`` references do not resolve)."""
    if isinstance(schema, dict):
        defs = schema.get("$defs", defs)  # type: ignore[assignment]
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and defs is not None:
            return inline_defs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: inline_defs(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [inline_defs(v, defs) for v in schema]
    return schema


BATCH_BODY: dict[str, JsonValue] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_defs(BatchRequest.model_json_schema())},
            **{
                t: {"schema": {"type": "string", "description": "one input a line"}}
                for t in JSONL_TYPES
            },
        },
    }
}


def too_many(count: int, limit: int, hint: str) -> InvalidInput:
    return InvalidInput(
        f"{count} inputs is more than the {limit} one batch takes; {hint}",
        errors=[{"path": "$.inputs", "message": f"at most {limit} items"}],
    )


@router.post("/tasks/{task}/batch", responses=problems(400, 404, 413, 503))
async def run_batch_now(
    task: TaskName, body: BatchRequest, runner: RunnerDep, settings: SettingsDep
) -> BatchResult:
    """Up to ``batch_max_items`` inputs through the run path; one item per input, in order."""
    if len(body.inputs) > settings.batch_max_items:
        raise too_many(len(body.inputs), settings.batch_max_items, "use POST .../batches")
    items = await run_batch(
        runner,
        task,
        body.inputs,
        body.options,
        concurrency=settings.batch_concurrency,
        request_id=logs.request_id.get(),
    )
    return summary(task, items)


async def read_batch(request: Request) -> BatchRequest:
    """A JSON ``BatchRequest``, or JSONL with one input a line."""
    raw = await request.body()
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind in JSONL_TYPES:
            lines = [line for line in raw.decode().splitlines() if line.strip()]
            inputs: list[JsonValue] = []
            for number, line in enumerate(lines, 1):
                try:
                    inputs.append(json.loads(line))
                except ValueError as e:
                    raise InvalidInput(
                        f"line {number} is not JSON",
                        errors=[{"path": f"$[{number - 1}]", "message": str(e)}],
                    ) from e
            return BatchRequest(inputs=inputs)
        return BatchRequest.model_validate_json(raw)
    except (ValidationError, UnicodeDecodeError) as e:
        detail = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
        raise InvalidInput(
            "the batch is not valid", errors=[{"path": "$", "message": detail}]
        ) from e


@router.post(
    "/tasks/{task}/batches",
    status_code=202,
    openapi_extra=BATCH_BODY,
    responses=problems(400, 404, 413, 422, 503),
)
async def start_batch(
    task: TaskName, request: Request, batches: BatchesDep, settings: SettingsDep
) -> BatchJob:
    """Start a background batch job (JSON or JSONL body); follow it at ``/v1/batches/{id}``."""
    body = await read_batch(request)
    if len(body.inputs) > settings.batch_job_max_items:
        raise too_many(len(body.inputs), settings.batch_job_max_items, "split it")
    return await batches.start(task, body.inputs, body.options)


@router.get("/batches/{batch_id}", responses=problems(404, 503))
async def get_batch(batch_id: Annotated[str, Path(max_length=64)], batches: BatchesDep) -> BatchJob:
    return await batches.get(batch_id)


@router.get("/batches/{batch_id}/results", responses=problems(404, 503))
async def batch_results(
    batch_id: Annotated[str, Path(max_length=64)],
    batches: BatchesDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> BatchPage:
    """The done items among ``offset`` .. ``offset + limit``, in input order."""
    return await batches.page(batch_id, offset=offset, limit=limit)
