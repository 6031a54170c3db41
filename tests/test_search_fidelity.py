"""DRA search fidelity (issue 9): the authors' settings in the search run and their recipes.

Every test here fails on the code before issue 9 (commit a445aec): the keys did not exist, the
paper recipes drew the operator per batch, the policy half was cropped and flipped, Cutout was on
the model step only and the WRN had no dropout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dra_dali.search import ConfigError, SearchConfig
from dra_dali.search.data import crop_flip
from dra_dali.search.methods.base import Batch, StepContext
from dra_dali.search.methods.dra import DRAMethod
from dra_dali.search.searcher import SearchState, _validate_model

ROOT = Path(__file__).resolve().parents[1]


def _recipe(name: str) -> SearchConfig:
    return SearchConfig.from_recipe(ROOT / "search" / f"{name}.yaml")


def test_paper_recipes_carry_the_authors_search_settings():
    cifar, imagenet = _recipe("cifar10-wrn28-10"), _recipe("imagenet-resnet50")
    assert (cifar.sampling, imagenet.sampling) == ("image", "image")
    assert (cifar.policy_crop, imagenet.policy_crop) == ("none", "center")
    assert cifar.cutout == 16 and cifar.cutout_policy_step
    assert dict(cifar.model_args) == {"dropout": 0.3}
    assert (cifar.fill, imagenet.fill) == (0, 0)
    from dra_dali.search.methods.dra import build_policy_module

    assert build_policy_module(cifar.replace(fill=7)).fill == 7


def test_policy_crop_none_keeps_the_image_and_does_not_flip():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    cfg = SearchConfig(crop="pad", resolution=32, flip=True, policy_crop="none")
    out = crop_flip(images, cfg, torch.Generator().manual_seed(0), policy_half=True)
    assert torch.equal(out, images.float() / 255.0)
    model_half = crop_flip(images, cfg, torch.Generator().manual_seed(0))
    assert not torch.equal(model_half, images.float() / 255.0)  # the model half is still cropped


def test_policy_crop_center_is_resize_8_7_and_centre_crop():
    # A 64 px horizontal ramp (grey level 4 * column) resized to round(28 * 8 / 7) = 32 px is the
    # ramp 8 * column + 2 (a linear ramp survives the symmetric filter away from the border); the
    # central 28 px square starts at column 2, so output column c holds 8 * (c + 2) + 2.
    ramp = (torch.arange(64) * 4).to(torch.uint8).expand(4, 3, 64, 64)
    cfg = SearchConfig(crop="random_resized", resolution=28, flip=True, policy_crop="center")
    out = crop_flip(ramp, cfg, torch.Generator().manual_seed(0), policy_half=True)
    expected = ((8 * (torch.arange(28) + 2) + 2) / 255.0).expand(4, 3, 28, 28)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    centre = crop_flip(images, cfg, torch.Generator().manual_seed(0), policy_half=True)
    same = crop_flip(images, cfg.replace(policy_crop="same"), torch.Generator().manual_seed(0),
                     policy_half=True)
    assert same.shape == centre.shape and not torch.allclose(same, centre, atol=1e-3)


def test_bad_search_keys_are_named():
    with pytest.raises(ConfigError, match="policy_crop: must be one of same, center, none"):
        SearchConfig.from_dict({"policy_crop": "random_resized"})
    with pytest.raises(ConfigError, match=r"fill: must be a grey level in \[0, 255\]"):
        SearchConfig.from_dict({"fill": 300})
    with pytest.raises(ConfigError, match="model_args: cannot use"):
        SearchConfig.from_dict({"model_args": [1, 2]})


def test_model_args_reach_the_model_and_bad_ones_are_named():
    cfg = SearchConfig.from_dict({"model": "wrn-10-1", "model_args": {"dropout": 0.3}})
    from dra_dali.models import create_model

    state = SearchState(cfg, 3, 1, create_model)
    rates = [m.p for m in state.model.modules() if isinstance(m, nn.Dropout)]
    assert rates and set(rates) == {0.3}
    bad = cfg.replace(model="resnet-tiny")
    with pytest.raises(ConfigError, match=r"model_args: \{'dropout': 0.3\} do not fit model "
                                          "'resnet-tiny'"):
        _validate_model(bad, 3, create_model)


class _Recorder(nn.Module):
    """A linear model that records every batch it sees."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3, num_classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("both", [False, True])
