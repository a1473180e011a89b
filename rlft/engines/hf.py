"""``hf``: a rollout engine on transformers' ``generate`` (CPU or any single device).

Batched sampling with the KV cache. The log-prob of each sampled token is read from the
processed scores ``generate`` actually sampled from (``output_scores``: logits / temperature,
then top-k / top-p masking), so it is the true behaviour log-prob whatever the settings.
The model's own generation defaults (a hub ``generation_config.json`` with ``top_k=50`` or a
repetition penalty, transformers' global ``top_k=50``) are ignored: sampling is exactly what
:class:`~rlft.engines.base.SamplingParams` says.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from typing import Iterator, Mapping

import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from rlft.engines.base import ENGINES, Generation, RolloutEngine, SamplingParams, encode_prompts

#: Upper bound on the [rows, steps, vocab] float32 scores one ``generate`` call may keep.
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
        stop_token_ids: tokens that end a completion (kept, and masked True). Default: the
            tokenizer's EOS plus the model generation config's EOS ids.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        own_copy: bool = False,
        max_batch_rows: int = 64,
        stop_token_ids: list[int] | None = None,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to the EOS token)")
        self.own_copy = own_copy
        self.model = copy.deepcopy(model) if own_copy else model
        if own_copy:
            self.model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows
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
            config = self._generation_config(params)
            for start in range(0, prompt_ids.shape[0], step):
                ids, mask = prompt_ids[start:start + step], prompt_mask[start:start + step]
                keep = int(mask.any(0).long().argmax())  # drop columns that are padding in every row
                parts.append(self._generate_chunk(ids[:, keep:], mask[:, keep:], config, device))
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

    def _generate_chunk(
        self, ids: Tensor, mask: Tensor, config: GenerationConfig, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model.generate(
            input_ids=ids.to(device), attention_mask=mask.long().to(device), generation_config=config
        )
        tokens = out.sequences[:, ids.shape[1]:].cpu()
        scores = torch.stack(out.scores, dim=1).float().cpu()  # [b, T, V], what was sampled from
        logprobs = torch.log_softmax(scores, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        # real tokens: up to and including the first stop token
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
