"""Throughput work: the side-by-side benchmark against TRL runs and reports; the fast paths it
measured (prompts prefilled / scored once per group, the engine's own sampling loop) give the
same samples and log-probs as the plain paths. No speed is asserted here: the benchmark is the
measure (python -m benchmarks.throughput --vs-trl)."""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.throughput import MARKER, read_sections, write_section
from rlft.engines import HFEngine, SamplingParams
from rlft.scoring import score_completions
from rlft.prefill import PromptPlan, shared_prompt_rows
from tolerances import difference, forward_reductions, logprob_tolerance, max_abs_logit  # tests/tolerances.py

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
PROMPTS = ["Question: What is 12 + 34?\nAnswer:", "Hi", "Question: What is 99 * 98?\nAnswer:"]
#: Prompts of one template, of several lengths: the prefix "<s>Question: What is " is run once.
TEMPLATED = ["Question: What is 12 + 34?\nAnswer:", "Question: What is 7 - 100?\nAnswer:",
             "Question: What is 99 * 98?\nAnswer:", "Question: What is 5+5?\nAnswer:"]
TRL_MISSING = importlib.util.find_spec("trl") is None


def _benchmark(*args: str, env=ENV) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.throughput", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


# ---------------------------------------------------------------------------- the CLI
@pytest.mark.skipif(TRL_MISSING, reason='TRL is not installed (pip install -e ".[trl]"): --vs-trl needs it')
def test_vs_trl_one_step_each_prints_both_times_and_a_ratio(tmp_path):
    out = tmp_path / "throughput.md"
    out.write_text("# Generation throughput\n\nkept as it is\n")  # a report written before sections existed
    done = _benchmark("--vs-trl", "--models", "tiny", "--engines", "hf", "--rounds", "1", "--round-steps", "1",
                      "--warmup", "0", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    line = re.search(r"tiny hf: median step ours ([\d.]+) s, TRL ([\d.]+) s, ratio ours/TRL ([\d.]+)", done.stdout)
    assert line, done.stdout
    ours, trl, ratio = map(float, line.groups())
    assert ours > 0 and trl > 0 and ratio == pytest.approx(ours / trl, abs=0.01)  # printed with 2 decimals
    text = out.read_text()
    assert "kept as it is" in text and MARKER.format("generation") in text
    assert "ours against TRL's GRPOTrainer" in text and "| phase | ours seconds per step | ours share | TRL seconds per step | TRL share |" in text
    for phase in ("generation", "reward", "reference log-probs", "policy forward", "policy backward", "optimizer"):
        assert f"| {phase} |" in text


def test_vs_trl_without_trl_is_one_line_and_exit_2(tmp_path):
    fake = tmp_path / "fake" / "trl"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named trl')\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(fake.parent), os.environ.get("PYTHONPATH")]))}
    done = _benchmark("--vs-trl", "--out", str(tmp_path / "x.md"), env=env)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert 'pip install -e ".[trl]"' in done.stderr
    assert not (tmp_path / "x.md").exists()


def test_vs_trl_rejects_bfloat16():
    done = _benchmark("--vs-trl", "--dtypes", "bfloat16")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "float32" in done.stderr


def test_report_sections_are_rewritten_one_at_a_time(tmp_path):
    path = tmp_path / "r.md"
    write_section(path, "vs-trl", ["# B", "", "b1"])
    write_section(path, "generation", ["# A", "a1"])
    write_section(path, "vs-trl", ["# B", "b2"])
    sections = read_sections(path)
    assert sections == {"generation": "# A\na1\n", "vs-trl": "# B\nb2\n"}
    assert path.read_text().index("# A") < path.read_text().index("# B")


# ------------------------------------------------------- fast paths give the same numbers
def test_shared_prompt_rows():
    ids = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 8, 9], [0, 5, 6]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1]]).bool()
    first, inverse = shared_prompt_rows(ids, mask)
    assert torch.equal(ids[first][inverse], ids) and sorted(first.tolist()) == [0, 2]
    assert shared_prompt_rows(ids[1:3], mask[1:3]) is None


def _plain_engine(model, tok, **kwargs) -> HFEngine:
    engine = HFEngine(model, tok, **kwargs)
    engine._own_loop = lambda: False  # transformers' generate
    return engine


