"""Benchmarks: the tabular bandit (Figure 1 of arXiv:2503.19612), LM sweeps, reports, throughput."""
