"""LoRA adapters in llama.cpp's GGUF format, loaded on first use over the one base model and
kept in a bounded LRU; an adapter file replaced on disk under the same name is loaded again.

An adapter named ``NAME`` is ``<root>/NAME/adapter.gguf`` in the first of the roots that has
it: the adapters directory (``training/`` writes it there, next to the PEFT files it trains
from), then the adapters shipped beside the task files.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.gguf"


def find_adapter(roots: Sequence[Path], name: str) -> Path | None:
    """``<root>/NAME/adapter.gguf`` in the first root that has it."""
    for root in roots:
        path = root / name / ADAPTER_FILE
        if path.is_file():
            return path
    return None


class AdapterError(Exception):
    """An adapter that cannot be loaded."""


@dataclass(slots=True)
class Loaded:
    handle: Any  # llama_adapter_lora_p
    signature: tuple[int, int]  # (mtime_ns, size) of the file it was loaded from


class LoraAdapters:
    def __init__(self, roots: Sequence[Path], *, capacity: int) -> None:
        self.capacity = capacity
        self.roots = list(roots)
        self._model: Any = None
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()
        self.loads = 0
        # the engine's hooks: before a handle is freed (detach it from the context), and when
        # an adapter was replaced on disk (drop what was computed with the old one)
        self.before_free: Callable[[], None] = lambda: None
        self.on_replace: Callable[[str], None] = lambda name: None

    def bind(self, model: Any) -> None:
        self._model = model

    def __contains__(self, name: str) -> bool:
        return name in self._loaded

    @property
    def names(self) -> list[str]:
        """Loaded adapters, least recently used first."""
        return list(self._loaded)

    def path(self, name: str) -> Path:
        return find_adapter(self.roots, name) or self.roots[0] / name / ADAPTER_FILE

    def handle(self, name: str) -> Any:
        """The loaded adapter ``name``: loaded now if absent, again if its file changed."""
        path = self.path(name)
        try:
            stat = path.stat()
        except OSError as e:
            raise AdapterError(f"no LoRA adapter {name!r} (expected {path})") from e
        signature = (stat.st_mtime_ns, stat.st_size)
        loaded = self._loaded.get(name)
        if loaded is not None and loaded.signature == signature:
            self._loaded.move_to_end(name)
            return loaded.handle
        if loaded is not None:
            log.info("LoRA adapter %s changed on disk: loading it again", name)
            self._evict(name)
            self.on_replace(name)
        while len(self._loaded) >= self.capacity:
            self._evict(next(iter(self._loaded)))
        self._loaded[name] = Loaded(self._load(name, path), signature)
        return self._loaded[name].handle

    def _load(self, name: str, path: Path) -> Any:
        import llama_cpp

        started = time.perf_counter()
        handle = llama_cpp.llama_adapter_lora_init(self._model, str(path).encode())
        if not handle:
            raise AdapterError(f"LoRA adapter {name!r} does not load: {path} is not a LoRA GGUF")
        self.loads += 1
        log.info("loaded LoRA adapter %s in %.3fs", name, time.perf_counter() - started)
        return handle

    def _evict(self, name: str) -> None:
        import llama_cpp

        loaded = self._loaded.pop(name)
        self.before_free()
        llama_cpp.llama_adapter_lora_free(loaded.handle)

    def clear(self) -> None:
        for name in list(self._loaded):
            self._evict(name)
