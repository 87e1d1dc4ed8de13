"""The format tax and its budget, computed from decoded counters.

**The format tax** of a request is what it spent beyond one valid first attempt: every attempt
it made except its first attempt when that attempt's output was used (valid, or repaired by the
lenient parser, which costs no call). So a request answered by its first attempt pays nothing;
one answered after a re-ask pays both attempts (the first bought nothing, the re-ask is extra);
one that fell back pays every attempt on every route, the fallback's answer included; one that
failed pays everything it tried. An attempt counts its prompt and completion tokens as the
provider reported them, its latency in milliseconds (waits between attempts are not counted) and
its price (``prices.py``: the embedded model costs nothing, an unknown model has no price).
Per-request means are over the requests that reached a model: cache hits, single-flight
followers among them, are left out.

**A budget** (``TaskSpec.format_budget``) bounds, over its window, the mean tax tokens per
request that reached a model (``max_extra_tokens_per_request``) and the share of those requests
that fell back to a later route, answered there or not (``max_fallback_share``). Below
``min_requests`` requests in the window a task is never over.
"""

from __future__ import annotations

from .counters import ModelCounts, TaskCounts
from .prices import Prices
from .protocol import BudgetFigure, BudgetLimitName, BudgetStatus, FormatBudget, FormatTax


def _mean(part: float, whole: int, digits: int = 2) -> float | None:
    return round(part / whole, digits) if whole else None


def model_requests(counts: TaskCounts) -> int:
    """Requests that reached a model: the denominator of every per-request figure."""
    return max(counts.requests - counts.hits, 0)


def tax_of(counts: ModelCounts, usd: float | None, requests: int) -> FormatTax:
    tokens = counts.tax_prompt_tokens + counts.tax_completion_tokens
    return FormatTax(
        attempts=counts.tax_attempts,
        prompt_tokens=counts.tax_prompt_tokens,
        completion_tokens=counts.tax_completion_tokens,
        ms=counts.tax_ms,
        usd=None if usd is None else round(usd, 6),
        tokens_per_request=_mean(tokens, requests),
        ms_per_request=_mean(counts.tax_ms, requests),
        usd_per_request=None if usd is None else _mean(usd, requests, 8),
    )


def model_usd(model: str, counts: ModelCounts, prices: Prices) -> float | None:
    return prices.usd(model, counts.tax_prompt_tokens, counts.tax_completion_tokens)


def format_taxes(counts: TaskCounts, prices: Prices) -> tuple[dict[str, FormatTax], FormatTax]:
    """The tax per model and in total; the total's price is None when a taxed model has none."""
    requests = model_requests(counts)
    per_model: dict[str, FormatTax] = {}
    total_usd: float | None = 0.0
    for model, c in sorted(counts.models.items()):
        usd = model_usd(model, c, prices)
        per_model[model] = tax_of(c, usd, requests)
        if usd is None and c.tax_attempts:
            total_usd = None
        elif total_usd is not None and usd is not None:
            total_usd += usd
    return per_model, tax_of(counts.total(), total_usd, requests)


def budget_status(budget: FormatBudget, counts: TaskCounts) -> BudgetStatus:
    """The budget against the counters of its window."""
    requests = model_requests(counts)
    total = counts.total()
    values: dict[BudgetLimitName, tuple[float | None, float | None]] = {
        "max_extra_tokens_per_request": (
            budget.max_extra_tokens_per_request,
            _mean(total.tax_prompt_tokens + total.tax_completion_tokens, requests),
        ),
        "max_fallback_share": (budget.max_fallback_share, _mean(counts.fell_back, requests, 4)),
    }
    enough = requests >= budget.min_requests
    figures = [
        BudgetFigure(
            limit=name,
            bound=bound,
            value=value,
            exceeded=enough and value is not None and value > bound,
        )
        for name, (bound, value) in values.items()
        if bound is not None
    ]
    exceeded = [f.limit for f in figures if f.exceeded]
    return BudgetStatus(
        window=budget.window,
        requests=requests,
        min_requests=budget.min_requests,
        over_budget=bool(exceeded),
        exceeded=exceeded,
        figures=figures,
        enforce=budget.enforce,
        enforced=budget.enforce and bool(exceeded),
    )
