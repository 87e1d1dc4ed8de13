"""A PEFT LoRA adapter of the embedded model as llama.cpp's LoRA GGUF (``adapter.gguf``), the
format the local provider serves per request.

The same result as llama.cpp's ``convert_lora_to_gguf.py`` for this architecture (tensor names,
shapes, ``adapter.lora.alpha``; the rows of ``lora_b`` for ``q_proj``/``k_proj`` permuted as the
base model's converter permuted those weights for its RoPE layout), without that script's
dependency on a llama.cpp checkout: it needs only ``safetensors``, ``numpy`` and ``gguf``.
Tensors are written as F16 (half the size of F32; an r=8 adapter on every projection is 5 MB).

    python -m training.gguf_lora ADAPTER_DIR   # writes ADAPTER_DIR/adapter.gguf
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt

from formwork.providers.adapters import ADAPTER_FILE
from formwork.providers.local import gguf_path

# PEFT module name -> llama.cpp tensor name
MODULES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
PEFT_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
Array = npt.NDArray[np.float32]


class ConversionError(Exception):
    """An adapter that cannot be converted (unknown tensor, unsupported option)."""


def permute(rows: Array, heads: int) -> Array:
    """llama.cpp's row order for a RoPE projection (``LlamaModel.permute`` in its converter)."""
    shape = rows.shape
    return rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _heads(base: Path) -> tuple[int, int]:
    from gguf import GGUFReader

    reader = GGUFReader(base)

    def number(key: str) -> int:
        field = reader.get_field(key)
        if field is None:
            raise ConversionError(f"the base model has no {key}")
        return int(field.contents())

    return number("llama.attention.head_count"), number("llama.attention.head_count_kv")


def convert(adapter_dir: Path, *, base: Path | None = None) -> Path:
    """Write ``adapter_dir/adapter.gguf`` from the PEFT files there; its path."""
    from gguf import GGUFWriter
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("use_rslora") or config.get("use_dora"):
        raise ConversionError("rsLoRA and DoRA adapters are not supported by llama.cpp's LoRA")
    heads, kv_heads = _heads(base or gguf_path())
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    target = adapter_dir / ADAPTER_FILE
    partial = target.with_suffix(".partial")
    writer = GGUFWriter(partial, "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(config["lora_alpha"]))
    for name in sorted(tensors):
        match = PEFT_NAME.search(name)
        if match is None or match.group(2) not in MODULES:
            raise ConversionError(f"unexpected tensor in the adapter: {name}")
        layer, module, side = match.groups()
        data = tensors[name].astype(np.float32)
        if side == "B" and module in ("q_proj", "k_proj"):
            data = permute(data, heads if module == "q_proj" else kv_heads)
        gguf_name = f"blk.{layer}.{MODULES[module]}.weight.lora_{side.lower()}"
        writer.add_tensor(gguf_name, np.ascontiguousarray(data.astype(np.float16)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter_dir", type=Path, help="a PEFT adapter directory")
    args = parser.parse_args(argv)
    print(convert(args.adapter_dir))


if __name__ == "__main__":
    main()
