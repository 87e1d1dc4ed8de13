"""What a fine-tune costs, and what it saves on every request.

Training is billed per token trained: the tokens of the training examples (each capped at the
model's per-example limit) times the epochs. A fine-tuned model then needs only the short
prompt, so each request sends fewer tokens than an instructed one (instructions, schema,
few-shot examples), though at the fine-tune's higher price per token. The saving per request
and the training cost give the number of requests after which the fine-tune has paid for itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel

from formwork import prompts
from formwork.config import ModelPrice, TrainingSettings
from formwork.prices import MILLION, PRICES, by_prefix
from formwork.protocol import TaskSpec

from .calibration import Calibration
from .dataset import Dataset
from .tokens import TokenCounter, counter_for

# Per-example token limits by model-name prefix (OpenAI fine-tuning guide; longest prefix wins).
# gpt-3.5-turbo took 4,096 tokens an example at launch (0613) and 16,385 from 1106 on.
TOKEN_LIMITS: dict[str, int] = {
    "gpt-3.5-turbo": 16_385,
    "gpt-3.5-turbo-0613": 4_096,
    "gpt-4o-mini": 65_536,
    "gpt-4o": 65_536,
    "smollm2": 8_192,  # the local model's context length
}
# OpenAI's default n_epochs, as its cookbook computes it (examples/Chat_finetuning_data_prep
# .ipynb, "Pricing and default n_epochs estimate"): 3 epochs, unless examples x 3 falls outside
# 100..25,000 examples seen, when it becomes 100 // n (at most 25) or 25,000 // n (at least 1).
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


def default_epochs(examples: int) -> int:
    if examples <= 0:
        return TARGET_EPOCHS
    if examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // examples)
    if examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // examples)
    return TARGET_EPOCHS


class Tables:
    """The built-in limits and prices with the configured ones laid over them."""

    def __init__(self, settings: TrainingSettings) -> None:
        self.limits = {**TOKEN_LIMITS, **settings.token_limits}
        self.prices = {**PRICES, **settings.prices}

    def limit(self, model: str) -> int | None:
        return by_prefix(self.limits, model)

    def price(self, model: str) -> ModelPrice | None:
        return by_prefix(self.prices, model)


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), ``ordered`` sorted."""
    if not ordered:
        return 0.0
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Distribution(BaseModel):
    min: int
    mean: float
    p50: float
    p95: float
    max: int
    total: int

    @classmethod
    def of(cls, values: Sequence[int]) -> Distribution:
        ordered = sorted(values)
        if not ordered:
            return cls(min=0, mean=0.0, p50=0.0, p95=0.0, max=0, total=0)
        return cls(
            min=ordered[0],
            mean=round(sum(ordered) / len(ordered), 2),
            p50=round(percentile(ordered, 0.5), 2),
            p95=round(percentile(ordered, 0.95), 2),
            max=ordered[-1],
            total=sum(ordered),
        )


class LocalCost(BaseModel):
    """A local fine-tune's cost in time, predicted from a calibration (``training.calibration``)
    on this machine, and the compute a finetuned prompt saves per request on the embedded model.
    """

    steps: int
    batch_size: int
    s_per_step: float
    examples_per_s: float
    load_s: float
    training_s: float  # load + steps + the validation pass
    peak_rss_bytes: int
    device: str
    threads: int
    load_average: float | None  # the machine's, as the calibration ran
    calibrated_at: float
    cached: bool  # the calibration came from the cache folder
    prefill_instructed_s: float | None  # per request, nothing cached
    prefill_finetuned_s: float | None
    warm_instructed_s: float | None  # per request, the static prefix cached (steady state)
    warm_finetuned_s: float | None
    saved_s_cold: float | None  # prefill seconds a request saves, cold / warm
    saved_s_warm: float | None
    break_even_requests_cold: int | None  # requests whose saved prefill pays the training
    break_even_requests_warm: int | None


class Estimate(BaseModel):
    base_model: str
    train_examples: int
    validation_examples: int
    tokens_per_example: Distribution
    counted_with: str
    exact_count: bool
    token_limit: int | None
    epochs: int
    default_epochs: bool
    billed_tokens_per_epoch: int
    trained_tokens: int
    training_cost_usd: float | None
    compare_model: str
    instructed_prompt_tokens: float
    finetuned_prompt_tokens: float
    output_tokens: float
    request_cost_instructed_usd: float | None
    request_cost_finetuned_usd: float | None
    saving_per_request_usd: float | None
    break_even_requests: int | None
    local: LocalCost | None = None  # measured on this machine (local fine-tunes)


def _mean(values: Sequence[int]) -> float:
    return round(sum(values) / len(values), 2) if values else 0.0


