"""What one training process needs to know about the others: global sums and its share of a batch.

With one process (``python -m rlft.train``) every function here is the identity. Under
``accelerate launch --multi_gpu --num_processes N`` (DDP; on a machine without GPUs accelerate
starts N CPU processes with the gloo backend) or ``torchrun --nproc-per-node N`` (DDP, or FSDP2
with ``--fsdp``: :mod:`rlft.fsdp`), accelerate's ``Accelerator`` initialises ``torch.distributed``
and each process (rank) holds ``groups / N`` whole groups of every batch. Losses stay correct because their denominators are global sums
(:class:`algorithms.base.Normalizers`), and the trainer multiplies each rank's loss by N before
the backward pass, since DDP and FSDP average gradients over ranks: the gradient applied is then
the gradient of the whole batch's loss, exactly as with one process.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Number of training processes (1 unless torch.distributed is initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's index in ``[0, world_size())``."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_sum(values: Tensor) -> Tensor:
    """Element-wise sum of ``values`` over all processes (a new tensor; ``values`` is unchanged).

    Every process must call it, in the same order, with a tensor of the same shape and dtype.
    """
    if world_size() == 1:
        return values.clone()
    total = values.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True iff ``flag`` holds on every process (so that all ranks take the same branch)."""
    if world_size() == 1:
        return flag
    return bool(all_sum(torch.tensor([float(not flag)], device=device)).item() == 0)


def broadcast_state(state: Mapping[str, Tensor] | None, template: Mapping[str, tuple[torch.Size, torch.dtype]],
                    device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """The main process's ``state`` (a state dict) on every process: a collective, every process calls it;
    the others pass ``None`` and receive tensors of the ``template``'s shapes and dtypes on ``device``.
    With one process, ``state`` itself."""
    if world_size() == 1:
        return dict(state)
    out = {}
    for name in sorted(template):
        shape, dtype = template[name]
        tensor = state[name].to(device) if rank() == 0 else torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(tensor, src=0)
        out[name] = tensor
    return out


def shard(num_groups: int, processes: int, index: int) -> slice:
    """The contiguous groups of process ``index``: ``[index * G / N, (index + 1) * G / N)``."""
    if num_groups % processes:
        raise ValueError(f"{num_groups} groups do not split evenly over {processes} processes")
    size = num_groups // processes
    return slice(index * size, (index + 1) * size)
