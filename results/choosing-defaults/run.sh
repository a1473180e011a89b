#!/usr/bin/env bash
# The measurements behind the benchmark's defaults (README, "Choosing the default benchmark"):
# one seed each, on-policy, the pinned tiny preset, 500 test problems x 8 samples (+ greedy).
#   bash results/choosing-defaults/run.sh        (from the repository root; about 15 min on 2 cores)
set -euo pipefail
out=results/choosing-defaults
run() { python -m benchmarks.run --offpolicy 0 --seeds 0 "$@"; }
# the task: pi_ref's accuracy on each operator of arith (the step-0 evaluation of a 1-step run)
for op in + - '*'; do
  name=$(case $op in +) echo plus;; -) echo minus;; *) echo times;; esac)
  run --algos agro --steps 1 --dataset "arith:ops=$op" --out $out/task-$name
done
# the learning rate, on all of arith and on + and - only
run --algos agro,grpo --steps 40 --dataset arith --grid lr=1e-4,3e-4,1e-3 --out $out/lr-arith
run --algos agro,grpo --steps 40 --dataset arith:ops=+- --grid lr=3e-4,5e-4 --out $out/lr-plus-minus
# the batch: prompts x samples per step
run --algos agro,grpo --steps 30 --dataset arith:ops=+- --grid groups=8,16,32 --grid group_size=6,8 \
    --out $out/batch
