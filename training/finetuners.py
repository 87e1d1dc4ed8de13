"""The fine-tuners this process can use, by provider name.

Each entry builds one ``FineTuner`` from the settings, or None when it cannot run here: OpenAI's
when its provider is configured; ``local`` when the embedded model (which serves its adapters)
is enabled and the training packages are installed (``training.local.missing``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from formwork.config import Settings

from . import local
from .jobs import FineTuner
from .openai import OpenAIFineTuner

log = logging.getLogger(__name__)


def openai_finetuner(settings: Settings) -> FineTuner | None:
    name = settings.training.openai_provider
    provider = settings.providers.get(name)
    if provider is None:
        return None
    return OpenAIFineTuner(name, provider)


def local_finetuner(settings: Settings) -> FineTuner | None:
    if not settings.local.enabled:
        return None  # no embedded model to serve the adapters
    absent = local.missing()
    if absent:
        log.info("local fine-tuning unavailable: %s not installed", ", ".join(absent))
        return None
    return local.LocalFineTuner.from_settings(settings)


FACTORIES: dict[str, Callable[[Settings], FineTuner | None]] = {
    "openai": openai_finetuner,
    "local": local_finetuner,
}


def build_finetuners(settings: Settings) -> dict[str, FineTuner]:
    built = {name: factory(settings) for name, factory in FACTORIES.items()}
    return {name: finetuner for name, finetuner in built.items() if finetuner is not None}
