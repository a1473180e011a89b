"""Scoring completions: the log-prob of every chosen token, in memory bounded at any vocabulary size.

Every path that scores completions comes here: the policy with gradients (the loss), pi_ref, pi_old,
the value head's hidden states (:mod:`rlft.policy`), the evaluation and the behaviour sources. One
forward pass over ``cat([prompt_ids, completion_ids], 1)`` (prompts left-padded, completions
right-padded; positions counted from the attention mask, so left padding changes nothing), or with
each repeated prompt piece run once first and the completions on its key / value cache
(``share_prompts``, :mod:`rlft.prefill`): the same values up to float round-off.

**No [B, T, V] tensor.** For the call, the model's output layer is replaced by one that maps the
final hidden states straight to what is needed, ``chunk_tokens`` positions at a time
(:func:`chosen_token_scores`)::

    z_t       = h_t W^T / temperature               [n, V] float32, for one chunk of n positions
    logprob_t = log_softmax(z_t)[y_t]               log pi(y_t | x, y_<t)
    entropy_t = -sum_v p_v log p_v, p = softmax(z_t) (no gradient unless ``entropy_grad``)

With gradients and more than one chunk, each chunk is recomputed in the backward pass
(``torch.utils.checkpoint``), so one chunk's [n, V] logits exist at a time, forward or backward:
peak memory grows with the chunk, not with B x T x V, as in TRL's ``selective_log_softmax``,
verl's chunked entropy and Liger's fused linear cross-entropy. The default chunk holds
:data:`CHUNK_BYTES` of float32 logits (:func:`chunk_positions`): 64 MiB on a CPU, 341 positions at
SmolLM2's vocabulary of 49,152 and 110 at Qwen2.5's 151,936; 512 MiB on a GPU, 2,730 and 883
positions; every position of a tiny-preset batch (one chunk: a plain forward's computation, bit
for bit). A chunk's backward holds about four [n, V] float32 buffers (benchmarks/scorer_memory.py). A model whose output layer is not a plain
``nn.Linear`` (LoRA on the output layer) or whose logits are post-processed (Gemma's soft-capping,
Cohere's and Granite's scaling) gets its full logits from the model, then the same chunked
log-softmax: correct, not memory-bounded.

Without gradients (pi_ref, pi_old, evaluation, the dataset source), :class:`Scoring` also runs the
rows in parts of at most ``rows`` (the training micro-batch: ``micro_groups x group_size``), so
activations are bounded too.

Shapes::

    prompt_ids, prompt_mask          [B, P]   (P >= 1: every prompt has at least one real token)
    completion_ids, completion_mask  [B, T]
    TokenScores.logprobs             [B, T]   log pi(y_t | x, y_<t) at ``temperature``, 0 on padding
    TokenScores.entropy              [B, T]   entropy of pi(. | x, y_<t) at ``temperature``, 0 on padding
    TokenScores.hidden               [B, T, H] final hidden state at the position predicting y_t
    TokenScores.values               [B, T]   value of the state before y_t (a value head), 0 on padding
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from rlft.prefill import PromptPlan, position_ids_from_mask, prefill, shares_prefix, unwrap, with_cache

#: The default chunk of the output projection, by device type: positions whose float32 logits take this
#: many bytes (a CPU's memory is the machine's: 64 MiB keeps a 64 x 256-token step of a 49k vocabulary
#: within 3 GiB, benchmarks/scorer_memory.py; a GPU's larger chunks launch fewer kernels).
CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 512 * 2**20}
#: Config fields of models whose logits are more than the output layer's product (soft-capping, scaling).
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")


@dataclass
class TokenScores:
    """What one forward pass gives per completion token (see the module docstring for shapes)."""

    logprobs: Tensor
    entropy: Tensor | None = None
    hidden: Tensor | None = None
    values: Tensor | None = None


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 if it is of a narrower float type (bfloat16, float16), else unchanged (float64 stays)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def chunk_positions(vocab: int, chunk_tokens: int = 0, device: torch.device | str = "cpu") -> int:
    """Positions per chunk of the output projection: ``chunk_tokens``, or (0) as many as fit
    :data:`CHUNK_BYTES` of float32 logits over a vocabulary of ``vocab`` on ``device``'s type."""
    budget = CHUNK_BYTES.get(torch.device(device).type, CHUNK_BYTES["cpu"])
    return chunk_tokens or max(1, budget // (4 * vocab))


def _chosen_from_logits(logits: Tensor, targets: Tensor, temperature: float, entropy: bool,
                        entropy_grad: bool) -> tuple[Tensor, Tensor | None]:
    """[n, V] logits, [n] targets -> ([n] log-probs, [n] entropy or None), in at least float32."""
    logits = at_least_float32(logits)
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    chosen = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    if not entropy:
        return chosen, None
    if entropy_grad:
        return chosen, -(logp_all.exp() * logp_all).sum(-1)
    with torch.no_grad():  # in place: one [n, V] buffer fewer
        return chosen, -logp_all.exp().mul_(logp_all).sum(-1)


def _project_chunk(hidden: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None, temperature: float,
                   entropy: bool, entropy_grad: bool) -> tuple[Tensor, Tensor]:
    """One chunk: [n, H] hidden -> ([n] log-probs, [n] entropy or zeros) through the output layer."""
    chosen, ent = _chosen_from_logits(F.linear(hidden, weight, bias), targets, temperature, entropy, entropy_grad)
    return chosen, ent if ent is not None else torch.zeros_like(chosen)


def chosen_token_scores(hidden: Tensor, weight: Tensor | None, bias: Tensor | None, targets: Tensor, *,
                        temperature: float = 1.0, chunk_tokens: int = 0, entropy: bool = False,
                        entropy_grad: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-probs of ``targets`` (and the entropy) at every position, chunk by chunk (module docstring).

    Args:
        hidden: [..., H] final hidden states, projected by ``weight`` [V, H] (and ``bias`` [V]);
            with ``weight=None``, [..., V] logits already projected.
        targets: [...] the token whose log-prob is taken at each position.
        chunk_tokens: positions per chunk (0: :func:`chunk_positions`' default).
        entropy: also return the entropy; ``entropy_grad``: with its gradient (else detached).

    Returns:
        ([...] log-probs, [...] entropy or None), in float32 (float64 for a float64 model).
    """
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    vocab = weight.shape[0] if weight is not None else hidden.shape[-1]
    step = chunk_positions(vocab, chunk_tokens, hidden.device)
    recompute = torch.is_grad_enabled() and flat_hidden.shape[0] > step
    chosen, entropies = [], []
    for start in range(0, max(flat_hidden.shape[0], 1), step):
        part, part_targets = flat_hidden[start:start + step], flat_targets[start:start + step]
        if weight is None:
            c, e = _chosen_from_logits(part, part_targets, temperature, entropy, entropy_grad)
        elif recompute:  # keep no [n, V] tensor for the backward pass: recompute it there
            c, e = checkpoint(_project_chunk, part, part_targets, weight, bias, temperature, entropy, entropy_grad,
                              use_reentrant=False)
        else:
            c, e = _project_chunk(part, part_targets, weight, bias, temperature, entropy, entropy_grad)
        chosen.append(c)
        entropies.append(e)
    logprobs = torch.cat(chosen).view(targets.shape)
    return logprobs, torch.cat(entropies).view(targets.shape) if entropy else None


class _ChosenTokenHead:
    """One scoring call's use of the output layer (see the module docstring).

    ``within(targets)`` replaces the output layer's forward, for the model calls inside the block,
    by :func:`chosen_token_scores` for ``targets`` [b, t]: where the layer is applied to [b, t, H]
    hidden states, it returns [b, t, 2] (log-prob, entropy) instead of [b, t, V] logits (other
    calls, such as a shared prefix's, get plain logits). ``read`` turns a call's output back into
    ([b, t] log-probs, [b, t] entropy or None), from either form.
    """

    def __init__(self, model: nn.Module, temperature: float, chunk_tokens: int, entropy: bool,
                 entropy_grad: bool) -> None:
        self.layer = unwrap(model).get_output_embeddings()
        config = getattr(unwrap(model), "config", None)
        self.patchable = type(self.layer) is nn.Linear and not any(
            getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_POSTPROCESSING)
        self.temperature, self.chunk_tokens = temperature, chunk_tokens
        self.entropy, self.entropy_grad = entropy, entropy_grad

    @contextmanager
    def within(self, targets: Tensor) -> Iterator[None]:
        if not self.patchable:
            yield
            return
        layer, plain = self.layer, self.layer.forward

        def forward(hidden: Tensor) -> Tensor:
            if hidden.shape[:-1] != targets.shape:  # not the scored positions: plain logits
                return plain(hidden)
            logprobs, entropy = chosen_token_scores(
                hidden, layer.weight, layer.bias, targets, temperature=self.temperature,
                chunk_tokens=self.chunk_tokens, entropy=self.entropy, entropy_grad=self.entropy_grad)
            return torch.stack([logprobs, entropy if entropy is not None else torch.zeros_like(logprobs)], dim=-1)

        own = layer.__dict__.get("forward")  # a forward set on the instance before, if any
        layer.forward = forward
        try:
            yield
        finally:
            if own is None:
                del layer.forward  # the class's forward again
            else:
                layer.forward = own

    def read(self, output: Tensor, targets: Tensor) -> tuple[Tensor, Tensor | None]:
        """``output`` of a call made ``within(targets)``: [b, t, 2] scores or [b, t, V] logits."""
        if self.patchable:
            entropy = output[..., 1] if self.entropy_grad else output[..., 1].detach()
            return output[..., 0], entropy if self.entropy else None
        return chosen_token_scores(output, None, None, targets, temperature=self.temperature,
                                   chunk_tokens=self.chunk_tokens, entropy=self.entropy,
                                   entropy_grad=self.entropy_grad)


def score_completions(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    with_hidden: bool = False,
    share_prompts: bool = True,
    chunk_tokens: int = 0,
) -> TokenScores:
    """Log-probs (and optionally entropy, final hidden states) of every completion token.

    Args:
        model: a transformers causal LM (possibly wrapped by DDP / accelerate, sharded by FSDP2).
        temperature: score under ``softmax(logits / temperature)``; use the engine's sampling
            temperature to recover its behaviour log-probs.
        with_entropy: also return the per-token entropy, detached unless ``entropy_grad``.
        with_hidden: also return the final hidden states (for a value head).
        share_prompts: run each distinct prompt once when rows repeat it (the samples of a group),
            and the prefix common to all prompts once (:mod:`rlft.prefill`), then the completions
            on their key / value cache (:func:`_forward_on_prefill`); else one forward over every
            full row. Same values up to float round-off (attention and matrix products over other
            shapes sum in other orders; bounded in tests/tolerances.py). A float64 model, or one
            sharded by FSDP2, runs its distinct prompts whole (:func:`rlft.prefill.shares_prefix`).
        chunk_tokens: positions per chunk of the output projection (0: the default,
            :func:`chunk_positions`).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score tokens, got {temperature}")
    if prompt_ids.shape[1] < 1:
        raise ValueError("prompts must have at least one token (e.g. BOS) to score the first completion token")
    head = _ChosenTokenHead(model, temperature, chunk_tokens, with_entropy, entropy_grad)
    plan = PromptPlan.of(prompt_ids, prompt_mask, share=share_prompts, share_prefix=shares_prefix(model))
    forward = _forward_on_prefill if plan.shares_work else _forward_whole
    logprobs, entropy, hidden = forward(model, head, plan, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                        with_hidden)
    mask = completion_mask.bool()
    zero = logprobs.new_zeros(())
    return TokenScores(logprobs=torch.where(mask, logprobs, zero),
                       entropy=torch.where(mask, entropy, zero) if entropy is not None else None, hidden=hidden)


def _forward_whole(model, head: _ChosenTokenHead, plan, prompt_ids, prompt_mask, completion_ids, completion_mask,
                   with_hidden):
    """One forward over ``cat([prompt, completion])``: ([B, T] log-probs, [B, T] entropy or None,
    [B, T, H] hidden or None) at the positions P-1 .. P+T-2 that predict the completion tokens."""
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids[:, :-1]], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask[:, :-1]], dim=1).long()
    with head.within(completion_ids):
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            logits_to_keep=T,  # positions P-1 .. P+T-2 (the last completion token predicts nothing we score)
            output_hidden_states=with_hidden,
            use_cache=False,
        )
    hidden = out.hidden_states[-1][:, P - 1:] if with_hidden else None
    return (*head.read(out.logits, completion_ids), hidden)


