"""Getting a JSON value out of model text: as-is, from a code fence, from surrounding prose,
and last, lenient repair (the caller records that as ``repaired``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import json_repair
from pydantic import JsonValue

FENCE = re.compile(r"```[ \t]*(?:json|JSON|jsonc)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_decoder = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Parsed:
    value: JsonValue
    repaired: bool


def _strict(text: str) -> tuple[bool, JsonValue]:
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


def _embedded(text: str) -> tuple[bool, JsonValue]:
    """The first complete JSON object or array that starts somewhere in the text."""
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = _decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        return True, value
    return False, None


def extract_json(text: str) -> Parsed | None:
    """Return the JSON value in ``text``, or None when even repair finds nothing."""
    stripped = text.strip()
    if not stripped:
        return None
    ok, value = _strict(stripped)
    if ok:
        return Parsed(value, repaired=False)
    for block in FENCE.findall(stripped):
        ok, value = _strict(block.strip())
        if ok:
            return Parsed(value, repaired=False)
    ok, value = _embedded(stripped)
    if ok:
        return Parsed(value, repaired=False)
    candidate = FENCE.findall(stripped)
    source = candidate[0] if candidate else stripped
    repaired = json_repair.repair_json(source, return_objects=True, skip_json_loads=True)
    if repaired in ("", None) or not isinstance(repaired, dict | list):
        return None
    return Parsed(repaired, repaired=True)
