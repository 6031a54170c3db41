"""Keys renamed for one name per concept: old files keep loading, with a warning saying what to
write instead."""

import warnings

import pytest

from dra_dali import renamed
from dra_dali.dali import load_recipe
from dra_dali.search import SearchConfig
from dra_dali.train import TrainConfig


def test_old_pipeline_keys_load_as_the_new_ones_with_a_warning(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("size: 48\nscale: [0.3, 1.0]\nratio: [0.5, 2.0]\nnum_threads: 3\n"
                    "crop: pad_crop\nval_resize: 56\n")
    with pytest.warns(FutureWarning, match=r"old.yaml: key 'size' is now 'resolution'"):
        recipe = load_recipe(path)
    assert (recipe.resolution, recipe.crop_scale, recipe.crop_ratio, recipe.threads,
            recipe.crop) == (48, (0.3, 1.0), (0.5, 2.0), 3, "pad")


def test_old_search_keys_and_values_load_as_the_new_ones():
    with pytest.warns(FutureWarning, match=r"crop: 'rrc' is now 'random_resized'"):
        config = SearchConfig.from_dict({"lr_batch": 64, "crop": "rrc"})
    assert (config.lr_reference_batch, config.crop) == (64, "random_resized")


def test_old_train_key_workers_is_threads(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("data: a\nval_data: b\nout: c\nworkers: 3\n")
    with pytest.warns(FutureWarning, match=r"config.yaml: key 'workers' is now 'threads'"):
        config = TrainConfig.from_yaml(path)
    assert config.threads == 3


def test_the_new_name_wins_when_both_are_given():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = renamed.translate({"num_threads": 2, "threads": 5}, renamed.PIPELINE, "r")
    assert out == {"threads": 5}


def test_shipped_recipes_use_only_the_current_names():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for name in ("imagenet", "cifar", "demo", "imagenet-dra", "cifar-dra"):
            load_recipe(name)
        for name in ("demo", "imagenet-resnet50", "cifar10-wrn28-10", "ddas-demo"):
            SearchConfig.from_recipe(name)


def test_the_old_workers_flag_still_works_with_a_warning(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import dra_dali.data
    from dra_dali.cli import main

    used = {}
    real = dra_dali.data.check_data

    def recording_check_data(images, threads=None, **kwargs):
        used["threads"] = threads
        return real(images, threads=threads, **kwargs)

    monkeypatch.setattr(dra_dali.data, "check_data", recording_check_data)
    from PIL import Image

    (tmp_path / "data" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "a" / "one.jpg")
    result = CliRunner().invoke(main, ["check-data", str(tmp_path / "data"), "--workers", "3"])
    assert "--workers is now --threads" in result.output
    assert used == {"threads": 3}
    assert "--workers" not in CliRunner().invoke(main, ["check-data", "--help"]).output
    assert "--workers" not in CliRunner().invoke(main, ["train", "--help"]).output
