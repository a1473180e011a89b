"""The bfloat16-on-CPU warning: rates are measured for real; the decision is a pure function of them."""

import math

import torch

from rlft import cpu


def test_matmul_rates_are_measured():
    for dtype in (torch.float32, torch.bfloat16):
        rate = cpu.matmul_gflops(dtype, size=64, repeats=1)
        assert math.isfinite(rate) and rate > 0


def test_warns_with_the_measured_slowdown_only_when_bf16_is_slow():
    # the AMD EPYC (AVX2) figures: 42.6 GFLOP/s float32, 0.5 bfloat16 -> an 85x slowdown
    message = cpu.bf16_warning(42.6, 0.5)
    assert "85x slower" in message and "0.5 against 42.6 GFLOP/s" in message and "--dtype float32" in message
    assert "\n" not in message
    # native bf16 (AVX-512-bf16 measured 2660 against 207 GFLOP/s): nothing to say
    assert cpu.bf16_warning(207.0, 2660.0) is None
    assert cpu.bf16_warning(10.0, 6.0) is None  # under the 2x threshold


def test_warns_once_per_process_and_only_for_bf16_on_a_cpu(monkeypatch, capsys):
    monkeypatch.setattr(cpu, "_warned", False)
    cpu.warn_if_bf16_is_slow("float32", torch.device("cpu"))
    cpu.warn_if_bf16_is_slow("bfloat16", torch.device("meta"))
    assert not cpu._warned and capsys.readouterr().err == ""
    cpu.warn_if_bf16_is_slow("bfloat16", torch.device("cpu"))
    first = capsys.readouterr().err
    assert cpu._warned
    # whether this CPU is slow in bf16 varies by machine; the warning (if any) is one line naming the fix
    assert first == "" or (first.count("\n") == 1 and "--dtype float32" in first)
    cpu.warn_if_bf16_is_slow("bfloat16", torch.device("cpu"))
    assert capsys.readouterr().err == ""
