"""The one rollout-engine interface.

An engine turns prompts into sampled completions with the token log-probs of the distribution it
actually sampled from, and accepts new weights from the trainer. Engines know nothing of losses,
rewards or algorithms.

Shapes (B = ``len(prompts) * n`` rows, the ``n`` samples of a prompt adjacent)::

    prompt_ids       [B, P] long     LEFT-padded prompt tokens
    prompt_mask      [B, P] bool     True on real prompt tokens
    completion_ids   [B, T] long     RIGHT-padded completion tokens (pad after EOS)
    completion_mask  [B, T] bool     True on real tokens, including the EOS token
    logprobs         [B, T] float32  log mu(y_t | x, y_<t) under the sampling distribution, 0 on pad

so ``cat([prompt_ids, completion_ids], 1)`` is a contiguous sequence per row, exactly as in
:class:`rlft.batch.Batch`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from rlft.registry import Registry


@dataclass(frozen=True)
class SamplingParams:
    """How to sample.

    The defaults (``top_p = 1``, ``top_k = 0``: no truncation) make the recorded log-probs the
    true behaviour log-probs of the policy at ``temperature``.

    Attributes:
        temperature: logits are divided by it before sampling; ``0`` means greedy decoding (the
            recorded log-probs are then those of the temperature-1 distribution).
        top_p: nucleus sampling mass; ``1.0`` disables it.
        top_k: keep only the ``top_k`` most likely tokens; ``0`` disables it.
        max_new_tokens: a completion stops at EOS or after this many tokens (then it has no EOS).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Generation:
    """Completions for ``len(prompts) * n`` rows (see the module docstring for shapes).

    Attributes:
        prompt_ids, prompt_mask: left-padded prompts, one row per sample.
        completion_ids, completion_mask: right-padded completions; the mask includes the EOS token.
        logprobs: float32 log-prob of each sampled token under the sampling distribution
            (logits / temperature, after top-k / top-p), 0 on padding.
        texts: decoded completions, special tokens skipped.
        version: the engine weights version that produced them.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    logprobs: Tensor
    texts: list[str]
    version: int

    def __len__(self) -> int:
        return self.completion_ids.shape[0]


class RolloutEngine(ABC):
    """Samples completions; receives the trainer's weights.

    Attributes:
        version: number of :meth:`load_weights` calls so far (0 for the initial weights).
    """

    version: int = 0

    @abstractmethod
    def generate(
        self, prompts: list[str], n: int, params: SamplingParams, seed: int | None = None
    ) -> Generation:
        """``n`` samples for each prompt (rows ``i*n .. i*n+n-1`` belong to ``prompts[i]``).

        With a ``seed`` the result is deterministic and the global RNG state is left untouched;
        with ``None`` the global RNG is used (and advanced).
        """

    @abstractmethod
    def load_weights(self, state_dict: Mapping[str, Tensor]) -> None:
        """Copy the trainer's weights in and bump :attr:`version`."""

    @classmethod
    def options(cls, model: torch.nn.Module, *, compute_dtype: torch.dtype, sharded: bool,
                own_weights: bool) -> dict[str, Any]:
        """Keyword arguments, beside the user's ``--engine-arg`` (which win), for an engine built on
        ``model`` that must sample as the trainer's forward computes: in ``compute_dtype`` (bfloat16
        under mixed precision, whose master weights ``model`` holds in float32), from weights of its
        own when the policy is ``sharded`` by FSDP2 (sampling must not call collectives) or when it
        samples an ``own_weights`` policy (a stale one). Default: none."""
        return {}

    def computes_like(self, model: torch.nn.Module) -> bool:
        """True if the log-probs this engine records are the trainer's own computation for ``model``
        (the same code, kernels and dtype), so that recomputing them would give them back up to
        rounding. False (the default, e.g. vLLM) makes ``recompute_behavior="auto"`` recompute them."""
        return False


def encode_prompts(tokenizer, prompts: list[str], n: int) -> tuple[Tensor, Tensor]:
    """Check a request and tokenize its prompts: (ids [len(prompts), P] LEFT-padded, mask bool)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not prompts:
        raise ValueError("no prompts")
    enc = tokenizer(list(prompts), padding=True, padding_side="left", return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"].bool()


#: Engine name -> engine class (``"hf"``; ``"vllm"`` where installed).
ENGINES: Registry[type[RolloutEngine]] = Registry("engine", "rlft.engines")
