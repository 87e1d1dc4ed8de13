"""The dashboard's pages and the fragments they refresh (``GET /ui...``, scope ``read``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse

from ..deps import TaskName
from .deps import BoardDep, UiDep, ViewerDep
from .render import render
from .views import SORT_KEYS, diff, sort_rows

router = APIRouter(prefix="/ui", include_in_schema=False)
Window = Annotated[str, Query(description="15m, 1h, 24h or 7d")]
Sort = Annotated[str, Query(pattern="^(" + "|".join(SORT_KEYS) + ")$")]
Text = Annotated[str, Query(max_length=200)]


@router.get("/")
async def slash() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=308)


@router.get("")
async def overview(
    request: Request,
    ui: UiDep,
    viewer: ViewerDep,
    board: BoardDep,
    window: Window = "1h",
    sort: Sort = "failure_rate",
    desc: bool = True,
) -> Response:
    rows = sort_rows(await board.overview(window), sort, descending=desc)
    fragment = request.headers.get("hx-request") == "true"
    template = "_overview_table.html" if fragment else "overview.html"
    return render(
        request,
        ui,
        template,
        viewer,
        rows=rows,
        window=window,
        sort=sort,
        desc=desc,
        windows=board.windows(),
        updated=board.now(),
    )


@router.get("/tasks/{task}")
async def task_page(
    request: Request,
    task: TaskName,
    ui: UiDep,
    viewer: ViewerDep,
    board: BoardDep,
    window: Window = "1h",
) -> Response:
    page = await board.task_page(task, window)
    fragment = request.headers.get("hx-request") == "true"
    return render(
        request,
        ui,
        "_task_live.html" if fragment else "task.html",
        viewer,
        page=page,
        windows=board.windows(),
        versions=board.version_numbers(page.task),
        now=board.now(),
    )


@router.get("/tasks/{task}/failures")
async def failures(
    request: Request,
    task: TaskName,
    ui: UiDep,
    viewer: ViewerDep,
    board: BoardDep,
    model: Text = "",
    outcome: Text = "",
    path: Text = "",
) -> Response:
    found = await board.failures(task, model=model, outcome=outcome, path=path)
    return render(request, ui, "_failures.html", viewer, task=task, failures=found)


@router.get("/tasks/{task}/diff")
async def version_diff(
    request: Request,
    task: TaskName,
    ui: UiDep,
    viewer: ViewerDep,
    board: BoardDep,
    a: Annotated[int, Query(ge=1)],
    b: Annotated[int, Query(ge=1)],
) -> Response:
    old, new = await board.version(task, a), await board.version(task, b)
    return render(request, ui, "_diff.html", viewer, lines=diff(old, new), a=a, b=b)


@router.get("/tasks/{task}/finetunes")
async def finetunes(
    request: Request, task: TaskName, ui: UiDep, viewer: ViewerDep, board: BoardDep
) -> Response:
    jobs = await board.jobs(task)
    return render(request, ui, "_finetunes.html", viewer, task=task, jobs=jobs)
