"""The objective J(pi), its optimum J* and the normalised gap, against brute-force enumeration.

A random float64 Llama over 15 tokens (specials, digits, space) with completions of at most 3
tokens has 14^3 + 14^2 + 14 + 1 possible completions per prompt: few enough to enumerate every one,
with its exact probability under pi_ref and under a perturbed pi, and its reward from the real
Grader. From that, exactly:

    Z(x) = sum_y pi_ref(y|x) exp(r / beta),   J* = beta mean_x log Z(x),
    J(pi) = sum_y pi(y|x) r - beta KL(pi || pi_ref),   pi* = pi_ref exp(r / beta) / Z.

The tests check rlft.objective's closed form and rlft.evaluation's estimators against these.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlft.data import Problem, format_prompt
from rlft.engines.base import SamplingParams, encode_prompts
from rlft.engines.hf import HFEngine
from rlft.evaluation import evaluate_policy
from rlft.models.tiny import build_char_tokenizer
from rlft.objective import log_partition, objective, objective_gap, optimal_objective
from rlft.scoring import score_completions
from rlft.rewards import Grader

MAX_TOKENS = 3
PROBLEMS = [Problem(question=f"What is {a} + {b}?", answer=str(a + b), id=f"p{i}")
            for i, (a, b) in enumerate([(1, 2), (3, 4), (2, 5)])]


@pytest.fixture(scope="module")
def setting():
    tokenizer = build_char_tokenizer("0123456789 ")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    ref = LlamaForCausalLM(config).double().eval()
    policy = LlamaForCausalLM(config).double().eval()
    policy.load_state_dict(ref.state_dict())
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return tokenizer, ref, policy


def every_completion(tokenizer) -> list[list[int]]:
    """Every completion the engine can produce: up to MAX_TOKENS tokens, ending at the first EOS."""
    eos, others = tokenizer.eos_token_id, [i for i in range(len(tokenizer)) if i != tokenizer.eos_token_id]
    out = []
    for length in range(MAX_TOKENS):
        out += [list(prefix) + [eos] for prefix in itertools.product(others, repeat=length)]
    return out + [list(prefix) for prefix in itertools.product(others, repeat=MAX_TOKENS)]


def exact_distribution(model, tokenizer, problem, completions) -> torch.Tensor:
    """[C] pi(y | x) of every completion, by scoring each one."""
    ids, mask = encode_prompts(tokenizer, [format_prompt(problem.question, tokenizer)], 1)
    width = MAX_TOKENS
    comp = torch.full((len(completions), width), tokenizer.pad_token_id)
    comp_mask = torch.zeros((len(completions), width), dtype=torch.bool)
    for i, row in enumerate(completions):
        comp[i, :len(row)], comp_mask[i, :len(row)] = torch.tensor(row), True
    with torch.no_grad():
        logprobs = score_completions(model, ids.expand(len(completions), -1), mask.expand(len(completions), -1),
                                     comp, comp_mask, share_prompts=True).logprobs
    return logprobs.sum(1).exp()


@pytest.fixture(scope="module")
def enumerated(setting):
    tokenizer, ref, policy = setting
    completions = every_completion(tokenizer)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    grader, rows = Grader(), []
    for problem in PROBLEMS:
        rewards = torch.tensor(grader(texts, [problem.answer] * len(texts)), dtype=torch.float64)
        canonical = tokenizer(" " + problem.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append({"ref": exact_distribution(ref, tokenizer, problem, completions),
                     "pi": exact_distribution(policy, tokenizer, problem, completions), "r": rewards,
                     "canonical": completions.index(canonical)})
    return rows


def exact_objective(pi, ref, r, beta) -> float:
    return float((pi * r).sum() - beta * (pi * (pi / ref).log()).sum())


def test_enumeration_covers_every_completion(enumerated):
    for row in enumerated:
        assert float(row["ref"].sum()) == pytest.approx(1.0, abs=1e-12)
        assert float(row["pi"].sum()) == pytest.approx(1.0, abs=1e-12)
        correct = float((row["ref"] * row["r"]).sum())
        canonical = float(row["ref"][row["canonical"]])
        assert 0 < canonical < correct < 1  # other correct completions exist: the sampled part is needed


@pytest.mark.parametrize("beta", [0.05, 0.2, 1.0])
def test_optimum_and_gap_match_enumeration(enumerated, beta):
    optima, values, references, kl_pi, kl_ref = [], [], [], [], []
    for row in enumerated:
        ref, pi, r = row["ref"], row["pi"], row["r"]
        z = float((ref * torch.exp(r / beta)).sum())
        star = ref * torch.exp(r / beta) / z
        optima.append(beta * math.log(z))
        values.append(exact_objective(pi, ref, r, beta))
        references.append(float((ref * r).sum()))
        kl_pi.append(float((pi * (pi / star).log()).sum()))
        kl_ref.append(float((ref * (ref / star).log()).sum()))
        assert exact_objective(star, ref, r, beta) == pytest.approx(beta * math.log(z), abs=1e-12)  # pi* reaches J*
        p = torch.tensor([float((ref * r).sum())], dtype=torch.float64)
        assert float(log_partition(p, beta)) == pytest.approx(math.log(z), abs=1e-12)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    p_all = torch.tensor([float((row["ref"] * row["r"]).sum()) for row in enumerated], dtype=torch.float64)
    J_star, J, J_ref = optimal_objective(p_all, beta), mean(values), mean(references)
    assert J_star == pytest.approx(mean(optima), abs=1e-12)
    assert J_star - J == pytest.approx(beta * mean(kl_pi), abs=1e-12)  # Gibbs: J* - J = beta KL(pi || pi*)
    assert objective_gap(J, J_star, J_ref) == pytest.approx(mean(kl_pi) / mean(kl_ref), abs=1e-10)
    assert objective_gap(J_ref, J_star, J_ref) == 1.0 and objective_gap(J_star, J_star, J_ref) == 0.0


def test_log_partition_is_stable_where_exp_overflows():
    p = torch.tensor([0.0, 1e-300, 0.3, 1.0], dtype=torch.float64)
    got = log_partition(p, beta=1e-3)  # e^{1000} overflows float64
    assert got[0] == 0.0 and got[3] == pytest.approx(1000.0)
    assert float(got[1]) == pytest.approx(1000.0 + math.log(1e-300), rel=1e-12)
    assert float(got[2]) == pytest.approx(1000.0 + math.log(0.3), rel=1e-12)


def test_evaluation_estimates_match_enumeration(setting, enumerated):
    """evaluate_policy's accuracy, KL and p(x) are unbiased: within 5 standard errors of the exact
    values with 4000 samples per problem (fixed seeds, so the test is deterministic)."""
    tokenizer, ref, policy = setting
    samples, beta = 4000, 0.2
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=MAX_TOKENS)
    engine = HFEngine(policy, tokenizer, max_batch_rows=4000)
    prompt = lambda q: format_prompt(q, tokenizer)  # noqa: E731
    sums, _ = evaluate_policy(engine, ref, tokenizer, Grader(), PROBLEMS, prompt, sampling, samples, (0,),
                              torch.device("cpu"))
    accuracy, kl = sums.sampled_correct / sums.samples, sums.log_ratio / sums.samples
    exact_acc = sum(float((row["pi"] * row["r"]).sum()) for row in enumerated) / len(enumerated)
    exact_kl = sum(float((row["pi"] * (row["pi"] / row["ref"]).log()).sum()) for row in enumerated) / len(enumerated)
    n = samples * len(PROBLEMS)
    assert abs(accuracy - exact_acc) < 5 * math.sqrt(0.25 / n)
    ell_sd = max(float(((row["pi"] / row["ref"]).log() ** 2 * row["pi"]).sum()) for row in enumerated) ** 0.5
    assert abs(kl - exact_kl) < 5 * ell_sd / math.sqrt(n)
    assert objective(accuracy, kl, beta) == pytest.approx(accuracy - beta * kl)

    ref_engine = HFEngine(ref, tokenizer, max_batch_rows=4000)
    _, masses = evaluate_policy(ref_engine, ref, tokenizer, Grader(), PROBLEMS, prompt, sampling, samples, (0,),
                                torch.device("cpu"), reference_mass=True)
    for row, mass in zip(enumerated, masses.tolist()):
        exact = float((row["ref"] * row["r"]).sum())
        other = exact - float(row["ref"][row["canonical"]])  # the sampled part's mean
        assert abs(mass - exact) < 5 * math.sqrt(other * (1 - other) / samples) + 1e-12
