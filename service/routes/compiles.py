"""Compiles: dataset → checks → fine-tune → held-out eval → promote, in the background."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from formwork.protocol import CompileJob, CompileRequest
from training.compiles import CompileNotFound

from ..deps import CanRead, CompilationsDep, IsAdmin, RegistryDep, TaskName
from ..openapi import problems

router = APIRouter(prefix="/v1", tags=["compiles"])
CompileId = Annotated[str, Path(pattern="^cmp-[0-9a-f]{16}$", description="Compile id.")]


@router.post(
    "/tasks/{task}/compile",
    dependencies=[IsAdmin],
    status_code=status.HTTP_202_ACCEPTED,
    responses=problems(
        400,
        404,
        413,
        422,
        502,
        503,
        also={200: {"model": CompileJob, "description": "Already running in another process."}},
    ),
)
async def start_compile(
    task: TaskName, body: CompileRequest, compilations: CompilationsDep, response: Response
) -> CompileJob:
    """Start the compile these inputs name, or resume it at its first step not done (202);
    200 with its record when another process is driving it. Follow it with ``GET``."""
    job, started = await compilations.start(task, body)
    response.status_code = status.HTTP_202_ACCEPTED if started else status.HTTP_200_OK
    return job


@router.get("/tasks/{task}/compile", dependencies=[CanRead], responses=problems(404, 503))
async def latest_compile(
    task: TaskName, registry: RegistryDep, compilations: CompilationsDep
) -> CompileJob:
    """The task's compile updated last, its fine-tune brought up to date."""
    await registry.get(task)
    job = await compilations.latest(task)
    if job is None:
        raise CompileNotFound(f"task {task!r} has no compile")
    return job


@router.get("/compiles/{compile_id}", dependencies=[CanRead], responses=problems(404, 503))
async def get_compile(compile_id: CompileId, compilations: CompilationsDep) -> CompileJob:
    """A compile's record: its steps, the running step's progress, its results."""
    return await compilations.get(compile_id)


@router.post(
    "/compiles/{compile_id}/cancel",
    dependencies=[IsAdmin],
    status_code=status.HTTP_202_ACCEPTED,
    responses=problems(404, 502, 503),
)
async def cancel_compile(compile_id: CompileId, compilations: CompilationsDep) -> CompileJob:
    """Cancel the compile and its running fine-tune; a compile driven by another process stops
    at its next check."""
    return await compilations.cancel(compile_id)
