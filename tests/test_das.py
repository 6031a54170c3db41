"""DAS image-to-image: the mixed operations, the unrolled hypergradient, the perturbation choice."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from search_helpers import compiled_and_reference_draws, interrupt_after_epoch
from torch import nn

from dra_dali.search.methods.base import Batch
from dra_dali.search.methods.blocks import random_signs
from dra_dali.search.methods.das import (
    IDENTITY,
    TRANSFORM,
    DASCell,
    policy_body,
    select,
    unrolled_val_loss,
)
from dra_dali.search.ops import apply_op


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_cell_starts_as_an_even_mix_of_each_transformation_and_identity():
    cell = DASCell(("Rotate", "Invert", "Posterize"), resolution=32, generator=_gen(0))
    theta = cell.theta().detach()
    assert theta.shape == (3, 2)
    torch.testing.assert_close(theta, torch.full((3, 2), 0.5), atol=2e-3, rtol=0)


def test_mixed_operation_blends_transformation_and_identity():
    cell = DASCell(("Brightness",), resolution=32, fill=0, init_magnitude=0.6)
    with torch.no_grad():
        cell.tau.copy_(torch.log(torch.tensor([[0.25, 0.75]])))
    x = torch.rand(5, 3, 8, 8, generator=_gen(1))
    signs = random_signs(("Brightness",), 5, _gen(4))[0]
    expected = 0.25 * apply_op("Brightness", x, torch.full((5,), 0.6), signs, 32, fill=0) + 0.75 * x
    torch.testing.assert_close(cell(x, _gen(4)), expected, atol=1e-5, rtol=0)


def test_forcing_selects_one_alternative_of_one_mixed_operation():
    cell = DASCell(("Invert", "Solarize"), resolution=32)
    x = torch.rand(4, 3, 8, 8, generator=_gen(2))
    with torch.no_grad():
        cell.tau.copy_(torch.tensor([[0.0, 50.0], [0.0, 50.0]]))  # both ~ Identity
    torch.testing.assert_close(cell(x, _gen(0)), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(cell(x, _gen(0), forced=(0, TRANSFORM)), 1 - x, atol=1e-6, rtol=0)
    torch.testing.assert_close(cell(x, _gen(0), forced=(0, IDENTITY)), x, atol=1e-6, rtol=0)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _ctx(model: nn.Module, lr: float = 0.5):
    return SimpleNamespace(model=model, lr=lr, normalize=lambda x: (x - 0.5) / 0.25)


def _batches():
    g = _gen(3)
    train = Batch(torch.rand(6, 3, 8, 8, generator=g), torch.randint(3, (6,), generator=g))
    val = Batch(torch.rand(6, 3, 8, 8, generator=g), torch.randint(3, (6,), generator=g))
    return train, val


def test_unrolled_hypergradient_matches_finite_differences():
    torch.manual_seed(0)
    model, train, val = _Tiny(), *_batches()
    cell = DASCell(("Brightness", "Contrast"), resolution=32, generator=_gen(1))
    ctx = _ctx(model)
    running = model.bn.running_mean.clone()
    loss = unrolled_val_loss(ctx, cell, train, val, _gen(7), create_graph=True)
    (grad,) = torch.autograd.grad(loss, [cell.tau])
    torch.testing.assert_close(model.bn.running_mean, running)  # statistics untouched
    eps = 1e-3
    numeric = torch.zeros_like(grad)
    for index in [(0, 0), (1, 0), (1, 1)]:
        values = []
        for delta in (eps, -eps):
            with torch.no_grad():
                cell.tau[index] += delta
            values.append(float(unrolled_val_loss(ctx, cell, train, val, _gen(7),
                                                  create_graph=False)))
            with torch.no_grad():
                cell.tau[index] -= delta
        numeric[index] = (values[0] - values[1]) / (2 * eps)
        assert float(grad[index]) == pytest.approx(float(numeric[index]), rel=0.05, abs=1e-5)
    assert float(grad.abs().sum()) > 0


def test_unrolled_loss_without_graph_is_the_loss_after_a_real_sgd_step():
    torch.manual_seed(1)
    model, train, val = _Tiny(), *_batches()
    cell = DASCell(("Rotate",), resolution=32)
    ctx = _ctx(model, lr=0.3)
    got = float(unrolled_val_loss(ctx, cell, train, val, _gen(5), create_graph=False))
    with torch.no_grad():
        augmented = cell(train.images, _gen(5))
    loss = F.cross_entropy(model(ctx.normalize(augmented)), train.labels)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.3 * p.grad
    with torch.no_grad():
        after = float(F.cross_entropy(model(ctx.normalize(val.images)), val.labels))
    assert got == pytest.approx(after, rel=1e-5)


def test_select_takes_measured_gains_above_the_threshold_best_first():
    names = ("A", "B", "C", "D")
    assert select([0.2, -0.1, 0.5, 0.3], [3, 3, 3, 0], names, 0.0, None) == [2, 0]
    assert select([0.2, -0.1, 0.5, 0.3], [3, 3, 3, 3], names, 0.0, 2) == [2, 3]
    assert select([0.2, -0.1, 0.5, 0.3], [3, 3, 3, 3], names, 0.25, None) == [2, 3]
    assert select([-0.2, -0.1], [1, 1], names[:2], 0.0, None) == []


def test_policy_body_chains_the_selected_transformations():
    body = policy_body(("Rotate", "Invert", "Color"), [2, 0], [0.4, 0.5, 0.7], [0.3, 0.0, 0.8],
                       resolution=32, scale=1.0, fill=0)
    assert body["ops"] == ["Color", "Rotate"]
    first, second = body["layers"]
    assert first["logits"] == [0.0, -100.0] and second["logits"] == [-100.0, 0.0]
    assert first["op_apply_prob"] == [0.7, 0.4]
    assert [m["mean"] for m in first["magnitude"]] == [0.8, 0.3]
    empty = policy_body(("Rotate",), [], [0.5], [0.5], resolution=32, scale=1.0, fill=0)
    assert empty["ops"] == ["Identity"] and len(empty["layers"]) == 1



def test_cifar_recipe_holds_the_supplement_settings():
    from dra_dali.search import SearchConfig

    cfg = SearchConfig.from_recipe("das-cifar10")
    assert (cfg.method, cfg.model, cfg.batch_size, cfg.epochs) == ("das", "wrn-28-2", 96, 90)
    assert cfg.effective_lr == pytest.approx(0.1) and (cfg.weight_decay, cfg.cutout) == (1e-4, 16)
    assert (cfg.options.arch_lr, cfg.options.arch_weight_decay) == (3e-4, 1e-3)
    assert len([o for o in cfg.ops if o != "Identity"]) == 14 and "Contrast" not in cfg.ops


# ----- the method end to end ----------------------------------------------------------------
TINY = {"model": "resnet-tiny", "proxy_classes": 3, "images_per_class": 8, "resolution": 16,
        "batch_size": 4, "epochs": 2, "crop_scale": [0.5, 1.0], "threads": 1, "method": "das",
        "ops": ["Rotate", "Invert", "Brightness", "Posterize", "Identity"],
        "das": {"perturb_per_step": 2}}


def _cfg(data, **changes):
    from dra_dali.search import SearchConfig

    return SearchConfig.from_dict({**TINY, "data": str(data), **changes})


def test_options_are_checked_by_name():
    from dra_dali.search import ConfigError

    with pytest.raises(ConfigError, match=r"das.select_epochs: must lie in \[1, epochs=2\]"):
        _cfg("x", das={"select_epochs": 3})
    with pytest.raises(ConfigError, match="das.max_ops: must be >= 1 or null"):
        _cfg("x", das={"max_ops": 0})
    with pytest.raises(ConfigError, match="DAS needs at least one transformation"):
        _cfg("x", ops=["Identity"])


def test_cli_search_writes_the_selected_transformations_and_plots(embedded, tmp_path):
    import json

    from click.testing import CliRunner

    from dra_dali.cli import main
    from dra_dali.policy import Policy

    out = tmp_path / "das"
    args = ["search", "--data", str(embedded.train), "--out", str(out), "--method", "das",
            "--epochs", "2", "--batch-size", "4"]
    sets = [f"--set={k}={v}" for k, v in TINY.items() if k not in ("epochs", "batch_size",
                                                                 "method", "das", "ops")]
    sets += ["--set", "ops=[Rotate, Invert, Brightness]", "--set", "das.perturb_per_step=2"]
    result = CliRunner().invoke(main, args + sets)
    assert result.exit_code == 0, result.output
    policy = Policy.load(out / "policy.yaml")
    scores = policy.provenance["perturbation_scores"]
    assert set(scores) == {"Rotate", "Invert", "Brightness"}
    chosen = [name for name, s in sorted(scores.items(), key=lambda kv: -kv[1]) if s > 0]
    assert list(policy.ops) == (chosen or ["Identity"])
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Perturbation only in the last epoch: two candidates a step, in turn.
    assert sum(history[1]["measured"]) == 0 and sum(history[2]["measured"]) > 0
    # What the exported policy applies: theta_T for the selected transformations, else 0.
    names = ["Rotate", "Invert", "Brightness"]
    theta = dict(zip(names, history[2]["theta_t"]))
    expected = [theta[n] if n in policy.ops and n != "Identity" else 0.0 for n in names]
    assert history[2]["probabilities"] == [expected]
    assert history[1]["probabilities"] == [[0.0, 0.0, 0.0]]
    assert all((out / name).stat().st_size > 10_000 for name in ("trajectories.png", "policy.png"))


def test_interrupted_then_resumed_equals_uninterrupted(embedded, tmp_path):
    from dra_dali.search import load_checkpoint, run_search

    cfg = _cfg(embedded.train)
    full = run_search(cfg, tmp_path / "full", progress=False)

    interrupt_after_epoch(cfg, tmp_path / "cut")
    resumed = run_search(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed.layers == full.layers and resumed.provenance["perturbation_scores"] == \
        full.provenance["perturbation_scores"]
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["method"]["state"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["method"]["state"]
    assert torch.equal(a["cell"]["tau"], b["cell"]["tau"])
    assert torch.equal(a["perturb_sum"], b["perturb_sum"])


# ----- the compiled policy against the numpy sampler ------------------------------------------
N_DRAWS = 8000
ALPHA = 1e-3


def _das_policy(theta=(0.3, 0.55, 0.8)):
    from dra_dali.policy import Policy

    body = policy_body(("Rotate", "Invert", "Color"), [2, 0, 1], list(theta), [0.3, 0.0, 0.8],
                       resolution=32, scale=1.0, fill=0)
    return Policy.from_dict(body)


@pytest.fixture(scope="module")
def das_drawn():
    policy = _das_policy()
    return (policy, *compiled_and_reference_draws(policy, N_DRAWS, seeds=(1, 5, 6)))


def test_compiled_chain_applies_each_selected_transformation_with_theta(das_drawn):
    import numpy as np
    from scipy import stats

    policy, trace, ref = das_drawn
    assert list(policy.ops) == ["Color", "Rotate", "Invert"]
    for layer in range(3):
        assert np.all(trace.op[:, layer] == layer) and np.all(ref.op[:, layer] == layer)
        theta = policy.layers[layer].op_apply_prob[layer]
        hits = int(trace.applied[:, layer].sum())
        assert stats.binomtest(hits, N_DRAWS, theta).pvalue > ALPHA
        table = [[hits, N_DRAWS - hits], [int(ref.applied[:, layer].sum()),
                                          N_DRAWS - int(ref.applied[:, layer].sum())]]
        assert stats.chi2_contingency(table).pvalue > ALPHA
        assert stats.binomtest(hits, N_DRAWS, theta + 0.05).pvalue < ALPHA          # power
    np.testing.assert_allclose(trace.magnitude[:, 0], 0.8, atol=1e-6)            # Color
    np.testing.assert_allclose(trace.magnitude[:, 1], 0.3, atol=1e-6)            # Rotate
    np.testing.assert_allclose(trace.magnitude[:, 2], 0.0, atol=1e-6)            # Invert
    minus = int((trace.sign[:, 1] == -1).sum())
    assert stats.binomtest(minus, N_DRAWS, 0.5).pvalue > ALPHA
