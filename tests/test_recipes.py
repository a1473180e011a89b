"""Every committed recipe is valid: recipes/*.yaml load through rlft.train's --config into a
TrainConfig whose algorithm builds with its hyper-parameters; recipes/sweep-*.yaml load through
benchmarks.run's --config into the cells of a sweep. (Nothing is trained: the GPU recipes name
models this machine cannot run.)"""

from pathlib import Path

import pytest

import algorithms
from rlft.train import config_from_args

FOLDER = Path(__file__).parents[1] / "recipes"
RECIPES = sorted(p for p in FOLDER.glob("*.yaml") if not p.name.startswith("sweep-"))
SWEEPS = sorted(FOLDER.glob("sweep-*.yaml"))


def test_there_are_recipes():
    assert RECIPES and SWEEPS


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_a_recipe_is_a_valid_run(recipe, tmp_path):
    config = config_from_args(["--config", str(recipe), "--out", str(tmp_path / "run")])
    algorithm = algorithms.make(config.algo, **config.algo_args)
    for name, value in config.algo_args.items():
        assert getattr(algorithm.config, name) == value


def test_the_off_policy_agro_recipe_is_agro_with_a_shift():
    config = config_from_args(["--config", str(Path(__file__).parents[1] / "recipes" / "agro-offpolicy.yaml")])
    assert (config.algo, config.offpolicy, config.algo_args) == ("agro", 1.0, {"beta": 0.05, "shift": 0.2})


@pytest.mark.parametrize("recipe", SWEEPS, ids=lambda path: path.name)
def test_a_sweep_recipe_gives_its_cells(recipe, tmp_path):
    from benchmarks import run

    args = run.parse_args(["--config", str(recipe)])
    algos = [a.strip() for a in args.algos.split(",")]
    cells = run.build_cells(args, run.parse_grid(args.grid, algos), tmp_path)
    shares, seeds = args.offpolicy.split(","), args.seeds.split(",")
    assert len(cells) == len(algos) * len(shares) * len(seeds)
    assert {c.config.model for c in cells} == {args.model}
