"""The transformers rollout engine on the tiny preset: shapes, masks, seeds, sampling settings."""

import copy

import pytest
import torch

from rlft.engines import ENGINES, Generation, HFEngine, RolloutEngine, SamplingParams
from rlft.scoring import token_logprobs
from tolerances import logprob_tolerance  # tests/tolerances.py

PROMPTS = [
    "Question: What is 12 + 34?\nAnswer:",
    "Hi",
    "Question: What is 99 * 98?\nAnswer:",
]


def test_registered_and_defaults():
    assert ENGINES.get("hf") is HFEngine
    assert issubclass(HFEngine, RolloutEngine)
    params = SamplingParams()
    assert (params.temperature, params.top_p, params.top_k) == (1.0, 1.0, 0)
    with pytest.raises(ValueError):
        SamplingParams(top_k=-1)
    with pytest.raises(ValueError):
        SamplingParams(temperature=-0.5)


def test_shapes_masks_and_eos(tiny):
    model, tok = tiny
    n, max_new = 4, 10
    gen = HFEngine(model, tok).generate(PROMPTS, n, SamplingParams(max_new_tokens=max_new), seed=0)
    assert isinstance(gen, Generation)
    B = len(PROMPTS) * n
    P = max(len(tok(p)["input_ids"]) for p in PROMPTS)
    assert gen.prompt_ids.shape == gen.prompt_mask.shape == (B, P)
    T = gen.completion_ids.shape[1]
    assert 1 <= T <= max_new
    assert gen.completion_mask.shape == gen.logprobs.shape == (B, T)
    assert gen.prompt_ids.dtype == gen.completion_ids.dtype == torch.long
    assert gen.prompt_mask.dtype == gen.completion_mask.dtype == torch.bool
    assert gen.logprobs.dtype == torch.float32
    assert len(gen.texts) == B and gen.version == 0

    # prompts: left-padded, every row ends with a real token; the n samples of a prompt adjacent
    assert gen.prompt_mask[:, -1].all()
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt)["input_ids"]
        for row in range(i * n, (i + 1) * n):
            assert gen.prompt_ids[row, P - len(ids):].tolist() == ids
            assert gen.prompt_mask[row].sum() == len(ids)
            assert (gen.prompt_ids[row, : P - len(ids)] == tok.pad_token_id).all()

    # completions: a contiguous real prefix that ends at the first EOS or at max_new_tokens
    lengths = gen.completion_mask.sum(1)
    assert (lengths >= 1).all()
    assert torch.equal(gen.completion_mask, torch.arange(T)[None] < lengths[:, None])
    ended_with_eos = 0
    for row in range(B):
        real = gen.completion_ids[row, : lengths[row]].tolist()
        assert tok.eos_token_id not in real[:-1]
        if real[-1] == tok.eos_token_id:
            ended_with_eos += 1
        else:
            assert len(real) == max_new
        assert (gen.completion_ids[row, lengths[row]:] == tok.pad_token_id).all()
        assert gen.texts[row] == tok.decode(real, skip_special_tokens=True)
    assert ended_with_eos >= B // 2  # the warm-started model answers and stops
    assert (gen.logprobs[~gen.completion_mask] == 0).all()
    assert (gen.logprobs[gen.completion_mask] <= 0).all()
    # the tiny model answers arithmetic prompts with a number
    assert any(t.strip().lstrip("-").isdigit() for t in gen.texts[:n])


def test_max_new_tokens_one(tiny):
    model, tok = tiny
    gen = HFEngine(model, tok).generate(PROMPTS, 2, SamplingParams(max_new_tokens=1), seed=0)
    assert gen.completion_ids.shape == (6, 1) and gen.completion_mask.all()


