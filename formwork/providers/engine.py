"""The embedded model's engine: llama.cpp (through llama-cpp-python's C bindings) on one CPU
thread set, a numpy decode loop with llguidance logits masks, per-request LoRA adapters and a
cache of prefilled prompt prefixes.

Not thread-safe: one thread (the provider's worker) owns an ``Engine`` from ``load`` on. Keep it
so for speed too: llama.cpp's threads are OpenMP's, a second calling thread gets a second thread
team, and with more OpenMP threads than cores libgomp sleeps between the steps of a token
(decoding 1.5x slower, bench/local_model.md).

The weights are a Q8_0 copy of the shipped GGUF (``weights.py``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .adapters import LoraAdapters
from .base import Message
from .prefixes import PrefixCache
from .weights import Q8_0, quantized

log = logging.getLogger(__name__)

PIECE_BYTES = 256
# tokens: the context the engine starts with, grown once when a request needs more
START_CONTEXT = 2048
KV_TYPES = {"f16": 1, "q8_0": 8}  # ggml_type
Logits = npt.NDArray[np.float32]


class EngineError(Exception):
    """The engine could not do what was asked (a model, an adapter or a decode failed)."""


class Stopped(Exception):
    """The caller asked the generation to stop."""


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    tokens: list[int]
    stopped: bool  # ended by an end-of-generation token (or the grammar), not by max_tokens
    prompt_tokens: int
    prefix_hit: int  # prompt tokens whose prefill came from the prefix cache
    forced: int  # completion tokens the grammar forced (decoded in the same batch)


def _quiet_logs() -> None:
    """llama.cpp's own log lines go to DEBUG (it prints hundreds at load otherwise)."""
    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode(errors="replace").rstrip()
        if level == 4 and line:  # GGML_LOG_LEVEL_ERROR
            log.warning("llama.cpp: %s", line)
        elif line.strip("."):
            log.debug("llama.cpp: %s", line)

    _quiet_logs.callback = forward  # type: ignore[attr-defined]  # kept alive for C
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))


