"""``/v1/tasks``: registry, runs, cache, stats and failures."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response, status

from formwork import logs
from formwork.protocol import (
    CandidateReport,
    FailureRecord,
    Registered,
    RolloutDecision,
    RunRequest,
    RunResult,
    TaskSpec,
    TaskStats,
    TaskSummary,
    TaskVersion,
)
from formwork.stats import Window, task_stats

from ..bodies import OffLoopBody
from ..deps import (
    CandidatesDep,
    CanRead,
    CanRun,
    GuardDep,
    IsAdmin,
    KeysDep,
    MetricsDep,
    RegistryDep,
    RunnerDep,
    TaskName,
)
from ..disconnects import ClientGone, unless_disconnected
from ..openapi import problems

router = APIRouter(prefix="/v1/tasks", tags=["tasks"], route_class=OffLoopBody)
CLIENT_CLOSED = 499  # the client closed the request (nginx's code); never seen by a client


@router.post(
    "/{task}/run",
    dependencies=[CanRun],
    response_model=RunResult,
    responses=problems(400, 404, 413, 502, 503, 504),
)
async def run_task(
    task: TaskName,
    body: RunRequest,
    runner: RunnerDep,
    keys: KeysDep,
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    run = runner.run(
        task,
        body.input,
        body.options,
        request_id=logs.request_id.get(),
        any_route=keys.allows(authorization, "admin"),  # another model than the task's routes
    )
    try:
        result = await unless_disconnected(request.receive, run)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)  # nobody reads it
    # already a validated RunResult: serialize it once instead of having FastAPI re-validate it
    return Response(result.model_dump_json(), media_type="application/json")


@router.put(
    "/{task}",
    dependencies=[IsAdmin],
    status_code=status.HTTP_201_CREATED,
    responses=problems(
        400,
        413,
        503,
        also={200: {"model": Registered, "description": "A new version, or unchanged."}},
    ),
)
async def put_task(
    task: TaskName, spec: TaskSpec, registry: RegistryDep, response: Response
) -> Registered:
    registered = await registry.put(task, spec)
    response.status_code = status.HTTP_201_CREATED if registered.created else status.HTTP_200_OK
    return registered


@router.get("", dependencies=[CanRead])
async def list_tasks(registry: RegistryDep) -> list[TaskSummary]:
    return await registry.summaries()


@router.get("/{task}", dependencies=[CanRead], responses=problems(404, 503))
async def get_task(task: TaskName, registry: RegistryDep) -> TaskVersion:
    return await registry.get(task)


@router.get("/{task}/versions/{version}", dependencies=[CanRead], responses=problems(404, 503))
async def get_version(
    task: TaskName, version: Annotated[int, Path(ge=1)], registry: RegistryDep
) -> TaskVersion:
    return await registry.version(task, version)


@router.delete(
    "/{task}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[IsAdmin],
    responses=problems(404, 503),
)
async def delete_task(task: TaskName, registry: RegistryDep) -> None:
    await registry.delete(task)


@router.delete("/{task}/cache", dependencies=[IsAdmin], responses=problems(404, 503))
async def invalidate_cache(task: TaskName, registry: RegistryDep) -> dict[str, str | int]:
    generation = await registry.invalidate_cache(task)
    return {"task": task, "cache_generation": generation}


@router.get("/{task}/stats", dependencies=[CanRead], responses=problems(404, 503))
async def get_stats(
    task: TaskName,
    registry: RegistryDep,
    metrics: MetricsDep,
    guard: GuardDep,
    window: Annotated[Window, Query(description="The time window.")] = "1h",
) -> TaskStats:
    current = await registry.get(task)
    stats = await task_stats(metrics, task, window)
    return stats.model_copy(update={"format_budget": await guard.status(current)})


@router.get("/{task}/failures", dependencies=[CanRead], responses=problems(404, 503))
async def get_failures(
    task: TaskName,
    registry: RegistryDep,
    metrics: MetricsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[FailureRecord]:
    await registry.get(task)
    return await metrics.failures(task, limit)


@router.get("/{task}/candidate", dependencies=[CanRead], responses=problems(404, 503))
async def get_candidate(
    task: TaskName, registry: RegistryDep, candidates: CandidatesDep
) -> CandidateReport:
    """The current version's candidate, its live figures against the current route and what
    its rule waits for; the watch when this version was made by a promotion."""
    return await candidates.report(await registry.get(task))


@router.get("/{task}/decisions", dependencies=[CanRead], responses=problems(404, 503))
async def get_decisions(
    task: TaskName,
    registry: RegistryDep,
    candidates: CandidatesDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[RolloutDecision]:
    """Promotions and rollbacks made by candidates' rules, newest first, with their evidence."""
    await registry.get(task)
    return await candidates.rollout.decisions(task, limit)
