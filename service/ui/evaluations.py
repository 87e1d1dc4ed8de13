"""Evaluate a candidate model against the task's current route on held-out rows, and promote it
(admin), from the dashboard: the same ``Evaluator`` and ``promote`` as ``formwork train eval``
and ``promote``. The runs go through a runner whose attempts stay out of the task's stats.
The comparison waits in ``Comparisons`` for the promote button."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Path, Request, Response

from formwork.assembly import unrecorded_runner
from formwork.errors import FormworkError, InvalidInput
from formwork.protocol import MODEL_REF, Route
from training.dataset import parse_jsonl
from training.evaluation import Evaluator
from training.promotion import judge, promote

from ..deps import CoreDep, RegistryDep, TaskName
from .deps import AdminDep, UiDep
from .render import render

router = APIRouter(prefix="/ui", include_in_schema=False)
ROWS_MAX = 200
CONCURRENCY = 4


@router.post("/tasks/{task}/evaluate")
async def evaluate(
    request: Request,
    task: TaskName,
    ui: UiDep,
    viewer: AdminDep,
    core: CoreDep,
    candidate: Annotated[str, Form(pattern=MODEL_REF, max_length=200)],
    test: Annotated[str, Form(max_length=1_000_000)],
    prompt: Annotated[str, Form(pattern="^(finetuned|instructed)$")] = "finetuned",
    constrained: Annotated[bool, Form()] = False,
) -> Response:
    context: dict[str, object] = {"task": task, "comparison": None, "problem": None}
    try:
        rows = parse_jsonl(test.splitlines(), name="test", label="the test rows")
        if not rows or len(rows) > ROWS_MAX:
            raise InvalidInput(
                f"give 1 to {ROWS_MAX} test rows",
                errors=[{"path": "$.test", "message": f"{len(rows)} rows"}],
            )
        route = Route.model_validate(
            {"model": candidate, "prompt": prompt, "constrained": constrained}
        )
        spec = await core.registry.get(task)
        evaluator = Evaluator(unrecorded_runner(core), concurrency=CONCURRENCY)
        comparison = await evaluator.compare(spec, route, rows, test=f"{len(rows)} pasted rows")
        context.update(
            comparison=comparison, key=ui.comparisons.keep(comparison), verdict=judge(comparison)
        )
    except FormworkError as e:
        context["problem"] = e.problem(instance=request.url.path)
    return render(request, ui, "_evaluation.html", viewer, context)


@router.post("/evaluations/{key}/promote")
async def promote_candidate(
    request: Request,
    key: Annotated[str, Path(max_length=32)],
    ui: UiDep,
    viewer: AdminDep,
    registry: RegistryDep,
    force: Annotated[bool, Form()] = False,
) -> Response:
    context: dict[str, object] = {"decision": None, "problem": None}
    try:
        context["decision"] = await promote(registry, ui.comparisons.get(key), force=force)
    except FormworkError as e:
        context["problem"] = e.problem(instance=request.url.path)
    return render(request, ui, "_promotion.html", viewer, context)
