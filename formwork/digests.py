"""Canonical JSON and its SHA-256: the one way a value is hashed (schemas, specs, cache keys)."""

from __future__ import annotations

import hashlib
import json

from pydantic import JsonValue


def canonical(value: JsonValue) -> str:
    """Keys sorted, no whitespace, non-ASCII kept: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(value: JsonValue) -> str:
    return hashlib.sha256(canonical(value).encode()).hexdigest()
