"""Model retirement: the dates providers have announced a model stops serving.

A route's date is its own ``retires_on``, else the table's: the built-in announcements (under
the OpenAI provider's name), the dates the providers' model lists report, and
``Settings.retirements``, each laid over the one before. A key is a model ref
(``provider/model-id``) and also covers the refs that continue it after a colon, as fine-tunes
do: ``openai/ft:gpt-4o-mini-2024-07-18`` covers ``openai/ft:gpt-4o-mini-2024-07-18:acme:x:1``.
From ``warning_days`` before its date a route is warned about (registration answer, dashboard,
``formwork_route_retires_in_days``); from its date on, runs skip it rather than call it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping

from .protocol import Route, TaskSpec

log = logging.getLogger(__name__)

# Announced by OpenAI, by model id (keyed under the OpenAI provider's name, ``openai`` unless
# ``training.openai_provider`` says otherwise): fine-tunes of gpt-4o-mini-2024-07-18 stop
# serving on 2027-01-14.
OPENAI_RETIREMENTS: dict[str, dt.date] = {
    "ft:gpt-4o-mini-2024-07-18": dt.date(2027, 1, 14),
}


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


class Retirements:
    def __init__(
        self,
        table: Mapping[str, dt.date] | None = None,
        *,
        warning_days: int = 30,
        openai_provider: str = "openai",
        today: Callable[[], dt.date] = utc_today,
    ) -> None:
        announced = {f"{openai_provider}/{m}": d for m, d in OPENAI_RETIREMENTS.items()}
        # looked up in order: configured, reported by the providers, announced
        self.layers: list[dict[str, dt.date]] = [dict(table or {}), {}, announced]
        self.openai_provider = openai_provider
        self.warning_days = warning_days
        self.today = today
        self._said: set[tuple[str, str]] = set()

    def reported(self, dates: Mapping[str, dt.date]) -> None:
        """Dates the providers' model lists report, by model ref: over the built-in ones, under
        the configured ones."""
        self.layers[1] = dict(dates)

    def date_of(self, route: Route) -> dt.date | None:
        """The route's own date, else the table's for its model."""
        return route.retires_on or self.date_of_model(route.model)

    def date_of_model(self, ref: str) -> dt.date | None:
        """The date for a model ref: from the first layer with a key that covers it (there, the
        longest such key)."""
        for layer in self.layers:
            keys = [k for k in layer if ref == k or ref.startswith(k + ":")]
            if keys:
                return layer[max(keys, key=len)]
        return None

    def days_left(self, route: Route) -> int | None:
        """Days until the route's model retires (0 on the day, negative after); None: no date."""
        when = self.date_of(route)
        return None if when is None else (when - self.today()).days

    def retired(self, route: Route) -> bool:
        days = self.days_left(route)
        return days is not None and days <= 0

    def live(self, task: str, routes: list[Route]) -> tuple[list[Route], list[Route]]:
        """The routes still serving and those retired; a retired one is logged once per
        process."""
        live: list[Route] = []
        gone: list[Route] = []
        for route in routes:
            (gone if self.retired(route) else live).append(route)
        for route in gone:
            if (task, route.model) not in self._said:
                self._said.add((task, route.model))
                log.warning(
                    "task %s: route %s retired on %s: skipped",
                    task, route.model, self.date_of(route),
                )  # fmt: skip
        return live, gone

    def note(self, route: Route) -> str | None:
        """What to say about a route's retirement, if it is near or past."""
        when, days = self.date_of(route), self.days_left(route)
        if when is None or days is None or days > self.warning_days:
            return None
        if days <= 0:
            return f"route {route.model!r}: its model retired on {when}, so the route is skipped"
        return (
            f"route {route.model!r}: its model retires on {when} ({days} days from now); "
            "the route is skipped from that day: register a replacement"
        )

    def warnings(self, spec: TaskSpec) -> list[str]:
        """What a registration should know about its routes' retirement."""
        return [note for route in spec.routes if (note := self.note(route))]
