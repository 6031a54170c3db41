"""Recipe lookup: names resolve in the checkout, in an installed prefix and via the environment."""

import site
import sys
from pathlib import Path

import pytest

from dra_dali.recipes import find_recipe, recipe_dirs, recipe_names


def test_shipped_recipes_are_found_by_name():
    assert {"imagenet", "cifar", "demo"} <= set(recipe_names("pipelines"))
    assert {"demo", "imagenet-resnet50", "cifar10-wrn28-10"} <= set(recipe_names("search"))
    assert find_recipe("pipelines", "cifar").name == "cifar.yaml"
    assert find_recipe("search", "nope") is None
    assert find_recipe("search", "sub/demo") is None


def test_paths_win_over_names(tmp_path, monkeypatch):
    own = tmp_path / "demo"
    own.write_text("size: 8\n")
    monkeypatch.chdir(tmp_path)
    assert find_recipe("pipelines", "demo") == Path("demo")


def test_installed_prefix_and_environment(tmp_path, monkeypatch):
    """A regular install finds recipes under <prefix>/share/dra-dali; $DRA_DALI_RECIPES first."""
    import dra_dali.recipes as recipes

    fake_module = tmp_path / "site-packages" / "dra_dali" / "recipes.py"
    monkeypatch.setattr(recipes, "__file__", str(fake_module))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    monkeypatch.setattr(site, "getuserbase", lambda: str(tmp_path / "user"))
    assert recipe_dirs("pipelines") == []
    shared = tmp_path / "prefix" / "share" / "dra-dali" / "pipelines"
    shared.mkdir(parents=True)
    (shared / "imagenet.yaml").write_text("size: 224\n")
    assert find_recipe("pipelines", "imagenet") == shared / "imagenet.yaml"
    override = tmp_path / "mine" / "pipelines"
    override.mkdir(parents=True)
    (override / "imagenet.yaml").write_text("size: 160\n")
    monkeypatch.setenv("DRA_DALI_RECIPES", str(tmp_path / "mine"))
    assert find_recipe("pipelines", "imagenet") == override / "imagenet.yaml"
    assert recipe_names("pipelines") == ["imagenet"]


def test_search_and_pipeline_recipes_load_by_name():
    import pytest

    from dra_dali.dali.pipelines import RecipeError, load_recipe
    from dra_dali.search import ConfigError, SearchConfig

    assert load_recipe("cifar").resolution == 32
    by_name = SearchConfig.from_recipe("demo")
    assert by_name == SearchConfig.from_recipe(find_recipe("search", "demo"))
    with pytest.raises(ConfigError, match="no search recipe 'imagenet'.*imagenet-resnet50"):
        SearchConfig.from_recipe("imagenet")
    with pytest.raises(RecipeError, match="no pipeline recipe 'tiny'.*cifar"):
        load_recipe("tiny")


def test_user_install_finds_its_recipes(tmp_path, monkeypatch):
    """``pip install --user`` puts the data files under the user base, not sys.prefix."""
    import dra_dali.recipes as recipes

    monkeypatch.setattr(recipes, "__file__", str(tmp_path / "site" / "dra_dali" / "recipes.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    monkeypatch.setattr(site, "getuserbase", lambda: str(tmp_path / "user"))
    monkeypatch.delenv("DRA_DALI_RECIPES", raising=False)
    assert find_recipe("pipelines", "cifar") is None
    user = tmp_path / "user" / "share" / "dra-dali" / "pipelines"
    user.mkdir(parents=True)
    (user / "cifar.yaml").write_text("size: 32\n")
    assert find_recipe("pipelines", "cifar") == user / "cifar.yaml"


@pytest.mark.parametrize("key, value, message", [
    ("epochs", 0, "epochs: must be >= 1, got 0"),
    ("images_per_class", 1, "images_per_class: needs >= 2"),
    ("threads", 0, "threads: must be >= 1 or null"),
    ("lr", 0.0, "lr: must be > 0"),
    ("kl_weight", -1.0, "kl_weight: must be >= 0"),
    ("crop", "square", "crop: must be one of random_resized, pad, center, none"),
    ("sampling", "epoch", "sampling: must be 'image' \\(per image\\) or 'batch'"),
    ("fill", 300, "fill: must be a grey level in \\[0, 255\\]"),
    ("crop_scale", [0.5, 0.2], "crop_scale: must satisfy 0 < lo <= hi <= 1"),
    ("ops", ["Rotate", "Warp"], "ops: unknown operator\\(s\\) \\['Warp'\\]"),
    ("ops", ["Rotate", "Rotate"], "ops: operator names must be unique"),
    ("device", "tpu", "device: must be auto, cpu, cuda or cuda:N"),
    ("flip", "maybe", "flip: cannot use 'maybe'"),
    ("epochs", 2.5, "epochs: cannot use 2.5"),
])
def test_search_config_errors_name_the_key(key, value, message):
    from dra_dali.search.config import ConfigError, SearchConfig

    with pytest.raises(ConfigError, match=f"recipe.yaml: {message}"):
        SearchConfig.from_dict({key: value}, "recipe.yaml")
