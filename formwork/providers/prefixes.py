"""Prefilled prompt prefixes: the KV-cache state of a task's static prompt part (instructions,
schema, few-shot examples), kept per adapter and reused by every input of that task version.

Keyed by the prefix's tokens themselves and the adapter (a LoRA changes the cached keys and
values), so a new task version or a changed prompt is a new entry and never a stale hit.
Bounded in bytes, least recently used out first.
"""

from __future__ import annotations

from collections import OrderedDict

Key = tuple[tuple[int, ...], str | None]


class PrefixCache:
    def __init__(self, *, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._states: OrderedDict[Key, bytearray] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._states)

    def get(self, tokens: tuple[int, ...], adapter: str | None) -> bytearray | None:
        state = self._states.get((tokens, adapter))
        if state is None:
            self.misses += 1
            return None
        self._states.move_to_end((tokens, adapter))
        self.hits += 1
        return state

    def put(self, tokens: tuple[int, ...], adapter: str | None, state: bytearray) -> None:
        if len(state) > self.max_bytes:
            return
        key = (tokens, adapter)
        old = self._states.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        self._states[key] = state
        self.bytes += len(state)
        while self.bytes > self.max_bytes:
            _, dropped = self._states.popitem(last=False)
            self.bytes -= len(dropped)

    def clear(self) -> None:
        self._states.clear()
        self.bytes = 0

    def drop_adapter(self, adapter: str) -> None:
        """Forget every prefix prefilled with ``adapter`` (it changed on disk)."""
        for key in [key for key in self._states if key[1] == adapter]:
            self.bytes -= len(self._states.pop(key))
