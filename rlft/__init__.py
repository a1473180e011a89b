"""rlft: RL fine-tuning of language models from on-policy and off-policy data.

The library holds everything an algorithm does not decide: the Batch, the registry, rollout
engines, data, rewards, model presets, behaviour sources and the trainer. Algorithms live in the
sibling package ``algorithms``; benchmarks in ``benchmarks``.
"""

__version__ = "0.1.0"
