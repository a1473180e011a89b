"""A plug-in reward (``--reward varied_reward:VariedReward``) that differs between distinct completions,
so any algorithm gets a gradient on a task the model cannot yet solve (math grading would give all
zeros, and completions of one length would tie a length reward)."""


class VariedReward:
    """reward(y) = (sum of the character codes of y mod 7) / 6, in [0, 1]: a fixed score of the text."""

    def __call__(self, completions: list[str], golds: list[str]) -> list[float]:
        return [(sum(map(ord, c)) % 7) / 6 for c in completions]
