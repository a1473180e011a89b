"""Policy scoring: recomputed log-probs equal the engine's, entropy, value head, save / load."""

import copy
import math

import pytest
import torch

from rlft.batch import Batch
from rlft.engines import HFEngine, SamplingParams
from rlft.policy import PolicyWithValue, ValueHead, load_policy, save_policy
from rlft.prefill import position_ids_from_mask
from rlft.scoring import score_batch, score_completions, token_logprobs
from tolerances import difference, forward_reductions, logprob_tolerance, max_abs_logit  # tests/tolerances.py

PROMPTS = [
    "Question: What is 7 - 85?\nAnswer:",
    "Hello",
    "Question: What is 12 * 34? Think about it.\nAnswer:",
    "Question: What is 1 + 1?\nAnswer:",
]


def _generation(model, tok, temperature, prompts=PROMPTS, n=3, max_new_tokens=12, seed=0):
    return HFEngine(model, tok).generate(
        prompts, n, SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens), seed=seed
    )


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recomputed_logprobs_match_engine(tiny, temperature):
    model, tok = tiny
    gen = _generation(model, tok, temperature)
    # the setting the test is about: left padding of different lengths, completions of different lengths
    assert len(set(gen.prompt_mask.sum(1).tolist())) >= 3
    assert len(set(gen.completion_mask.sum(1).tolist())) >= 2
    recomputed = token_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.completion_ids,
                                gen.completion_mask, temperature=temperature)
    assert recomputed.shape == gen.logprobs.shape
    assert (recomputed - gen.logprobs).abs().max().item() <= logprob_tolerance(model, gen)
    assert (recomputed[~gen.completion_mask] == 0).all()


def test_recomputed_logprobs_match_engine_smollm2(smollm2):
    """The same agreement on a real BPE model with a chat template (short, to stay fast)."""
    model, tok = smollm2
    from rlft.data import format_prompt

    prompts = [format_prompt("What is 2 + 3?", tok), "The capital of France is"]
    gen = _generation(model, tok, 0.7, prompts=prompts, n=2, max_new_tokens=6)
    recomputed = token_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.completion_ids,
                                gen.completion_mask, temperature=0.7)
    assert (recomputed - gen.logprobs).abs().max().item() <= logprob_tolerance(model, gen)


def test_position_ids_ignore_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2, 2], [0, 1, 2, 3, 4, 5]]


def test_padding_does_not_change_scores(tiny):
    """A row scored alone equals the same row scored in a padded batch."""
    model, tok = tiny
    gen = _generation(model, tok, 1.0, n=1)
    batched = token_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask)
    tolerance = logprob_tolerance(model, gen)
    for i in range(len(PROMPTS)):
        pm, cm = gen.prompt_mask[i], gen.completion_mask[i]
        alone = token_logprobs(model, gen.prompt_ids[i : i + 1, pm], pm[pm][None],
                               gen.completion_ids[i : i + 1, cm], cm[cm][None])
        assert (alone[0] - batched[i, cm]).abs().max() <= tolerance


def test_entropy(tiny):
    model, tok = tiny
    gen = _generation(model, tok, 1.0)
    for temperature in (1.0, 0.5):
        scores = score_completions(model, gen.prompt_ids, gen.prompt_mask, gen.completion_ids,
                                   gen.completion_mask, temperature=temperature, with_entropy=True)
        assert scores.entropy.shape == gen.logprobs.shape
        assert (scores.entropy[~gen.completion_mask] == 0).all()
        real = scores.entropy[gen.completion_mask]
        entropy_rounding = difference(forward_reductions(model.config, gen.prompt_ids.shape[1] + gen.completion_ids.shape[1])
                                      + [len(tok)], max_abs_logit(model, gen) / temperature)
        assert (real >= 0).all() and (real <= math.log(len(tok)) + entropy_rounding).all()
    # manual check on one row at temperature 1
    ids = torch.cat([gen.prompt_ids[:1], gen.completion_ids[:1]], 1)
    mask = torch.cat([gen.prompt_mask[:1], gen.completion_mask[:1]], 1).long()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        P = gen.prompt_ids.shape[1]
        p = torch.softmax(logits[0, P - 1], -1)
        expected = -(p * p.log()).sum()
        scores = score_completions(model, gen.prompt_ids[:1], gen.prompt_mask[:1], gen.completion_ids[:1],
                                   gen.completion_mask[:1], with_entropy=True)
    entropy_rounding = difference(forward_reductions(model.config, ids.shape[1]) + [len(tok)], max_abs_logit(model, gen))
    assert (scores.entropy[0, 0] - expected).abs() <= entropy_rounding


