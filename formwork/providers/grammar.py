"""JSON-schema-constrained decoding with llguidance: which keywords it enforces, compiled
grammars cached per schema, and the logits processor that applies one to a generation.

Schemas are first rewritten by ``coverage.prepare`` into a narrower form the engine can
enforce. Grammars produce compact JSON (no whitespace between tokens at all). A schema with keywords
llguidance does not implement is compiled leniently (those keywords ignored) and named by
``unenforced``; one that does not compile even so is decoded unconstrained. Either way the
router still validates the output.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator

from ..protocol import JsonSchema
from . import coverage

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

log = logging.getLogger(__name__)

# What llguidance's JSON-schema compiler enforces (its docs/json_schema.md; each keyword is
# exercised in tests/service/test_local_provider.py), and keywords that only annotate.
ENFORCED = frozenset(
    {
        "type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref",
        "properties", "patternProperties", "additionalProperties", "required",
        "minProperties", "maxProperties", "items", "prefixItems", "minItems", "maxItems",
        "minLength", "maxLength", "pattern", "format",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    }
)  # fmt: skip
ANNOTATIONS = frozenset(
    {
        "$schema", "$id", "$anchor", "$comment", "$defs", "definitions", "title",
        "description", "default", "examples", "deprecated", "readOnly", "writeOnly",
        "contentEncoding", "contentMediaType",
    }
)  # fmt: skip
ENFORCED_FORMATS = frozenset(
    {"date", "time", "date-time", "duration", "email", "hostname", "ipv4", "ipv6", "uuid", "uri"}
)
SUBSCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
SUBSCHEMAS = frozenset(
    {
        "anyOf", "oneOf", "allOf", "prefixItems", "items", "additionalProperties", "not",
        "if", "then", "else", "contains", "propertyNames",
        "unevaluatedItems", "unevaluatedProperties", "additionalItems",
    }
)  # fmt: skip
KEYWORDS = frozenset(Draft202012Validator.VALIDATORS)
# Compact JSON: no whitespace at all, so a small model cannot pad its output with blanks.
COMPACT: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ",",
    "key_separator": ":",
}
# The fallback compile: unimplemented keywords and unknown formats ignored, oneOf read as anyOf.
RELAXED: JsonCompileOptions = {**COMPACT, "lenient": True, "coerce_one_of": True}
NOT_ENFORCED = "`{}` is not enforced by constrained decoding; validation still checks it"


def _keywords(schema: JsonSchema) -> Iterator[tuple[str, Any]]:
    """Every keyword of every subschema of ``schema``, breadth first."""
    todo: deque[Any] = deque([schema])
    while todo:
        node = todo.popleft()
        if isinstance(node, list):
            todo.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            yield key, value
            if key in SUBSCHEMA_MAPS and isinstance(value, dict):
                todo.extend(value.values())
            elif key in SUBSCHEMAS:
                todo.append(value)


def unenforced(schema: JsonSchema) -> list[str]:
    """One warning per keyword (or ``format: X``) anywhere in ``schema`` that constrained
    decoding ignores, after ``coverage.prepare`` rewrote what it could."""
    found: dict[str, None] = {}  # an ordered set
    for key, value in _keywords(coverage.prepare(schema)):
        if key == "format" and value not in ENFORCED_FORMATS:
            found[f"format: {value}"] = None
        elif key in KEYWORDS and key not in ENFORCED and key not in ANNOTATIONS:
            found[key] = None  # a keyword 2020-12 knows; unknown ones assert nothing
    for key, value in _keywords(schema):
        if key == "pattern" and isinstance(value, str) and not coverage.pattern_supported(value):
            found[f"pattern {value!r} (regex features the engine lacks)"] = None
    return [NOT_ENFORCED.format(keyword) for keyword in found]


def schema_key(schema: JsonSchema) -> str:
    """The cache key: compact JSON with keys in their given order (the order properties are
    generated in, so two orders are two grammars)."""
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


@functools.lru_cache(maxsize=256)
def prepared_key(key: str, *, brief: bool = False) -> str:
    """The key of the form ``coverage.prepare`` gives the schema whose key is ``key``."""
    return schema_key(coverage.prepare(json.loads(key), brief=brief))


@dataclass(frozen=True, slots=True)
class Grammar:
    source: str | None  # the llguidance grammar; None when the schema does not compile
    relaxed: bool = False  # compiled only with RELAXED options
    error: str = ""  # why the strict compile failed

    def notes(self) -> list[str]:
        if self.source is None:
            return [
                f"the schema cannot be compiled for constrained decoding ({self.error}); the "
                "local model decodes it unconstrained and validation still checks the output"
            ]
        if self.relaxed:
            return [
                f"constrained decoding relaxes part of this schema ({self.error}); validation "
                "still checks it"
            ]
        return []


@functools.lru_cache(maxsize=256)
def compile_schema(key: str) -> Grammar:
    """The llguidance grammar for one schema (see ``schema_key``); cached."""
    from llguidance import LLMatcher

    first_error = ""
    for options in (COMPACT, RELAXED):
        try:
            source = LLMatcher.grammar_from_json_schema(key, defaults=options)
            error = LLMatcher.validate_grammar(source)
        except ValueError as e:
            error = str(e)
        if not error or error.startswith("WARNING"):
            return Grammar(source, relaxed=options is RELAXED, error=first_error)
        first_error = first_error or " ".join(error.split())[:200]
    return Grammar(None, error=first_error)


class GrammarMask:
    """A transformers logits processor for one generate() of batch size one: every token the
    grammar does not allow next gets -inf. Built fresh per generation."""

    def __init__(self, matcher: Any, *, vocab_size: int, eos: int) -> None:
        import torch

        self._matcher = matcher
        self._eos = eos
        self._bits = torch.zeros((1, (vocab_size + 31) // 32), dtype=torch.int32)
        self._shifts = torch.arange(32, dtype=torch.int32)
        self._fed = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self._fed:
            self._matcher.consume_token(int(input_ids[0, -1]))
        self._fed = True
        if self._matcher.is_error():  # cannot happen with masked sampling; end cleanly if it does
            log.warning("grammar matcher failed: %s", self._matcher.get_error())
            ended = torch.full_like(scores, float("-inf"))
            ended[:, self._eos] = 0.0
            return ended
        self._matcher.unsafe_compute_mask_ptr(self._bits.data_ptr(), self._bits.numel() * 4)
        allowed = ((self._bits.unsqueeze(-1) >> self._shifts) & 1).view(1, -1).bool()
        return scores.masked_fill(~allowed[:, : scores.shape[-1]], float("-inf"))


class SchemaGrammars:
    """Compiled grammars per schema, and a fresh logits processor per generation."""

    def __init__(self, *, cache_size: int) -> None:
        self._tokenizer: Any = None
        self._vocab_size = 0
        self._eos = 0
        self._prototype = functools.lru_cache(maxsize=cache_size)(self._matcher)

    def bind(self, hf_tokenizer: Any, *, vocab_size: int) -> None:
        import llguidance.hf

        self._tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size)
        self._vocab_size = vocab_size
        self._eos = int(hf_tokenizer.eos_token_id)

    def bind_tokenizer(self, tokenizer: Any, *, vocab_size: int) -> None:
        """Bind an llguidance ``LLTokenizer`` built by the engine (e.g. from llama.cpp's vocab)."""
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos = int(tokenizer.eos_token)

    def matcher(self, schema: JsonSchema, *, adapted: bool = False, brief: bool = False) -> Any:
        """A fresh llguidance matcher for one generation; None when the schema has no grammar.
        Compiled from the schema as ``coverage.prepare`` narrows it (``brief``: its brief
        form), except for a LoRA adapter (``adapted``) and not ``brief``: the adapter learnt
        its task's answers, which the caps for the base model would cut (several unique
        items, say), so it gets the schema as registered."""
        key = schema_key(schema)
        if brief or not adapted:
            key = prepared_key(key, brief=brief)
        prototype = self._prototype(key)
        return None if prototype is None else prototype.deep_copy()

    def compile(self, schema: JsonSchema) -> Grammar:
        return compile_schema(schema_key(coverage.prepare(schema)))

    def processor(self, schema: JsonSchema) -> GrammarMask | None:
        """None when the schema has no grammar: the generation runs unconstrained."""
        prototype = self._prototype(schema_key(coverage.prepare(schema)))
        if prototype is None:
            return None
        return GrammarMask(prototype.deep_copy(), vocab_size=self._vocab_size, eos=self._eos)

    def _matcher(self, key: str) -> Any:
        from llguidance import LLMatcher

        grammar = compile_schema(key)
        if grammar.source is None:
            return None
        matcher = LLMatcher(self._tokenizer, grammar.source, log_level=0)
        if matcher.is_error():
            log.warning("schema grammar rejected by the tokenizer: %s", matcher.get_error())
            return None
        return matcher
