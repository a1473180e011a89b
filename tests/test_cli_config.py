"""One definition of each setting: every TrainConfig field is reachable from rlft.train and from
benchmarks.run, whose flags derive from rlft/config.py, and both take a YAML recipe (--config) that
the command line overrides."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import run
from rlft.config import TrainConfig, flag
from rlft.train import config_from_args

ROOT = Path(__file__).parents[1]

#: a valid value other than the default for every field (so that reaching it is visible)
OTHER = dict(algo="grpo", model="some-org/some-model", dataset="gsm8k", reward="half_reward:HalfReward",
             behavior="stale:2", offpolicy=0.5, steps=7,
             groups=4, group_size=4, lr=1e-4, temperature=0.7, top_p=0.9, max_new_tokens=16, micro_groups=2,
             score_chunk_tokens=512, gradient_checkpointing=True,
             max_grad_norm=0.5, eval_every=3, eval_problems=10, eval_samples=2, save_every=3, seed=5, engine="vllm",
             report_to="tensorboard", out="runs/other", dtype="float64", threads=2, fsdp=True,
             lora="r=8,alpha=16,targets=q_proj,v_proj", recompute_behavior="on",
             rollout_correction="token_mask", rollout_correction_min=0.1, rollout_correction_max=2.0,
             objective_beta=0.1, initial_eval="shared/eval", algo_args={"beta": "0.1"}, engine_args={"seed": 3})


def test_every_field_has_a_different_value_to_try():
    defaults = dataclasses.asdict(TrainConfig())
    assert set(OTHER) == set(defaults)
    assert all(OTHER[name] != defaults[name] for name in defaults)


def test_every_field_is_reachable_from_rlft_train():
    argv = []
    for name, value in OTHER.items():
        if name == "algo_args":
            argv += ["--hp", "beta=0.1"]
        elif name == "engine_args":
            argv += ["--engine-arg", "seed=3"]
        else:
            argv += [flag(name), str(value)]
    assert dataclasses.asdict(config_from_args(argv)) == OTHER


def test_every_field_is_reachable_from_benchmarks_run(tmp_path):
    """A plain flag for each field but the cell axes, which the sweep sets from its own flags."""
    argv = ["--algos", "grpo", "--offpolicy", "0.5", "--seeds", "5", "--grid", "grpo.beta=0.1",
            "--objective-beta", "0.1", "--engine-arg", "seed=3"]
    owned = {"algo", "algo_args", "offpolicy", "seed", "out", "initial_eval", "objective_beta", "engine_args"}
    assert owned == set(run.SWEEP_OWNED)
    for name, value in OTHER.items():
        if name not in owned:
            argv += [flag(name), str(value)]
    args = run.parse_args(argv)
    [cell] = run.build_cells(args, run.parse_grid(args.grid, ["grpo"]), tmp_path)
    config = dataclasses.asdict(cell.config)
    expected = {**OTHER, "algo_args": {"beta": 0.1}, "out": str(tmp_path / "runs" / cell.name),
                "initial_eval": str(tmp_path / "initial_eval"),
                "objective_beta": 0.1}  # the cell's own beta (also --objective-beta here)
    assert config == expected


def test_a_recipe_sets_rlft_train_and_flags_override_it(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("algo: rloo\nsteps: 7\nlr: 3e-4  # PyYAML reads this as a string: typed as --lr would be\n"
                      "group_size: 4\nalgo_args:\n  beta: 0.2\nengine_args:\n  seed: 1\n")
    config = config_from_args(["--config", str(recipe), "--steps", "9", "--hp", "baseline=loo", "--engine-arg", "x=2"])
    assert (config.algo, config.steps, config.lr, config.group_size) == ("rloo", 9, 3e-4, 4)
    assert config.algo_args == {"beta": 0.2, "baseline": "loo"} and config.engine_args == {"seed": 1, "x": 2}
    # a run's own config.json is a recipe too (its "train" entry)
    saved = tmp_path / "config.json"
    saved.write_text('{"train": {"algo": "dpo", "steps": 3}, "algorithm": {}}')
    assert (config_from_args(["--config", str(saved)]).algo, config_from_args(["--config", str(saved)]).steps) == ("dpo", 3)


def test_a_recipe_sets_a_sweep_with_yaml_lists_and_a_grid_mapping(tmp_path):
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text("algos: [agro, grpo]\noffpolicy: [0, 1]\nseeds: [0, 1]\nsteps: 12\n"
                      "grid:\n  beta: [0.05, 0.5]\nengine_args: {seed: 4}\n")
    from_recipe = run.parse_args(["--config", str(recipe), "--steps", "20"])
    from_flags = run.parse_args(["--algos", "agro,grpo", "--offpolicy", "0,1", "--seeds", "0,1", "--steps", "20",
                                 "--grid", "beta=0.05,0.5", "--engine-arg", "seed=4"])
    cells = [run.build_cells(a, run.parse_grid(a.grid, ["agro", "grpo"]), tmp_path) for a in (from_recipe, from_flags)]
    assert len(cells[0]) == 16 and [c.config for c in cells[0]] == [c.config for c in cells[1]]


@pytest.mark.parametrize("module", ["rlft.train", "benchmarks.run"])
@pytest.mark.parametrize("text, message", [
    ("steps: 3\nbogus: 1\n", "unknown settings bogus"),
    ("- a list\n", "expected a mapping of settings"),
    ("steps: [1, 2\n", "cannot read a YAML or JSON mapping"),
    ("steps: ten\n", "invalid int value: 'ten'"),
])
def test_a_bad_recipe_is_one_line(tmp_path, module, text, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    result = subprocess.run([sys.executable, "-m", module, "--config", str(recipe), "--out", str(tmp_path / "o")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_a_recipe_value_of_the_wrong_type_is_one_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("steps: [1, 2]\n")
    result = subprocess.run([sys.executable, "-m", "rlft.train", "--config", str(recipe)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines == ["error: --steps must be int, got [1, 2]"], result.stderr