class Engine:
    """One model, one context; see the module docstring."""

    def __init__(
        self,
        model_path: Path,
        *,
        cache_dir: Path,
        adapters_dirs: Sequence[Path],
        threads: int,
        context: int = 4096,
        batch: int = 512,
        prefix_bytes: int = 64 << 20,
        adapters: int = 4,
        ftype: int = Q8_0,
        kv_cache: str = "f16",
    ) -> None:
        self._source = model_path
        self._ftype = ftype
        self._cache_dir = cache_dir
        self._threads = threads or max(1, os.cpu_count() or 1)
        self._max_ctx = context
        self._n_ctx = min(context, START_CONTEXT)
        self._n_batch = batch
        self._kv_type = KV_TYPES[kv_cache]
        self._model: Any = None
        self._ctx: Any = None
        self._vocab: Any = None
        self._batch: Any = None
        self._template: Any = None
        self.n_vocab = 0
        self.eos = 0
        self.tokenizer: Any = None  # llguidance's LLTokenizer for this vocabulary
        self.prefixes = PrefixCache(max_bytes=prefix_bytes)
        self.adapters = LoraAdapters(adapters_dirs, capacity=adapters)
        self.adapters.before_free = self._detach_adapters
        self.adapters.on_replace = self.prefixes.drop_adapter
        self._adapter: str | None = None

    # ---- life cycle -----------------------------------------------------------------------

    def load(self) -> None:
        if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE":
            log.warning(
                "OMP_WAIT_POLICY=PASSIVE makes llama.cpp's OpenMP threads sleep between the "
                "steps of every token: the embedded model decodes 3-4x slower (bench/README.md)"
            )
        import llama_cpp
        import llguidance.llamacpp

        _quiet_logs()
        llama_cpp.llama_backend_init()
        path = quantized(self._source, self._cache_dir, threads=self._threads, ftype=self._ftype)
        params = llama_cpp.llama_model_default_params()
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise EngineError(f"llama.cpp could not load {path}")
        self._ctx = self._new_context(self._n_ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.eos = int(llama_cpp.llama_vocab_eos(self._vocab))
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._template = _chat_template(self._meta("tokenizer.chat_template"))
        with warnings.catch_warnings():  # it calls llama_token_get_attr, deprecated in 0.3.36
            warnings.simplefilter("ignore", DeprecationWarning)
            self.tokenizer = llguidance.llamacpp.lltokenizer_from_vocab(self._vocab)
        self.adapters.bind(self._model)

    def _new_context(self, n_ctx: int) -> Any:
        import llama_cpp

        ctx = llama_cpp.llama_context_default_params()
        ctx.n_ctx = n_ctx
        ctx.n_batch = ctx.n_ubatch = self._n_batch
        ctx.n_seq_max = 1
        ctx.n_threads = ctx.n_threads_batch = self._threads
        ctx.type_k = ctx.type_v = self._kv_type
        if self._kv_type != KV_TYPES["f16"]:
            ctx.flash_attn_type = 1  # llama.cpp quantizes V only with flash attention
        ctx.no_perf = True
        made = llama_cpp.llama_init_from_model(self._model, ctx)
        if not made:
            raise EngineError(f"llama.cpp could not create a context of {n_ctx} tokens")
        return made

    @property
    def context(self) -> int:
        """The context's size now, in tokens (it grows up to the configured size on demand)."""
        return self._n_ctx

    def _fit(self, tokens: int) -> None:
        """Grow the context to its configured size when ``tokens`` do not fit the one in use.

        The KV cache is most of the engine's memory beyond the weights, and most prompts and
        answers fit the starting size: the full size is paid for only once a request needs it.
        Cached prefixes are dropped (they were made in the smaller context)."""
        import llama_cpp

        if tokens <= self._n_ctx or self._n_ctx >= self._max_ctx:
            return
        log.info(
            "the embedded model's context grows from %d to %d tokens", self._n_ctx, self._max_ctx
        )
        bigger = self._new_context(self._max_ctx)
        llama_cpp.llama_free(self._ctx)
        self._ctx, self._n_ctx, self._adapter = bigger, self._max_ctx, None
        self.prefixes.clear()

    def close(self) -> None:
        import llama_cpp

        self.adapters.clear()
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    # ---- text -----------------------------------------------------------------------------

    def render(self, messages: Sequence[Message], *, generation_prompt: bool) -> str:
        """The model's own chat template (from the GGUF), as transformers would render it."""
        return str(
            self._template.render(messages=list(messages), add_generation_prompt=generation_prompt)
        )

    def prompt(
        self, messages: Sequence[Message], static_messages: int = 0
    ) -> tuple[list[int], int]:
        """The prompt's tokens, and how many of them render ``messages[:static_messages]``
        (the cacheable prefix: the common part of the two tokenizations)."""
        tokens = self.tokenize(self.render(messages, generation_prompt=True))
        if not static_messages:
            return tokens, 0
        head = self.tokenize(self.render(messages[:static_messages], generation_prompt=False))
        common = 0
        for a, b in zip(tokens, head, strict=False):
            if a != b:
                break
            common += 1
        return tokens, common

    def tokenize(self, text: str) -> list[int]:
        import llama_cpp

        data = text.encode()
        size = len(data) + 16
        buffer = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, size, False, True)
        if n < 0:
            raise EngineError(f"tokenizing needs {-n} tokens, more than {size}")
        return list(buffer[:n])

    def detokenize(self, tokens: Sequence[int]) -> str:
        import llama_cpp

        piece = ctypes.create_string_buffer(PIECE_BYTES)
        out = bytearray()
        for token in tokens:
            n = llama_cpp.llama_token_to_piece(self._vocab, token, piece, PIECE_BYTES, 0, False)
            out += piece.raw[: max(n, 0)]
        return out.decode(errors="replace")

    def _meta(self, key: str) -> str:
        import llama_cpp

        size = 1 << 16
        buffer = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buffer, size)
        if n < 0:
            raise EngineError(f"the model has no {key!r}")
        return buffer.value.decode()

    # ---- generation -----------------------------------------------------------------------

    def generate(
        self,
        prompt: list[int],
        *,
        static: int,
        adapter: str | None,
        sampling: Sampling,
        matcher: Any = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Generation:
        """Decode after ``prompt``, whose first ``static`` tokens are a cacheable prefix."""
        self._fit(len(prompt) + sampling.max_tokens)
        if len(prompt) >= self._n_ctx:
            raise EngineError(
                f"the prompt's {len(prompt)} tokens fill the context of {self._n_ctx} tokens"
            )
        limit = min(sampling.max_tokens, self._n_ctx - len(prompt))  # the answer is cut there
        self._use_adapter(adapter)
        hit = self._prefill(prompt, static, adapter)
        rng = np.random.default_rng(sampling.seed)
        out: list[int] = []
        forced = 0
        stopped = False
        while len(out) < limit:
            if should_stop():
                raise Stopped
            token = self._pick(self._logits(), out, sampling, matcher, rng)
            if token is None:
                stopped = True
                break
            step = [token]
            if matcher is not None:
                matcher.consume_token(token)
                room = limit - len(out) - 1
                ff = list(matcher.compute_ff_tokens())[:room] if room > 0 else []
                if ff:
                    matcher.consume_tokens(ff)
                    step += ff
                    forced += len(ff)
            out += step
            if matcher is not None and matcher.is_stopped():
                stopped = True
                break
            if len(out) < limit:
                self._decode(step, len(prompt) + len(out) - len(step))
        return Generation(out, stopped, len(prompt), hit, forced)

    def next_logits(self, prompt: list[int], *, adapter: str | None = None) -> Logits:
        """The raw logits after ``prompt`` (nothing cached, nothing sampled)."""
        self._fit(len(prompt) + 1)
        self._use_adapter(adapter)
        self._prefill(prompt, 0, adapter)
        return self._logits()

    def _pick(
        self,
        logits: Logits,
        out: list[int],
        sampling: Sampling,
        matcher: Any,
        rng: np.random.Generator,
    ) -> int | None:
        """The next token, or None at the end of the generation."""
        if sampling.repetition_penalty != 1.0 and out:
            penalize(logits, out, sampling.repetition_penalty)
        if matcher is not None:
            _mask(matcher, logits, self.n_vocab)
        if sampling.temperature > 0:
            scaled = logits.astype(np.float64) / sampling.temperature
            scaled -= scaled.max()
            weights = np.exp(scaled)
            token = int(rng.choice(len(weights), p=weights / weights.sum()))
        else:
            token = int(np.argmax(logits))
        return None if self._is_end(token) else token

    def _is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # ---- the KV cache ---------------------------------------------------------------------

    def _prefill(self, prompt: list[int], static: int, adapter: str | None) -> int:
        """Fill the KV cache with ``prompt``: its static prefix from the cache when there,
        else prefilled and kept. Cold and warm paths compute the same cache contents: the
        prefix is always decoded on its own, so a hit changes no output."""
        self._clear()
        prefix = tuple(prompt[:static])
        hit = 0
        if prefix:
            state = self.prefixes.get(prefix, adapter)
            if state is not None:
                self._restore(state)
                hit = len(prefix)
            else:
                self._decode(list(prefix), 0)
                self.prefixes.put(prefix, adapter, self._snapshot())
        rest = prompt[len(prefix) :]
        if not rest:  # the whole prompt was cached: re-decode its last token for the logits
            self._forget_from(len(prompt) - 1)
            rest = prompt[-1:]
        self._decode(rest, len(prompt) - len(rest))
        return hit

    def _decode(self, tokens: Sequence[int], start: int) -> None:
        """Append ``tokens`` at position ``start``; logits come out for the last one."""
        import llama_cpp

        batch = self._batch
        for offset in range(0, len(tokens), self._n_batch):
            chunk = tokens[offset : offset + self._n_batch]
            last = offset + len(chunk) == len(tokens)
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = start + offset + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = last and i == len(chunk) - 1
            code = llama_cpp.llama_decode(self._ctx, batch)
            if code != 0:
                raise EngineError(f"llama_decode failed ({code})")

    def _logits(self) -> Logits:
        import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def _clear(self) -> None:
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)

    def _forget_from(self, position: int) -> None:
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self._ctx), 0, position, -1)

    def _snapshot(self) -> bytearray:
        """The KV cache of sequence 0, in one buffer (no intermediate copies)."""
        import llama_cpp

        size = llama_cpp.llama_state_seq_get_size(self._ctx, 0)
        state = bytearray(size)
        written = llama_cpp.llama_state_seq_get_data(
            self._ctx, (ctypes.c_uint8 * size).from_buffer(state), size, 0
        )
        if written != size:
            del state[written:]
        return state

    def _restore(self, state: bytearray) -> None:
        import llama_cpp

        buffer = (ctypes.c_uint8 * len(state)).from_buffer(state)
        if llama_cpp.llama_state_seq_set_data(self._ctx, buffer, len(state), 0) == 0:
            raise EngineError("restoring a cached prefix failed")

    # ---- adapters -------------------------------------------------------------------------

    def _use_adapter(self, adapter: str | None) -> None:
        import llama_cpp

        handles = [self.adapters.handle(adapter)] if adapter is not None else []
        if adapter == self._adapter:
            return
        array = (llama_cpp.llama_adapter_lora_p_ctypes * max(1, len(handles)))(*handles)
        scales = (ctypes.c_float * max(1, len(handles)))(*([1.0] * len(handles)))
        code = llama_cpp.llama_set_adapters_lora(self._ctx, array, len(handles), scales)
        if code != 0:
            raise EngineError(f"setting the LoRA adapter {adapter!r} failed ({code})")
        self._adapter = adapter

    def _detach_adapters(self) -> None:
        import llama_cpp

        if self._adapter is not None:
            llama_cpp.llama_set_adapters_lora(self._ctx, None, 0, None)
            self._adapter = None


def penalize(logits: Logits, seen: Sequence[int], penalty: float) -> None:
    """CTRL's repetition penalty on the tokens ``seen`` (the completion's, not the prompt's)."""
    ids = np.unique(np.asarray(seen, dtype=np.int64))
    picked = logits[ids]
    logits[ids] = np.where(picked > 0, picked / penalty, picked * penalty)


def _mask(matcher: Any, logits: Logits, n_vocab: int) -> None:
    """Every token the grammar does not allow next gets -inf."""
    from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

    bits = allocate_token_bitmask(1, n_vocab)
    fill_next_token_bitmask(matcher, bits, 0)
    allowed = np.unpackbits(bits.view(np.uint8), bitorder="little")[:n_vocab].astype(bool)
    logits[~allowed] = -np.inf


def _chat_template(source: str) -> Any:
    """The GGUF's Jinja chat template, compiled in a sandbox."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source)
