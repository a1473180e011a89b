"""rlft.prefill: which prompt tokens are run once (distinct prompts, the prefix they all share) and
the cache layout a continuation extends. Its values are checked against plain forward passes in
tests/test_throughput.py (scoring, with gradients) and by the engine's sampling tests."""

import torch

from rlft.prefill import MIN_SHARED_PREFIX, PromptPlan, common_prefix, position_ids_from_mask, prefill
from tolerances import difference, forward_reductions  # tests/tolerances.py


def _left_padded(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]).bool()
    return ids, mask


def test_common_prefix_of_left_padded_prompts():
    ids, mask = _left_padded([[1, 5, 6, 7, 8, 9, 20], [1, 5, 6, 7, 8, 9, 21, 22], [1, 5, 6, 7, 8, 30]])
    assert common_prefix(ids, mask) == 5  # [1, 5, 6, 7, 8]: every prompt keeps a token of its own
    ids, mask = _left_padded([[1, 5, 6, 7, 8], [1, 5, 6, 7, 8]])  # identical: each keeps its last token
    assert common_prefix(ids, mask) == 4 == MIN_SHARED_PREFIX
    ids, mask = _left_padded([[1, 5, 6, 40, 8, 9], [1, 5, 6, 7, 8, 9]])
    assert common_prefix(ids, mask) == 0  # [1, 5, 6]: shorter than MIN_SHARED_PREFIX
    ids, mask = _left_padded([[1, 5, 6, 7, 8, 9, 20]])
    assert common_prefix(ids, mask) == 0  # one prompt shares with nobody
    right = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 5, 6, 7, 8, 0]])
    assert common_prefix(right, right != 0) == 0  # right padding: not the layout prefill expects


def test_plan_of_a_group_batch():
    ids, mask = _left_padded([[1, 5, 6, 7, 8, 20]] * 3 + [[1, 5, 6, 7, 8, 9, 21]] * 3)
    plan = PromptPlan.of(ids, mask)
    assert len(plan.first) == 2 and torch.equal(ids[plan.first][plan.inverse], ids)
    assert plan.prefix == 5 and plan.shares_work
    plain = PromptPlan.of(ids, mask, share=False)
    assert plain.prefix == 0 and not plain.shares_work and torch.equal(plain.inverse, torch.arange(6))


def test_prefill_layout_and_logits(tiny):
    """The cache holds [prefix][pad .. pad, rest]; each row's next-token logits and the positions its
    continuation gets are those of a plain forward over the left-padded row."""
    model, tok = tiny
    texts = ["Question: What is 1 + 2?\nAnswer:", "Question: What is 30 - 200?\nAnswer:"]
    enc = tok([t for t in texts for _ in range(3)], padding=True, padding_side="left", return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"].bool()
    plan = PromptPlan.of(ids, mask)
    assert plan.prefix == len(tok("Question: What is ")["input_ids"])  # BOS + the template's opening
    with torch.no_grad():
        state = prefill(model, ids, mask, plan)
        plain = model(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask)).logits[:, -1]
    lengths = mask.sum(1)
    assert state.mask.shape == (6, int(lengths.max()))  # every all-pad column dropped
    assert torch.equal(state.mask.sum(1), lengths) and bool(state.mask[:, :plan.prefix].all())
    assert torch.equal(position_ids_from_mask(state.mask)[:, -1], lengths - 1)  # the next position is the same
    assert state.cache.get_seq_length() == state.mask.shape[1]
    bound = difference(forward_reductions(model.config, ids.shape[1]), float(plain.abs().max()))
    assert (state.logits - plain).abs().max() <= bound  # the same sums in other orders (tests/tolerances.py)
