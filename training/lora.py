"""The LoRA training loop for the embedded SmolLM2-135M: PEFT on the dequantized GGUF, plain torch.

Seeded and resumable: the data order is a function of (seed, epoch), and a checkpoint holds the
adapter, the optimizer and the schedule, so a run stopped at any step and resumed ends where an
uninterrupted one would. The loss covers the answer and its ``<|im_end|>`` only, by position: not
the prompt, not the padding (whose id is ``<|im_end|>`` too, so masking by id would hide the end
token and the model would never learn to stop).

With ``lora_layers`` set, only the top layers carry LoRA: the frozen layers below give the same
output for an example at every epoch, so it is computed once (``bottom_states``) and each step
runs the top layers alone, forward and backward.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

from formwork.providers.base import ProviderError
from formwork.providers.local import gguf_path

from .adapters import HF_BASE_MODEL, Knobs, RunConfig
from .gguf_lora import convert
from .jobs import FineTuneError

log = logging.getLogger(__name__)

END_TOKEN = "<|im_end|>"
IGNORE = -100
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECKPOINTS_KEPT = 2
FROZEN_STATES_BYTES = 2 << 30  # above this, the frozen layers run at every step instead


@dataclass(frozen=True, slots=True)
class Step:
    step: int
    total: int
    loss: float


@dataclass(frozen=True, slots=True)
class TrainResult:
    status: Literal["finished", "stopped"]
    step: int
    total: int
    trained_tokens: int
    loss: float | None
    final_dir: Path | None  # the trained adapter, not yet published
    resumed_from: int = 0
    skipped: int = 0  # examples over max_length
    validation_loss: float | None = None


# -- the model ------------------------------------------------------------------------------


def gguf_location() -> tuple[Path, str]:
    """The GGUF's folder and file name, found as the local provider finds it."""
    try:
        path = gguf_path()
    except ProviderError as e:
        raise FineTuneError(str(e)) from e
    return path.parent, path.name


def load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    folder, name = gguf_location()
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def load_base_model(device: torch.device) -> Any:
    """The GGUF dequantized to a float32 transformers model."""
    from transformers import AutoModelForCausalLM

    folder, name = gguf_location()
    model: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model.to(device)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# -- data -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode(tokenizer: Any, messages: Sequence[dict[str, str]]) -> Encoded:
    """The prompt as the chat template renders it for generation, then the answer and its end.

    Prompt and answer are tokenized apart, as generation sees them: the model continues the
    prompt's tokens. Only the answer and its end token carry labels.
    """
    prompt = tokenizer.apply_chat_template(
        list(messages[:-1]), add_generation_prompt=True, tokenize=False
    )
    prompt_ids: list[int] = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids: list[int] = tokenizer(messages[-1]["content"], add_special_tokens=False)[
        "input_ids"
    ]
    answer_ids = [*answer_ids, tokenizer.convert_tokens_to_ids(END_TOKEN)]
    return Encoded([*prompt_ids, *answer_ids], [IGNORE] * len(prompt_ids) + answer_ids)


def read_chats(path: Path) -> list[list[dict[str, str]]]:
    """Chat fine-tuning JSONL (``{"messages": [...]}``), each ending with the answer."""
    chats = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        messages = json.loads(line).get("messages")
        if not isinstance(messages, list) or not messages or messages[-1]["role"] != "assistant":
            raise FineTuneError(f"{path.name}:{number}: expected messages ending with the answer")
        chats.append(messages)
    return chats


def encode_file(tokenizer: Any, path: Path, max_length: int) -> tuple[list[Encoded], int]:
    """The file's examples that fit in ``max_length`` tokens, and how many did not."""
    encoded = [encode(tokenizer, chat) for chat in read_chats(path)]
    kept = [e for e in encoded if len(e.input_ids) <= max_length]
    return kept, len(encoded) - len(kept)


