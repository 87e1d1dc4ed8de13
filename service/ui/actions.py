"""What the dashboard does: sign in and out, run a task ("try it"), start and cancel fine-tunes.

Each state-changing request needs its scope and the session's CSRF token (``acting``); the work
is done by the same objects the API uses."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Form, Path, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import JsonValue, ValidationError

from formwork import logs
from formwork.errors import FormworkError, InvalidInput
from formwork.protocol import FinetuneRequest, RunOptions, Source

from ..deps import JobsDep, LauncherDep, RegistryDep, RunnerDep, TaskName
from .deps import AdminDep, BoardDep, CanRunDep, SignedInDep, UiDep
from .render import render, set_session
from .session import COOKIE, COOKIE_PATH

router = APIRouter(prefix="/ui", include_in_schema=False)
Field = Annotated[str, Form(max_length=100_000)]


def _next(target: str) -> str:
    """Only a dashboard path: never an open redirect."""
    return target if target.startswith("/ui") and not target.startswith("//") else "/ui"


@router.get("/signin")
async def signin_page(request: Request, ui: UiDep, next: str = "/ui") -> Response:
    if not ui.sessions.auth_enabled:
        return RedirectResponse(_next(next), status_code=303)
    return render(request, ui, "signin.html", None, next=_next(next), error=None)


@router.post("/signin")
async def signin(
    request: Request,
    ui: UiDep,
    key: Annotated[str, Form(max_length=512)],
    next: Annotated[str, Form(max_length=2000)] = "/ui",
) -> Response:
    viewer = ui.sessions.sign_in(key)
    if viewer is None or not viewer.can("read"):
        error = "unknown API key" if viewer is None else "this key lacks the 'read' scope"
        status = 401 if viewer is None else 403
        context = {"next": _next(next), "error": error}
        return render(request, ui, "signin.html", None, context, status_code=status)
    response = RedirectResponse(_next(next), status_code=303)
    set_session(response, request, ui, viewer.cookie or "")
    return response


@router.post("/signout")
async def signout(viewer: SignedInDep) -> Response:
    response = RedirectResponse("/ui/signin", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


def parse_input(text: str) -> JsonValue:
    """JSON when the text is JSON, else the text itself (as ``formwork run`` does)."""
    try:
        value: JsonValue = json.loads(text)
    except ValueError:
        return text
    return value


@router.post("/tasks/{task}/try")
async def try_task(
    request: Request,
    task: TaskName,
    ui: UiDep,
    viewer: CanRunDep,
    runner: RunnerDep,
    input: Field,
    cache: Annotated[str, Form(pattern="^(use|refresh|bypass)$")] = "use",
) -> Response:
    context: dict[str, object] = {"result": None, "problem": None}
    try:
        options = RunOptions.model_validate({"cache": cache})
        result = await runner.run(
            task, parse_input(input), options, request_id=logs.request_id.get()
        )
        context["result"] = result
        context["pretty"] = json.dumps(result.output, indent=2, ensure_ascii=False)
    except FormworkError as e:
        context["problem"] = e.problem(instance=request.url.path)
    return render(request, ui, "_try_result.html", viewer, context)


@router.post("/tasks/{task}/finetunes")
async def start_finetune(
    request: Request,
    task: TaskName,
    ui: UiDep,
    viewer: AdminDep,
    registry: RegistryDep,
    launcher: LauncherDep,
    board: BoardDep,
    provider: Annotated[str, Form(max_length=64)],
    base_model: Annotated[str, Form(max_length=200)],
    harvest: Annotated[bool, Form()] = False,
) -> Response:
    message, problem = None, None
    try:
        body = _finetune_request(provider, base_model, harvest=harvest)
        launched = await launcher.launch(task, await registry.get(task), body)
        message = (
            f"started job {launched.job.id}"
            if launched.created
            else (f"this dataset already has job {launched.job.id}")
        )
    except FormworkError as e:
        problem = e.problem(instance=request.url.path)
    jobs = await board.jobs(task)
    context = {"task": task, "jobs": jobs, "message": message, "problem": problem}
    return render(request, ui, "_finetunes.html", viewer, context)


def _finetune_request(provider: str, base_model: str, *, harvest: bool) -> FinetuneRequest:
    try:
        return FinetuneRequest(
            provider=provider, base_model=base_model, source=Source(harvest=harvest)
        )
    except ValidationError as e:
        errors: list[JsonValue] = [
            {"path": "$." + ".".join(map(str, err["loc"])), "message": err["msg"]}
            for err in e.errors()
        ]
        raise InvalidInput("the fine-tune request is not valid", errors=errors) from e


@router.post("/finetunes/{job_id}/cancel")
async def cancel_finetune(
    request: Request,
    job_id: Annotated[str, Path(max_length=64)],
    ui: UiDep,
    viewer: AdminDep,
    jobs: JobsDep,
    board: BoardDep,
) -> Response:
    job = await jobs.cancel(job_id)
    return render(
        request,
        ui,
        "_finetunes.html",
        viewer,
        task=job.task,
        jobs=await board.jobs(job.task),
        message=f"job {job.id}: {job.status}",
        problem=None,
    )