def test_temperature_must_be_positive(tiny):
    model, tok = tiny
    gen = _generation(model, tok, 1.0, n=1)
    with pytest.raises(ValueError):
        token_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask, 0.0)


def test_value_head_shapes_and_gradients(tiny):
    model, tok = tiny
    gen = _generation(model, tok, 1.0)
    policy = PolicyWithValue(copy.deepcopy(model))
    out = policy(gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask, with_entropy=True)
    B, T = gen.completion_ids.shape
    assert out.values.shape == out.logprobs.shape == out.entropy.shape == (B, T)
    assert out.hidden.shape == (B, T, model.config.hidden_size)
    assert out.values.dtype == torch.float32
    assert (out.values == 0).all()  # zero-initialised head
    expected = token_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask)
    assert torch.equal(out.logprobs, expected)  # the same forward, plus hidden states

    torch.nn.init.normal_(policy.value_head.linear.weight, std=0.1)
    out = policy(gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask)
    assert (out.values[~gen.completion_mask] == 0).all()
    assert (out.values[gen.completion_mask] != 0).all()
    # values[:, t] come from the hidden state that predicts token t
    manual = policy.value_head(out.hidden)
    assert torch.equal(out.values[gen.completion_mask], manual[gen.completion_mask])
    loss = (out.values ** 2).sum() - out.logprobs.sum()
    loss.backward()
    assert policy.value_head.linear.weight.grad.abs().sum() > 0
    assert policy.model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_value_head_alone():
    head = ValueHead(16)
    assert head(torch.randn(3, 5, 16)).shape == (3, 5)


def test_score_batch(tiny):
    model, tok = tiny
    gen = _generation(model, tok, 1.0)
    B = len(gen)
    batch = Batch(
        prompt_ids=gen.prompt_ids, prompt_mask=gen.prompt_mask,
        completion_ids=gen.completion_ids, completion_mask=gen.completion_mask,
        group_ids=torch.arange(B) // 3, rewards=torch.zeros(B), behavior_logprobs=gen.logprobs,
    )
    scores = score_batch(model, batch)
    assert (scores.logprobs - batch.behavior_logprobs).abs().max() <= logprob_tolerance(model, batch)
    with_value = score_batch(PolicyWithValue(model), batch, with_entropy=True)
    assert with_value.values.shape == (B, gen.completion_ids.shape[1]) and with_value.entropy is not None


def test_save_and_load_round_trip(tiny, tmp_path):
    model, tok = tiny
    gen = _generation(model, tok, 1.0, n=1)
    policy = PolicyWithValue(copy.deepcopy(model))
    torch.nn.init.normal_(policy.value_head.linear.weight, std=0.1)
    torch.nn.init.constant_(policy.value_head.linear.bias, 0.3)
    policy.save_pretrained(tmp_path / "ckpt", tokenizer=tok)
    loaded = PolicyWithValue.from_pretrained(tmp_path / "ckpt")
    args = (gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask)
    a, b = policy(*args), loaded(*args)
    assert torch.equal(a.logprobs, b.logprobs) and torch.equal(a.values, b.values)

    save_policy(tmp_path / "plain", model)  # no tokenizer, no value head
    m2, tok2, head2 = load_policy(tmp_path / "plain")
    assert tok2 is None and head2 is None
    m3, tok3, head3 = load_policy(tmp_path / "ckpt")
    assert tok3 is not None and tok3.pad_token_id == tok.pad_token_id and head3 is not None
    assert torch.equal(token_logprobs(m2, *args), a.logprobs)
