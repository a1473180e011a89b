"""One optimizer step on one fixed batch, by however many processes run this script.

    python tests/ddp_step.py --out DIR                                    # 1 process x batch B
    accelerate launch --multi_gpu --num_processes 2 tests/ddp_step.py --out DIR --micro-groups 1
                                                                          # 2 processes x B/2
    torchrun --nproc-per-node 2 tests/ddp_step.py --out DIR --micro-groups 1 --fsdp   # the same, FSDP2

Every process draws the SAME whole batch of step 1 (on- and off-policy groups of the tiny preset,
from identical weights and seeds), keeps its contiguous share of the groups and calls
``Trainer.update`` on it: reference log-probs, global normalisers, DDP gradients, AdamW step.
The main process then writes DIR/ALGO.pt with the parameters before and after the step, the
all-reduced gradient the optimizer stepped with (under FSDP2 parameters and gradients are gathered
from their shards), the step's metrics, and the sizes the tests'
rounding bounds need (tokens in the batch, completion width), for tests/test_distributed.py.

The step runs in float64, with one epoch per batch: see tests/test_distributed.py for why.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from rlft.batch import Batch
from rlft.distributed import shard
from rlft.sources import Mixer
from rlft.trainer import TrainConfig, Trainer

LR = 1e-4


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--algos", default="agro,grpo,ppo,dpo")
    p.add_argument("--micro-groups", type=int, default=0)
    p.add_argument("--fsdp", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for algo in args.algos.split(","):
        config = TrainConfig(algo=algo, algo_args={"epochs": 1}, groups=4, group_size=8, offpolicy=0.5, lr=LR,
                             max_grad_norm=1e9, micro_groups=args.micro_groups, eval_problems=2, dtype="float64",
                             fsdp=args.fsdp, out=str(out / f"run-{algo}"))
        trainer = Trainer(config)
        whole = Mixer(trainer.mixer.policy, trainer.mixer.behavior, config.offpolicy, config.seed)
        batch = whole.batch(trainer.problems_for_step(1), config.group_size, 1)
        groups = shard(config.groups, trainer.processes, trainer.rank)
        share = Batch.concat(batch.group_slices(1)[groups]).to(trainer.accelerator.device)
        policy = trainer.accelerator.unwrap_model(trainer.policy)
        before = _params(policy)
        with torch.no_grad():  # the magnitude the log-softmax acts on, for the rounding bound of the loss
            ids = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
            mask = torch.cat([batch.prompt_mask, batch.completion_mask], 1).long()
            # (pi_ref: the policy's weights before the step, and not sharded)
            max_abs_logit = float(trainer.ref_model(input_ids=ids, attention_mask=mask).logits.abs().max())
        grads: list[dict[str, torch.Tensor]] = []
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper, or not
        optimizer.register_step_pre_hook(
            lambda *_: grads.append({n: _full(q.grad) for n, q in policy.named_parameters()}))
        metrics = trainer.update(share, step=1)
        after = _params(policy)  # (every process: gathering shards is a collective)
        if trainer.is_main:
            torch.save({"before": before, "after": after, "grads": grads, "metrics": metrics,
                        "processes": trainer.processes, "lr": LR, "adam_eps": trainer.optimizer.param_groups[0]["eps"],
                        "tokens": int(batch.completion_mask.sum()), "width": batch.completion_ids.shape[1],
                        "prompt_width": batch.prompt_ids.shape[1], "max_abs_logit": max_abs_logit,
                        "offpolicy_groups": int(batch.is_offpolicy.sum()) // config.group_size},
                       out / f"{algo}.pt")
        trainer.accelerator.wait_for_everyone()


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: _full(value) for name, value in module.named_parameters()}


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy; a sharded (FSDP2) tensor is gathered first (a collective)."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu().clone()


if __name__ == "__main__":
    main()
