"""The embedded model's llama.cpp engine, for real: prefix caching, per-request LoRA adapters in
GGUF (converted from PEFT as training does), and loading in the background."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

pytest.importorskip("llama_cpp")
pytest.importorskip("llguidance")

from formwork.config import LocalModelSettings
from formwork.prompts import instructed_messages
from formwork.protocol import TaskFile
from formwork.providers import engine as engine_module
from formwork.providers.base import ChatRequest, ProviderRateLimited
from formwork.providers.local import MODEL_ID, LocalProvider
from tests.service.test_local_provider import make_adapter

ROOT = Path(__file__).resolve().parents[2]
CONTACT = TaskFile.model_validate_json((ROOT / "schemas/contact-extraction.json").read_text())
INPUTS = [
    "Reach me at jane.doe@acme.io or +1 415 555 0101. Jane Doe, CTO, Acme",
    "Bob Stone (bob@stone.dev), head of sales at Stone Ltd",
]


def contact(text: str, *, model: str = MODEL_ID, static: bool = True) -> ChatRequest:
    messages = instructed_messages(CONTACT, text)
    return ChatRequest(
        model=model,
        messages=messages,
        schema=CONTACT.output_schema,
        max_tokens=48,
        timeout_s=120,
        static_messages=len(messages) - 1 if static else 0,
    )


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    for seed, name in enumerate(("one", "two", "three")):
        make_adapter(root / name, seed=seed)
    return root


@pytest.fixture(scope="module")
def local(adapters_dir: Path) -> Iterator[LocalProvider]:
    settings = LocalModelSettings(adapters_dir=adapters_dir, adapters_loaded=2)
    provider = LocalProvider(settings)
    provider.load()
    yield provider
    asyncio.run(provider.aclose())


@pytest.mark.slow
async def test_prefix_cache_hit_gives_the_cold_output(local: LocalProvider) -> None:
    engine = local.engine
    assert engine is not None
    for text in INPUTS:
        uncached = await local.complete(contact(text, static=False))
        hits = engine.prefixes.hits
        cold_or_warm = await local.complete(contact(text))
        warm = await local.complete(contact(text))
        assert engine.prefixes.hits == hits + (2 if text != INPUTS[0] else 1)
        assert cold_or_warm.text == warm.text == uncached.text
        assert warm.usage == uncached.usage
    assert len(engine.prefixes) == 1  # one task version, no adapter: one prefix
    assert 0 < engine.prefixes.bytes <= engine.prefixes.max_bytes


@pytest.mark.slow
async def test_adapters_switch_per_request(local: LocalProvider) -> None:
    prompt = INPUTS[0]
    base = await local.complete(contact(prompt))
    one = await local.complete(contact(prompt, model=f"{MODEL_ID}+one"))
    two = await local.complete(contact(prompt, model=f"{MODEL_ID}+two"))
    interleaved = [
        await local.complete(contact(prompt, model=model))
        for model in (f"{MODEL_ID}+two", MODEL_ID, f"{MODEL_ID}+one", MODEL_ID)
    ]
    assert len({base.text, one.text, two.text}) == 3  # each adapter changes the answer
    assert [r.text for r in interleaved] == [two.text, base.text, one.text, base.text]


@pytest.mark.slow
async def test_adapter_lru_is_bounded_and_a_replaced_adapter_reloads(
    local: LocalProvider, adapters_dir: Path
) -> None:
    engine = local.engine
    assert engine is not None
    before = {
        m: await local.complete(contact(INPUTS[1], model=f"{MODEL_ID}+{m}"))
        for m in ("one", "two", "three")
    }
    assert engine.adapters.names == ["two", "three"]  # capacity 2: "one" was evicted
    loads = engine.adapters.loads
    again = await local.complete(contact(INPUTS[1], model=f"{MODEL_ID}+one"))
    assert again.text == before["one"].text
    assert engine.adapters.loads == loads + 1
    # "three" replaced on disk by the weights of "one": the next request uses the new file
    (adapters_dir / "three" / "adapter.gguf").write_bytes(
        (adapters_dir / "one" / "adapter.gguf").read_bytes()
    )
    replaced = await local.complete(contact(INPUTS[1], model=f"{MODEL_ID}+three"))
    assert replaced.text == before["one"].text
    assert replaced.text != before["three"].text


@pytest.mark.slow
async def test_runs_wait_for_the_background_load_or_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gate = threading.Event()
    real_load = engine_module.Engine.load

    def held_load(self: Any) -> None:  # the real load, once the test lets it go on
        gate.wait(60)
        real_load(self)

    monkeypatch.setattr(engine_module.Engine, "load", held_load)
    provider = LocalProvider(LocalModelSettings(adapters_dir=tmp_path))
    provider.start()
    try:
        assert provider.loading is True
        assert await provider.ready() is False
        with pytest.raises(ProviderRateLimited) as refused:
            await provider.complete(_short(timeout_s=0.6))
        assert str(refused.value) == "the embedded model is still loading"
        assert refused.value.retry_after is not None
        assert refused.value.retry_after >= 1
        waiting = asyncio.create_task(provider.complete(_short(timeout_s=120)))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        gate.set()
        result = await waiting
        assert result.usage.completion_tokens == 2
        assert provider.loading is False
        assert await provider.ready() is True
    finally:
        gate.set()
        await provider.aclose()


def _short(*, timeout_s: float) -> ChatRequest:
    return ChatRequest(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Hi."}],
        max_tokens=2,
        timeout_s=timeout_s,
    )


def test_quantized_copy_is_made_once(tmp_path: Path) -> None:
    from formwork.providers.local import gguf_path
    from formwork.providers.weights import quantized

    first = quantized(gguf_path(), tmp_path, threads=1)
    stamp = first.stat().st_mtime_ns
    assert first.name.endswith(".Q8_0.gguf")
    assert quantized(gguf_path(), tmp_path, threads=1) == first
    assert first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    assert os.path.getsize(first) > 100 << 20


@pytest.mark.slow
async def test_a_q8_0_kv_cache_halves_cached_prefixes_and_still_answers(
    local: LocalProvider, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    small = LocalProvider(LocalModelSettings(kv_cache="q8_0"))
    with caplog.at_level(logging.WARNING, logger=engine_module.__name__):
        small.load()  # the setting slows llama.cpp's OpenMP threads: said at load
    try:
        assert "OMP_WAIT_POLICY=PASSIVE" in caplog.text
        engine, reference = small.engine, local.engine
        assert engine is not None
        assert reference is not None
        request = contact(INPUTS[0])
        cold = await small.complete(request)
        warm = await small.complete(request)
        assert warm.text == cold.text
        assert engine.prefixes.hits == 1
        Draft202012Validator(CONTACT.output_schema).validate(json.loads(cold.text))
        await local.complete(request)
        tokens, static = engine.prompt(request.messages, request.static_messages)
        key = tuple(tokens[:static])
        q8, f16 = engine.prefixes.get(key, None), reference.prefixes.get(key, None)
        assert q8 is not None
        assert f16 is not None
        assert 0.45 < len(q8) / len(f16) < 0.6  # 8.5 bits a value instead of 16
    finally:
        await small.aclose()


@pytest.mark.slow
async def test_the_context_starts_small_and_grows_once_a_request_needs_it() -> None:
    provider = LocalProvider(LocalModelSettings(context=4096))
    provider.load()
    try:
        engine = provider.engine
        assert engine is not None
        assert engine.context == engine_module.START_CONTEXT == 2048
        short = contact(INPUTS[1])
        before = await provider.complete(short)
        assert len(engine.prefixes) == 1
        filler = "Notes: " + "the meeting moved to Tuesday, room 4. " * 180  # ~1,800 tokens
        long = contact(filler + INPUTS[0], static=False)
        answer = await provider.complete(long)
        assert answer.usage.prompt_tokens + long.max_tokens > 2048
        assert engine.context == 4096
        assert len(engine.prefixes) == 0  # made in the smaller context: dropped
        Draft202012Validator(CONTACT.output_schema).validate(json.loads(answer.text))
        assert (await provider.complete(short)).text == before.text
    finally:
        await provider.aclose()
