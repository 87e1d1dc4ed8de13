"""Training tests run OpenAI fine-tunes on the scripted upstream (provider ``up``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from formwork.config import Settings


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    settings.training.openai_provider = "up"
    settings.training.data_dir = tmp_path / "datasets"
    return settings
