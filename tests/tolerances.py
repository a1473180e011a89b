"""Float tolerances of the suite, derived from the dtype and the sizes of the reductions.

Two programs that compute the same real number with the same operations, summed in another order,
round differently: another CPU's kernels (AVX2 and AVX-512 block matrix products differently),
a batch split over processes or micro-batches, a prompt's key/value cache shared by its samples,
another padding width. Only that difference may be tolerated, and it is bounded here, never read
off one machine.

One reduction. A sum of n terms x_i in floating point, in any order, is within

    lam * sqrt(n) * u * sum_i |x_i|

of the exact sum with probability at least 1 - 2 n exp(-lam^2 / 2) (Higham and Mary, "A new
approach to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019; their bound
for sums and inner products, to first order in u), where u is the unit round-off: 2^-24 for
float32, 2^-53 for float64. With LAMBDA = 6 a reduction of 10^4 terms exceeds it with probability
below 3e-4 in the worst case of the model (the factor n of the probability is a union bound).
(The deterministic worst case, n u instead of sqrt(n) u, needs adversarial rounding and is
sqrt(n) times looser.)

A chain. A value computed through reductions of sizes n_1, ..., n_k in sequence (a forward pass:
normalisation, projections, attention, MLP, output layer, log-softmax; a backward pass mirrors
it) carries, to first order, one rounding error per term of every reduction on its path. If no
layer amplifies relative errors (RMSNorm keeps the activations of every layer at a fixed scale),
each of them moves the result by at most u * scale, ``scale`` bounding the magnitude of the terms
(the largest |logit| for log-probs); they are mean-independent in the same model, so the chain
behaves like one sum of N = n_1 + ... + n_k terms. Two summation orders of the value then differ by
at most

    2 * lam * u * scale * sqrt(n_1 + ... + n_k).

Each test names its chain; :func:`forward_reductions` lists a transformer's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

#: Standard deviations of the probabilistic bound (see the module docstring).
LAMBDA = 6.0


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps / 2: 2^-24 for float32, 2^-53 for float64, 2^-8 for bfloat16."""
    return torch.finfo(dtype).eps / 2


def chain_error(reductions: Iterable[int], dtype: torch.dtype) -> float:
    """Relative error bound of a value computed through ``reductions`` (sizes) in sequence:
    ``lam * u * sqrt(sum_k n_k)``."""
    return LAMBDA * unit_roundoff(dtype) * math.sqrt(sum(reductions))


def difference(reductions: Iterable[int], scale: float, dtype: torch.dtype = torch.float32) -> float:
    """Largest difference between two summation orders of one value: ``2 * chain_error * scale``."""
    return 2.0 * chain_error(reductions, dtype) * scale


def forward_reductions(config, tokens: int) -> list[int]:
    """The reductions a token's log-prob passes through in a Llama-style transformer.

    Per layer: RMSNorm (hidden), q/k/v projections (hidden), attention scores (head_dim), softmax
    and the weighted sum of values (``tokens`` each), output projection (heads * head_dim),
    RMSNorm (hidden), gate / up projections (hidden), down projection (intermediate). Then the
    final RMSNorm (hidden), the output layer (hidden) and the log-softmax (vocabulary).
    """
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    layer = [hidden, hidden, head_dim, tokens, tokens, config.num_attention_heads * head_dim,
             hidden, hidden, config.intermediate_size]
    return layer * config.num_hidden_layers + [hidden, hidden, config.vocab_size]


def max_abs_logit(model, rows) -> float:
    """The largest |logit| of ``model`` over the real positions of ``rows`` (a Generation or a Batch:
    prompt and completion ids and masks): the magnitude the output layer and the log-softmax act on."""
    ids = torch.cat([rows.prompt_ids, rows.completion_ids], 1)
    mask = torch.cat([rows.prompt_mask, rows.completion_mask], 1).long()
    with torch.no_grad():
        logits = getattr(model, "module", model)(input_ids=ids, attention_mask=mask).logits
    return float(logits.abs().amax(-1)[mask.bool()].max())


def logprob_tolerance(model, rows) -> float:
    """Two summation orders of the token log-probs of ``rows`` under ``model``: :func:`difference`
    over :func:`forward_reductions` for the rows' width, with ``scale`` the largest |logit| (a
    log-prob is a logit minus a log-sum-exp of logits), in the model's dtype."""
    model = getattr(model, "module", model)
    width = rows.prompt_ids.shape[1] + rows.completion_ids.shape[1]
    dtype = next(model.parameters()).dtype
    return difference(forward_reductions(model.config, width), max_abs_logit(model, rows), dtype)