def _forward_on_prefill(model, head: _ChosenTokenHead, plan: PromptPlan, prompt_ids, prompt_mask, completion_ids,
                        completion_mask, with_hidden):
    """:func:`_forward_whole` with the prompts run first as ``plan`` says (:func:`rlft.prefill.prefill`),
    then the completions on their key / value cache: the same scores, with less prompt work."""
    T = completion_ids.shape[1]
    first = completion_ids[:, :1]
    with head.within(first):
        state = prefill(model, prompt_ids, prompt_mask, plan, with_hidden=with_hidden)
    if state is None:  # the model gave no cache (e.g. gradient checkpointing in training mode)
        return _forward_whole(model, head, plan, prompt_ids, prompt_mask, completion_ids, completion_mask,
                              with_hidden)
    logprobs, entropy = head.read(state.logits[:, None], first)  # the first completion token's
    hidden = state.hidden
    if T > 1:
        attention_mask = torch.cat([state.mask, completion_mask[:, :-1].long()], dim=1)
        with head.within(completion_ids[:, 1:]):
            rest = model(
                input_ids=completion_ids[:, :-1], attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask)[:, state.mask.shape[1]:],
                **with_cache(model, state.cache), output_hidden_states=with_hidden, use_cache=True,
            )
        rest_logprobs, rest_entropy = head.read(rest.logits, completion_ids[:, 1:])
        logprobs = torch.cat([logprobs, rest_logprobs], dim=1)
        entropy = torch.cat([entropy, rest_entropy], dim=1) if entropy is not None else None
        hidden = torch.cat([state.hidden, rest.hidden_states[-1]], dim=1) if with_hidden else None
    return logprobs, entropy, hidden


