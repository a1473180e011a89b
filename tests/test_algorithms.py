"""Unit tests of the algorithm plug-ins: the interface contract every registered algorithm meets,
hyper-parameter handling and its errors, docstrings, and small hand-checked pieces (GAE, DPO pairs).
The estimators' mathematics is in test_properties.py."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import algorithms
from algorithms import Normalizers
from algorithms.dpo import best_and_worst
from algorithms.ppo import gae
from rlft.batch import Batch
from rlft.errors import UsageError
from rlft.tabular import Bandit, TabularPolicy, sample_batch
from tolerances import difference  # tests/tolerances.py

BUILTIN = ["agro", "dpo", "dro", "grpo", "is-pg", "ppo", "raft", "reinforce", "rloo", "topr"]
GROUP_ALGORITHMS = ["agro", "grpo", "rloo", "dpo"]
SINGLE_SAMPLE_ALGORITHMS = ["dro", "raft"]


def test_builtins_registered() -> None:
    assert set(BUILTIN) <= set(algorithms.available())


# ----------------------------------------------------------------------------- batches
def lm_batch(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """3 groups of 4 completions, left-padded prompts (P = 5), right-padded completions (T = 6),
    rewards with gaps in every group; plus leaf log-probs [B, T] and values [B, T] with grad."""
    g = torch.Generator().manual_seed(seed)
    G, n, P, T = 3, 4, 5, 6
    B = G * n
    prompt_len = torch.randint(1, P + 1, (B,), generator=g)
    length = torch.randint(1, T + 1, (B,), generator=g)
    length[0] = T  # at least one full-length completion
    mask = torch.arange(T)[None, :] < length[:, None]
    rewards = torch.rand(B, generator=g, dtype=dtype)
    rewards[::n] = 1.0  # each group has a clear best (and a positive maximum, for RAFT)
    rewards[1::n] = 0.0
    negative = lambda: (-2 * torch.rand(B, T, generator=g, dtype=dtype) - 0.05) * mask  # noqa: E731
    batch = Batch(
        prompt_ids=torch.randint(3, 100, (B, P), generator=g) * (torch.arange(P)[None, :] >= P - prompt_len[:, None]),
        prompt_mask=torch.arange(P)[None, :] >= P - prompt_len[:, None],
        completion_ids=torch.randint(3, 100, (B, T), generator=g) * mask,
        completion_mask=mask,
        group_ids=torch.arange(G).repeat_interleave(n),
        rewards=rewards,
        behavior_logprobs=negative(),
        ref_logprobs=negative(),
    )
    logprobs = (-2 * torch.rand(B, T, generator=g, dtype=dtype) - 0.05).requires_grad_(True)
    values = torch.randn(B, T, generator=g, dtype=dtype).requires_grad_(True)
    return batch, logprobs, values


def compute_loss(algorithm: algorithms.Algorithm, batch: Batch, logprobs: torch.Tensor, values: torch.Tensor):
    """What a trainer does: prepare once (if needed) with detached inputs, then the loss."""
    values = values if algorithm.needs.value_head else None
    if algorithm.needs.prepare:
        batch.extras = algorithm.prepare(batch, logprobs.detach(), None if values is None else values.detach())
    return algorithm.loss(batch, logprobs, values, Normalizers.of(batch, algorithm=algorithm))


def check_output(out, leaves: list[torch.Tensor]) -> None:
    assert isinstance(out, algorithms.LossOutput)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss), out.loss
    assert out.loss.requires_grad
    grads = torch.autograd.grad(out.loss, leaves, allow_unused=True)
    assert grads[0] is not None, "no gradient reaches the policy log-probs"
    for grad in grads:
        if grad is not None:
            assert torch.isfinite(grad).all()
    assert grads[0].abs().sum() > 0, "the policy gradient is identically zero"
    for key, metric in out.metrics.items():
        assert isinstance(metric, torch.Tensor) and metric.dim() == 0, key
        assert not metric.requires_grad, f"metric {key} is not detached"
        assert torch.isfinite(metric), key


@pytest.mark.parametrize("name", algorithms.available())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_on_lm_batch(name: str, dtype: torch.dtype) -> None:
    """A finite scalar loss with a finite, non-zero gradient and detached scalar metrics on a padded
    multi-token batch."""
    algorithm = algorithms.make(name)
    batch, logprobs, values = lm_batch(dtype=dtype)
    out = compute_loss(algorithm, batch, logprobs, values)
    check_output(out, [logprobs, values] if algorithm.needs.value_head else [logprobs])


@pytest.mark.parametrize("name", algorithms.available())
@pytest.mark.parametrize("offpolicy", [0.0, 0.5, 1.0])
def test_loss_on_tabular_batch(name: str, offpolicy: float) -> None:
    """The same interface on the softmax bandit (T = 1, a scalar value head): gradients reach the
    policy logits (and the value for value-head algorithms)."""
    algorithm = algorithms.make(name)
    bandit = Bandit.random(arms=6, beta=0.1, seed=3)
    policy = TabularPolicy(bandit.ref_logits + torch.linspace(-0.5, 0.5, 6, dtype=torch.float64))
    batch = sample_batch(bandit, policy.logprobs(), num_groups=4, group_size=4, offpolicy=offpolicy,
                         generator=torch.Generator().manual_seed(5))
    # make sure every group has a reward gap and a positive best sample
    batch.rewards = batch.rewards.clone()
    batch.rewards[::4], batch.rewards[1::4] = 1.0, 0.0
    values = policy.values(batch)
    out = compute_loss(algorithm, batch, policy.token_logprobs(batch), values)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert policy.logits.grad is not None and torch.isfinite(policy.logits.grad).all()
    assert policy.logits.grad.abs().sum() > 0
    if algorithm.needs.value_head:
        assert policy.value.grad is not None and torch.isfinite(policy.value.grad)
    for key, metric in out.metrics.items():
        assert metric.dim() == 0 and not metric.requires_grad, key


# ---------------------------------------------------------------------- configuration
@pytest.mark.parametrize("name", algorithms.available())
def test_config_fields_documented(name: str) -> None:
    cls = algorithms.get(name)
    assert dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, algorithms.AlgorithmConfig)
    for f in dataclasses.fields(cls.Config):
        assert isinstance(f.metadata.get("help"), str) and f.metadata["help"].strip(), f"{name}.{f.name} has no help"
    assert set(cls.Config.help()) == {f.name for f in dataclasses.fields(cls.Config)}
    assert cls.name == name
    algorithms.make(name)  # the defaults are valid


def test_overrides_from_strings() -> None:
    agro = algorithms.make("agro", beta="0.1", baseline="loo")
    assert agro.config.beta == 0.1 and isinstance(agro.config.beta, float)
    assert agro.config.baseline == "loo"
    agro = algorithms.make("agro", clip_log_ratio="inf", length_normalize="true", epochs="3")
    assert agro.config.clip_log_ratio == float("inf")
    assert agro.config.length_normalize is True
    assert agro.config.epochs == 3 and isinstance(agro.config.epochs, int)
    assert algorithms.make("agro", length_normalize="no").config.length_normalize is False
    assert algorithms.make("ppo", whiten_advantages="0").config.whiten_advantages is False
    assert algorithms.make("is-pg", truncation="2.5").config.truncation == 2.5
    assert algorithms.make("grpo", aggregation="seq-mean-token-sum-norm").config.aggregation == "seq-mean-token-sum-norm"
    # non-string values pass through
    assert algorithms.make("agro", beta=0.2).config.beta == 0.2


def assert_one_line_usage_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, UsageError)
    assert message and "\n" not in message, repr(message)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(
    "name, overrides, fragments",
    [
        ("agro", {"betta": "0.1"}, ["betta", "beta"]),           # unknown name lists the known ones
        ("grpo", {"not_a_field": 1}, ["not_a_field"]),
        ("agro", {"baseline": "median"}, ["baseline", "median", "mean", "loo"]),  # bad Literal value
        ("grpo", {"aggregation": "sum"}, ["aggregation", "token-mean"]),
        ("reinforce", {"kl_estimator": "k4"}, ["k4"]),
        ("agro", {"beta": "-0.5"}, ["beta"]),                     # negative beta
        ("agro", {"beta": -1.0}, ["beta"]),
        ("grpo", {"beta": "-1"}, ["beta"]),
        ("dpo", {"beta": -0.1}, ["beta"]),
        ("agro", {"beta": "abc"}, ["beta", "abc"]),               # not a number
        ("agro", {"length_normalize": "maybe"}, ["length_normalize"]),
        ("ppo", {"epochs": "0"}, ["epochs"]),
        ("ppo", {"epochs": "2.5"}, ["epochs"]),
    ],
)
def test_bad_hyper_parameters(name: str, overrides: dict, fragments: list[str]) -> None:
    with pytest.raises(UsageError) as excinfo:
        algorithms.make(name, **overrides)
    assert_one_line_usage_error(excinfo, *fragments)


@pytest.mark.parametrize("name", [n for n in BUILTIN if n != "raft"])
def test_negative_beta_rejected_everywhere(name: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        algorithms.make(name, beta=-0.01)
    assert_one_line_usage_error(excinfo, "beta")
    algorithms.make(name, beta=0.0)  # zero is allowed


def test_unknown_algorithm_lists_known_names() -> None:
    with pytest.raises(UsageError) as excinfo:
        algorithms.get("nope")
    assert_one_line_usage_error(excinfo, "nope", *algorithms.available())
    with pytest.raises(UsageError):
        algorithms.make("nope")


def test_algorithm_by_import_path() -> None:
    assert algorithms.get("algorithms.agro:AGRO") is algorithms.get("agro")
    with pytest.raises(UsageError) as excinfo:
        algorithms.make("rlft.batch:Batch")  # importable, but not an Algorithm
    assert_one_line_usage_error(excinfo)


@pytest.mark.parametrize("name", GROUP_ALGORITHMS)
def test_group_size_one_rejected_for_group_algorithms(name: str) -> None:
    algorithm = algorithms.make(name)
    with pytest.raises(UsageError) as excinfo:
        algorithm.check_group_size(1)
    assert_one_line_usage_error(excinfo, name)
    algorithm.check_group_size(2)


@pytest.mark.parametrize("name", SINGLE_SAMPLE_ALGORITHMS)
def test_group_size_one_allowed(name: str) -> None:
    algorithms.make(name).check_group_size(1)


def test_group_size_depends_on_baseline() -> None:
    """Baselines that need other samples of the group raise the minimum group size to 2."""
    algorithms.make("reinforce", baseline="none").check_group_size(1)
    algorithms.make("is-pg", baseline="none").check_group_size(1)
    algorithms.make("topr", baseline="none").check_group_size(1)
    for name, baseline in (("reinforce", "mean"), ("reinforce", "loo"), ("is-pg", "loo"), ("topr", "mean")):
        with pytest.raises(UsageError):
            algorithms.make(name, baseline=baseline).check_group_size(1)


# -------------------------------------------------------------------------- docstrings
YEAR = re.compile(r"\b(19|20)\d\d\b")
FORMULA = re.compile(r"\bloss\s*=\s*\S")  # e.g. "loss = - mean_i A_i logp(y_i)"


@pytest.mark.parametrize("name", BUILTIN)
def test_docstring_cites_paper_and_formula(name: str) -> None:
    doc = algorithms.get(name).__doc__ or ""
    assert "arXiv" in doc or YEAR.search(doc), f"{name}: docstring cites no paper"
    assert FORMULA.search(doc), f"{name}: docstring has no 'loss = ...' formula line"


# ------------------------------------------------------------------------------- pieces
#: float64 rounding of GAE's recursion over T <= 4 steps and of the decimal references (values <= 2)
GAE_ROUNDING = difference([4, 4], 2.0, torch.float64)


def test_gae_hand_computed() -> None:
    """Row 0: full length 3; row 1: length 2 (the padded value 9.0 must be ignored)."""
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.7], [0.5, 1.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    gamma, lam = 0.9, 0.8
    # row 0: delta = (0 + .9*.6 - .5, 0 + .9*.7 - .6, 1 + 0 - .7) = (.04, .03, .3); gamma*lam = .72
    #   A2 = .3, A1 = .03 + .72*.3 = .246, A0 = .04 + .72*.246 = .21712
    # row 1: delta1 = 2 + .9*0 - 1 = 1, delta0 = 0 + .9*1 - .5 = .4;  A1 = 1, A0 = .4 + .72 = 1.12, A2 = 0
    expected = torch.tensor([[0.21712, 0.246, 0.3], [1.12, 1.0, 0.0]], dtype=torch.float64)
    # the recursion adds T = 3 terms of size <= 2, against decimal literals: float64 rounding only
    torch.testing.assert_close(gae(rewards, values, mask, gamma, lam), expected, rtol=0, atol=GAE_ROUNDING)


def test_gae_monte_carlo_limit() -> None:
    """gamma = lambda = 1: A_t = (sum of rewards from t to the end) - V_t."""
    rewards = torch.tensor([[0.1, -0.2, 0.7, 0.0]], dtype=torch.float64)
    values = torch.tensor([[0.3, 0.1, -0.4, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    returns = torch.tensor([[0.6, 0.5, 0.7, 0.0]], dtype=torch.float64)
    expected = (returns - values) * mask
    torch.testing.assert_close(gae(rewards, values, mask, 1.0, 1.0), expected, rtol=0, atol=GAE_ROUNDING)
    # lambda = 0: one-step TD errors
    td = torch.tensor([[0.1 + 0.1 - 0.3, -0.2 - 0.4 - 0.1, 0.7 - (-0.4), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(gae(rewards, values, mask, 1.0, 0.0), td, rtol=0, atol=GAE_ROUNDING)


def test_best_and_worst_ties_and_no_gap() -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0,   # ties on both ends: first index of each
                            0.5, 0.5,             # no gap: no pair
                            0.2, 0.9, 0.9])       # best tied at 7 and 8 -> 7; worst 6
    group_ids = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    chosen, rejected, has_gap = best_and_worst(rewards, group_ids)
    assert chosen.tolist() == [0, 4, 7]
    assert rejected.tolist() == [1, 4, 6]
    assert has_gap.tolist() == [True, False, True]


def test_best_and_worst_non_zero_group_ids() -> None:
    """Group ids of a micro-batch need not start at 0."""
    chosen, rejected, has_gap = best_and_worst(torch.tensor([0.0, 1.0, 3.0, 3.0]), torch.tensor([7, 7, 9, 9]))
    assert chosen.tolist() == [1, 2] and rejected.tolist() == [0, 2] and has_gap.tolist() == [True, False]


def test_dpo_skips_groups_without_gap() -> None:
    """A batch whose groups all have equal rewards makes no pair: loss 0, zero gradient."""
    batch, logprobs, values = lm_batch(dtype=torch.float64)
    batch.rewards = torch.full_like(batch.rewards, 0.5)
    dpo = algorithms.make("dpo", beta=0.1)
    out = dpo.loss(batch, logprobs, None, Normalizers.of(batch, algorithm=dpo))
    assert out.loss.item() == 0.0
    (grad,) = torch.autograd.grad(out.loss, logprobs)
    assert (grad == 0).all()
    assert out.metrics["pairs"].item() == 0.0


def test_dpo_pair_loss_value() -> None:
    """One group of two: loss = -log sigmoid(beta (ell_chosen - ell_rejected)), chosen = higher reward."""
    batch = Batch(
        prompt_ids=torch.zeros(2, 0, dtype=torch.long), prompt_mask=torch.zeros(2, 0, dtype=torch.bool),
        completion_ids=torch.tensor([[1], [2]]), completion_mask=torch.ones(2, 1, dtype=torch.bool),
        group_ids=torch.zeros(2, dtype=torch.long), rewards=torch.tensor([0.0, 1.0], dtype=torch.float64),
        behavior_logprobs=torch.zeros(2, 1, dtype=torch.float64),
        ref_logprobs=torch.tensor([[-1.0], [-2.0]], dtype=torch.float64),
    )
    logprobs = torch.tensor([[-1.5], [-0.5]], dtype=torch.float64)
    beta = 0.5
    margin = beta * ((-0.5 + 2.0) - (-1.5 + 1.0))  # chosen is row 1
    expected = -torch.nn.functional.logsigmoid(torch.tensor(margin, dtype=torch.float64))
    dpo = algorithms.make("dpo", beta=beta)
    out = dpo.loss(batch, logprobs, None, Normalizers.of(batch, algorithm=dpo))
    # one pair: a margin of two sums and a softplus, values of size ~1 (tests/tolerances.py)
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=difference([2, 2, 2], 1.0, torch.float64))


def test_dpo_is_the_mean_over_pairs():
    """Two groups, one without a reward gap: the loss is the one pair's loss, not half of it."""
    batch, logprobs, _ = lm_batch(dtype=torch.float64)
    alone = batch.select(slice(0, 4))  # group 0 has a gap (rewards 1 and 0)
    tied = batch.select(slice(4, 8))
    tied.rewards = torch.full_like(tied.rewards, 0.5)
    both = Batch.concat([alone, tied])
    dpo = algorithms.make("dpo", beta=0.1)
    one = dpo.loss(alone, logprobs[:4], None, Normalizers.of(alone, algorithm=dpo)).loss
    two = dpo.loss(both, logprobs[:8], None, Normalizers.of(both, algorithm=dpo)).loss
    assert dpo.denominators(both)["pairs"] == 1
    torch.testing.assert_close(two, one, rtol=0, atol=difference([2, 2, 2], 1.0, torch.float64))


def test_raft_is_token_mean_cross_entropy_of_the_kept_samples():
    batch, logprobs, _ = lm_batch(dtype=torch.float64)
    raft = algorithms.make("raft")
    keep = raft.kept(batch)
    assert keep.sum() >= 3  # each group keeps its best sample
    expected = -(logprobs * batch.completion_mask)[keep.bool()].sum() / batch.lengths[keep.bool()].sum()
    out = raft.loss(batch, logprobs, None, Normalizers.of(batch, algorithm=raft))
    tokens = int(batch.completion_mask.sum())
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=difference([tokens, tokens], 2.0, torch.float64))


def test_reinforce_refuses_a_k1_loss_term():
    with pytest.raises(UsageError, match="zero expected gradient"):
        algorithms.make("reinforce", kl="loss", kl_estimator="k1")
