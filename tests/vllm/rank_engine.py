"""One vLLM engine per training process, as the trainer builds them under DDP (tests/vllm/test_vllm_ranks.py).

    accelerate launch --multi_gpu --num_processes 2 tests/vllm/rank_engine.py --out DIR

Every process joins torch.distributed (gloo on a CPU), builds its own
:class:`~rlft.engines.vllm.VLLMEngine` on the tiny preset, samples its own prompts, then loads
weights of its own (the tiny preset's plus noise seeded by the rank) and samples again: both
times the engine's recorded log-probs must equal this process's recomputation with the weights it
holds, so each rank's engine serves that rank's weights. It also checks that a tensor-parallel
engine shared by ranks is refused in one line, and that the trainer's process group still works
after ``engine.close()`` (vLLM's shutdown). Each process writes DIR/rank-R.json: what it saw
(cores, threads, vLLM's executor and group sizes, the log-prob differences and their bounds).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

PROMPTS = ["Question: What is 12 + 34?\nAnswer:", "Hi", "Question: What is 9 * 8?\nAnswer:"]


def thread_affinities() -> list[str]:
    """The distinct ``Cpus_allowed_list`` of this process's threads (Linux)."""
    found = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/status") as status:
                found.update(line.split()[1] for line in status if line.startswith("Cpus_allowed_list"))
        except OSError:  # the thread ended meanwhile
            pass
    return sorted(found)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    dist.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_ADDR / PORT from the launcher
    rank = dist.get_rank()

    from rlft.engines.base import SamplingParams
    from rlft.engines.vllm import VLLMEngine, distributed_options
    from rlft.errors import UsageError
    from rlft.models import load_model
    from rlft.scoring import token_logprobs
    from tolerances import logprob_tolerance  # tests/tolerances.py

    from vllm.distributed import parallel_state

    model, tok = load_model("tiny")
    engine = VLLMEngine(model, tok)
    params = SamplingParams(temperature=1.0, max_new_tokens=16)
    prompts = PROMPTS[rank % len(PROMPTS):] + PROMPTS[: rank % len(PROMPTS)]  # each rank its own order

    def disagreement(weights) -> tuple[float, float]:
        """Max |engine - recomputation with ``weights``| of the recorded log-probs, and its rounding bound."""
        gen = engine.generate(prompts, 4, params, seed=rank)
        with torch.no_grad():
            mine = token_logprobs(weights, gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask)
        diff = float(((mine - gen.logprobs).abs() * gen.completion_mask).max())
        return diff, logprob_tolerance(weights, gen)

    before = disagreement(model)
    original = copy.deepcopy(model)
    noise = torch.Generator().manual_seed(1000 + rank)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=noise, dtype=param.dtype))
    engine.load_weights(model.state_dict())
    after = disagreement(model)
    stale = disagreement(original)  # what an engine that kept the old weights would agree with

    try:
        distributed_options({"tensor_parallel_size": 2})
        refusal = None
    except UsageError as exc:
        refusal = str(exc)
    config = engine.llm.llm_engine.vllm_config.parallel_config
    vllm_groups = (parallel_state.get_world_group().world_size, parallel_state.get_tp_group().world_size,
                   parallel_state.get_tp_group().ranks)
    engine.close()
    total = torch.ones(1)
    dist.all_reduce(total)  # the trainer's group still works after vLLM built its groups over it and shut down
    record = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "all_reduce": float(total),
        "cores": engine.cores,
        "thread_affinities": thread_affinities(),
        "torch_threads": torch.get_num_threads(),
        "bind_env": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
        "executor": config.distributed_executor_backend,
        "vllm_world": vllm_groups[0],
        "vllm_tp": vllm_groups[1],
        "vllm_tp_ranks": vllm_groups[2],
        "before": before,
        "after": after,
        "stale": stale,
        "version": engine.version,
        "refusal": refusal,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"rank-{rank}.json").write_text(json.dumps(record, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
