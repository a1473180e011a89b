"""Every tensor follows the batch's device, checked without a GPU.

On a GPU the batch lives on ``cuda`` while a tensor made without ``device=`` lands on the CPU, and
mixing the two is an error there but not on a CPU-only machine. These tests reproduce that split
with the ``meta`` device as the default device while the batch, the model and every input are on
the CPU: a tensor made without the right device lands on ``meta``. Meta tensors mix with CPU ones
more freely than CPU ones with CUDA ones, so :class:`OneDevice` applies CUDA's rule to every torch
call: all tensor arguments on one device, except 0-dim tensors of the default device (CUDA
accepts 0-dim CPU scalars).
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import algorithms
from algorithms import Normalizers
from rlft.batch import Batch
from rlft.engines.base import Generation
from rlft.scoring import Scoring, token_logprobs
from rlft.sources import DatasetSource, generation_batch
from test_algorithms import lm_batch  # tests/test_algorithms.py

META = torch.device("meta")


class OneDevice(TorchFunctionMode):
    """Raise on any torch call whose tensor arguments are on several devices (0-dim meta ones aside)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
                   and not (t.dim() == 0 and t.device == META)}
        if len(devices) > 1:
            raise AssertionError(f"{getattr(func, '__name__', func)} mixes tensors on {sorted(map(str, devices))}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def elsewhere():
    """The default device is not the inputs' (as on a GPU), and mixing devices is an error."""
    with META, OneDevice():
        yield


def on_cpu(tensors) -> bool:
    return all(t.device.type == "cpu" for t in tensors)


@pytest.mark.parametrize("name", algorithms.available())
def test_algorithm_creates_every_tensor_on_the_batch_device(name):
    """prepare, denominators and loss with the default device elsewhere than the batch."""
    algorithm = algorithms.make(name)
    batch, logprobs, values = lm_batch()
    values = values if algorithm.needs.value_head else None
    with elsewhere():
        if algorithm.needs.prepare:
            batch.extras = algorithm.prepare(batch, logprobs.detach(), None if values is None else values.detach())
            assert on_cpu(batch.extras.values())
        norm = Normalizers.of(batch, algorithm=algorithm)
        out = algorithm.loss(batch, logprobs, values, norm)
    assert on_cpu([out.loss, *out.metrics.values()])
    assert torch.isfinite(out.loss)


def cpu_generation(B: int = 4, P: int = 3, T: int = 5) -> Generation:
    g = torch.Generator().manual_seed(0)
    return Generation(
        prompt_ids=torch.randint(4, 50, (B, P), generator=g), prompt_mask=torch.ones(B, P, dtype=torch.bool),
        completion_ids=torch.randint(4, 50, (B, T), generator=g), completion_mask=torch.ones(B, T, dtype=torch.bool),
        logprobs=-torch.rand(B, T, generator=g), texts=["x"] * B, version=3,
    )


def batch_tensors(batch: Batch) -> list[torch.Tensor]:
    fields = [getattr(batch, name) for name in batch.__dataclass_fields__]
    return [t for t in fields if isinstance(t, torch.Tensor)] + list(batch.extras.values())


def test_engine_sources_build_their_batch_on_the_generation_device():
    """generation_batch (what the policy, ref-pool and stale sources wrap) and the Batch
    operations the sources and the trainer use keep every tensor on the inputs' device."""
    generation = cpu_generation()
    with elsewhere():
        batch = generation_batch(generation, [1.0, 0.0, 0.0, 1.0], 2, "ref", True, -1)
        both = Batch.concat([batch, batch.select(slice(0, 2))])
        parts = both.group_slices(1) + [mini for _, mini in both.mini_batches(2, torch.Generator().manual_seed(0))]
        for part in [batch, both, *parts]:
            assert on_cpu(batch_tensors(part) + [part.correction, part.sequence_correction])


def test_dataset_source_builds_its_batch_on_the_reference_model_device(tiny, tmp_path):
    """It tokenizes text and scores it under pi_ref: every tensor on the model's device, and the
    behaviour log-probs at the run's temperature."""
    model, tok = tiny
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "completion": f" {i + 1}", "reward": 1.0}) + "\n"
                            for i in range(3)))
    source = DatasetSource(data, tok, model, lambda q: q, Scoring(temperature=0.7))
    with elsewhere():
        batch = source.sample([None, None], 2, seed=0)
    assert len(batch) == 4 and on_cpu(batch_tensors(batch))
    expected = token_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask,
                              temperature=0.7)
    assert torch.equal(batch.behavior_logprobs, expected)
