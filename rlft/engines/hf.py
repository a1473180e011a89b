"""``hf``: a rollout engine on a transformers model (CPU or any single device).

Batched sampling with the KV cache. The log-prob of each sampled token is read from the
processed scores it was actually sampled from (logits / temperature, then top-k / top-p
masking), so it is the true behaviour log-prob whatever the settings. The model's own generation
defaults (a hub ``generation_config.json`` with ``top_k=50`` or a repetition penalty,
transformers' global ``top_k=50``) are ignored: sampling is exactly what
:class:`~rlft.engines.base.SamplingParams` says.

The decoding loop is transformers' ``generate`` sampling loop, step for step: the same logits
processors (transformers' own temperature / top-k / top-p warpers, in its order), the same
``torch.multinomial`` call on the same ``[rows, vocab]`` probabilities each step, finished rows
fed the pad token, the same position ids and attention mask; so a seed gives the same samples and
log-probs as ``generate``, bit for bit (``share_prompts=False, drop_finished=False``). Three
things differ, all for speed: none of ``generate``'s per-step bookkeeping is run; by default the
prompts are prefilled with each repeated piece once (``share_prompts``, :mod:`rlft.prefill`): each
distinct prompt once for its n samples, and the prefix common to all prompts (a template) once;
and the model stops running on rows that have stopped (``drop_finished``). Both sum attention and
matrix products over other shapes, so the log-probs move by float round-off (and a sample drawn at
a near-tie of the [rows, vocab] race could flip).
Models this loop does not cover (encoder-decoders, models without ``logits_to_keep``) go through
``generate`` itself.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager, nullcontext
from typing import Iterator, Mapping

import torch
from torch import Tensor
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rlft.engines.base import ENGINES, Generation, RolloutEngine, SamplingParams, encode_prompts
from rlft.precision import compute_kind
from rlft.scoring import at_least_float32
from rlft.prefill import PromptPlan, position_ids_from_mask, prefill, shares_prefix, with_cache

#: The share of stopped rows at which the own sampling loop stops running the model on them
#: (``drop_finished``): dropping their cache rows is a copy, so it waits until it saves a quarter.
DROP_FINISHED_AT = 0.25


@ENGINES.register("hf")
class HFEngine(RolloutEngine):
    """Sample with ``model.generate``.

    Returned tensors are on the CPU. Pass the plain model (``accelerator.unwrap_model(model)``),
    not a DDP wrapper: ``generate`` lives on the model.

    Args:
        model: a transformers causal LM.
        tokenizer: its tokenizer; must have a pad token (``rlft.models.load_model`` ensures it).
        own_copy: ``False`` (default) samples from the very ``model`` object given, typically the
            one the trainer updates in place; :meth:`load_weights` then only bumps the version.
            ``True`` deep-copies the model at construction; :meth:`load_weights` copies the
            trainer's tensors into that copy (as a separate inference engine would).
        max_batch_rows: at most this many rows (prompt x sample) per model call, whatever the
            vocabulary: no [rows, steps, vocab] tensor is kept (a step holds [rows, vocab] scores).
        share_prompts: prefill each distinct prompt of a call once, and the prefix common to
            all of them once, and share their key / value cache among the rows (see the module
            docstring); ``False`` prefills every row as it is. Recorded log-probs agree up to
            float round-off.
        drop_finished: stop running the model on rows that have stopped once a quarter of them
            have (:meth:`_sample`); the samples are the same, log-probs up to float round-off.
            ``False`` with ``share_prompts=False`` is ``generate``'s loop, bit for bit.
        stop_token_ids: tokens that end a completion (kept, and masked True). Default: the
            tokenizer's EOS plus the model generation config's EOS ids.
        dtype: sample from an own copy in this dtype (``"bfloat16"``: a bfloat16 sampler under a
            float32 trainer, as a bfloat16 vLLM engine would be); implies ``own_copy``. Its
            recorded log-probs then differ from the trainer's (see ``TrainConfig.recompute_behavior``).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        own_copy: bool = False,
        max_batch_rows: int = 64,
        share_prompts: bool = True,
        drop_finished: bool = True,
        stop_token_ids: list[int] | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to the EOS token)")
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"dtype {dtype!r} is not a torch dtype (e.g. float32, bfloat16)")
            dtype = getattr(torch, dtype)
        self.own_copy = own_copy or dtype is not None
        self.model = copy.deepcopy(model) if self.own_copy else model
        if self.own_copy:
            self.model.eval().requires_grad_(False)
            if dtype is not None:
                self.model.to(dtype)
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows
        self.share_prompts = share_prompts
        self.drop_finished = drop_finished
        if stop_token_ids is None:
            ids = {tokenizer.eos_token_id}
            gen_eos = getattr(model.generation_config, "eos_token_id", None)
            ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
            stop_token_ids = sorted(i for i in ids if i is not None)
        if not stop_token_ids:
            raise ValueError("no stop token: the tokenizer has no EOS token and none was given")
        self.stop_token_ids = list(stop_token_ids)
        self.version = 0

    # ------------------------------------------------------------------------------ weights
    def load_weights(self, state_dict: Mapping[str, Tensor]) -> None:
        """Copy ``state_dict`` (the trainer model's ``state_dict()``) in; bump the version.

        With a shared model (``own_copy=False``) the weights are already the trainer's: only the
        version is bumped.
        """
        if self.own_copy:
            with torch.no_grad():
                self.model.load_state_dict(dict(state_dict), strict=True)
        self.version += 1

    @classmethod
    def options(cls, model, *, compute_dtype: torch.dtype, sharded: bool, own_weights: bool) -> dict:
        """Sample from ``model`` itself (its forward is the trainer's, autocast included), or from an
        own copy when the policy is sharded or ``own_weights`` is asked; a copy of an FSDP2 policy
        that computes in bfloat16 from float32 shards is kept in bfloat16, as its forward computes."""
        if not (sharded or own_weights):
            return {}
        plain = getattr(model, "autocast_dtype", None) is None
        differs = compute_dtype != next(model.parameters()).dtype
        return {"own_copy": True, **({"dtype": compute_dtype} if plain and differs else {})}

    def computes_like(self, model: torch.nn.Module) -> bool:
        """The same transformers forward as the trainer's: True when both compute alike
        (:func:`rlft.precision.compute_kind`: the same dtype, or the same autocast)."""
        return compute_kind(self.model) == compute_kind(model)

    # ------------------------------------------------------------------------------ sampling
    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        """``generate``'s settings without warpers of its own (:meth:`_warpers` are passed to it)."""
        sampling = {} if params.greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
        return GenerationConfig(
            do_sample=not params.greedy,
            **sampling,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
            num_beams=1,
            use_cache=True,
            return_dict_in_generate=True,
        )

    @contextmanager
    def _clean_defaults(self) -> Iterator[None]:
        """Hide the model's own generation defaults and put it in eval mode for the call."""
        saved_config, was_training = self.model.generation_config, self.model.training
        self.model.generation_config = GenerationConfig()
        self.model.eval()
        try:
            yield
        finally:
            self.model.generation_config = saved_config
            self.model.train(was_training)

    def generate(
        self, prompts: list[str], n: int, params: SamplingParams, seed: int | None = None
    ) -> Generation:
        ids, mask = encode_prompts(self.tokenizer, prompts, n)
        prompt_ids, prompt_mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        step = self.max_batch_rows
        device = self.model.device
        rng = (torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
               if seed is not None else nullcontext())
        parts = []
        with rng, self._clean_defaults(), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, prompt_ids.shape[0], step):
                ids, mask = prompt_ids[start:start + step], prompt_mask[start:start + step]
                keep = int(mask.any(0).long().argmax())  # drop columns that are padding in every row
                ids, mask = ids[:, keep:].to(device), mask[:, keep:].to(device)
                if self._own_loop():
                    tokens, logprobs = self._sample(ids, mask, params)
                else:
                    tokens, logprobs = self._generate_with_hf(ids, mask, params)
                parts.append(self._finish_chunk(tokens.cpu(), logprobs.cpu()))
        T = max(p[0].shape[1] for p in parts)
        pad = self.tokenizer.pad_token_id
        completion_ids = torch.cat([_pad_right(p[0], T, pad) for p in parts])
        completion_mask = torch.cat([_pad_right(p[1], T, False) for p in parts])
        logprobs = torch.cat([_pad_right(p[2], T, 0.0) for p in parts])
        texts = [
            self.tokenizer.decode(row[m].tolist(), skip_special_tokens=True)
            for row, m in zip(completion_ids, completion_mask)
        ]
        return Generation(
            prompt_ids=prompt_ids.masked_fill(~prompt_mask, pad),
            prompt_mask=prompt_mask,
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            logprobs=logprobs,
            texts=texts,
            version=self.version,
        )

    def _own_loop(self) -> bool:
        """Whether :meth:`_sample` covers this model (else ``generate`` is used)."""
        forward = inspect.signature(self.model.forward).parameters
        return not self.model.config.is_encoder_decoder and "logits_to_keep" in forward

    def _warpers(self, params: SamplingParams) -> LogitsProcessorList:
        """transformers' sampling warpers for ``params``, in the order ``generate`` applies them."""
        warpers = LogitsProcessorList()
        if params.greedy:
            return warpers
        if params.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k != 0:
            warpers.append(TopKLogitsWarper(top_k=params.top_k, min_tokens_to_keep=1))
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=params.top_p, min_tokens_to_keep=1))
        return warpers

    def _prefill(self, ids: Tensor, mask: Tensor):
        """Run the prompts, each distinct prompt and their common prefix once (``share_prompts``,
        :mod:`rlft.prefill`): (next-token logits [b, V] in at least float32, KV cache of b rows,
        attention mask [b, L] of the cached positions)."""
        plan = PromptPlan.of(ids, mask, share=self.share_prompts, share_prefix=shares_prefix(self.model))
        state = prefill(self.model, ids, mask, plan)
        return at_least_float32(state.logits), state.cache, state.mask

    def _sample(self, ids: Tensor, mask: Tensor, params: SamplingParams) -> tuple[Tensor, Tensor]:
        """Sample up to ``max_new_tokens`` per row: (tokens [b, T], their log-probs [b, T]).

        ``generate``'s sampling loop (see the module docstring); rows that have produced a stop
        token are fed the pad token until every row has stopped. With ``drop_finished``, once at
        least :data:`DROP_FINISHED_AT` of the rows the model runs on have stopped, it runs on the
        others only (their key / value cache rows are kept, the stopped ones dropped). Every row
        is still drawn for at each step, a stopped one from its last logits (the draw is then
        replaced by the pad token): ``torch.multinomial`` draws one exponential variate per entry
        of the [b, vocab] matrix and takes each row's arg-max, so the rows still going get the
        draws they get without dropping.
        """
        warpers = self._warpers(params)
        stop = torch.tensor(self.stop_token_ids, device=ids.device)
        pad = self.tokenizer.pad_token_id
        logits, cache, mask = self._prefill(ids, mask)
        position = position_ids_from_mask(mask)[:, -1:]
        unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
        running = torch.arange(ids.shape[0], device=ids.device)  # the rows the model runs on
        tokens, logprobs = [], []
        for t in range(params.max_new_tokens):
            scores = warpers(ids, logits)
            if params.greedy:
                token = scores.argmax(-1)
            else:
                token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            token = torch.where(unfinished, token, pad)
            tokens.append(token)
            logprobs.append(torch.log_softmax(scores, dim=-1).gather(-1, token[:, None]).squeeze(-1))
            unfinished &= ~torch.isin(token, stop)
            if t + 1 == params.max_new_tokens or not unfinished.any():
                break
            going = unfinished[running]
            if self.drop_finished and int(going.sum()) <= (1 - DROP_FINISHED_AT) * len(running):
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                running, mask, position = running[keep], mask[keep], position[keep]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            position = position + 1
            out = self.model(input_ids=token[running, None], attention_mask=mask, position_ids=position,
                             **with_cache(self.model, cache), use_cache=True, logits_to_keep=1)
            step_logits = at_least_float32(out.logits[:, -1])
            logits = step_logits if len(running) == len(logits) else logits.index_copy(0, running, step_logits)
        return torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1)

    def _generate_with_hf(self, ids: Tensor, mask: Tensor, params: SamplingParams) -> tuple[Tensor, Tensor]:
        """:meth:`_sample` through transformers' ``generate`` (for models the own loop does not cover).

        The warpers are passed to ``generate`` as logits processors, in its own order, then
        :class:`_KeepLogSoftmax` and :class:`_RecordChosen` record the log-prob of each drawn token:
        no [rows, steps, vocab] scores are kept."""
        kept = _KeepLogSoftmax()
        chosen = _RecordChosen(kept)
        out = self.model.generate(input_ids=ids, attention_mask=mask.long(),
                                  generation_config=self._generation_config(params),
                                  logits_processor=LogitsProcessorList([*self._warpers(params), kept]),
                                  stopping_criteria=StoppingCriteriaList([chosen]))
        return out.sequences[:, ids.shape[1]:], torch.stack(chosen.logprobs, dim=1)

    def _finish_chunk(self, tokens: Tensor, logprobs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mask everything after the first stop token: (tokens, completion mask, log-probs), 0 / pad after it."""
        is_stop = torch.isin(tokens, torch.tensor(self.stop_token_ids))
        stopped_before = (is_stop.long().cumsum(1) - is_stop.long()) > 0
        completion_mask = ~stopped_before
        tokens = tokens.masked_fill(~completion_mask, self.tokenizer.pad_token_id)
        logprobs = torch.where(completion_mask, logprobs, torch.zeros_like(logprobs))
        return tokens, completion_mask, logprobs


class _KeepLogSoftmax(LogitsProcessor):
    """The last logits processor of a ``generate`` call: keeps this step's log-softmax of the scores
    about to be drawn from, [rows, vocab] (one step's only), and passes them on unchanged."""

    def __init__(self) -> None:
        self.last: Tensor | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        self.last = torch.log_softmax(at_least_float32(scores), dim=-1)
        return scores


class _RecordChosen(StoppingCriteria):
    """A stopping criterion that stops nothing: called once each drawn token is appended, it records
    the token's entry of :class:`_KeepLogSoftmax`'s log-softmax (its behaviour log-prob)."""

    def __init__(self, kept: _KeepLogSoftmax) -> None:
        self.kept = kept
        self.logprobs: list[Tensor] = []

    def __call__(self, input_ids: Tensor, scores, **kwargs) -> Tensor:
        self.logprobs.append(self.kept.last.gather(-1, input_ids[:, -1:]).squeeze(-1))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _pad_right(t: Tensor, width: int, value) -> Tensor:
    out = t.new_full((t.shape[0], width), value)
    out[:, : t.shape[1]] = t
    return out
