"""Fine-tune jobs: start one from a task's examples (and its request log), inspect them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from formwork.protocol import FinetuneJob, FinetuneRequest

from ..deps import CanRead, IsAdmin, JobsDep, LauncherDep, RegistryDep, TaskName
from ..openapi import problems

router = APIRouter(prefix="/v1", tags=["finetunes"])


@router.post(
    "/tasks/{task}/finetunes",
    dependencies=[IsAdmin],
    status_code=status.HTTP_201_CREATED,
    responses=problems(
        400,
        404,
        413,
        502,
        503,
        also={200: {"model": FinetuneJob, "description": "The job this dataset already has."}},
    ),
)
async def start_finetune(
    task: TaskName,
    body: FinetuneRequest,
    registry: RegistryDep,
    launcher: LauncherDep,
    response: Response,
) -> FinetuneJob:
    """Check the dataset, then start a job: 201, or 200 with the job this dataset already has."""
    spec = await registry.get(task)
    launched = await launcher.launch(task, spec, body)
    response.status_code = status.HTTP_201_CREATED if launched.created else status.HTTP_200_OK
    return launched.job


@router.get("/tasks/{task}/finetunes", dependencies=[CanRead], responses=problems(404, 503))
async def list_finetunes(task: TaskName, registry: RegistryDep, jobs: JobsDep) -> list[FinetuneJob]:
    """The task's jobs as last seen; ``GET /v1/finetunes/{id}`` brings one up to date."""
    await registry.get(task)
    return await jobs.of_task(task)


@router.get("/finetunes/{job_id}", dependencies=[CanRead], responses=problems(404, 502, 503))
async def get_finetune(job_id: Annotated[str, Path(max_length=64)], jobs: JobsDep) -> FinetuneJob:
    """The job, brought up to date with its provider while it runs."""
    return await jobs.refresh(job_id)
