"""Sanity search (DDAS's check at toy scale): with the policy-update half rotated by 30 degrees,
the search should favour Rotate: its probability rises above uniform and its mean magnitude
rises above the initial 0.5 in at least one layer. 20-40 s on 2 idle CPU cores, hence slow.

Measured (seeds 0-3, this configuration): the criterion holds for seed 0 (Rotate probability
0.0472 / 0.0929 per layer against 1/16 = 0.0625; mean 0.676 / 0.240). It is seed-dependent, and
the same search *without* the rotation gives Rotate probabilities of the same size (seed 0:
0.050 / 0.086), so only the mean's rise (0.676 vs 0.362 without rotation for seed 0, 0.567 vs
0.362 for seed 1) is attributable to the rotated half at this toy scale. One thread, so the
float reductions (and the result) do not depend on the machine's core count.
"""

from __future__ import annotations

import pytest
import torch

from dra_dali.search import SearchConfig, apply_op, run_search


@pytest.mark.slow
def test_rotated_policy_half_raises_rotate(embedded, tmp_path):
    cfg = SearchConfig.from_dict({
        "data": str(embedded.train), "model": "resnet-tiny", "proxy_classes": 10,
        "images_per_class": 40, "resolution": 32, "batch_size": 32, "epochs": 15,
        "crop_scale": [0.35, 1.0], "lr_batch": 128, "weight_decay": 5e-4,
        "policy_lr": 0.02, "seed": 0, "threads": 1})

    def rotate_30(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]  # Rotate at m = 1 is 30 degrees (catalog slope), sign +1
        return apply_op("Rotate", x, torch.ones(n), torch.ones(n), cfg.resolution)

    policy = run_search(cfg, tmp_path / "run", progress=False,
                        val_transform=rotate_30)
    i = policy.ops.index("Rotate")
    uniform = 1.0 / len(policy.ops)
    figures = [(float(layer.probabilities[i]), layer.mean[i]) for layer in policy.layers]
    print("Rotate (probability, mean) per layer:", figures, "uniform", uniform)
    assert max(p for p, _ in figures) > uniform, figures
    assert max(m for _, m in figures) > cfg.init_mean, figures