def _request_tokens(
    dataset: Dataset, spec: TaskSpec, counter: TokenCounter, compare_counter: TokenCounter
) -> tuple[float, float, float]:
    """Mean tokens of an instructed prompt, a fine-tuned prompt and an answer."""
    rows = dataset.train
    instructed = [
        compare_counter.messages(prompts.instructed_messages(spec, row.input)) for row in rows
    ]
    finetuned = [
        counter.messages(prompts.finetuned_messages(dataset.task, row.input)) for row in rows
    ]
    outputs = [counter.text(prompts.render_output(row.output)) for row in rows]
    return _mean(instructed), _mean(finetuned), _mean(outputs)


def _break_even(
    training: float | None, instructed: float | None, finetuned: float | None
) -> tuple[float | None, int | None]:
    """The saving per request and the requests that pay the training back (None: never)."""
    if instructed is None or finetuned is None:
        return None, None
    saving = instructed - finetuned
    if saving > 0 and training is not None:
        return saving, math.ceil(training / saving)
    return saving, None


def estimate(
    dataset: Dataset,
    spec: TaskSpec,
    counts: Sequence[int],
    tables: Tables,
    *,
    base_model: str,
    compare_model: str | None = None,
    epochs: int | None = None,
) -> Estimate:
    """Training cost, per-request saving against an instructed prompt, and break-even.

    ``counts`` are the tokens of each training example, in ``dataset.train`` order.
    ``compare_model`` is the model that would answer instructed prompts instead (by default the
    base model itself).
    """
    compare_model = compare_model or base_model
    counter: TokenCounter = counter_for(base_model)
    compare_counter = counter_for(compare_model)
    limit = tables.limit(base_model)
    n_epochs = epochs or default_epochs(len(dataset.train))
    billed = sum(min(count, limit) if limit else count for count in counts)
    trained = billed * n_epochs
    price, compare_price = tables.price(base_model), tables.price(compare_model)

    i_tokens, f_tokens, o_tokens = _request_tokens(dataset, spec, counter, compare_counter)

    training_cost = None if price is None else trained * price.training / MILLION
    cost_instructed = (
        None
        if compare_price is None
        else (i_tokens * compare_price.input + o_tokens * compare_price.output) / MILLION
    )
    cost_finetuned = (
        None
        if price is None
        else (f_tokens * price.finetuned_input + o_tokens * price.finetuned_output) / MILLION
    )
    saving, break_even = _break_even(training_cost, cost_instructed, cost_finetuned)
    return Estimate(
        base_model=base_model,
        train_examples=len(dataset.train),
        validation_examples=len(dataset.validation),
        tokens_per_example=Distribution.of(counts),
        counted_with=counter.name,
        exact_count=counter.exact,
        token_limit=limit,
        epochs=n_epochs,
        default_epochs=epochs is None,
        billed_tokens_per_epoch=billed,
        trained_tokens=trained,
        training_cost_usd=training_cost,
        compare_model=compare_model,
        instructed_prompt_tokens=i_tokens,
        finetuned_prompt_tokens=f_tokens,
        output_tokens=o_tokens,
        request_cost_instructed_usd=cost_instructed,
        request_cost_finetuned_usd=cost_finetuned,
        saving_per_request_usd=saving,
        break_even_requests=break_even,
    )


def local_cost(
    calibration: Calibration,
    *,
    train_examples: int,
    validation_examples: int,
    batch_size: int,
    epochs: int,
    cached: bool,
) -> LocalCost:
    """The training time at the calibrated pace, and the prefill it saves per request."""
    c = calibration
    steps = math.ceil(train_examples / batch_size) * epochs
    # the validation loss is one forward pass per batch: about a third of a training step
    validation_s = math.ceil(validation_examples / batch_size) * c.s_per_step / 3
    training_s = c.load_s + steps * c.s_per_step + validation_s

    def saved(instructed: float | None, finetuned: float | None) -> tuple[float | None, int | None]:
        if instructed is None or finetuned is None:
            return None, None
        seconds = round(instructed - finetuned, 4)
        return seconds, math.ceil(training_s / seconds) if seconds > 0 else None

    saved_cold, even_cold = saved(c.prefill_instructed_s, c.prefill_finetuned_s)
    saved_warm, even_warm = saved(c.warm_instructed_s, c.warm_finetuned_s)
    return LocalCost(
        steps=steps,
        batch_size=batch_size,
        s_per_step=c.s_per_step,
        examples_per_s=c.examples_per_s,
        load_s=c.load_s,
        training_s=round(training_s, 1),
        peak_rss_bytes=c.peak_rss_bytes,
        device=c.device,
        threads=c.threads,
        load_average=c.load_average,
        calibrated_at=c.measured_at,
        cached=cached,
        prefill_instructed_s=c.prefill_instructed_s,
        prefill_finetuned_s=c.prefill_finetuned_s,
        warm_instructed_s=c.warm_instructed_s,
        warm_finetuned_s=c.warm_finetuned_s,
        saved_s_cold=saved_cold,
        saved_s_warm=saved_warm,
        break_even_requests_cold=even_cold,
        break_even_requests_warm=even_warm,
    )
