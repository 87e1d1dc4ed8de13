"""The shapes of the fine-tuning API: what ``POST /v1/tasks/{task}/finetunes`` takes."""

from __future__ import annotations

from pydantic import Field

from formwork.protocol import MODEL_REF, Strict

from .jobs import Hyperparameters


class Source(Strict):
    """Where the examples come from."""

    examples: bool = Field(True, description="The task's registered examples.")
    harvest: bool = Field(False, description="Validated runs from the task's request log.")
    harvest_model: str | None = Field(
        None, pattern=MODEL_REF, description="Harvest only runs this model answered."
    )


class FinetuneRequest(Strict):
    provider: str = Field("openai", description="The fine-tuner: `openai` or `local`.")
    base_model: str = Field(
        min_length=1, description="The provider's model id, e.g. `gpt-4o-mini-2024-07-18`."
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    validation_fraction: float | None = Field(
        None, ge=0, le=0.5, description="Held out for validation; default from settings."
    )
    seed: int | None = Field(None, description="Seed of the split; default from settings.")
    source: Source = Field(default_factory=Source)