def collate(
    examples: Sequence[Encoded], pad_id: int, states: Sequence[torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded batch; padding is masked out of attention and loss by position. With
    ``states`` (the frozen layers' output for each example), those stand for the input ids."""
    width = max(len(e.input_ids) for e in examples)
    ids, mask, labels = [], [], []
    for e in examples:
        pad = width - len(e.input_ids)
        ids.append([*e.input_ids, *[pad_id] * pad])
        mask.append([1] * len(e.input_ids) + [0] * pad)
        labels.append([*e.labels, *[IGNORE] * pad])
    batch = {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(mask),
        "labels": torch.tensor(labels),
    }
    if states is not None:
        hidden = torch.zeros(len(states), width, states[0].shape[-1], dtype=states[0].dtype)
        for i, state in enumerate(states):
            hidden[i, : len(state)] = state
        batch["hidden"] = hidden
    return batch


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    return [int(i) for i in torch.randperm(n, generator=generator)]


# -- checkpoints ----------------------------------------------------------------------------


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in run_dir.glob("checkpoint-*") if (p / "trainer.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def save_checkpoint(run_dir: Path, model: Any, state: dict[str, Any], step: int) -> Path:
    """Adapter, optimizer and schedule at ``step``, written aside and renamed into place."""
    target = run_dir / f"checkpoint-{step:06d}"
    partial = run_dir / f".partial-{step:06d}"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, save_embedding_layers=False)
    torch.save(state, partial / "trainer.pt")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    for old in checkpoints(run_dir)[:-CHECKPOINTS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path, model: Any, optimizer: Any, schedule: Any) -> int:
    from peft import load_peft_weights, set_peft_model_state_dict

    set_peft_model_state_dict(model, load_peft_weights(str(path)))
    state = torch.load(path / "trainer.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return int(state["step"])


# -- training -------------------------------------------------------------------------------


def first_trained_layer(base: Any, knobs: Knobs) -> int:
    """The lowest layer that carries LoRA (0 when every layer does)."""
    layers = int(base.config.num_hidden_layers)
    return layers - knobs.lora_layers if 0 < knobs.lora_layers < layers else 0


def lora_model(base: Any, knobs: Knobs) -> Any:
    from peft import LoraConfig, get_peft_model

    first = first_trained_layer(base, knobs)
    config = LoraConfig(
        r=knobs.lora_rank,
        lora_alpha=knobs.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(TARGET_MODULES),
        layers_to_transform=list(range(first, base.config.num_hidden_layers)) if first else None,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(knobs.seed)
    return get_peft_model(base, config)


@contextmanager
def decoder_layers(decoder: Any, start: int, stop: int | None, *, norm: bool) -> Iterator[None]:
    """The decoder runs ``layers[start:stop]`` only, and its final norm only if ``norm``. The
    positions, the causal mask and the rotary embeddings come from the input as before, so the
    slices run in turn compute what the whole decoder does."""
    layers, final_norm = decoder.layers, decoder.norm
    decoder.layers = torch.nn.ModuleList(list(layers)[start:stop])
    if not norm:
        decoder.norm = torch.nn.Identity()
    try:
        yield
    finally:
        decoder.layers, decoder.norm = layers, final_norm


@torch.no_grad()
def bottom_states(
    model: Any, examples: Sequence[Encoded], pad_id: int, first: int, batch_size: int
) -> list[torch.Tensor]:
    """Each example's hidden states after the frozen layers ``0..first-1`` (its own length,
    no padding). Computed in batches of similar length: a row's states do not depend on the
    rows beside it (right padding, causal attention)."""
    decoder = model.get_base_model().model
    states: list[torch.Tensor | None] = [None] * len(examples)
    by_length = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    was_training = model.training
    model.eval()
    with decoder_layers(decoder, 0, first, norm=False):
        for start in range(0, len(by_length), batch_size):
            chosen = by_length[start : start + batch_size]
            batch = collate([examples[i] for i in chosen], pad_id)
            hidden = decoder(
                input_ids=batch["input_ids"].to(model.device),
                attention_mask=batch["attention_mask"].to(model.device),
            ).last_hidden_state
            for row, i in enumerate(chosen):
                states[i] = hidden[row, : len(examples[i].input_ids)].cpu().clone()
    model.train(was_training)
    return [s for s in states if s is not None]


def states_bytes(model: Any, examples: Sequence[Encoded]) -> int:
    width = int(model.get_base_model().config.hidden_size)
    return sum(len(e.input_ids) for e in examples) * width * 4


def linear_schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def answer_loss(model: Any, batch: dict[str, torch.Tensor], first: int = 0) -> torch.Tensor:
    """The causal LM loss over the labelled positions, the logits made for those only.

    The same number as the model's own loss, but the vocabulary projection (a fifth of the
    model's work at 49k tokens) and its backward run for the answer tokens alone, not for the
    prompt and the padding too. With ``hidden`` in the batch (the output of layers below
    ``first``), only the layers from ``first`` up run.
    """
    inner = model.get_base_model()
    if "hidden" in batch:
        with decoder_layers(inner.model, first, None, norm=True):
            hidden = inner.model(
                inputs_embeds=batch["hidden"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
    else:
        hidden = inner.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    labels = batch["labels"][:, 1:]
    kept = labels != IGNORE
    logits = inner.lm_head(hidden[:, :-1][kept])
    return torch.nn.functional.cross_entropy(logits.float(), labels[kept])


@torch.no_grad()
def mean_loss(model: Any, examples: list[Encoded], pad_id: int, batch_size: int) -> float:
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        total += float(answer_loss(model, batch)) * n
        tokens += n
    model.train()
    return total / max(tokens, 1)


def optimize(
    model: Any,
    batch: dict[str, Any],
    params: list[Any],
    optimizer: Any,
    schedule: Any,
    first: int = 0,
) -> tuple[float, int]:
    """One optimizer step on one batch: its loss and the tokens it held."""
    batch = {k: v.to(model.device) for k, v in batch.items()}
    loss: Any = answer_loss(model, batch, first)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), int(batch["attention_mask"].sum())


def train(
    config: RunConfig,
    *,
    on_step: Callable[[Step], None] = lambda step: None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) the LoRA adapter; stops cleanly, with a checkpoint, on ``should_stop``."""
    knobs = config.knobs
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never ask the Hub
    if config.threads:
        torch.set_num_threads(config.threads)
    tokenizer = load_tokenizer()
    pad_id = int(tokenizer.pad_token_id)
    examples, skipped = encode_file(tokenizer, config.train_file, knobs.max_length)
    if not examples:
        raise FineTuneError(f"no training example fits in {knobs.max_length} tokens")
    base = load_base_model(device())
    first = first_trained_layer(base, knobs)
    model = lora_model(base, knobs)
    model.train()
    states = None
    if first and states_bytes(model, examples) <= FROZEN_STATES_BYTES:
        log.info(
            "%s: the frozen layers 0-%d, once for %d examples",
            config.task,
            first - 1,
            len(examples),
        )
        states = bottom_states(model, examples, pad_id, first, knobs.batch_size)
    per_epoch = math.ceil(len(examples) / knobs.batch_size)
    total = per_epoch * knobs.n_epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=knobs.learning_rate, weight_decay=0.0)
    schedule = linear_schedule(optimizer, total, int(total * knobs.warmup_fraction))
    config.run_dir.mkdir(parents=True, exist_ok=True)
    step = resumed = 0
    if found := checkpoints(config.run_dir):
        step = resumed = load_checkpoint(found[-1], model, optimizer, schedule)
        log.info("resuming %s from step %d of %d", config.task, step, total)
    loss: float | None = None
    tokens = 0
    bar = tqdm(
        total=total, initial=step, desc=f"lora {config.task}", unit="step", disable=not progress
    )
    try:
        while step < total and not should_stop():
            epoch, index = divmod(step, per_epoch)
            order = epoch_order(len(examples), knobs.seed, epoch)
            chosen = order[index * knobs.batch_size : (index + 1) * knobs.batch_size]
            batch = collate(
                [examples[i] for i in chosen],
                pad_id,
                None if states is None else [states[i] for i in chosen],
            )
            loss, seen = optimize(model, batch, params, optimizer, schedule, first)
            step += 1
            tokens += seen
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if step % knobs.checkpoint_every == 0 or step == total:
                save_checkpoint(
                    config.run_dir, model, _trainer_state(optimizer, schedule, step), step
                )
            on_step(Step(step, total, loss))
    finally:
        bar.close()
    if step < total:
        if step > resumed and step % knobs.checkpoint_every:
            save_checkpoint(config.run_dir, model, _trainer_state(optimizer, schedule, step), step)
        return TrainResult("stopped", step, total, tokens, loss, None, resumed, skipped)
    validation_loss = None
    if config.validation_file is not None:
        held, _ = encode_file(tokenizer, config.validation_file, knobs.max_length)
        if held:
            validation_loss = mean_loss(model, held, pad_id, knobs.batch_size)
    final = save_final(model, config.run_dir)
    return TrainResult(
        "finished", step, total, tokens, loss, final, resumed, skipped, validation_loss
    )


def save_final(model: Any, run_dir: Path) -> Path:
    """The trained adapter in ``run_dir/final``: PEFT files (their config naming the HF base
    model) and ``adapter.gguf``, the same adapter in the format the local provider serves."""
    final = run_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    model.save_pretrained(final, save_embedding_layers=False)
    adapter_config = final / "adapter_config.json"  # name the HF base, for vLLM and PEFT users
    meta = json.loads(adapter_config.read_text())
    adapter_config.write_text(json.dumps({**meta, "base_model_name_or_path": HF_BASE_MODEL}))
    convert(final)
    return final


def _trainer_state(optimizer: Any, schedule: Any, step: int) -> dict[str, Any]:
    return {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "step": step}
