"""Getting a JSON value out of model text: as-is, from a code fence, from surrounding prose,
and last, lenient repair (the caller records that as ``repaired``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import json_repair
from pydantic import JsonValue

EMBEDDED_TRIES = 64  # starts of an embedded object or array tried before giving up
FENCE = re.compile(r"```[ \t]*(?:json|JSON|jsonc)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_decoder = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Parsed:
    value: JsonValue
    repaired: bool


def _strict(text: str) -> tuple[bool, JsonValue]:
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):
        return False, None


def _embedded(text: str) -> tuple[bool, JsonValue]:
    """The first complete JSON object or array that starts somewhere in the text (among the
    first few candidates: each try may read to the end of the text)."""
    for n, match in enumerate(re.finditer(r"[\[{]", text)):
        if n == EMBEDDED_TRIES:
            break
        try:
            value, _ = _decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        except RecursionError:
            break
        return True, value
    return False, None


def _repaired(text: str) -> JsonValue:
    try:
        return json_repair.repair_json(text, return_objects=True, skip_json_loads=True)
    except (ValueError, RecursionError):  # nesting too deep for its parser
        return None


def found_json(text: str) -> Parsed | None:
    """The JSON value in ``text`` as it is, in a code fence, or embedded in prose (cheap: a
    few linear scans); None when only lenient repair could find one."""
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
    return None


def extract_json(text: str, *, repair_chars: int = 16384) -> Parsed | None:
    """Return the JSON value in ``text``, or None when even repair finds nothing. Repair (slow:
    about 4 ms per kilobyte, and 200 ms for ``{ [`` x 300) is tried on at most
    ``repair_chars`` characters."""
    found = found_json(text)
    if found is not None or not text.strip():
        return found
    stripped = text.strip()
    candidate = FENCE.findall(stripped)
    source = candidate[0] if candidate else stripped
    if len(source) > repair_chars:
        return None
    repaired = _repaired(source)
    if repaired in ("", None) or not isinstance(repaired, dict | list):
        return None
    return Parsed(repaired, repaired=True)