def token_logprobs(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """[B, T] log pi(y_t | x, y_<t) at ``temperature``, 0 on padding (see :func:`score_completions`)."""
    return score_completions(
        model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=temperature
    ).logprobs


def score_batch(model: nn.Module, batch, *, temperature: float = 1.0, with_entropy: bool = False,
                share_prompts: bool = True, chunk_tokens: int = 0) -> TokenScores:
    """:func:`score_completions` on the prompt / completion fields of a :class:`~rlft.batch.Batch`.

    ``model`` may also be a policy with a value head (:class:`rlft.policy.PolicyWithValue`), whose
    forward adds ``values``.
    """
    args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
    options = dict(temperature=temperature, with_entropy=with_entropy, share_prompts=share_prompts,
                   chunk_tokens=chunk_tokens)
    if isinstance(getattr(unwrap(model), "value_head", None), nn.Module):
        return model(*args, **options)
    return score_completions(model, *args, **options)


@dataclass(frozen=True)
class Scoring:
    """How a run scores completions without gradients: pi_ref, pi_old, the evaluation's pi_ref, the
    dataset source (the loss's scoring takes the same ``temperature`` and ``chunk_tokens``).

    Attributes:
        temperature: the sampling temperature (scores are taken at it).
        chunk_tokens: positions per chunk of the output projection (0: the default, :func:`chunk_positions`).
        rows: at most this many rows per forward pass (0: all at once); the trainer sets the training
            micro-batch's, ``micro_groups x group_size``: what fits with gradients fits without.
    """

    temperature: float = 1.0
    chunk_tokens: int = 0
    rows: int = 0

    @torch.no_grad()
    def batch(self, model: nn.Module, batch) -> TokenScores:
        """:func:`score_batch` of a :class:`~rlft.batch.Batch` (log-probs, and values for a policy with a
        value head), ``rows`` rows at a time (a multiple of the group size keeps groups whole)."""
        step = self.rows or len(batch)
        parts = [score_batch(model, batch.select(slice(i, i + step)), temperature=self.temperature,
                             chunk_tokens=self.chunk_tokens) for i in range(0, len(batch), step)]
        if len(parts) == 1:
            return parts[0]
        values = [p.values for p in parts]
        return TokenScores(logprobs=torch.cat([p.logprobs for p in parts]),
                           values=torch.cat(values) if values[0] is not None else None)

    @torch.no_grad()
    def logprobs(self, model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                 completion_mask: Tensor, *, share_prompts: bool = True) -> Tensor:
        """[B, T] log-probs of the completion tokens (:func:`score_completions`), ``rows`` rows at a time."""
        step = self.rows or len(completion_ids)
        parts = [score_completions(model, prompt_ids[i:i + step], prompt_mask[i:i + step],
                                   completion_ids[i:i + step], completion_mask[i:i + step],
                                   temperature=self.temperature, share_prompts=share_prompts,
                                   chunk_tokens=self.chunk_tokens).logprobs
                 for i in range(0, len(completion_ids), step)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]
