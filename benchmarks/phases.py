"""Where one ``rlft.trainer.Trainer.step`` spends its wall time, measured from outside the trainer.

:func:`instrument` wraps the trainer's collaborators with timers for as long as the ``with`` block
lasts (nothing in ``rlft/`` is edited, and everything is restored afterwards)::

    data                 Trainer.problems_for_step (the step's problems)
    generation           the rollout engine's generate (sampling, with the recorded log-probs)
    reward               the grader call on the sampled completions
    reference log-probs  score_batch on the frozen pi_ref (no grad)
    policy forward       score_batch on the policy (with grad), then the algorithm's loss
    policy backward      accelerator.backward
    optimizer            gradient clipping, optimizer.step, zero_grad
    weight sync          engine.load_weights and the behaviour source's after_update
    other                the rest of the step: batch assembly, device moves, metrics

``other`` is the step's wall time minus the timed phases. The timers cost microseconds per call.

:func:`instrument_trl` times the same phases of a TRL ``GRPOTrainer`` step (``_generate_single_turn``,
``_calculate_rewards``, ``_get_per_token_logps_and_entropies`` on the reference / policy model,
``accelerator.backward``, gradient clipping and the optimizer step); its ``other`` holds the rest
(batch fetch, tokenising, decoding, padding, metrics, the scheduler).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from typing import Any, Callable, Iterator

PHASES = ("data", "generation", "reward", "reference log-probs", "policy forward", "policy backward",
          "optimizer", "weight sync", "other")


class PhaseTimes:
    """Seconds per phase, summed over the steps taken while instrumented."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.step_seconds = 0.0

    def timed(self, phase: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start
        return wrapper

    def add_step(self, seconds: float) -> None:
        self.steps += 1
        self.step_seconds += seconds

    def per_step(self) -> dict[str, float]:
        """Mean seconds per step of every phase in :data:`PHASES` (``other`` = step minus the rest)."""
        n = max(self.steps, 1)
        out = {phase: self.seconds.get(phase, 0.0) / n for phase in PHASES if phase != "other"}
        out["other"] = max(self.step_seconds / n - sum(out.values()), 0.0)
        return out


def _patch(undo: list, obj: Any, name: str, value: Any) -> None:
    """Set ``obj.name = value`` and remember how to undo it (instance attributes shadow methods)."""
    had = name in vars(obj)
    old = vars(obj).get(name)
    setattr(obj, name, value)
    undo.append(lambda: setattr(obj, name, old) if had else delattr(obj, name))


@contextlib.contextmanager
def instrument(trainer, times: PhaseTimes | None = None) -> Iterator[PhaseTimes]:
    """Time the phases of ``trainer.step`` (see the module docstring) inside the block.

    ``PhaseTimes.add_step(seconds)`` must be called by the caller with each step's wall time.
    """
    import rlft.trainer as trainer_module

    times = times or PhaseTimes()
    undo: list[Callable[[], None]] = []
    ref_model = trainer.ref_model
    score_batch = trainer_module.score_batch

    def scored(model, batch, **kwargs):
        phase = "reference log-probs" if model is ref_model else "policy forward"
        return times.timed(phase, score_batch)(model, batch, **kwargs)

    try:
        _patch(undo, trainer_module, "score_batch", scored)
        _patch(undo, trainer, "problems_for_step", times.timed("data", trainer.problems_for_step))
        _patch(undo, trainer.engine, "generate", times.timed("generation", trainer.engine.generate))
        _patch(undo, trainer.engine, "load_weights", times.timed("weight sync", trainer.engine.load_weights))
        _patch(undo, trainer.behavior, "after_update", times.timed("weight sync", trainer.behavior.after_update))
        policy_source = trainer.mixer.policy
        _patch(undo, policy_source, "reward_fn", times.timed("reward", policy_source.reward_fn))
        _patch(undo, trainer.algorithm, "loss", times.timed("policy forward", trainer.algorithm.loss))
        _patch(undo, trainer.accelerator, "backward", times.timed("policy backward", trainer.accelerator.backward))
        for name in ("clip_grad_norm_",):
            _patch(undo, trainer.accelerator, name, times.timed("optimizer", getattr(trainer.accelerator, name)))
        for name in ("step", "zero_grad"):
            _patch(undo, trainer.optimizer, name, times.timed("optimizer", getattr(trainer.optimizer, name)))
        yield times
    finally:
        for restore in reversed(undo):
            restore()


@contextlib.contextmanager
def instrument_trl(trainer, times: PhaseTimes | None = None) -> Iterator[PhaseTimes]:
    """Time the phases of a TRL ``GRPOTrainer`` step inside the block (see the module docstring)."""
    times = times or PhaseTimes()
    undo: list[Callable[[], None]] = []
    logps = trainer._get_per_token_logps_and_entropies

    def scored(model, *args, **kwargs):
        phase = "reference log-probs" if model is trainer.ref_model else "policy forward"
        return times.timed(phase, logps)(model, *args, **kwargs)

    create_optimizer = trainer.create_optimizer

    def created(*args, **kwargs):
        optimizer = create_optimizer(*args, **kwargs)
        _patch(undo, optimizer, "step", times.timed("optimizer", optimizer.step))
        return optimizer

    try:
        _patch(undo, trainer, "_get_per_token_logps_and_entropies", scored)
        _patch(undo, trainer, "_generate_single_turn", times.timed("generation", trainer._generate_single_turn))
        _patch(undo, trainer, "_calculate_rewards", times.timed("reward", trainer._calculate_rewards))
        _patch(undo, trainer, "_clip_grad_norm", times.timed("optimizer", trainer._clip_grad_norm))
        _patch(undo, trainer, "create_optimizer", created)
        _patch(undo, trainer.accelerator, "backward", times.timed("policy backward", trainer.accelerator.backward))
        yield times
    finally:
        for restore in reversed(undo):
            restore()
