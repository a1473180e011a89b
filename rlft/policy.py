"""A transformers causal LM as a policy: token log-probs of completions, entropy, a value head.

The trainer scores a :class:`~rlft.batch.Batch` as one forward pass over
``cat([prompt_ids, completion_ids], 1)`` (prompts left-padded, completions right-padded) with
``position_ids`` derived from the attention mask, so left padding changes nothing: the log-probs
agree with the ones a rollout engine recorded while sampling (tested to 1e-4 in fp32). When rows
repeat a prompt (the n samples of a group) or the prompts open with a common template, the
prompts are run first, each distinct prompt and the common prefix once (:mod:`rlft.prefill`), and
the completions on their key / value cache: the prompt work (forward and backward) shrinks by the
group size and more, for the same values up to float round-off (``share_prompts``).

Shapes::

    prompt_ids, prompt_mask          [B, P]   (P >= 1: every prompt has at least one real token)
    completion_ids, completion_mask  [B, T]
    TokenScores.logprobs             [B, T]   log pi(y_t | x, y_<t) at ``temperature``, 0 on padding
    TokenScores.entropy              [B, T]   entropy of pi(. | x, y_<t) at ``temperature``, 0 on padding
    TokenScores.hidden               [B, T, H] final hidden state at the position predicting y_t
    TokenScores.values               [B, T]   value of the state before y_t (``ValueHead``), 0 on padding
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlft.files import atomic_write_text
from rlft.prefill import PromptPlan, position_ids_from_mask, prefill, shares_prefix, unwrap, with_cache

VALUE_HEAD_FILE = "value_head.safetensors"


@dataclass
class TokenScores:
    """What one forward pass gives per completion token (see the module docstring for shapes)."""

    logprobs: Tensor
    entropy: Tensor | None = None
    hidden: Tensor | None = None
    values: Tensor | None = None


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
            and the prefix common to all prompts once (:mod:`rlft.prefill`), then the completions
            on their key / value cache (:func:`_forward_on_prefill`); else one forward over every
            full row. Same values up to float round-off (attention and matrix products over other
            shapes sum in other orders; bounded in tests/tolerances.py). A float64 model, or one
            sharded by FSDP2, runs its distinct prompts whole (:func:`rlft.prefill.shares_prefix`).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score tokens, got {temperature}")
    if prompt_ids.shape[1] < 1:
        raise ValueError("prompts must have at least one token (e.g. BOS) to score the first completion token")
    plan = PromptPlan.of(prompt_ids, prompt_mask, share=share_prompts, share_prefix=shares_prefix(model))
    if plan.shares_work:
        logits, hidden = _forward_on_prefill(model, plan, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                             with_hidden)
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


def _forward_on_prefill(model, plan: PromptPlan, prompt_ids, prompt_mask, completion_ids, completion_mask,
                        with_hidden):
    """:func:`_forward_whole` with the prompts run first as ``plan`` says (:func:`rlft.prefill.prefill`),
    then the completions on their key / value cache: the same logits, with less prompt work."""
    T = completion_ids.shape[1]
    state = prefill(model, prompt_ids, prompt_mask, plan, with_hidden=with_hidden)
    if state is None:  # the model gave no cache (e.g. gradient checkpointing in training mode)
        return _forward_whole(model, prompt_ids, prompt_mask, completion_ids, completion_mask, with_hidden)
    logits = state.logits[:, None]  # [B, 1, V]: predicts the first completion token
    if T == 1:
        return logits, state.hidden
    attention_mask = torch.cat([state.mask, completion_mask[:, :-1].long()], dim=1)
    rest = model(
        input_ids=completion_ids[:, :-1], attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask)[:, state.mask.shape[1]:],
        **with_cache(model, state.cache), output_hidden_states=with_hidden, use_cache=True,
    )
    logits = torch.cat([logits, rest.logits], dim=1)
    hidden = torch.cat([state.hidden, rest.hidden_states[-1]], dim=1) if with_hidden else None
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
    if isinstance(unwrap(model), PolicyWithValue):
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
