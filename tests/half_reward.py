"""A plug-in reward (``--reward half_reward:HalfReward``): half a point for every completion."""


class HalfReward:
    """reward(y) = 0.5 for every completion y, whatever the gold answer."""

    def __call__(self, completions: list[str], golds: list[str]) -> list[float]:
        return [0.5] * len(completions)
