"""A transformers causal LM as a policy: a value head on its final hidden states (PPO), save / load.

A policy is scored by :mod:`rlft.scoring` (``score_batch`` also takes a :class:`PolicyWithValue`,
which adds ``values``): one forward, each repeated prompt piece once, the output projection in
chunks, no [B, T, V] tensor; the log-probs agree with the ones a rollout engine recorded while
sampling (tested to 1e-4 in fp32).

Shapes::

    hidden  [B, T, H]  final hidden state at the position that predicts completion token t
    values  [B, T]     value of the state before completion token t (:class:`ValueHead`), 0 on padding
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_layers import GradientCheckpointingLayer

from rlft.files import atomic_write_text
from rlft.prefill import unwrap
from rlft.scoring import TokenScores, at_least_float32, score_completions

VALUE_HEAD_FILE = "value_head.safetensors"


def enable_activation_checkpointing(model: nn.Module) -> None:
    """transformers' own per-decoder-layer activation checkpointing (non-reentrant): called
    ``activation_checkpointing_enable`` from transformers 5.25, ``gradient_checkpointing_enable`` before."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@contextmanager
def checkpointed_layers_on(model: nn.Module) -> Iterator[None]:
    """Within the block, the layers :func:`enable_activation_checkpointing` made checkpointed recompute
    their activations in the backward pass (``--gradient-checkpointing``).

    transformers checkpoints a layer only when the layer is in training mode; rlft keeps the policy in
    eval mode (no dropout, as TRL's ``disable_dropout``), so only those layers themselves, not their
    sub-modules, are marked as training, and only for the block. A checkpointed layer keeps no key /
    value cache: score with ``share_prompts=False`` inside.
    """
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer in layers:
            layer.training = False


class ValueHead(nn.Module):
    """Linear map of the final hidden state to a scalar value: [B, T, H] -> [B, T], in ``dtype``
    (float32 by default, also for a bfloat16 model; float64 beside a float64 model).

    Initialised to zero, so every value starts at 0.
    """

    def __init__(self, hidden_size: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1, dtype=dtype)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


class PolicyWithValue(nn.Module):
    """A causal LM plus a :class:`ValueHead`: ``(logprobs, entropy, values)`` in one forward.

    ``values[:, t]`` is the value of the state before completion token ``t`` (computed from the
    hidden state at the position that predicts it), 0 on padding. Wrap this module (not the LM)
    with accelerate / DDP so both parts are synchronised.
    """

    def __init__(self, model: PreTrainedModel, value_head: ValueHead | None = None) -> None:
        super().__init__()
        self.model = model
        weight = next(model.parameters())
        self.value_head = value_head if value_head is not None else \
            ValueHead(_hidden_size(model), dtype=at_least_float32(weight).dtype)
        self.value_head.to(device=weight.device)

    def forward(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        completion_ids: Tensor,
        completion_mask: Tensor,
        temperature: float = 1.0,
        with_entropy: bool = False,
        share_prompts: bool = True,
        chunk_tokens: int = 0,
    ) -> TokenScores:
        scores = score_completions(
            self.model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=temperature,
            with_entropy=with_entropy, with_hidden=True, share_prompts=share_prompts, chunk_tokens=chunk_tokens,
        )
        values = self.value_head(scores.hidden)
        scores.values = torch.where(completion_mask.bool(), values, values.new_zeros(()))
        return scores

    def save_pretrained(self, path: str | os.PathLike, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        save_policy(path, self.model, tokenizer, self.value_head)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> "PolicyWithValue":
        model, _, value_head = load_policy(path, dtype=dtype)
        return cls(model, value_head)


def _hidden_size(model: PreTrainedModel) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.hidden_size)


def save_policy(
    path: str | os.PathLike,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None = None,
    value_head: ValueHead | None = None,
    *,
    model_state: dict[str, Tensor] | None = None,
    value_head_state: dict[str, Tensor] | None = None,
) -> None:
    """Save a checkpoint folder: transformers model (+ tokenizer) (+ ``value_head.safetensors``).

    ``model_state`` / ``value_head_state``: full tensors to write instead of the modules' own
    ``state_dict()`` (under FSDP those are shards: :mod:`rlft.fsdp` gathers them).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    unwrap(model).save_pretrained(path, **({"state_dict": model_state} if model_state is not None else {}))
    _record_attention(path, unwrap(model))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if value_head is not None or value_head_state is not None:
        save_value_head(path, value_head_state if value_head_state is not None else unwrap(value_head).state_dict())


def _record_attention(path: Path, model: nn.Module) -> None:
    """Write the model's attention kernel into the saved ``config.json`` as ``attn_implementation``,
    which transformers reads back when it loads the folder (it does not save it itself): a loaded
    checkpoint then computes with the kernel the policy was trained with (eager for the tiny
    preset, :data:`rlft.models.tiny.TINY_ATTENTION`), not transformers' default."""
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    config_file = path / "config.json"
    if isinstance(attention, str) and config_file.is_file():
        config = json.loads(config_file.read_text())
        atomic_write_text(config_file, json.dumps({**config, "attn_implementation": attention}, indent=2, sort_keys=True) + "\n")


def save_value_head(path: str | os.PathLike, state: dict[str, Tensor]) -> None:
    """Write a value head's state as ``path/value_head.safetensors``."""
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(state, str(Path(path) / VALUE_HEAD_FILE), metadata={"format": "pt", "rlft": json.dumps({"kind": "value_head"})})


def load_value_head(path: str | os.PathLike) -> ValueHead | None:
    """The value head in ``path/value_head.safetensors``, or None if there is none."""
    if not (Path(path) / VALUE_HEAD_FILE).is_file():
        return None
    state = load_file(str(Path(path) / VALUE_HEAD_FILE))
    value_head = ValueHead(state["linear.weight"].shape[1], dtype=state["linear.weight"].dtype)
    value_head.load_state_dict(state)
    return value_head


def load_policy(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None, ValueHead | None]:
    """Load what :func:`save_policy` wrote: ``(model, tokenizer or None, value head or None)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = None
    if any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, load_value_head(path)
