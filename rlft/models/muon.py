"""Muon with its Newton-Schulz iteration in float32, for CPUs where bfloat16 is slow."""

from __future__ import annotations

import torch


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's update with its Newton-Schulz iteration in ``ns_dtype`` (float32 here).

    Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/), for each 2-D weight W
    [rows, cols] with gradient G, momentum mu, Nesterov::

        M <- mu M + (1 - mu) G,       U = (1 - mu) G + mu M
        X <- U / ||U||_F, on its wide orientation; 5 times: A = X X^T, X <- a X + (b A + c A^2) X
        W <- W - lr * sqrt(max(1, rows / cols)) * X

    with (a, b, c) = (3.4445, -4.7750, 2.0315). torch.optim.Muon runs the iteration in bfloat16,
    hard-wired; on CPUs without AVX-512-bf16 a bfloat16 matrix product is ~100x slower than a
    float32 one (0.5 against 42.6 GFLOP/s measured on an AMD EPYC with AVX2 only), which made this
    recipe take 49 minutes there. With ``ns_dtype=torch.bfloat16`` this class takes exactly
    torch.optim.Muon's steps (tests/test_models.py checks it).
    """

    COEFFICIENTS = (3.4445, -4.7750, 2.0315)

    def __init__(self, params, lr: float, momentum: float = 0.95, ns_steps: int = 5,
                 ns_dtype: torch.dtype = torch.float32, eps: float = 1e-7) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps, ns_dtype=ns_dtype, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buf = state["momentum_buffer"]
                buf.lerp_(param.grad, 1 - group["momentum"])
                update = param.grad.lerp(buf, group["momentum"])
                update = self.orthogonalize(update, group["ns_steps"], group["ns_dtype"], group["eps"])
                rows, cols = param.shape
                param.add_(update, alpha=-group["lr"] * max(1.0, rows / cols) ** 0.5)

    @classmethod
    def orthogonalize(cls, update: torch.Tensor, steps: int, dtype: torch.dtype, eps: float) -> torch.Tensor:
        """Quintic Newton-Schulz iteration toward the orthogonal factor of ``update`` [rows, cols]."""
        a, b, c = cls.COEFFICIENTS
        x = update.to(dtype)
        tall = update.shape[0] > update.shape[1]
        if tall:
            x = x.T
        x = x / x.norm().clamp(min=eps)
        for _ in range(steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        return x.T if tall else x


