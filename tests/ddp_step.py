"""One optimizer step on one fixed batch, by however many processes run this script.

    python tests/ddp_step.py --out DIR                                    # 1 process x batch B
    accelerate launch --multi_gpu --num_processes 2 tests/ddp_step.py --out DIR --micro-groups 1
                                                                          # 2 processes x B/2

Every process draws the SAME whole batch of step 1 (on- and off-policy groups of the tiny preset,
from identical weights and seeds), keeps its contiguous share of the groups and calls
``Trainer.update`` on it: reference log-probs, global normalisers, DDP gradients, AdamW step.
The main process then writes DIR/ALGO.pt with the parameters after the step and the step's
metrics (loss, gradient norm before clipping), for tests/test_distributed.py to compare.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rlft.batch import Batch
from rlft.distributed import shard
from rlft.sources import Mixer
from rlft.trainer import TrainConfig, Trainer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--algos", default="agro,grpo,ppo,dpo")
    p.add_argument("--micro-groups", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for algo in args.algos.split(","):
        config = TrainConfig(algo=algo, groups=4, group_size=8, offpolicy=0.5, lr=1e-4, max_grad_norm=1e9,
                             micro_groups=args.micro_groups, eval_problems=2, out=str(out / f"run-{algo}"))
        trainer = Trainer(config)
        whole = Mixer(trainer.mixer.policy, trainer.mixer.behavior, config.offpolicy, config.seed)
        batch = whole.batch(trainer.problems_for_step(1), config.group_size, 1)
        groups = shard(config.groups, trainer.processes, trainer.rank)
        share = Batch.concat(batch.group_slices(1)[groups]).to(trainer.accelerator.device)
        policy = trainer.accelerator.unwrap_model(trainer.policy)
        before = _params(policy)
        metrics = trainer.update(share, step=1)
        if trainer.is_main:
            torch.save({"before": before, "after": _params(policy), "metrics": metrics, "processes": trainer.processes,
                        "offpolicy_groups": int(batch.is_offpolicy.sum()) // config.group_size},
                       out / f"{algo}.pt")
        trainer.accelerator.wait_for_everyone()


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}


if __name__ == "__main__":
    main()
