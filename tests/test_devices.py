"""One device vocabulary across commands, recipes and configurations."""

import pytest
import torch
from click.testing import CliRunner

from dra_dali.cli import main
from dra_dali.devices import resolve_device, valid_device
from dra_dali.search import SearchConfig
from dra_dali.search.config import ConfigError
from dra_dali.train import TrainConfig, TrainError


@pytest.mark.parametrize("word, ok", [("auto", True), ("cpu", True), ("cuda", True),
                                      ("cuda:3", True), ("gpu", False), ("cuda:x", False),
                                      ("tpu", False)])
def test_device_words(word, ok):
    assert valid_device(word) is ok


def test_auto_resolves_to_what_torch_sees():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cuda:1") == "cuda:1"


def test_search_and_train_accept_the_same_words_and_name_the_field():
    assert SearchConfig.from_dict({"device": "auto"}).device == "auto"
    with pytest.raises(ConfigError, match=r"device: must be auto, cpu, cuda or cuda:N"):
        SearchConfig.from_dict({"device": "gpu0"})
    with pytest.raises(TrainError, match=r"device.*auto, cpu, cuda or cuda:N"):
        TrainConfig(data="a", val_data="b", out="c", device="gpu0")


@pytest.mark.parametrize("command", [["search", "--data", "."], ["train"], ["compare"],
                                     ["compile", "ra-n2-m9", "--out", "x"]])
def test_every_command_refuses_an_unknown_device_with_the_vocabulary(command):
    result = CliRunner().invoke(main, [*command, "--device", "tpu"])
    assert result.exit_code == 2
    assert "expected auto, cpu, cuda or cuda:N, got 'tpu'" in result.output


def test_search_help_lists_every_method_and_shipped_recipe():
    from dra_dali.cli import SEARCH_METHODS
    from dra_dali.recipes import recipe_names
    from dra_dali.search.methods import METHODS

    assert set(SEARCH_METHODS) == set(METHODS)
    text = "".join(CliRunner().invoke(main, ["search", "--help"]).output.split())
    for name in [*SEARCH_METHODS, *recipe_names("search")]:
        assert name in text  # help text wraps at hyphens: compared without whitespace