def test_seed_determinism_and_global_rng_untouched(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    params = SamplingParams(max_new_tokens=8)
    state = torch.get_rng_state()
    a = engine.generate(PROMPTS, 8, params, seed=123)
    b = engine.generate(PROMPTS, 8, params, seed=123)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    assert a.texts == b.texts
    c = engine.generate(PROMPTS, 8, params, seed=124)
    assert a.texts != c.texts or not torch.equal(a.logprobs, c.logprobs)
    # without a seed the global RNG is used (and advanced)
    torch.manual_seed(5)
    d = engine.generate(PROMPTS, 8, params)
    torch.manual_seed(5)
    e = engine.generate(PROMPTS, 8, params)
    assert torch.equal(d.completion_ids, e.completion_ids)


def test_top_k_zero_means_no_truncation_and_model_defaults_ignored(tiny):
    """At a high temperature top_k=50 (transformers' default) would cut half of the 100-token
    vocabulary and renormalise; the recorded log-probs must be those of the full softmax."""
    model, tok = tiny
    params = SamplingParams(temperature=3.0, max_new_tokens=6)
    gen = HFEngine(model, tok).generate(PROMPTS, 16, params, seed=1)
    recomputed = token_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.completion_ids,
                                gen.completion_mask, temperature=3.0)
    assert (recomputed - gen.logprobs).abs().max() <= logprob_tolerance(model, gen)
    # some sampled tokens are outside the top 50 of their step: impossible with top_k = 50
    with torch.no_grad():
        ids = torch.cat([gen.prompt_ids, gen.completion_ids], 1)
        mask = torch.cat([gen.prompt_mask, gen.completion_mask], 1).long()
        logits = model(input_ids=ids, attention_mask=mask,
                       position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        P = gen.prompt_ids.shape[1]
        step_logits = logits[:, P - 1 : -1]
        rank = (step_logits > step_logits.gather(-1, gen.completion_ids[..., None])).sum(-1)
    assert (rank[gen.completion_mask] >= 50).any()

    # a model whose own generation config says top_k=5 and a repetition penalty: ignored
    noisy = copy.deepcopy(model)
    noisy.generation_config.top_k = 5
    noisy.generation_config.repetition_penalty = 1.5
    other = HFEngine(noisy, tok).generate(PROMPTS, 16, params, seed=1)
    assert torch.equal(other.completion_ids, gen.completion_ids)
    assert torch.equal(other.logprobs, gen.logprobs)  # the very same computation


def test_top_k_one_and_tiny_top_p_are_greedy(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    greedy = engine.generate(PROMPTS, 1, SamplingParams(temperature=0.0, max_new_tokens=8))
    for params in (SamplingParams(top_k=1, max_new_tokens=8), SamplingParams(top_p=1e-6, max_new_tokens=8)):
        gen = engine.generate(PROMPTS, 3, params, seed=7)
        assert torch.equal(gen.completion_ids, greedy.completion_ids.repeat_interleave(3, 0))
        assert (gen.logprobs == 0).all()  # all mass on the kept token: log 1, exactly


def test_greedy(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    a = engine.generate(PROMPTS, 3, params, seed=1)
    b = engine.generate(PROMPTS, 3, params, seed=2)
    assert torch.equal(a.completion_ids, b.completion_ids)
    for i in range(len(PROMPTS)):  # all samples of a prompt identical
        assert (a.completion_ids[3 * i : 3 * i + 3] == a.completion_ids[3 * i]).all()
    # greedy records temperature-1 log-probs of the chosen (argmax) tokens
    recomputed = token_logprobs(model, a.prompt_ids, a.prompt_mask, a.completion_ids, a.completion_mask)
    assert (recomputed - a.logprobs).abs().max() <= logprob_tolerance(model, a)


def test_chunking_does_not_change_results(tiny):
    model, tok = tiny
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    whole = HFEngine(model, tok).generate(PROMPTS, 3, params)
    chunked = HFEngine(model, tok, max_batch_rows=2).generate(PROMPTS, 3, params)
    assert torch.equal(whole.prompt_ids, chunked.prompt_ids)
    assert torch.equal(whole.completion_ids, chunked.completion_ids)
    assert torch.equal(whole.completion_mask, chunked.completion_mask)
    # another padding width sums in another order
    assert (whole.logprobs - chunked.logprobs).abs().max() <= logprob_tolerance(model, whole)


def test_load_weights_own_copy(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok, own_copy=True)
    assert engine.model is not model
    params = SamplingParams(max_new_tokens=6)
    before = engine.generate(PROMPTS, 4, params, seed=3)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    perturbed = copy.deepcopy(model)  # the trainer's updated model (tied weights stay tied)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    new_state = perturbed.state_dict()
    engine.load_weights(new_state)
    assert engine.version == 1
    after = engine.generate(PROMPTS, 4, params, seed=3)
    assert after.version == 1 and before.version == 0
    assert not torch.equal(before.logprobs, after.logprobs)
    for k, v in engine.model.state_dict().items():
        assert torch.equal(v, new_state[k])
    for k, v in model.state_dict().items():  # the trainer's model is untouched
        assert torch.equal(v, original[k])
    engine.load_weights(original)
    again = engine.generate(PROMPTS, 4, params, seed=3)
    assert engine.version == 2 and torch.equal(again.completion_ids, before.completion_ids)


def test_load_weights_shared_model_bumps_version(tiny):
    model, tok = tiny
    trainer_model = copy.deepcopy(model)
    engine = HFEngine(trainer_model, tok)
    assert engine.model is trainer_model
    params = SamplingParams(max_new_tokens=6)
    before = engine.generate(PROMPTS, 4, params, seed=3)
    with torch.no_grad():  # the trainer updates its model in place ...
        for p in trainer_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    engine.load_weights(trainer_model.state_dict())  # ... and tells the engine
    after = engine.generate(PROMPTS, 4, params, seed=3)
    assert (before.version, after.version) == (0, 1)
    assert not torch.equal(before.logprobs, after.logprobs)
    # generation leaves the trainer's train/eval mode as it was
    trainer_model.train()
    engine.generate(PROMPTS, 1, params, seed=0)
    assert trainer_model.training


def test_no_deprecation_warning_from_our_forward_calls(tiny):
    """Sampling and scoring pass the key / value cache under the name this transformers takes, so
    none of transformers' FutureWarnings or DeprecationWarnings reaches the user's console."""
    import warnings

    from rlft.scoring import score_completions

    model, tok = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        gen = HFEngine(model, tok).generate(PROMPTS, 3, SamplingParams(max_new_tokens=6), seed=0)
        scores = score_completions(model, gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask)
    assert (scores.logprobs - gen.logprobs).abs().max() <= logprob_tolerance(model, gen)
