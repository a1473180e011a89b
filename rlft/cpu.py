"""Whether this CPU runs bfloat16 fast: measured at start-up, warned about once.

bfloat16 matrix products are fast only on CPUs with native bf16 instructions: x86 with AVX-512-bf16
or AMX (Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later) and Arm with the BF16
extension (Neoverse V1/N2, AWS Graviton3 and later). Elsewhere torch emulates them: on an AMD EPYC
with AVX2 only, one thread ran a bfloat16 matmul at 0.5 GFLOP/s against 42.6 GFLOP/s in float32,
and a training step of the tiny preset was ~8x slower. float32 is the default on CPUs for that
reason; ``--dtype bfloat16`` on such a CPU trains correctly but slowly, and the trainer says so once.
"""

from __future__ import annotations

import sys
import time

import torch

#: matrix side of the timed product: ~34 MFLOP, a few ms in float32, ~0.1 s in emulated bfloat16
PROBE_SIZE = 256
#: warn when bfloat16 runs this many times slower than float32 (it is ~2x faster where native)
SLOWDOWN_TO_WARN = 2.0

_warned = False


def matmul_gflops(dtype: torch.dtype, size: int = PROBE_SIZE, repeats: int = 3) -> float:
    """The best of ``repeats`` timed ``size x size`` products in ``dtype`` on the CPU, in GFLOP/s
    (2 size^3 FLOPs each), after one untimed warm-up product."""
    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / max(best, 1e-9) / 1e9


def bf16_warning(float32_gflops: float, bfloat16_gflops: float) -> str | None:
    """The one-line warning for rates measured on this CPU, or None when bfloat16 is not slow."""
    slowdown = float32_gflops / bfloat16_gflops
    if slowdown < SLOWDOWN_TO_WARN:
        return None
    return (f"rlft: warning: --dtype bfloat16 on this CPU: a bfloat16 matmul ran {slowdown:.0f}x slower than float32 "
            f"({bfloat16_gflops:.1f} against {float32_gflops:.1f} GFLOP/s, measured now; the CPU has no native bf16 "
            "instructions); training will be slow: use --dtype float32 (the default on CPUs)")


def warn_if_bf16_is_slow(dtype: str, device: torch.device) -> None:
    """Measure and warn on stderr (once per process) if ``dtype`` is bfloat16 on a CPU that emulates it."""
    global _warned
    if _warned or dtype != "bfloat16" or device.type != "cpu":
        return
    message = bf16_warning(matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16))
    if message:
        print(message, file=sys.stderr)
    _warned = True


def main() -> None:
    """``python -m rlft.cpu``: this CPU's float32 and bfloat16 matmul rates on one thread, and
    whether the trainer would warn about ``--dtype bfloat16``."""
    torch.set_num_threads(1)
    fp32, bf16 = matmul_gflops(torch.float32, repeats=10), matmul_gflops(torch.bfloat16, repeats=10)
    print(f"one thread, {PROBE_SIZE}x{PROBE_SIZE} matmul: float32 {fp32:.1f} GFLOP/s, bfloat16 {bf16:.1f} GFLOP/s "
          f"(bfloat16 {fp32 / bf16:.2f}x the time of float32)")
    print(bf16_warning(fp32, bf16) or "rlft: --dtype bfloat16 runs at native speed on this CPU (no warning)")


if __name__ == "__main__":
    main()
