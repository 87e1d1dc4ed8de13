"""Regular expressions from user schemas, matched in linear time with RE2.

``pattern``, ``patternProperties`` (and the ``additionalProperties`` / ``unevaluatedProperties``
that consult it) and ``format: regex`` are evaluated by RE2, whose matching time is linear in
the text: no pattern can make a match backtrack. RE2 refuses what it cannot match in linear
time (lookaround, backreferences) and repetitions over 1000; registration names such a pattern
with its path (``pattern_errors``). RE2 classes are ASCII: ``\\d`` is ``[0-9]``, ``\\w`` is
``[0-9A-Za-z_]``; ``\\p{L}`` and friends match Unicode.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jsonschema._utils
import re2
from jsonschema import FormatChecker
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator as ValidatorProtocol

from .subschemas import Path, subschemas

MAX_MEM = 8 << 20  # RE2's own default: a compiled program larger than this is refused
RegexRefused = re2.error  # raised by ``search`` for a pattern registered before RE2 checks


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = MAX_MEM
    return options


@functools.lru_cache(maxsize=4096)
def compiled(pattern: str) -> Any:
    """The RE2 program for ``pattern``; raises ``re2.error`` when RE2 cannot take it."""
    return re2.compile(pattern, _options())


def refusal(pattern: str) -> str | None:
    """Why RE2 cannot take ``pattern`` (None when it can)."""
    try:
        compiled(pattern)
    except re2.error as e:
        raw = e.args[0] if e.args else "invalid"
        reason = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return f"regular expression {pattern[:80]!r} refused: {reason}"
    except (TypeError, UnicodeError) as e:
        return f"regular expression refused: {e}"
    return None


def search(pattern: str, text: str) -> bool:
    return compiled(pattern).search(text) is not None


class _LinearRe:
    """Stands in for ``re`` inside jsonschema's helpers that consult ``patternProperties``."""

    @staticmethod
    def search(pattern: str, text: str) -> bool:
        return search(pattern, text)


# jsonschema's additionalProperties and unevaluatedProperties find the names that
# patternProperties covers through ``jsonschema._utils.re.search``; matching them with RE2
# there keeps every use of a schema's patterns linear.
jsonschema._utils.re = _LinearRe  # type: ignore[attr-defined]


def pattern_keyword(
    validator: ValidatorProtocol, pattern: str, instance: Any, schema: object
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def pattern_properties_keyword(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: object
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            if search(pattern, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def formats() -> FormatChecker:
    """jsonschema's format checkers, with ``regex`` meaning "RE2 takes it"."""
    checker = FormatChecker()

    @checker.checks("regex")
    def _regex(instance: object) -> bool:
        return not isinstance(instance, str) or refusal(instance) is None

    return checker


def pattern_errors(schema: object, root: Path) -> Iterator[tuple[Path, str]]:
    """Every ``pattern`` and ``patternProperties`` name RE2 refuses, with its path."""
    for path, node in subschemas(schema, root):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and (why := refusal(pattern)):
            yield (*path, "pattern"), why
        props = node.get("patternProperties")
        if isinstance(props, dict):
            for name in props:
                if why := refusal(name):
                    yield (*path, "patternProperties", name), why
