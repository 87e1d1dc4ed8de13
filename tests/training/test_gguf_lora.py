"""PEFT -> llama.cpp LoRA GGUF: the converted adapter moves llama.cpp's logits the way PEFT's
adapter moves transformers' logits, on the real model. Compared at F32 on both sides (the same
dequantized weights): at Q8_0 llama.cpp also quantizes activations, whose noise swamps a small
adapter's effect on one logit vector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("peft")

from formwork.providers.engine import Engine
from formwork.providers.local import gguf_path
from formwork.providers.weights import F32
from training import gguf_lora
from training.lora import TARGET_MODULES

PROMPT = [{"role": "user", "content": "Write the name of a fruit and a colour."}]


@pytest.fixture(scope="module")
def peft_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A PEFT LoRA (r=8, every projection, random but moderate weights) and where it is saved."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    weights = gguf_path()
    base = AutoModelForCausalLM.from_pretrained(weights.parent, gguf_file=weights.name)
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGET_MODULES))
    model = get_peft_model(base, lora).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    path = tmp_path_factory.mktemp("adapters") / "random"
    model.save_pretrained(str(path))
    return model, path


def hf_delta(model: Any) -> np.ndarray[Any, Any]:
    """How the adapter moves transformers' next-token logits after PROMPT."""
    import torch
    from transformers import AutoTokenizer

    weights = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(weights.parent, gguf_file=weights.name)
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    with torch.inference_mode():
        tuned = model(ids).logits[0, -1]
        with model.disable_adapter():
            plain = model(ids).logits[0, -1]
    return (tuned - plain).float().numpy()


def llama_delta(adapters: Path, tmp_path: Path) -> np.ndarray[Any, Any]:
    engine = Engine(
        gguf_path(), cache_dir=tmp_path / "models", adapters_dirs=[adapters], threads=0, ftype=F32
    )
    engine.load()
    try:
        prompt, _ = engine.prompt(PROMPT)
        plain = engine.next_logits(prompt)
        tuned = engine.next_logits(prompt, adapter="random")
    finally:
        engine.close()
    return tuned - plain


def correlation(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.slow
def test_converted_adapter_matches_peft(
    peft_model: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, path = peft_model
    written = gguf_lora.convert(path)
    assert written == path / "adapter.gguf"
    expected = hf_delta(model)
    assert float(np.abs(expected).mean()) > 0.05  # the adapter does move the logits
    right = correlation(llama_delta(path.parent, tmp_path), expected)
    # the same conversion without the RoPE row order of q/k: the check can tell
    monkeypatch.setattr(gguf_lora, "permute", lambda rows, heads: rows)
    gguf_lora.convert(path)
    wrong = correlation(llama_delta(path.parent, tmp_path), expected)
    assert right > 0.99  # measured 0.9998
    assert wrong < 0.95  # measured 0.80


def test_unexpected_tensors_are_refused(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    (tmp_path / "adapter_config.json").write_text('{"lora_alpha": 16}')
    save_file(
        {"base_model.model.lm_head.lora_A.weight": np.zeros((2, 2), dtype=np.float32)},
        str(tmp_path / "adapter_model.safetensors"),
    )
    with pytest.raises(gguf_lora.ConversionError, match="unexpected tensor in the adapter: "):
        gguf_lora.convert(tmp_path)
    assert not (tmp_path / "adapter.gguf").exists()
