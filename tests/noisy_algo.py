"""A plug-in that draws from the global generators (as dropout or a careless plug-in would): a
resumed run must draw what the uninterrupted run drew."""

import random
from dataclasses import dataclass

import numpy as np
import torch

from algorithms import Algorithm, AlgorithmConfig, LossOutput, Needs


@dataclass
class NoisyConfig(AlgorithmConfig):
    pass


class NoisyPG(Algorithm):
    """Policy gradient on the raw reward, scaled by a draw of each global generator (Williams 1992):

        loss = - (1 + u / 10) mean_i r_i logp(y_i),  u = random.random() + np.random.rand() + torch.rand(())
    """

    Config = NoisyConfig
    needs = Needs(ref_logprobs=False)

    def loss(self, batch, logprobs, values, norm):
        draws = torch.tensor([random.random(), float(np.random.rand()), float(torch.rand(()))])
        loss = -(batch.rewards * batch.sequence_sum(logprobs)).sum() / norm.sequences * (1 + draws.sum() / 10)
        return LossOutput(loss=loss, metrics={"python_draw": draws[0], "numpy_draw": draws[1], "torch_draw": draws[2]})
