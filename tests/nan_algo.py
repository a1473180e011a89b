"""A plug-in whose loss turns NaN after its first call: the trainer must stop with a recorded error."""

from dataclasses import dataclass

import torch

from algorithms import Algorithm, AlgorithmConfig, LossOutput, Needs


@dataclass
class ExplodingConfig(AlgorithmConfig):
    pass


class ExplodingPG(Algorithm):
    """Policy gradient on the raw reward whose loss is multiplied by NaN from the second call on.

        loss = - mean_i r_i logp(y_i)  (x NaN after the first call; Williams 1992)
    """

    Config = ExplodingConfig
    needs = Needs(ref_logprobs=False)
    calls = 0

    def loss(self, batch, logprobs, values, norm):
        ExplodingPG.calls += 1
        scale = 1.0 if ExplodingPG.calls == 1 else float("nan")
        loss = -(batch.rewards * batch.sequence_sum(logprobs)).sum() / norm.sequences * scale
        return LossOutput(loss=loss, metrics={"scale": torch.tensor(scale)})
