"""FSDP2: the policy's parameters, gradients and optimizer state sharded over the training processes.

``--fsdp`` under ``torchrun --nproc-per-node N -m rlft.train ...`` or ``accelerate launch
--multi_gpu --num_processes N -m rlft.train ...`` (gloo on a CPU, NCCL on GPUs). torch's own FSDP2
(``torch.distributed.fsdp.fully_shard``) does the work; accelerate only starts the process group
(its FSDP config falls back to DDP on a CPU, so rlft calls ``fully_shard`` itself, as torchtitan does).

What is sharded and what is not:

* the policy (the LM, plus the value head where the algorithm has one): each decoder layer (the
  classes in the model's ``_no_split_modules``, as accelerate's and TRL's auto-wrap policies pick
  them) is one FSDP unit, the rest (embeddings, final norm, output layer, value head) is the root
  unit. Every process keeps ``1/N`` of each parameter (dim 0 shards, as ``DTensor``), of its
  gradient and of AdamW's two moments; a forward all-gathers one unit at a time and a backward
  reduce-scatters its gradients (averaged over processes, so each process's loss is multiplied by N
  exactly as under DDP, see :mod:`rlft.distributed`).
* pi_ref is NOT sharded: every process keeps a full copy in inference mode (no gradient, no
  optimizer state), since it is only read, and each process scores its own rows with it, in
  calls whose number may differ between processes (evaluation shares).
* the rollout engine and the ``stale:K`` source sample from their own full copies, which receive
  the full weights gathered once per step (:func:`full_state_dict`); sampling needs no collective,
  so processes may generate different numbers of tokens.

Checkpoints stay the one-process format: a gathered state dict (a normal HF folder) and a gathered
optimizer state (:func:`full_optimizer_state_dict`), loaded back into the shards on resume.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from rlft.distributed import world_size

#: Gather every shard to every process (the engine and the stale:K source run on every process).
FULL = StateDictOptions(full_state_dict=True)


def shard_policy(policy: nn.Module, model: nn.Module) -> nn.Module:
    """Shard ``policy`` (``model`` itself, or a :class:`~rlft.policy.PolicyWithValue` around it) in place
    over all processes: one FSDP unit per decoder layer of ``model``, the root unit for the rest.

    Build the optimizer AFTER this call: its parameters must be the sharded ones.
    """
    layers = set(getattr(model, "_no_split_modules", None) or [])
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder-layer classes (_no_split_modules); "
                         "rlft cannot pick the FSDP units")
    device = next(policy.parameters()).device
    mesh = init_device_mesh(device.type, (world_size(),))
    for module in list(model.modules()):
        if type(module).__name__ in layers:
            fully_shard(module, mesh=mesh)
    fully_shard(policy, mesh=mesh)
    return policy


def is_sharded(module: nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def full_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer of the sharded ``module`` as full tensors, on every process (a collective:
    every process must call it). The keys are those of ``module.state_dict()`` before sharding."""
    return get_model_state_dict(module, options=FULL)


def load_full_state_dict(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy full tensors (as :func:`full_state_dict` returns them) into the shards of ``module``.
    (``state`` is left as it is: torch replaces the entries of the mapping it is given by shards.)"""
    set_model_state_dict(module, dict(state), options=FULL)


def full_optimizer_state_dict(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state of the sharded ``module`` with full tensors, keyed by parameter name (a collective)."""
    return get_optimizer_state_dict(module, optimizer, options=FULL)


def load_full_optimizer_state_dict(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load what :func:`full_optimizer_state_dict` returned into the shards of the optimizer state."""
    set_optimizer_state_dict(module, optimizer, copy.deepcopy(state), options=FULL)


def clip_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Scale the sharded gradients so that their global L2 norm is at most ``max_norm``; returns the norm
    before clipping (the same on every process).

    ``torch.nn.utils.get_total_norm`` over ``DTensor`` shards gives a partial ``DTensor``; its
    ``full_tensor()`` sums the squares over processes (a collective), as torchtitan's clipping does.
    """
    with_grads = [p for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in with_grads], norm_type=2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(with_grads, max_norm, total)  # (takes the parameters, not the grads)
    return float(total)


def local_bytes(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes THIS process holds for ``module``'s parameters, their gradients and the optimizer state
    (a shard's local tensor for a ``DTensor``): the memory that FSDP divides by the number of processes.
    Gradients are counted at their peak, after a backward: one of each trainable parameter's local size
    (``zero_grad`` frees them between steps)."""
    def size(t: Tensor) -> int:
        local = t.to_local() if isinstance(t, DTensor) else t
        return local.numel() * local.element_size()

    params = list(module.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, Tensor) and v.dim() > 0]
    return {"parameters": sum(size(p) for p in params),
            "gradients": sum(size(p) for p in params if p.requires_grad),
            "optimizer": sum(size(v) for v in state)}
