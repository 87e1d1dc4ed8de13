"""Promotion: the candidate route goes first in the task's routes, as a new task version, when
the held-out evaluation shows it no worse than the current route on validity and on accuracy.

``force`` promotes regardless; either way the decision says why, with both numbers side by side.
The route evaluated as current stays behind the candidate as its fallback. ``train promote
--evaluation FILE`` promotes on a report ``train eval --out FILE`` wrote, without evaluating
again (``train compile`` promotes on its own eval step's report the same way).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ValidationError

from formwork.assembly import open_core
from formwork.config import Settings
from formwork.errors import InvalidInput
from formwork.protocol import Route, TaskSpec
from formwork.registry import Registry
from formwork.rollout import promoted_routes

from .evaluation import Comparison, add_route_arguments, compare_from_args, render

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


class Decision(BaseModel):
    task: str
    promoted: bool
    forced: bool
    reason: str
    evaluated_version: int
    version: int | None  # the new task version, when promoted
    routes: list[Route]  # the task's routes after the decision
    comparison: Comparison


def judge(comparison: Comparison) -> tuple[bool, str]:
    """Whether the candidate is no worse on validity and accuracy, and the numbers that say so."""
    new, old = comparison.candidate, comparison.current
    measures = [
        ("schema-valid", new.valid_rate, old.valid_rate),
        ("field accuracy", new.field_accuracy, old.field_accuracy),
    ]
    numbers = "; ".join(f"{name} {a:.1%} vs {b:.1%}" for name, a, b in measures)
    worse = [name for name, a, b in measures if a < b]
    side = f"(candidate {new.route.model} vs current {old.route.model})"
    if worse:
        return False, f"worse on {' and '.join(worse)}: {numbers} {side}"
    return True, f"not worse on validity or accuracy: {numbers} {side}"


async def promote(registry: Registry, comparison: Comparison, *, force: bool = False) -> Decision:
    """Register the new version when the comparison allows it (or ``force``); say why."""
    task = await registry.get(comparison.task)
    if task.version != comparison.version:
        raise InvalidInput(
            f"task {task.name!r} is at version {task.version}, but version "
            f"{comparison.version} was evaluated; evaluate again",
            errors=[{"path": "$.version", "message": "changed since the evaluation"}],
        )
    better, reason = judge(comparison)
    decision = Decision(
        task=task.name,
        promoted=False,
        forced=False,
        reason=reason,
        evaluated_version=task.version,
        version=None,
        routes=task.routes,
        comparison=comparison,
    )
    if not better and not force:
        return decision
    routes = promoted_routes(task.routes, comparison.candidate.route, comparison.current.route)
    spec = TaskSpec.model_validate(task.model_dump(include=set(TaskSpec.model_fields)))
    update: dict[str, object] = {"routes": routes}
    if spec.candidate is not None and spec.candidate.route.model == routes[0].model:
        update["candidate"] = None  # the live candidate is the one promoted by hand
    registered = await registry.put(task.name, spec.model_copy(update=update))
    return decision.model_copy(
        update={
            "promoted": True,
            "forced": not better,
            "reason": f"forced although {reason}" if not better else reason,
            "version": registered.version,
            "routes": routes,
        }
    )


def describe(decision: Decision) -> str:
    if decision.promoted:
        head = f"promoted: {decision.task} version {decision.version} routes first to "
        head += decision.routes[0].model
    else:
        head = f"not promoted: {decision.task} stays at version {decision.evaluated_version}"
    return f"{head}\n  {decision.reason}"


async def evaluation_from_args(args: argparse.Namespace) -> Comparison | None:
    """The evaluation ``--evaluation`` names (``train eval --out``), checked against the task
    and candidate given; None when the command is to evaluate first."""
    if args.evaluation is None:
        if args.candidate is None or args.test is None:
            raise SystemExit("formwork: give --evaluation FILE, or --candidate and --test")
        return None
    text = await asyncio.to_thread(args.evaluation.read_text)
    try:
        comparison = Comparison.model_validate_json(text)
    except ValidationError as e:
        raise InvalidInput(
            f"{args.evaluation} is not an evaluation report (train eval --out)",
            errors=[{"path": str(args.evaluation), "message": str(e.errors()[0]["msg"])}],
        ) from e
    if comparison.task != args.task:
        raise SystemExit(f"formwork: {args.evaluation} evaluates task {comparison.task!r}")
    if args.candidate is not None and args.candidate != comparison.candidate.route.model:
        raise SystemExit(
            f"formwork: {args.evaluation} evaluates {comparison.candidate.route.model}, "
            f"not {args.candidate}"
        )
    return comparison


async def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    given = await evaluation_from_args(args)
    local: Literal["load", "skip"] = "load" if given is None else "skip"  # a report: no model
    async with open_core(settings, local=local, record=False) as core:
        comparison = given or await compare_from_args(args, core)
        decision = await promote(core.registry, comparison, force=args.force)
    print(render(comparison))
    print(describe(decision))
    return 0 if decision.promoted else 1


def add_promote_action(actions: Subparsers) -> None:
    parser = actions.add_parser(
        "promote", help="evaluate, then route the task to the candidate when it is no worse"
    )
    add_route_arguments(parser, required=False)
    parser.add_argument(
        "--evaluation",
        type=Path,
        help="promote on this evaluation (`train eval --out`) instead of evaluating again",
    )
    parser.add_argument("--force", action="store_true", help="promote even when it is worse")
    parser.set_defaults(handler=cmd_promote)
