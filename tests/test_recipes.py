"""Every committed recipe (recipes/*.yaml) is a valid run: it loads through rlft.train's --config
into a TrainConfig whose algorithm builds with its hyper-parameters."""

from pathlib import Path

import pytest

import algorithms
from rlft.train import config_from_args

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_a_recipe_is_a_valid_run(recipe, tmp_path):
    config = config_from_args(["--config", str(recipe), "--out", str(tmp_path / "run")])
    algorithm = algorithms.make(config.algo, **config.algo_args)
    for name, value in config.algo_args.items():
        assert getattr(algorithm.config, name) == value


def test_the_off_policy_agro_recipe_is_agro_with_a_shift():
    config = config_from_args(["--config", str(Path(__file__).parents[1] / "recipes" / "agro-offpolicy.yaml")])
    assert (config.algo, config.offpolicy, config.algo_args) == ("agro", 1.0, {"beta": 0.05, "shift": 0.2})