@pytest.mark.parametrize("params", [
    SamplingParams(max_new_tokens=10),
    SamplingParams(temperature=0.7, top_k=5, max_new_tokens=6),
    SamplingParams(temperature=1.3, top_p=0.8, max_new_tokens=6),
    SamplingParams(temperature=0.0, max_new_tokens=8),
])
@pytest.mark.parametrize("prompts", [PROMPTS, TEMPLATED], ids=["mixed", "templated"])
def test_own_sampling_loop_equals_generate(tiny, params, prompts):
    """Same samples for the same seed and the same recorded log-probs, chunked or not; without
    prompt sharing and dropping stopped rows the loop is transformers' own, bit for bit."""
    model, tok = tiny
    for rows in (64, 5):
        plain = _plain_engine(model, tok, max_batch_rows=rows).generate(prompts, 6, params, seed=3)
        # prefilling each prompt (and a common prefix) once sums attention over other shapes: rounding only
        shared = logprob_tolerance(model, plain)
        for share, tolerance in ((False, 0.0), (True, shared)):
            fast = HFEngine(model, tok, max_batch_rows=rows, share_prompts=share,
                            drop_finished=share).generate(prompts, 6, params, seed=3)
            assert torch.equal(fast.completion_ids, plain.completion_ids)
            assert torch.equal(fast.completion_mask, plain.completion_mask) and fast.texts == plain.texts
            assert (fast.logprobs - plain.logprobs).abs().max() <= tolerance


@pytest.mark.parametrize("prompts, samples, prefix", [(PROMPTS, 4, 0), (TEMPLATED, 4, 19), (TEMPLATED, 1, 19)],
                         ids=["repeated", "repeated-templated", "templated"])
def test_scoring_once_per_prompt_equals_one_forward(tiny, prompts, samples, prefix):
    """Log-probs, entropy, values and gradients of rows that repeat a prompt, or share a prefix,
    equal those of one plain forward."""
    from rlft.policy import PolicyWithValue

    model, tok = tiny
    gen = HFEngine(model, tok).generate(prompts, samples, SamplingParams(max_new_tokens=10), seed=0)
    args = (gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask)
    plan = PromptPlan.of(gen.prompt_ids, gen.prompt_mask)
    assert plan.shares_work and plan.prefix == prefix  # the fast path applies: 19 = len("<s>Question: What is ")
    assert (shared_prompt_rows(gen.prompt_ids, gen.prompt_mask) is not None) == (samples > 1)
    weights = torch.randn(gen.completion_ids.shape, generator=torch.Generator().manual_seed(0))

    def run(share: bool):
        torch.manual_seed(0)
        policy = PolicyWithValue(copy.deepcopy(model).train())
        torch.nn.init.normal_(policy.value_head.linear.weight, std=0.1)
        scores = policy(*args, temperature=0.7, with_entropy=True, share_prompts=share)
        (scores.logprobs * weights).sum().add(scores.values.sum()).backward()
        return scores, [p.grad.clone() for p in policy.parameters()]

    (fast, fast_grads), (plain, plain_grads) = run(True), run(False)
    # the same sums in other orders (tests/tolerances.py): the forward chain F of a token; entropy
    # adds a sum over the vocabulary, the values are of the size of the hidden state (RMS 1)
    forward = forward_reductions(model.config, gen.prompt_ids.shape[1] + gen.completion_ids.shape[1])
    logit = max_abs_logit(model, gen)
    value = max(1.0, float(plain.values.detach().abs().max()))
    bounds = {"logprobs": difference(forward, logit), "entropy": difference(forward + [len(tok)], logit),
              "values": difference(forward, value)}
    for name, bound in bounds.items():
        assert (getattr(fast, name) - getattr(plain, name)).abs().max() <= bound, name
    # gradients: backward mirrors the forward; each entry sums the rows' tokens (see test_distributed)
    tokens = int(gen.completion_mask.sum())
    for a, b in zip(fast_grads, plain_grads):
        assert (a - b).abs().max() <= difference(forward + forward + [tokens], tokens**0.5 * float(b.abs().max()))
    with torch.no_grad():  # and the scores still agree with what the engine recorded
        recorded = (score_completions(model, *args).logprobs - gen.logprobs).abs().max()
        assert recorded <= logprob_tolerance(model, gen)


def test_integer_fast_path_grades_like_math_verify():
    """Plain-integer answers against integer golds skip math-verify; the grades are its grades."""
    from math_verify import verify

    from rlft.rewards import Grader, _parse_math, parse_gold

    golds = ["7", "-46", "0", "1234", "007", "99999999999999999999"]
    answers = ["7", "07", "-7", "-46", "46", "0", "-0", "1234", "1235", "7.0", "99999999999999999999", "x"]
    grader = Grader()
    for gold in golds:
        expected = [float(bool(verify(parse_gold(gold), _parse_math(a)))) for a in answers]
        assert grader([f"The answer is {a}" for a in answers], [gold] * len(answers)) == expected
