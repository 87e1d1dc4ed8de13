"""What model calls cost: list prices by model-name prefix, for the format tax and for
training estimates.

A model ref is ``provider/model-id``. The embedded ``local`` provider costs nothing (it costs
time, which the tax counts apart); other refs are priced by the longest prefix of their model id
(a fine-tune, ``ft:<base>:…``, at its base's fine-tuned price); an unknown model has no price.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from .config import LOCAL_PROVIDER, ModelPrice

MILLION = 1_000_000
V = TypeVar("V")
FREE = ModelPrice(training=0.0, input=0.0, output=0.0, finetuned_input=0.0, finetuned_output=0.0)

# List prices in USD per 1M tokens, from OpenAI's pricing page; check them before relying on an
# estimate and override them in ``training.prices``. Local training runs on your own hardware.
PRICES: dict[str, ModelPrice] = {
    "gpt-3.5-turbo": ModelPrice(
        training=8.0, input=0.5, output=1.5, finetuned_input=3.0, finetuned_output=6.0
    ),
    "gpt-4o-mini": ModelPrice(
        training=3.0, input=0.15, output=0.6, finetuned_input=0.3, finetuned_output=1.2
    ),
    "gpt-4o": ModelPrice(
        training=25.0, input=2.5, output=10.0, finetuned_input=3.75, finetuned_output=15.0
    ),
    "gpt-4.1-mini": ModelPrice(
        training=5.0, input=0.4, output=1.6, finetuned_input=0.8, finetuned_output=3.2
    ),
    "gpt-4.1-nano": ModelPrice(
        training=1.5, input=0.1, output=0.4, finetuned_input=0.2, finetuned_output=0.8
    ),
    "smollm2": FREE,
}


def by_prefix(table: Mapping[str, V], model: str) -> V | None:
    """The entry for the longest prefix of ``model`` (an ``ft:`` name counts as its base)."""
    base = model.removeprefix("ft:").split(":", 1)[0]
    matches = [prefix for prefix in table if base.startswith(prefix)]
    return table[max(matches, key=len)] if matches else None


class Prices:
    """The built-in table with the configured prices laid over it."""

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None) -> None:
        self.table = {**PRICES, **(overrides or {})}

    def price(self, ref: str) -> ModelPrice | None:
        provider, _, model = ref.partition("/")
        if provider == LOCAL_PROVIDER:
            return FREE
        return by_prefix(self.table, model)

    def usd(self, ref: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """What a call on ``ref`` with this usage costs; None when ``ref`` has no price."""
        price = self.price(ref)
        if price is None:
            return None
        if ref.partition("/")[2].startswith("ft:"):
            per_in, per_out = price.finetuned_input, price.finetuned_output
        else:
            per_in, per_out = price.input, price.output
        return (prompt_tokens * per_in + completion_tokens * per_out) / MILLION
