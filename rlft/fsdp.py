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

Checkpoints are sharded (:func:`save_sharded`, torch.distributed.checkpoint): each process writes
and reads back its own shards of the policy and of AdamW's state, nothing is gathered; the last
step's checkpoint also holds the weights as a normal HF folder, gathered on the main process only
(:func:`gathered_on_main`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor, nn
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from rlft.distributed import world_size
from rlft.precision import dtype_name

#: Gather every shard to every process (the engine and the stale:K source run on every process).
FULL = StateDictOptions(full_state_dict=True)
#: The checkpoint's folder of shards (torch.distributed.checkpoint).
SHARDED = "sharded"


def shard_policy(policy: nn.Module, model: nn.Module, mp_policy: MixedPrecisionPolicy | None = None) -> nn.Module:
    """Shard ``policy`` (``model`` itself, or a :class:`~rlft.policy.PolicyWithValue` around it) in place
    over all processes: one FSDP unit per decoder layer of ``model``, the root unit for the rest.
    ``mp_policy``: FSDP2's mixed precision (:func:`rlft.precision.fsdp_policy`; bfloat16 compute
    from float32 shards under ``--dtype bfloat16``).

    Build the optimizer AFTER this call: its parameters must be the sharded ones.
    """
    layers = set(getattr(model, "_no_split_modules", None) or [])
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder-layer classes (_no_split_modules); "
                         "rlft cannot pick the FSDP units")
    device = next(policy.parameters()).device
    mesh = init_device_mesh(device.type, (world_size(),))
    mp_policy = mp_policy or MixedPrecisionPolicy()
    for module in list(model.modules()):
        if type(module).__name__ in layers:
            fully_shard(module, mesh=mesh, mp_policy=mp_policy)
    fully_shard(policy, mesh=mesh, mp_policy=mp_policy)
    if mp_policy.param_dtype is not None:  # what its forward computes in (rlft.precision.compute_kind)
        model.compute_kind = dtype_name(mp_policy.param_dtype)
    return policy


def is_sharded(module: nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def full_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer of the sharded ``module`` as full tensors, on every process (a collective:
    every process must call it). The keys are those of ``module.state_dict()`` before sharding."""
    return get_model_state_dict(module, options=FULL)


def gathered_on_main(module: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer of the sharded ``module`` as full CPU tensors on the main process
    only ({} elsewhere): for writing an HF folder without a full copy on every process (a collective)."""
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(policy: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Write ``policy``'s and ``optimizer``'s shards into ``folder`` with torch.distributed.checkpoint:
    each process writes its own files, nothing is gathered (a collective: every process calls it)."""
    model_state, optimizer_state = get_state_dict(policy, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder))


def load_sharded(policy: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Read what :func:`save_sharded` wrote back into the shards of ``policy`` and ``optimizer`` (a
    collective; the same number of processes)."""
    model_state, optimizer_state = get_state_dict(policy, optimizer)
    dcp.load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder))
    set_state_dict(policy, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)


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
