"""OpenAI-compatible endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Errors on these paths come in OpenAI's error envelope (``service.problems.OPENAI_PATHS``);
Formwork's own routes keep problem+json.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import JsonValue

from formwork import compat, logs
from formwork.errors import TaskNotFound

from ..bodies import OffLoopBody
from ..deps import CanRun, RegistryDep, RunnerDep
from ..openapi import OPENAI_ERRORS, openai_error

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[CanRun], route_class=OffLoopBody)
ENVELOPE = {OPENAI_ERRORS: True}


@router.get("/models", responses={503: openai_error(503)}, openapi_extra=ENVELOPE)
async def list_models(registry: RegistryDep) -> dict[str, JsonValue]:
    """Every task, as a model."""
    return compat.models(await registry.summaries())


@router.get(
    "/models/{model}",
    responses={404: openai_error(404), 503: openai_error(503)},
    openapi_extra=ENVELOPE,
)
async def get_model(model: str, registry: RegistryDep) -> dict[str, JsonValue]:
    name, _ = compat.task_ref(model)
    for summary in await registry.summaries():
        if summary.task == name:
            return compat.model_entry(summary)
    raise TaskNotFound(f"no task named {name!r}")


@router.post(
    "/chat/completions",
    responses={code: openai_error(code) for code in (400, 404, 413, 429, 502, 503, 504)},
    openapi_extra=ENVELOPE,
)
async def chat_completions(body: compat.ChatRequest, runner: RunnerDep) -> Response:
    """Run the task named by ``model`` on the last user message; the validated output is the
    assistant's content. With ``stream`` the answer is sent once it is validated."""
    name, _ = compat.task_ref(body.model)
    result = await runner.run(
        name, compat.run_input(body), compat.run_options(body), request_id=logs.request_id.get()
    )
    if not body.stream:
        return JSONResponse(compat.completion(body.model, result))
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    events = compat.stream_events(body.model, result, include_usage=include_usage)
    return StreamingResponse(events, media_type="text/event-stream")
