"""The DRA layer: gradients to w, mu and sigma, clipping, sampling modes, ablation switches."""

from __future__ import annotations

import pytest
import torch

from dra_dali.ops import PAPER_OPS
from dra_dali.policy import Policy
from dra_dali.search.methods.dra import DRAPolicy
from dra_dali.search.ops import apply_op


def _loss(policy: DRAPolicy, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    out = policy(x, torch.Generator().manual_seed(seed))
    target = torch.linspace(0, 1, out.numel()).view_as(out)
    return ((out - target) ** 2).mean()


def test_w_mu_sigma_all_receive_nonzero_gradients():
    policy = DRAPolicy(depth=2, resolution=32, apply_prob=(1.0, 1.0))
    loss = _loss(policy, torch.rand(64, 3, 32, 32))
    loss.backward()
    for name in ("logits", "mean", "std"):
        grad = getattr(policy, name).grad
        assert grad is not None and torch.isfinite(grad).all()
        assert grad.abs().sum() > 0, f"{name} received no gradient"
    # Every logit of a layer gets gradient (unsampled operators enter as 1 * h_o).
    assert (policy.logits.grad != 0).all()


def test_magnitude_free_operators_leave_mean_and_std_alone():
    policy = DRAPolicy(ops=("Invert", "AutoContrast", "Rotate"), depth=1, apply_prob=(1.0, 1.0))
    _loss(policy, torch.rand(48, 3, 16, 16)).backward()
    assert torch.all(policy.mean.grad[0, :2] == 0) and torch.all(policy.std.grad[0, :2] == 0)
    assert policy.mean.grad[0, 2] != 0 and policy.logits.grad[0, :2].abs().sum() > 0


def test_clipping_takes_effect():
    policy = DRAPolicy(depth=1, scale=1.0)
    with torch.no_grad():
        policy.mean.fill_(2.5)
        policy.mean[0, 0] = -1.0
        policy.std.fill_(-0.3)
        policy.std[0, 1] = 4.0
    policy.clip_()
    assert policy.mean.max() == 1.0 and policy.mean.min() == 0.0
    assert policy.std.min() == 0.0 and policy.std.max() == 1.0
    # Clipped parameters form a valid policy.
    assert isinstance(policy.to_policy(), Policy)


def test_learn_switches_freeze_parameters():
    policy = DRAPolicy(depth=1, learn_w=False, learn_std=False)
    assert not policy.logits.requires_grad and not policy.std.requires_grad
    assert policy.mean.requires_grad
    params = [p for p in policy.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=0.1)
    before = policy.logits.detach().clone()
    _loss(policy, torch.rand(16, 3, 16, 16)).backward()
    optimiser.step()
    assert torch.equal(policy.logits.detach(), before)


def test_batch_sampling_uses_one_operator_per_layer():
    policy = DRAPolicy(ops=("Invert", "Posterize"), depth=1, sampling="batch",
                       apply_prob=(1.0, 1.0), init_mean=1.0, init_std=0.0)
    x = torch.rand(32, 3, 8, 8)
    for seed in range(6):
        out = policy(x, torch.Generator().manual_seed(seed))
        inverted = torch.isclose(out, 1 - x, atol=1e-6).flatten(1).all(1)
        assert inverted.all() or not inverted.any()


def test_image_sampling_groups_batch_and_matches_single_operator_results():
    ops = ("Invert", "Posterize", "Rotate")
    policy = DRAPolicy(ops=ops, depth=1, sampling="image", apply_prob=(1.0, 1.0),
                       init_mean=1.0, init_std=0.0, resolution=16)
    x = torch.rand(48, 3, 16, 16)
    with torch.no_grad():
        out = policy(x, torch.Generator().manual_seed(3))
    ones = torch.ones(48)
    candidates = {
        "Invert": 1 - x,
        "Posterize": apply_op("Posterize", x, ones, ones, 16),
        "Rotate+": apply_op("Rotate", x, ones, ones, 16),
        "Rotate-": apply_op("Rotate", x, ones, -ones, 16),
    }
    used = set()
    for i in range(48):
        match = [k for k, c in candidates.items() if torch.allclose(out[i], c[i], atol=1e-5)]
        assert match, f"image {i} matches no single-operator output"
        used.add(match[0].rstrip("+-"))
    assert used == set(ops)  # per-image draws: several operators in one batch


def test_apply_probability_zero_leaves_images_unchanged():
    policy = DRAPolicy(depth=2, apply_prob=(0.0, 0.0))
    x = torch.rand(8, 3, 16, 16)
    assert torch.equal(policy(x, torch.Generator().manual_seed(0)), x)


def test_gumbel_draws_follow_the_logits():
    policy = DRAPolicy(ops=("Invert", "Posterize"), depth=1, apply_prob=(1.0, 1.0))
    with torch.no_grad():
        policy.logits[0] = torch.tensor([2.0, 0.0])  # softmax: 0.881 / 0.119
    hard = policy._one_hot(0, 20_000, torch.Generator().manual_seed(0))
    share = hard.detach()[:, 0].mean().item()
    assert abs(share - 0.8808) < 0.015


def test_invalid_layer_arguments():
    with pytest.raises(ValueError, match="Blur"):
        DRAPolicy(ops=("Rotate", "Blur"))
    with pytest.raises(ValueError, match="sampling"):
        DRAPolicy(sampling="op")
    with pytest.raises(ValueError, match="depth"):
        DRAPolicy(depth=0)


def test_to_policy_round_trip(tmp_path):
    policy = DRAPolicy(depth=3, resolution=32, scale=3.0, fill=0).to_policy({"method": "dra"})
    path = policy.save(tmp_path / "p.yaml")
    loaded = Policy.load(path)
    assert loaded.ops == PAPER_OPS and loaded.depth == 3 and loaded.scale == 3.0
    assert loaded.fill == 0  # the searched policy keeps the search's fill
    assert loaded.sha256() == policy.sha256()
