"""The rule on raw sums, and promotion as a compare-and-set that one of two racing replicas wins."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from formwork.assembly import open_core
from formwork.candidates import Side, Tally, increments, unmet
from formwork.config import Settings
from formwork.errors import InvalidSchema
from formwork.protocol import Attempt, PromotionRule, Route, TaskSpec, Usage
from tests.service.helpers import OUTPUT, spec


def tally(**sums: int) -> Tally:
    found = Tally(sums=Counter(sums))
    found.seen["label"] = sums.get("references", 0)
    found.agreed["label"] = sums.pop("agreed", sums.get("references", 0))
    return found


def test_each_condition_holds_exactly_at_its_bound() -> None:
    rule = PromotionRule(
        min_comparisons=10, valid_tolerance=0.1, min_field_agreement=0.9, max_latency_ratio=2.0
    )
    at_bounds = dict(
        comparisons=10, cand_valid=8, cur_valid=9, references=10, cand_ms=2000, cur_ms=1000
    )
    assert unmet(rule, tally(**at_bounds, agreed=9)) == []
    assert unmet(rule, tally(**at_bounds | {"comparisons": 9, "cand_valid": 9}, agreed=9)) == [
        "9 of 10 comparisons"
    ]
    assert unmet(rule, tally(**at_bounds | {"cand_valid": 7}, agreed=9)) == [
        "schema-valid rate 70.0% below the current route's 90.0% (tolerance 10.0%)"
    ]
    assert unmet(rule, tally(**at_bounds, agreed=8)) == ["field agreement 80.0% under 90.0%"]
    assert unmet(rule, tally(**at_bounds | {"cand_ms": 2001}, agreed=9)) == [
        "mean latency 200 ms over 2x the current route's 100 ms"
    ]
    assert unmet(rule, Tally()) == ["0 of 10 comparisons"]


def test_a_side_is_valid_only_when_its_last_attempt_is() -> None:
    def tried(*outcomes: str) -> list[Attempt]:
        usage = Usage(prompt_tokens=10, completion_tokens=5)
        return [Attempt(model="up/x", outcome=o, latency_ms=7, usage=usage) for o in outcomes]  # type: ignore[arg-type]

    assert Side.of(tried("schema_violation", "valid"), OUTPUT) == Side(True, OUTPUT, 14, 20, 10)
    assert Side.of(tried("valid", "timeout"), OUTPUT) == Side(False, None, 14, 20, 10)
    assert Side.of([], None).valid is False
    current = Side(True, {"a": 1, "b": 2}, 10, 1, 1)
    assert increments(Side(True, {"a": 1, "b": 3}, 20, 2, 2), current) == {
        "comparisons": 1,
        "cand_valid": 1,
        "cur_valid": 1,
        "cand_ms": 20,
        "cur_ms": 10,
        "cand_in": 2,
        "cur_in": 1,
        "cand_out": 2,
        "cur_out": 1,
        "references": 1,
        "exact": 0,
        "seen a": 1,
        "agreed a": 1,
        "seen b": 1,
        "agreed b": 0,
    }
    assert "references" not in increments(current, Side(False, None, 0, 0, 0))


async def test_of_two_racing_replicas_one_promotes(settings: Settings, unique_name: str) -> None:
    body = spec("up/primary", candidate={"route": {"model": "up/cand"}})
    async with (
        open_core(settings, local="skip") as one,
        open_core(settings, local="skip") as two,
    ):
        await one.registry.put(unique_name, TaskSpec.model_validate(body))
        task = await one.registry.get(unique_name)
        figures = Tally(sums=Counter(comparisons=1)).figures(1, "up/cand")
        made = await asyncio.gather(
            *(core.candidates.rollout.promote(task, figures) for core in (one, two, one, two))
        )
        assert sorted(made, key=lambda v: v or 0) == [None, None, None, 2]
        decisions = await two.candidates.rollout.decisions(unique_name, 10)
        assert [(d.action, d.from_version, d.version) for d in decisions] == [("promoted", 1, 2)]
        promoted = await two.registry.get(unique_name)
        assert [r.model for r in promoted.routes] == ["up/cand", "up/primary"]
        assert promoted.watch is not None
        assert promoted.watch.promoted_from == 1


async def test_a_built_definition_whose_candidate_is_a_route_is_refused(
    settings: Settings, unique_name: str
) -> None:
    parsed = TaskSpec.model_validate(spec("up/primary", candidate={"route": {"model": "up/c"}}))
    built = parsed.model_copy(update={"routes": [Route(model="up/c")]})  # no validation
    async with open_core(settings, local="skip") as core:
        with pytest.raises(InvalidSchema) as raised:
            await core.registry.put(unique_name, built)
    assert raised.value.detail == "a candidate must be a model the task does not route to"
