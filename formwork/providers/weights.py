"""The embedded model's weights as llama.cpp runs them: the shipped GGUF (Q4_1) re-quantized
once to Q8_0 and kept in a cache folder. On AVX2 CPUs llama.cpp's Q8_0 kernels decode faster
than Q4_1's and the file is still small (bench/local_model.md); F32 is there for comparisons
with other engines at full precision.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

# llama.cpp's LLAMA_FTYPE_*: what the weights are re-quantized to
F32, Q8_0 = 0, 7
FTYPE_NAMES = {F32: "F32", Q8_0: "Q8_0"}


class QuantizeError(Exception):
    """llama.cpp could not write the quantized copy."""


def quantized(source: Path, cache_dir: Path, *, threads: int, ftype: int = Q8_0) -> Path:
    """``source`` re-quantized to ``ftype`` (Q8_0), made once and kept in ``cache_dir``."""
    import llama_cpp

    stat = source.stat()
    name = FTYPE_NAMES[ftype]
    target = cache_dir / f"{source.stem}.{stat.st_size}-{int(stat.st_mtime)}.{name}.gguf"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.part")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = threads
    started = time.perf_counter()
    code = llama_cpp.llama_model_quantize(
        str(source).encode(), str(partial).encode(), ctypes.byref(params)
    )
    if code != 0:
        partial.unlink(missing_ok=True)
        raise QuantizeError(f"re-quantizing {source.name} to {name} failed ({code})")
    partial.replace(target)
    took = time.perf_counter() - started
    log.info("re-quantized %s to %s in %.1fs: %s", source.name, name, took, target)
    return target
