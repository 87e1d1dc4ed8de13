"""Token counts, OpenAI's default epochs, training cost, saving per request and break-even."""

from __future__ import annotations

from pathlib import Path

import pytest

from formwork import prompts
from formwork.config import ModelPrice, TrainingSettings
from formwork.protocol import TaskFile
from formwork.validation import Validators
from tests.training.helpers import spec
from training.cost import Distribution, Tables, default_epochs, estimate, percentile
from training.dataset import Dataset, from_examples, read_jsonl
from training.launcher import DatasetBuilder
from training.tokens import TiktokenCounter, counter_for, encoding_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("examples", "epochs"),
    [(1, 25), (3, 25), (4, 25), (10, 10), (20, 5), (33, 3), (34, 3), (8333, 3), (8334, 2),
     (10_000, 2), (12_501, 1), (30_000, 1)],
)  # fmt: skip
def test_openai_default_epochs(examples: int, epochs: int) -> None:
    assert default_epochs(examples) == epochs


def test_token_counts_offline() -> None:
    counter = TiktokenCounter(exact=True)
    assert counter.name == "cl100k_base"
    assert counter.text("hello world") == 2
    # 3 per message + role + content, and 3 to prime the reply.
    assert counter.messages([{"role": "user", "content": "hello world"}]) == 3 + 1 + 2 + 3
    assert counter.text("<|endoftext|>") > 1  # special tokens count as text
    assert encoding_of("gpt-3.5-turbo-0125") == "cl100k_base"
    assert encoding_of("ft:gpt-4o-mini-2024-07-18:acme:x:1") == "o200k_base"
    assert counter_for("gpt-3.5-turbo").exact
    assert not counter_for("gpt-4o-mini-2024-07-18").exact


def test_distribution() -> None:
    assert percentile([10, 20, 30, 40], 0.5) == 25
    assert percentile([10, 20, 30, 40], 0.95) == pytest.approx(38.5)
    assert Distribution.of([40, 10, 30, 20]) == Distribution(
        min=10, mean=25.0, p50=25.0, p95=38.5, max=40, total=100
    )
    assert Distribution.of([]).total == 0


def test_cost_on_known_numbers() -> None:
    price = ModelPrice(
        training=10.0, input=1.0, output=2.0, finetuned_input=30.0, finetuned_output=40.0
    )
    big = ModelPrice(
        training=0.0, input=50.0, output=100.0, finetuned_input=0.0, finetuned_output=0.0
    )
    tables = Tables(
        TrainingSettings(token_limits={"toy": 100}, prices={"toy": price, "big-model": big})
    )
    rows = from_examples(spec(3))
    dataset = Dataset("orders", rows, [])
    e = estimate(dataset, spec(3), [50, 150, 80], tables, base_model="toy-1", epochs=2)
    assert (e.billed_tokens_per_epoch, e.trained_tokens) == (50 + 100 + 80, 460)
    assert e.training_cost_usd == pytest.approx(460 * 10.0 / 1e6)
    assert (e.epochs, e.default_epochs, e.token_limit) == (2, False, 100)
    assert e.tokens_per_example == Distribution.of([50, 150, 80])

    counter = TiktokenCounter(exact=False)
    instructed = [counter.messages(prompts.instructed_messages(spec(3), r.input)) for r in rows]
    finetuned = [counter.messages(prompts.finetuned_messages("orders", r.input)) for r in rows]
    outputs = [counter.text(prompts.render_output(r.output)) for r in rows]
    assert e.instructed_prompt_tokens == round(sum(instructed) / 3, 2)
    assert e.finetuned_prompt_tokens == round(sum(finetuned) / 3, 2)
    assert e.output_tokens == round(sum(outputs) / 3, 2)
    assert e.finetuned_prompt_tokens < e.instructed_prompt_tokens

    # On its own base model the fine-tune costs more per request than it saves: no break-even.
    i, f, o = e.instructed_prompt_tokens, e.finetuned_prompt_tokens, e.output_tokens
    assert e.request_cost_instructed_usd == pytest.approx((i * 1.0 + o * 2.0) / 1e6)
    assert e.request_cost_finetuned_usd == pytest.approx((f * 30.0 + o * 40.0) / 1e6)
    assert e.saving_per_request_usd is not None
    assert e.saving_per_request_usd < 0
    assert e.break_even_requests is None

    # Against instructed prompts on an expensive model it pays for itself.
    vs = estimate(dataset, spec(3), [50, 150, 80], tables, base_model="toy-1",
                  compare_model="big-model", epochs=2)  # fmt: skip
    saving = (i * 50.0 + o * 100.0 - f * 30.0 - o * 40.0) / 1e6
    assert vs.saving_per_request_usd == pytest.approx(saving)
    assert vs.break_even_requests == -(-(460 * 10.0 / 1e6) // saving)


def test_default_epochs_and_unknown_prices() -> None:
    rows = from_examples(spec(20))
    e = estimate(Dataset("orders", rows, []), spec(20), [10] * 20, Tables(TrainingSettings()),
                 base_model="mystery-7b")  # fmt: skip
    assert (e.epochs, e.default_epochs, e.trained_tokens) == (5, True, 1000)
    assert e.token_limit is None
    assert e.training_cost_usd is None
    assert e.saving_per_request_usd is None
    assert e.break_even_requests is None


def test_estimate_for_the_shipped_contact_dataset() -> None:
    task = TaskFile.model_validate_json((ROOT / "schemas/contact-extraction.json").read_text())
    task_spec = task.spec()
    launcher = DatasetBuilder(TrainingSettings(), Validators())
    rows = read_jsonl(ROOT / "training/data/contact-extraction.train.jsonl")
    ready = launcher.prepare(task.name, task_spec, rows, base_model="gpt-4o-mini-2024-07-18")
    assert ready.report.problems == []
    e = ready.estimate(launcher.tables)
    assert (e.train_examples, e.validation_examples, e.epochs) == (180, 20, 3)
    assert e.trained_tokens == 3 * e.tokens_per_example.total
    assert e.training_cost_usd == pytest.approx(e.trained_tokens * 3.0 / 1e6)
    assert e.instructed_prompt_tokens > 5 * e.finetuned_prompt_tokens
    assert e.saving_per_request_usd is not None
    assert e.saving_per_request_usd > 0
    assert e.break_even_requests is not None
    assert e.break_even_requests > 0
