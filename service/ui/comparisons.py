"""Evaluations awaiting promotion, kept in this process: the newest ``KEPT`` by id. On another
replica, or after a restart, evaluate again."""

from __future__ import annotations

import uuid
from collections import OrderedDict

from formwork.errors import InvalidInput
from training.evaluation import Comparison

KEPT = 20


class Comparisons:
    """The newest comparisons made in this process, by id."""

    def __init__(self) -> None:
        self._kept: OrderedDict[str, Comparison] = OrderedDict()

    def keep(self, comparison: Comparison) -> str:
        key = uuid.uuid4().hex[:16]
        self._kept[key] = comparison
        while len(self._kept) > KEPT:
            self._kept.popitem(last=False)
        return key

    def get(self, key: str) -> Comparison:
        found = self._kept.get(key)
        if found is None:
            raise InvalidInput(
                "this evaluation is no longer kept here; evaluate again",
                errors=[{"path": "$.evaluation", "message": f"unknown evaluation {key!r}"}],
            )
        return found
