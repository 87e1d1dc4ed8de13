"""The embedded model's previous engine, kept runnable for bench/local_model.py only: transformers
fp32 on the dequantized GGUF, with the same completion repetition penalty and llguidance mask
(``formwork.providers.grammar.GrammarMask``). Needs the ``train`` extra (torch, transformers).
"""

from __future__ import annotations

from typing import Any

from formwork.protocol import JsonSchema
from formwork.providers.base import Message
from formwork.providers.grammar import SchemaGrammars
from formwork.providers.local import gguf_path


class CompletionPenalty:
    """A transformers logits processor (batch of one): CTRL's repetition penalty on the tokens
    the completion already holds, the prompt's left alone."""

    def __init__(self, prompt_tokens: int, penalty: float) -> None:
        self._start = prompt_tokens
        self._penalty = penalty

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        seen = input_ids[0, self._start :]
        if seen.numel():
            picked = scores[0, seen]
            scores[0, seen] = torch.where(
                picked > 0, picked / self._penalty, picked * self._penalty
            )
        return scores


class TransformersEngine:
    def __init__(self, *, threads: int, penalty: float) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        weights = gguf_path()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(weights.parent, gguf_file=weights.name)
        model: Any = AutoModelForCausalLM.from_pretrained(weights.parent, gguf_file=weights.name)
        self.model = model.eval()
        self.penalty = penalty
        self.eos = int(self.tokenizer.eos_token_id)
        self.grammars = SchemaGrammars(cache_size=16)
        self.grammars.bind(self.tokenizer, vocab_size=int(model.config.vocab_size))
        self.generate([{"role": "user", "content": "Hi"}], None, 1)  # one-off set-up costs

    def generate(
        self, messages: list[Message], schema: JsonSchema | None, max_tokens: int
    ) -> tuple[int, list[int], str]:
        """(prompt tokens, completion tokens, completion text), greedy."""
        import torch

        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        prompt = int(encoded["input_ids"].shape[1])
        processors: list[Any] = [CompletionPenalty(prompt, self.penalty)]
        if schema is not None and (mask := self.grammars.processor(schema)) is not None:
            processors.append(mask)
        with torch.inference_mode():
            out = self.model.generate(
                **encoded,
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=self.eos,
                logits_processor=processors,
            )
        tokens = out[0, prompt:].tolist()
        return prompt, tokens, self.tokenizer.decode(tokens, skip_special_tokens=True)