def test_cutout_in_the_policy_step_only_when_asked(both):
    cfg = SearchConfig.from_dict({"resolution": 32, "cutout": 16, "cutout_policy_step": both,
                                  "apply_prob": [0.0, 0.0], "batch_size": 4})
    model = _Recorder(2)
    ctx = StepContext(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1), lambda x: x,
                      torch.Generator().manual_seed(0))
    method = DRAMethod(cfg, cfg.options, num_classes=2, device=torch.device("cpu"))
    white = Batch(torch.ones(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))
    method.step(ctx, white, white)
    clean, policy_batch, model_batch = model.seen
    assert torch.equal(clean, white.images)  # the KL target is never cut out

    def cut(batch):  # pixels set to black, per image
        return (batch == 0).all(dim=1).flatten(1).sum(dim=1)

    assert (cut(model_batch) > 0).all()
    assert (cut(model_batch) <= 16 * 16).all()
    assert ((cut(policy_batch) > 0).all() if both else (cut(policy_batch) == 0).all())


@pytest.mark.parametrize("name", ["TranslateX", "ShearX", "Rotate"])
@pytest.mark.parametrize("fill", [0, 200])
def test_geometric_operators_fill_with_the_given_grey_level(name, fill):
    from dra_dali.search.ops import apply_op

    x = torch.full((2, 3, 32, 32), 0.5)
    ones = torch.ones(2)
    out = apply_op(name, x, ones, ones, 32, fill=fill)
    corner = out[:, :, -1, -1]  # moved out of the image by every one of the three at m = 1
    torch.testing.assert_close(corner, torch.full_like(corner, fill / 255.0))


def test_cifar_style_search_runs_and_saves_its_fill(embedded, tmp_path):
    from dra_dali.policy import Policy
    from dra_dali.search import run_search

    cfg = SearchConfig.from_dict({
        "data": str(embedded.train), "model": "wrn-10-1", "model_args": {"dropout": 0.3},
        "proxy_classes": 3, "images_per_class": 8, "resolution": 16, "crop": "pad",
        "policy_crop": "none", "cutout": 4, "cutout_policy_step": True, "fill": 0,
        "batch_size": 4, "epochs": 1, "threads": 1})
    policy = run_search(cfg, tmp_path / "run", progress=False)
    assert policy.fill == 0 and Policy.load(tmp_path / "run" / "policy.yaml").fill == 0


@pytest.mark.parametrize("name", ["Brightness", "Color", "Sharpness", "Contrast"])
def test_blend_extrapolates_below_zero_and_clips_the_image(name, photos):
    # Extended scale (3.0): m = 2 with sign -1 is the blend factor 1 - 0.9 * 2 = -0.8, as in the
    # DRA authors' code (no clamp at 0; the image is clipped to [0, 1] afterwards).
    from dra_dali.search.ops import apply_op

    x = torch.from_numpy(photos[0]).permute(2, 0, 1)[None].float() / 255.0
    below = apply_op(name, x, torch.tensor([2.0]), torch.tensor([-1.0]), 224)
    degenerate = apply_op(name, x, torch.tensor([1.0 / 0.9]), torch.tensor([-1.0]), 224)
    expected = (degenerate - 0.8 * (x - degenerate)).clamp(0.0, 1.0)
    torch.testing.assert_close(below, expected, atol=1e-5, rtol=0)
    if name != "Brightness":  # a negative brightness is black, with or without the clamp
        assert (below - degenerate).abs().max() > 0.2  # not the factor-0 image of a clamp at 0
