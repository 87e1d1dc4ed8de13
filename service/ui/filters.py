"""Jinja filters for the dashboard: numbers as people read them, and SVG sparklines."""

from __future__ import annotations

import datetime as dt
import json

from markupsafe import Markup

from formwork.protocol import RolloutDecision

DASH = "—"


def pct(value: float | None) -> str:
    return DASH if value is None else f"{value * 100:.1f} %"


def ms(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:.1f} ms" if value < 10 else f"{value:,.0f} ms"


def usd(value: float | None) -> str:
    if value is None:
        return "not priced"
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def when(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def sparkline(values: list[float | None], threshold: float, *, width: int = 120) -> Markup:
    """An inline SVG line of rates (0 at the bottom), the threshold dashed; gaps stay gaps."""
    height = 24
    top = max([threshold * 1.5, *(v for v in values if v is not None)]) or 1.0
    step = width / max(len(values) - 1, 1)

    def y(v: float) -> float:
        return round(height - 1 - (height - 2) * min(v / top, 1.0), 1)

    runs: list[list[tuple[float, float]]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            runs.append([])
        else:
            runs[-1].append((round(i * step, 1), y(v)))
    lines = "".join(_run_svg(r) for r in runs if r)
    limit = y(threshold)
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="format-failure rate over the window">'
        f'<line x1="0" x2="{width}" y1="{limit}" y2="{limit}" class="spark-limit"/>{lines}</svg>'
    )


def _run_svg(points: list[tuple[float, float]]) -> str:
    if len(points) == 1:
        ((x, y),) = points
        return f'<circle cx="{x}" cy="{y}" r="1.5" class="spark-dot"/>'
    joined = " ".join(f"{x},{y}" for x, y in points)
    return f'<polyline points="{joined}" class="spark-line"/>'


def evidence(decision: RolloutDecision) -> str:
    """A decision's evidence (the rule, the figures or the watch, the routes) as JSON text."""
    fields = {"rule", "figures", "watch", "watched", "routes"}
    return json.dumps(decision.model_dump(mode="json", include=fields), indent=2)


FILTERS = {
    "pct": pct,
    "ms": ms,
    "usd": usd,
    "when": when,
    "sparkline": sparkline,
    "evidence": evidence,
}
