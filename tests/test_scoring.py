"""The memory-bounded scorer (rlft/scoring.py): chunked output projection, row parts, the fallback.

What is checked: scores and gradients in chunks equal those of one chunk (float64, to a rounding
bound), the entropy carries no gradient unless asked for, no tensor of B x T x V elements is ever
made in a forward and backward pass (every tensor an aten operation returns is seen), scoring in
parts of rows equals scoring all rows, and a model whose output layer cannot be replaced is scored
from its full logits to the same values.
"""

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import LlamaConfig, LlamaForCausalLM

from rlft.engines import HFEngine, SamplingParams
from rlft.models import load_model
from rlft.policy import checkpointed_layers_on, enable_activation_checkpointing
from rlft.scoring import Scoring, chunk_positions, score_completions
from tolerances import difference, forward_reductions, logprob_tolerance, max_abs_logit  # tests/tolerances.py

PROMPTS = ["Question: What is 7 - 85?\nAnswer:", "Question: What is 12 + 34?\nAnswer:", "Hello"]


def rows_of(model, tok, n=4, seed=0, max_new_tokens=8):
    return HFEngine(model, tok).generate(PROMPTS, n, SamplingParams(max_new_tokens=max_new_tokens), seed=seed)


def scores_and_grads(model, rows, chunk_tokens, entropy=False, share_prompts=True):
    """(log-probs, entropy, {name: gradient of the summed log-probs})."""
    model.zero_grad()
    out = score_completions(model, rows.prompt_ids, rows.prompt_mask, rows.completion_ids, rows.completion_mask,
                            chunk_tokens=chunk_tokens, with_entropy=entropy, share_prompts=share_prompts)
    out.logprobs.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logprobs.detach(), out.entropy, grads


def test_default_chunk_follows_the_vocabulary():
    assert chunk_positions(49_152) == 341 and chunk_positions(151_936) == 110 and chunk_positions(40) > 10**5
    assert chunk_positions(49_152, device="cuda") == 2730 and chunk_positions(151_936, device="cuda:0") == 883
    assert chunk_positions(151_936, chunk_tokens=64) == 64


def test_chunks_give_the_scores_and_gradients_of_one_chunk(tiny):
    """float64, so the bound of tests/tolerances.py is far below any real difference; 5 positions per
    chunk cuts the batch's output projection into many pieces, each recomputed in the backward pass."""
    model, tok = load_model("tiny", dtype=torch.float64)  # (float64 runs on SDPA attention: rlft/models/tiny.py)
    rows = rows_of(model, tok)
    whole, _, whole_grads = scores_and_grads(model, rows, chunk_tokens=10**6)
    chunked, _, chunked_grads = scores_and_grads(model, rows, chunk_tokens=5)
    width = rows.prompt_ids.shape[1] + rows.completion_ids.shape[1]
    bound = difference(forward_reductions(model.config, width), max_abs_logit(model, rows), torch.float64)
    assert (whole - chunked).abs().max() <= bound
    assert whole_grads.keys() == chunked_grads.keys() and whole_grads
    # as tests/test_distributed.py: the backward chain mirrors the forward, and each gradient entry sums
    # the contributions of the batch's tokens (summed log-probs: up to `tokens` terms of the largest size)
    tokens = int(rows.completion_mask.sum())
    largest = max(float(g.abs().max()) for g in whole_grads.values())
    forward = forward_reductions(model.config, width)
    grad_bound = difference(forward + forward + [tokens], tokens * largest, torch.float64)
    assert max(float((g - chunked_grads[k]).abs().max()) for k, g in whole_grads.items()) <= grad_bound


def test_entropy_has_no_gradient_unless_asked(tiny):
    model = copy.deepcopy(tiny[0])
    rows = rows_of(model, tiny[1])
    args = (rows.prompt_ids, rows.prompt_mask, rows.completion_ids, rows.completion_mask)
    detached = score_completions(model, *args, with_entropy=True, chunk_tokens=7)
    assert detached.logprobs.requires_grad and not detached.entropy.requires_grad
    with_grad = score_completions(model, *args, with_entropy=True, entropy_grad=True, chunk_tokens=7)
    assert with_grad.entropy.requires_grad
    assert torch.allclose(detached.entropy, with_grad.entropy.detach())
    assert bool((detached.entropy[rows.completion_mask] > 0).all()) and bool((detached.entropy[~rows.completion_mask] == 0).all())


class LargestTensor(TorchDispatchMode):
    """Records the largest floating-point tensor any aten operation returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.largest = max(self.largest, t.numel())
        return out


def wide_vocabulary_model():
    """A 1-layer Llama whose vocabulary (8,000) dwarfs its other sizes, so that logits dominate memory."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         attn_implementation="eager")
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("share_prompts", [True, False])
def test_no_tensor_grows_with_batch_times_length_times_vocabulary(share_prompts):
    model = wide_vocabulary_model()
    B, P, T, V, chunk = 8, 4, 64, 8000, 32
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(V, (B, P), generator=g)
    prompt_ids[4:] = prompt_ids[0]  # rows that repeat a prompt take the prefill path
    completion_ids = torch.randint(V, (B, T), generator=g)
    masks = (torch.ones(B, P, dtype=torch.bool), torch.ones(B, T, dtype=torch.bool))

    def largest(chunk_tokens: int) -> int:
        model.zero_grad()
        with LargestTensor() as seen:
            out = score_completions(model, prompt_ids, masks[0], completion_ids, masks[1], with_entropy=True,
                                    share_prompts=share_prompts, chunk_tokens=chunk_tokens)
            out.logprobs.sum().backward()
        return seen.largest

    assert largest(chunk) <= chunk * V <= B * T * V // 16  # one chunk's logits at most, forward and backward
    # one chunk of everything: the [B, T, V] logits exist (T - 1 positions after a prefill), and the check sees them
    assert largest(B * T) >= B * (T - 1) * V


