"""How far two answers agree: as a whole and per top-level field of the reference answer.

Held-out evaluation scores a route against the expected outputs with it, and live candidate
comparisons score the candidate against the current route's answer with the same rule.
"""

from __future__ import annotations

from pydantic import JsonValue

WHOLE = "$"  # the field name when the reference is not an object


def field_scores(expected: JsonValue, output: JsonValue, *, valid: bool) -> dict[str, bool]:
    """Per top-level field of the expected output: did the answer give that very value?"""
    if not isinstance(expected, dict):
        return {WHOLE: valid and output == expected}
    given = output if valid and isinstance(output, dict) else {}
    return {name: name in given and given[name] == value for name, value in expected.items()}
