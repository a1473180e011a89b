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
log-probs as ``generate``, bit for bit. Two things differ, both for speed: none of ``generate``'s
per-step bookkeeping is run, and each distinct prompt of a call is prefilled once and its key /
value cache shared by its samples (the n samples of a prompt repeat it; ``share_prompts``), which
is still bit for bit on one CPU thread but can move log-probs by float round-off on several.
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
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rlft.engines.base import ENGINES, Generation, RolloutEngine, SamplingParams, encode_prompts
from rlft.policy import (
    at_least_float32,
    output_cache,
    output_rows,
    position_ids_from_mask,
    shared_prompt_rows,
    with_cache,
)

#: Upper bound on the [rows, steps, vocab] float32 scores one ``generate`` call may keep. The own
#: sampling loop keeps none, but it splits a call into the same chunks, so that a seed draws the
#: same samples on either path.
SCORES_BUDGET_BYTES = 512 * 2**20


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
        max_batch_rows: at most this many rows (prompt x sample) per ``generate`` call; fewer if
            the recorded scores would exceed :data:`SCORES_BUDGET_BYTES`.
        share_prompts: prefill each distinct prompt of a call once and share its key / value
            cache among its samples (see the module docstring); ``False`` prefills every row.
            The samples are the same; recorded log-probs agree bit for bit on one CPU thread and
            to ~4e-5 with several (multithreaded matrix kernels split rows by count).
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

    def computes_like(self, model: torch.nn.Module) -> bool:
        """The same transformers forward as the trainer's: True when the parameter dtypes agree."""
        return next(self.model.parameters()).dtype == next(model.parameters()).dtype

    # ------------------------------------------------------------------------------ sampling
    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        sampling = {} if params.greedy else {
            "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p,
        }
        return GenerationConfig(
            do_sample=not params.greedy,
            **sampling,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
            num_beams=1,
            use_cache=True,
            output_scores=True,
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

    def _rows_per_call(self, params: SamplingParams) -> int:
        vocab = self.model.get_output_embeddings().weight.shape[0]
        budget = SCORES_BUDGET_BYTES // (4 * vocab * params.max_new_tokens)
        return max(1, min(self.max_batch_rows, budget))

    def generate(
        self, prompts: list[str], n: int, params: SamplingParams, seed: int | None = None
    ) -> Generation:
        ids, mask = encode_prompts(self.tokenizer, prompts, n)
        prompt_ids, prompt_mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        step = self._rows_per_call(params)
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
        """Run the prompts, each distinct prompt once: (next-token logits [b, V] in at least float32, KV cache of b rows)."""
        shared = shared_prompt_rows(ids, mask) if self.share_prompts else None
        if shared is None:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                             use_cache=True, logits_to_keep=1)
            return at_least_float32(out.logits[:, -1]), output_cache(out)
        first, inverse = shared
        with output_rows(self.model, inverse):
            out = self.model(input_ids=ids[first], attention_mask=mask[first],
                             position_ids=position_ids_from_mask(mask[first]), use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1] if out.logits.shape[0] == len(inverse) else out.logits[inverse, -1]
        cache = output_cache(out)
        cache.batch_select_indices(inverse)
        return at_least_float32(logits), cache

    def _sample(self, ids: Tensor, mask: Tensor, params: SamplingParams) -> tuple[Tensor, Tensor]:
        """Sample up to ``max_new_tokens`` per row: (tokens [b, T], their log-probs [b, T]).

        ``generate``'s sampling loop (see the module docstring); rows that have produced a stop
        token are fed the pad token until every row has stopped.
        """
        warpers = self._warpers(params)
        stop = torch.tensor(self.stop_token_ids, device=ids.device)
        pad = self.tokenizer.pad_token_id
        mask = mask.long()
        logits, cache = self._prefill(ids, mask)
        position = position_ids_from_mask(mask)[:, -1:]
        unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
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
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            position = position + 1
            out = self.model(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                             **with_cache(self.model, cache), use_cache=True, logits_to_keep=1)
            logits = at_least_float32(out.logits[:, -1])
        return torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1)

    def _generate_with_hf(self, ids: Tensor, mask: Tensor, params: SamplingParams) -> tuple[Tensor, Tensor]:
        """:meth:`_sample` through transformers' ``generate`` (for models the own loop does not cover)."""
        out = self.model.generate(input_ids=ids, attention_mask=mask.long(),
                                  generation_config=self._generation_config(params))
        tokens = out.sequences[:, ids.shape[1]:]
        scores = at_least_float32(torch.stack(out.scores, dim=1))  # [b, T, V], what was sampled from
        return tokens, torch.log_softmax(scores, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def _finish_chunk(self, tokens: Tensor, logprobs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mask everything after the first stop token: (tokens, completion mask, log-probs), 0 / pad after it."""
        is_stop = torch.isin(tokens, torch.tensor(self.stop_token_ids))
        stopped_before = (is_stop.long().cumsum(1) - is_stop.long()) > 0
        completion_mask = ~stopped_before
        tokens = tokens.masked_fill(~completion_mask, self.tokenizer.pad_token_id)
        logprobs = torch.where(completion_mask, logprobs, torch.zeros_like(logprobs))
        return tokens, completion_mask, logprobs


def _pad_right(t: Tensor, width: int, value) -> Tensor:
    out = t.new_full((t.shape[0], width), value)
    out[:, : t.shape[1]] = t
    return out
