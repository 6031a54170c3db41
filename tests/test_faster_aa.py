"""Faster AutoAugment: relaxed Bernoulli, the sub-policy stage, the critic, the format-2 body."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from search_helpers import compiled_and_reference_draws, interrupt_after_epoch
from torch import nn

from dra_dali.search.methods.blocks import random_signs, relaxed_bernoulli
from dra_dali.search.methods.faster_aa import (
    CriticHead,
    FasterAAPolicy,
    FeatureTap,
    gradient_penalty,
    policy_body,
)
from dra_dali.search.ops import apply_op


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.85])
def test_relaxed_bernoulli_rounds_to_a_coin_with_probability_p(p):
    samples = relaxed_bernoulli(torch.tensor(p), 0.1, (4000,), _gen(1))
    ones = int((samples > 0.5).sum())
    # Binomial test at the right p passes; at a wrong p (p + 0.08) it is rejected.
    assert stats.binomtest(ones, 4000, p).pvalue > 1e-3
    assert stats.binomtest(ones, 4000, min(p + 0.08, 0.99)).pvalue < 1e-3


def test_relaxed_bernoulli_gradient_raises_the_mask_with_p():
    p = torch.tensor(0.4, requires_grad=True)
    relaxed_bernoulli(p, 0.5, (256,), _gen(2)).mean().backward()
    assert p.grad > 0


def test_random_signs_only_flip_signed_operators():
    signs = random_signs(("Rotate", "Invert", "Brightness"), 2000, _gen(3))
    assert set(signs[1].tolist()) == {1.0}
    for row in (0, 2):
        assert set(signs[row].tolist()) == {-1.0, 1.0}
        assert abs(float((signs[row] < 0).float().mean()) - 0.5) < 0.05


def _policy(ops, **kw) -> FasterAAPolicy:
    return FasterAAPolicy(ops, sub_policies=1, stages=1, resolution=32, fill=0, chunks=1,
                          generator=_gen(0), **kw)


def _set(policy: FasterAAPolicy, weights, probability, magnitude) -> None:
    with torch.no_grad():
        policy.weights.copy_(torch.tensor(weights).view_as(policy.weights))
        policy.probability.copy_(torch.tensor(probability).view_as(policy.probability))
        policy.magnitude.copy_(torch.tensor(magnitude).view_as(policy.magnitude))


def test_stage_is_the_weighted_sum_of_every_operator():
    ops = ("Invert", "Brightness")
    policy = _policy(ops, temperature=1.0, bernoulli_temperature=1e-4)
    _set(policy, [math.log(0.3), math.log(0.7)], [1.0, 1.0], [0.0, 0.4])
    x = torch.rand(6, 3, 8, 8, generator=_gen(5))
    got = policy(x, _gen(9))
    # The same draws: signs first (after the sub-policy index), as _stage draws them.
    gen = _gen(9)
    torch.randint(1, (1,), generator=gen)
    signs = random_signs(ops, 6, gen)
    expected = (0.3 * (1 - x) + 0.7 * apply_op("Brightness", x, torch.full((6,), 0.4), signs[1],
                                                32, fill=0))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_stage_with_apply_probability_zero_leaves_images_unchanged():
    policy = _policy(("Invert", "Solarize"), bernoulli_temperature=1e-3)
    _set(policy, [0.2, 0.9], [0.0, 0.0], [0.5, 0.5])
    x = torch.rand(4, 3, 8, 8, generator=_gen(6))
    torch.testing.assert_close(policy(x, _gen(1)), x, atol=1e-5, rtol=0)


def test_every_parameter_gets_a_gradient():
    policy = FasterAAPolicy(("Rotate", "Brightness", "Posterize", "Equalize"), sub_policies=2,
                            stages=2, resolution=32, chunks=2, generator=_gen(0))
    x = torch.rand(8, 3, 16, 16, generator=_gen(7))
    # A loss that depends on each pixel differently (a plain mean hides some gradients).
    weights = torch.rand(1, 3, 16, 16, generator=_gen(8))
    (policy(x, _gen(3)) * weights).sum().backward()
    for name in ("weights", "probability", "magnitude"):
        grad = getattr(policy, name).grad
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name
    # Equalize has no magnitude: its magnitude gets no gradient.
    assert float(policy.magnitude.grad[..., 3].abs().sum()) == 0.0
    assert float(policy.magnitude.grad[..., 2].abs().sum()) > 0.0  # Posterize, straight through


def test_clip_keeps_probabilities_and_magnitudes_in_range():
    policy = _policy(("Rotate",), scale=1.0)
    _set(policy, [0.0], [1.7], [-0.3])
    policy.clip_()
    assert float(policy.probability.detach()) == 1.0
    assert float(policy.magnitude.detach()) == 0.0


def test_policy_body_reproduces_the_searched_parameters():
    policy = FasterAAPolicy(("Rotate", "Invert", "Contrast"), sub_policies=3, stages=2,
                            resolution=32, fill=0, generator=_gen(4))
    snap = policy.snapshot()
    # Per stage: the chance each operator is chosen and applied, sub-policies drawn uniformly.
    expected = (np.array(snap["op_weights"]) * np.array(snap["apply_prob"])).mean(axis=0)
    np.testing.assert_allclose(snap["probabilities"], expected, atol=1e-6)
    body = policy_body(snap, policy.ops, resolution=32, scale=1.0, fill=0)
    assert body["format"] == "dra-policy/2" and body["fill"] == 0
    assert len(body["subpolicies"]) == 3
    assert sum(s["weight"] for s in body["subpolicies"]) == pytest.approx(1.0)
    for sub, entry in enumerate(body["subpolicies"]):
        assert len(entry["layers"]) == 2
        for stage, layer in enumerate(entry["layers"]):
            logits = np.array(layer["logits"])
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            np.testing.assert_allclose(probs, snap["op_weights"][sub][stage], atol=1e-5)
            np.testing.assert_allclose(layer["op_apply_prob"], snap["apply_prob"][sub][stage],
                                       atol=1e-5)
            means = [m["mean"] for m in layer["magnitude"]]
            np.testing.assert_allclose(means, snap["magnitude"][sub][stage], atol=1e-5)
            assert {m["std"] for m in layer["magnitude"]} == {0.0}


def test_gradient_penalty_of_a_linear_critic_is_its_norm_gap():
    a = torch.rand(1, 3, 4, 4, generator=_gen(1))

    def critic(images):
        return (images * a).flatten(1).sum(1)

    real, fake = torch.rand(5, 3, 4, 4), torch.rand(5, 3, 4, 4)
    expected = (a.norm() - 1.0) ** 2
    torch.testing.assert_close(gradient_penalty(critic, real, fake, _gen(0)), expected)


def test_feature_tap_feeds_the_discriminator_head_the_classifier_features():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3))
    tap = FeatureTap(model)
    head = CriticHead(tap.layer.in_features)
    logits = model(torch.rand(4, 3, 2, 2))
    assert logits.shape == (4, 3) and tap.features.shape == (4, 7)
    assert head(tap.features).shape == (4,)
    tap.remove()
    with pytest.raises(ValueError, match="nn.Linear"):
        FeatureTap(nn.Sequential(nn.Conv2d(3, 3, 1)))



def test_cifar_recipe_holds_the_authors_settings():
    from dra_dali.ops import PAPER_OPS
    from dra_dali.search import SearchConfig

    cfg = SearchConfig.from_recipe("faster-aa-cifar10")
    opts = cfg.options
    assert (cfg.method, cfg.model, cfg.proxy_classes * cfg.images_per_class) == \
        ("faster-aa", "wrn-40-2", 4000)
    assert (cfg.epochs, cfg.batch_size, cfg.ops) == (20, 128, PAPER_OPS)
    assert (opts.sub_policies, opts.stages, opts.temperature, opts.chunks) == (10, 2, 0.05, 8)
    assert (opts.cls_factor, opts.gp_factor, opts.policy_lr, opts.critic_lr) == \
        (0.1, 10.0, 1e-3, 1e-3)


# ----- the method end to end ----------------------------------------------------------------
TINY = {"model": "resnet-tiny", "proxy_classes": 3, "images_per_class": 8, "resolution": 16,
        "batch_size": 4, "epochs": 2, "crop_scale": [0.5, 1.0], "threads": 1,
        "method": "faster-aa", "ops": ["Rotate", "Invert", "Brightness", "Posterize"],
        "faster-aa": {"sub_policies": 3, "chunks": 2}}


def _cfg(data, **changes):
    from dra_dali.search import SearchConfig

    return SearchConfig.from_dict({**TINY, "data": str(data), **changes})


def test_options_are_checked_by_name():
    from dra_dali.search import ConfigError

    with pytest.raises(ConfigError, match="faster-aa.stages: must be >= 1"):
        _cfg("x", **{"faster-aa": {"stages": 0}})
    with pytest.raises(ConfigError, match="faster-aa.temperature: must be > 0"):
        _cfg("x", **{"faster-aa": {"temperature": 0.0}})


def test_cli_search_writes_a_subpolicy_policy_and_plots(embedded, tmp_path):
    from click.testing import CliRunner

    from dra_dali.cli import main
    from dra_dali.policy import Policy

    out = tmp_path / "faa"
    args = ["search", "--data", str(embedded.train), "--out", str(out), "--method", "faster-aa",
            "--epochs", "1", "--batch-size", "4"]
    sets = [f"--set={k}={v}" for k, v in TINY.items() if k not in ("epochs", "batch_size",
                                                                 "method", "faster-aa")]
    result = CliRunner().invoke(main, args + sets + ["--set", "faster-aa.sub_policies=3",
                                                     "--set", "faster-aa.chunks=2"])
    assert result.exit_code == 0, result.output
    policy = Policy.load(out / "policy.yaml")
    assert policy.provenance["method"] == "faster-aa"
    assert len(policy.subpolicies) == 3
    assert all((out / name).stat().st_size > 10_000 for name in ("trajectories.png", "policy.png"))
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1]
    assert np.asarray(history[1]["op_weights"]).shape == (3, 2, 4)
    assert {"wasserstein", "gradient_penalty", "policy_ce"} <= set(history[1])


def test_interrupted_then_resumed_equals_uninterrupted(embedded, tmp_path):
    from dra_dali.search import load_checkpoint, run_search

    cfg = _cfg(embedded.train)
    full = run_search(cfg, tmp_path / "full", progress=False)

    interrupt_after_epoch(cfg, tmp_path / "cut")
    resumed = run_search(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed.subpolicies == full.subpolicies
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    head_a, head_b = a["method"]["state"]["critic"]["head"], b["method"]["state"]["critic"]["head"]
    assert all(torch.equal(head_a[k], head_b[k]) for k in head_a)


# ----- the compiled policy against the numpy sampler ------------------------------------------
N_DRAWS = 12_000
ALPHA = 1e-3


def _faa_policy(weights=None):
    from dra_dali.policy import Policy

    # Temperature 1 keeps every operator likely enough for the chi-square cells.
    module = FasterAAPolicy(("Rotate", "Brightness", "Invert", "Posterize"), sub_policies=3,
                            stages=2, resolution=32, fill=0, temperature=1.0, generator=_gen(11))
    body = policy_body(module.snapshot(), module.ops, resolution=32, scale=1.0, fill=0)
    if weights is not None:
        for sub, weight in zip(body["subpolicies"], weights):
            sub["weight"] = weight
    return Policy.from_dict(body)


@pytest.fixture(scope="module")
def faa_drawn():
    policy = _faa_policy()
    return (policy, *compiled_and_reference_draws(policy, N_DRAWS, seeds=(0, 3, 4)))


def _table(*draws, key):
    """Contingency table: rows = the draws, columns = the observed values of ``key(draw)``."""
    values = [key(d) for d in draws]
    cells = sorted(set(np.concatenate(values).tolist()))
    return np.array([[np.sum(v == c) for c in cells] for v in values])


def test_compiled_subpolicy_and_operator_draws_match_the_sampler(faa_drawn):
    policy, trace, ref = faa_drawn
    for stage in range(2):
        def joint(d, stage=stage):
            return d.subpolicy * 10 + d.op[:, stage]
        p = stats.chi2_contingency(_table(trace, ref, key=joint)).pvalue
        assert p > ALPHA, f"stage {stage}: p = {p:.2e}"
    # power: the same trace rejects sub-policy weights 0.6 / 0.2 / 0.2
    skewed = _faa_policy([0.6, 0.2, 0.2]).sample(N_DRAWS, seed=4)
    assert stats.chi2_contingency(_table(trace, skewed, key=lambda d: d.subpolicy)).pvalue < 1e-6


def test_compiled_apply_rates_follow_each_operators_probability(faa_drawn):
    policy, trace, ref = faa_drawn
    for stage in range(2):
        def cell(d, stage=stage):
            return (d.subpolicy * 10 + d.op[:, stage]) * 2 + d.applied[:, stage]
        p = stats.chi2_contingency(_table(trace, ref, key=cell)).pvalue
        assert p > ALPHA, f"stage {stage}: p = {p:.2e}"
    sub, stage = 0, 1
    layer = policy.subpolicies[sub].layers[stage]
    for i, q in enumerate(layer.op_apply_prob):
        rows = (trace.subpolicy == sub) & (trace.op[:, stage] == i)
        if rows.sum() < 50:
            continue
        hits = int(trace.applied[rows, stage].sum())
        assert stats.binomtest(hits, int(rows.sum()), q).pvalue > ALPHA, policy.ops[i]
        wrong = min(q + 0.2, 1.0) if q < 0.7 else q - 0.2                  # power
        assert stats.binomtest(hits, int(rows.sum()), wrong).pvalue < ALPHA, policy.ops[i]


def test_compiled_magnitudes_are_the_searched_fixed_values(faa_drawn):
    policy, trace, _ = faa_drawn
    for sub, entry in enumerate(policy.subpolicies):
        for stage, layer in enumerate(entry.layers):
            for i, name in enumerate(policy.ops):
                rows = (trace.subpolicy == sub) & (trace.op[:, stage] == i)
                expected = 0.0 if name == "Invert" else layer.magnitudes[i].mean
                np.testing.assert_allclose(trace.magnitude[rows, stage], expected, atol=1e-6)
    signed = np.isin(trace.op[:, 0], [0, 1])                     # Rotate, Brightness
    minus = int((trace.sign[signed, 0] == -1).sum())
    assert stats.binomtest(minus, int(signed.sum()), 0.5).pvalue > ALPHA
