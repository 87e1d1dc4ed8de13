"""The real fine-tuning API: a tiny job, cancelled at once. Run with ``-m live``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from formwork.config import ProviderSettings
from formwork.protocol import Hyperparameters
from tests.training.helpers import spec
from training.dataset import Dataset, from_examples
from training.jobs import StartOptions
from training.openai import OpenAIFineTuner

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not os.environ.get("OPENAI_API_KEY"), reason="needs OPENAI_API_KEY"),
]


async def test_start_and_cancel_a_real_job(tmp_path: Path) -> None:
    key = SecretStr(os.environ["OPENAI_API_KEY"])
    tuner = OpenAIFineTuner("openai", ProviderSettings(api_key=key))
    files = Dataset("formwork-live", from_examples(spec(10)), []).write(tmp_path)
    options = StartOptions("ftj-live", "gpt-4o-mini-2024-07-18", "formwork-live", Hyperparameters())
    try:
        started = await tuner.start(files, options)
        try:
            assert started.status in ("validating", "queued", "running")
            assert (await tuner.poll(started.external_id)).external_id == started.external_id
        finally:
            cancelled = await tuner.cancel(started.external_id)
        assert cancelled.status == "cancelled"
        events = await tuner.events(cancelled.external_id)
        assert events
        assert all("sk-" not in e.message for e in events)
    finally:
        await tuner.aclose()
