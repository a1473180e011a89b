#!/usr/bin/env bash
# The measurements behind the benchmark's defaults (README, "Choosing the default benchmark"), on the
# pinned tiny preset, every cell evaluated on 500 test problems x 8 samples (+ greedy).
#   bash results/choosing-defaults/run.sh        (from the repository root; about 40 min on 2 cores)
# The first sweeps were made when a step had 16 prompts at lr 3e-4 (the defaults then); they name
# those settings, so that rerunning them against their folders repeats the same cells.
set -euo pipefail
out=results/choosing-defaults
then="--groups 16 --lr 3e-4"  # the defaults of the first sweeps
run() { python -m benchmarks.run --offpolicy 0 --seeds 0 "$@"; }
# the task: pi_ref's accuracy on each operator of arith (the step-0 evaluation of a 1-step run)
for op in + - '*'; do
  name=$(case $op in +) echo plus;; -) echo minus;; *) echo times;; esac)
  run --algos agro --steps 1 $then --dataset "arith:ops=$op" --out $out/task-$name
done
# the learning rate, on all of arith and on + and - only, 16 prompts a step
run --algos agro,grpo --steps 40 $then --dataset arith --grid lr=1e-4,3e-4,1e-3 --out $out/lr-arith
run --algos agro,grpo --steps 40 $then --dataset arith:ops=+- --grid lr=3e-4,5e-4 --out $out/lr-plus-minus
# the batch: prompts x samples per step
run --algos agro,grpo --steps 30 $then --dataset arith:ops=+- --grid groups=8,16,32 --grid group_size=6,8 \
    --out $out/batch
# the seed-to-seed spread, and so what 3 seeds resolve: the quick start's sweep (2 algorithms x 3 shares)
# with 5 seeds, at 16 prompts a step (30 steps, the earlier default) and at 32 (18 steps, 3 learning rates,
# evaluated at steps 8 and 16 too)
python -m benchmarks.run --algos agro,grpo --offpolicy 0,0.5,1 --seeds 0,1,2,3,4 --steps 30 $then \
    --out $out/seeds-16-prompts
python -m benchmarks.run --algos agro,grpo --offpolicy 0,0.5,1 --seeds 0,1,2,3,4 --grid lr=3e-4,4e-4,5e-4 \
    --steps 18 --eval-every 8 --out $out/seeds-32-prompts
# what 3 of the 5 seeds resolve (power-k3.md in each folder)
for pilot in seeds-16-prompts seeds-32-prompts; do
  python -m benchmarks.power $out/$pilot --k 3
done
