"""Precision: what a run's weights are kept in, and what its forward passes compute in (``--dtype``).

``float32`` (the default on CPUs) and ``float64`` (rlft's exact-arithmetic mode for numerical
checks): weights, gradients, optimizer state and every forward pass in that dtype.

``bfloat16`` is mixed precision as the anchors do it: the optimizer updates **float32 master
weights**, checkpoints hold them, and the forward passes compute in bfloat16.

* One process or DDP: the LM's forward runs under ``torch.autocast(bfloat16)``
  (:func:`compute_in`), which is accelerate's ``mixed_precision="bf16"`` (and so TRL's ``bf16=True``):
  matrix products in bfloat16, normalisations and softmax in float32; the weights, their gradients
  (all-reduced in float32 under DDP) and AdamW's moments stay float32.
* FSDP2: ``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)`` (:func:`fsdp_policy`),
  as torchtitan: float32 shards, gathered and computed in bfloat16, gradients reduce-scattered in
  float32 into float32 shards.
* LoRA: the frozen weights need no master copy and are kept in bfloat16; the adapters (peft makes
  them float32) are the master weights.

Why: an AdamW step moves each weight by about the learning rate, and bfloat16 keeps 8 significant
bits: at a weight of 0.02 its spacing is 2^-13 = 1.2e-4, so a bfloat16 weight updated in place by
lr 1e-6 (the recipes') or even 1e-5 stays where it is and the model learns nothing, with a finite
loss. tests/test_precision.py shows a few bfloat16 steps moving the weights as float32 ones do, and
the in-place bfloat16 update not doing so.

pi_ref and the engines compute as the policy does, so that the policy at step 0 IS pi_ref, to the
bit (:func:`frozen_copy`, :func:`compute_kind`).
"""

from __future__ import annotations

import copy
import functools
import types
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy

#: The dtype names ``--dtype`` takes.
NAMES = ("float32", "bfloat16", "float64")


@dataclass(frozen=True)
class Precision:
    """The dtypes of ``--dtype name``: ``master`` for the trained weights (and checkpoints),
    ``compute`` for the forward passes."""

    name: str

    @property
    def compute(self) -> torch.dtype:
        return getattr(torch, self.name)

    @property
    def master(self) -> torch.dtype:
        return torch.float32 if self.mixed else self.compute

    @property
    def mixed(self) -> bool:
        """Whether weights and compute differ (``bfloat16``: float32 master weights)."""
        return self.name == "bfloat16"


def compute_in(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Make every forward of ``model`` run under ``torch.autocast(dtype)`` on its device (in place;
    returns ``model``). A deep copy keeps it. This is what accelerate does to a model it prepares
    with ``mixed_precision``; rlft does it to the LM itself, so the trainer's scoring, the HF engine
    that samples from the same model and pi_ref (a copy) all compute alike."""
    if getattr(model, "autocast_dtype", None) == dtype:
        return model
    plain = type(model).forward

    @functools.wraps(plain)
    def forward(self, *args, **kwargs):
        device = next(self.parameters()).device.type
        with torch.autocast(device_type=device, dtype=dtype):
            return plain(self, *args, **kwargs)

    model.forward = types.MethodType(forward, model)
    model.autocast_dtype = dtype
    model.compute_kind = f"autocast:{dtype_name(dtype)}"
    return model


def fsdp_policy(precision: Precision) -> MixedPrecisionPolicy:
    """FSDP2's mixed precision for ``precision``: compute in bfloat16, reduce gradients in float32
    (torchtitan's default); nothing for float32 and float64."""
    if precision.mixed:
        return MixedPrecisionPolicy(param_dtype=precision.compute, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def frozen_copy(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A frozen copy (eval mode, no gradients) that computes as ``model``: its autocast included, or
    cast to ``dtype`` (pi_ref beside an FSDP2 policy that computes in bfloat16 from float32 shards)."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    return frozen.to(dtype) if dtype is not None else frozen


def compute_kind(model: nn.Module) -> str:
    """What ``model``'s forward computes in: ``"autocast:bfloat16"`` (:func:`compute_in`), the
    ``param_dtype`` of an FSDP2 policy (set by :func:`rlft.fsdp.shard_policy`), else its parameters'
    dtype. Engines compare it with the trainer's to tell whether their recorded log-probs are the
    trainer's own computation."""
    return getattr(model, "compute_kind", None) or dtype_name(next(model.parameters()).dtype)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")