def test_scoring_in_parts_of_rows_equals_all_rows(tiny):
    model, tok = tiny
    rows = rows_of(model, tok, n=4)
    args = (model, rows.prompt_ids, rows.prompt_mask, rows.completion_ids, rows.completion_mask)
    whole = Scoring(rows=0).logprobs(*args)
    parts = Scoring(rows=4, chunk_tokens=3).logprobs(*args)
    assert whole.shape == parts.shape and (whole - parts).abs().max() <= logprob_tolerance(model, rows)


class ScaledHead(nn.Linear):
    """An output layer that is not a plain nn.Linear (as under LoRA on the output layer)."""


def test_an_output_layer_that_cannot_be_replaced_is_scored_from_its_logits(tiny):
    model, tok = tiny
    rows = rows_of(model, tok)
    args = (rows.prompt_ids, rows.prompt_mask, rows.completion_ids, rows.completion_mask)
    patched = score_completions(model, *args, with_entropy=True)
    other = copy.deepcopy(model)
    head = other.get_output_embeddings()
    replacement = ScaledHead(head.in_features, head.out_features, bias=head.bias is not None)
    replacement.load_state_dict(head.state_dict())
    other.set_output_embeddings(replacement)
    full = score_completions(other, *args, with_entropy=True, chunk_tokens=5)
    tolerance = logprob_tolerance(model, rows)
    assert (patched.logprobs - full.logprobs).abs().max() <= tolerance
    # entropy = -sum_v p_v log p_v: each log p_v within the tolerance moves it by at most tolerance * (1 + entropy)
    assert (patched.entropy - full.entropy).abs().max() <= tolerance * (1 + float(patched.entropy.max()))


def test_gradient_checkpointing_recomputes_each_layer_to_the_same_gradients():
    """``--gradient-checkpointing``: every decoder layer runs again in the backward pass (its MLP is
    called twice), and the gradients are those of the plain pass (float64, the bound of
    test_chunks_give_the_scores_and_gradients_of_one_chunk). A checkpointed layer keeps no key /
    value cache, so both score every row whole (float64 Llama rounds RMSNorm through float32: a
    prompt run once for its samples sums their gradients before that rounding)."""
    model, tok = load_model("tiny", dtype=torch.float64)
    rows = rows_of(model, tok)
    _, _, plain = scores_and_grads(model, rows, chunk_tokens=0, share_prompts=False)
    checkpointed = copy.deepcopy(model)
    enable_activation_checkpointing(checkpointed)
    calls = []
    for layer in checkpointed.model.layers:
        layer.mlp.register_forward_pre_hook(lambda module, args: calls.append(module))
    with checkpointed_layers_on(checkpointed):
        out = score_completions(checkpointed, rows.prompt_ids, rows.prompt_mask, rows.completion_ids,
                                rows.completion_mask, share_prompts=False)
        out.logprobs.sum().backward()
    assert len(calls) == 2 * len(checkpointed.model.layers)  # a forward and a recomputation each
    assert not any(m.training for m in checkpointed.modules() if not hasattr(m, "gradient_checkpointing"))
    tokens = int(rows.completion_mask.sum())
    width = rows.prompt_ids.shape[1] + rows.completion_ids.shape[1]
    forward = forward_reductions(model.config, width)
    largest = max(float(g.abs().max()) for g in plain.values())
    bound = difference(forward + forward + [tokens], tokens * largest, torch.float64)
    grads = {n: p.grad for n, p in checkpointed.named_parameters() if p.grad is not None}
    assert grads.keys() == plain.keys()
    assert max(float((g - plain[k]).abs().max()) for k, g in grads.items()) <= bound


def test_the_trainer_takes_the_memory_settings(tmp_path):
    """One PPO step (value head, pi_old, mini-batches) with the output projection in chunks of 3
    positions, 2 groups per micro-batch (pi_ref and pi_old scored 8 rows at a time) and activation
    checkpointing: it trains, and pi_ref's log-probs equal a whole-batch scoring of them."""
    from rlft.trainer import TrainConfig, Trainer

    trainer = Trainer(TrainConfig(algo="ppo", groups=4, group_size=4, micro_groups=2, score_chunk_tokens=3,
                                  gradient_checkpointing=True, eval_problems=2, out=str(tmp_path / "run")))
    assert trainer.scoring.rows == 8 and trainer.scoring.chunk_tokens == 3
    before = [p.detach().clone() for p in trainer.model.parameters()]
    batch = trainer.rollout(1)
    record = trainer.update(batch, 1)
    assert record["grad_norm"] > 0 and any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    whole = Scoring(temperature=1.0).logprobs(trainer.ref_model, batch.prompt_ids, batch.prompt_mask,
                                              batch.completion_ids, batch.completion_mask)
    assert (batch.ref_logprobs - whole).abs().max() <= logprob_tolerance(trainer.ref_model, batch)
