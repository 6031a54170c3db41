"""Differentiable building blocks shared by Faster AutoAugment and DAS.

* :func:`random_signs`: per-image +1/-1 for the catalog's signed operators;
* :func:`relaxed_bernoulli`: the relaxed (concrete) Bernoulli of Maddison et al. / Jang et al.,
  reparameterised through logistic noise, the apply mask of Faster AutoAugment;
* :func:`apply_learned`: a catalog operator at a learned per-operator magnitude, with the
  magnitude's gradient carried straight through the image;
* :func:`plot_op_trajectories`: per-operator parameters over the epochs of a search.

Magnitude gradient. :func:`dra_dali.search.ops.apply_op` computes the operator's parameter from a
detached magnitude, so a learned magnitude reaches the loss only through the image: the operator's
input is ``x + m - stop_grad(m)`` (zero in the forward pass). Its gradient is the operator's input
Jacobian applied to the output gradient, summed over the pixels: for the straight-through
operators (Posterize, Equalize) exactly the straight-through estimator of the Faster AutoAugment
code (``dda/ste.py``: the magnitude receives the summed output gradient); for the differentiable
ones a surrogate of the true ``dOP/dm`` that the authors take through kornia (a deviation, see the
README's "Faster AutoAugment" notes). Magnitude-free operators get no such term.

Example:
    >>> import torch
    >>> from dra_dali.search.methods.blocks import relaxed_bernoulli
    >>> g = torch.Generator().manual_seed(0)
    >>> mask = relaxed_bernoulli(torch.tensor(0.5), 0.1, (4,), g)
    >>> mask.shape, bool(((mask >= 0) & (mask <= 1)).all())
    (torch.Size([4]), True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dra_dali.ops import OPS
from dra_dali.search.ops import apply_op

__all__ = ["apply_learned", "magnitude_free_mask", "plot_op_trajectories", "random_signs",
           "relaxed_bernoulli"]

_EPS = 1e-6


def random_signs(names: tuple[str, ...], batch: int, generator: torch.Generator | None
                 ) -> torch.Tensor:
    """``(len(names), batch)`` signs: +1/-1 with probability 1/2 for signed operators, else +1."""
    coins = torch.rand(len(names), batch, generator=generator) < 0.5
    signed = torch.tensor([OPS[name].signed for name in names]).view(-1, 1)
    return torch.where(coins & signed, -1.0, 1.0)


def magnitude_free_mask(names: tuple[str, ...]) -> torch.Tensor:
    """``(len(names),)`` bool: the operators without a magnitude (their learned magnitude is
    kept at 0, which the policy file then shows)."""
    return torch.tensor([OPS[name].magnitude_free for name in names])


def relaxed_bernoulli(probability: torch.Tensor, temperature: float, shape: tuple[int, ...],
                      generator: torch.Generator | None) -> torch.Tensor:
    """A reparameterised relaxed-Bernoulli sample in (0, 1) of the given ``shape``.

    ``sigmoid((logit(p) + log u - log(1 - u)) / temperature)`` with ``u ~ U(0, 1)``: as the
    temperature falls the samples approach the 0/1 coin with ``P(1) = p``; the gradient reaches
    ``probability`` (a tensor broadcastable to ``shape``).
    """
    p = probability.clamp(_EPS, 1.0 - _EPS)
    u = torch.rand(shape, generator=generator).clamp(_EPS, 1.0 - _EPS).to(p.device)
    noise = torch.log(u) - torch.log1p(-u)
    return torch.sigmoid((torch.log(p) - torch.log1p(-p) + noise) / temperature)


def apply_learned(name: str, x: torch.Tensor, magnitude: torch.Tensor, sign: torch.Tensor,
                  resolution: int, fill: float, centers: torch.Tensor) -> torch.Tensor:
    """Operator ``name`` on ``x`` at one learned scalar ``magnitude`` (per-image ``sign``).

    Args:
        name: catalog operator.
        x: ``(B, 3, H, W)`` float images in [0, 1].
        magnitude: 0-d tensor (a learned parameter, already clipped to ``[0, scale]``).
        sign: ``(B,)`` +1/-1.
        resolution: training resolution (translate range).
        fill: grey level (0-255) of the geometric operators' fill.
        centers: ``(B, 2)`` Cutout centres.

    Returns:
        ``(B, 3, H, W)``; differentiable in ``x`` and, for magnitude operators, in ``magnitude``
        (straight through the image, see the module docstring).
    """
    per_image = magnitude.expand(x.shape[0])
    entering = x
    if not OPS[name].magnitude_free:
        entering = x + (magnitude - magnitude.detach())
    return apply_op(name, entering, per_image, sign, resolution, fill=fill, centers=centers)


def plot_op_trajectories(history: Sequence[Mapping[str, Any]], panels: Mapping[str, str],
                         ops: Sequence[str], path: str | Path, title: str) -> Path:
    """One panel per history key: the per-operator value over the epochs.

    Args:
        history: per-epoch records (epoch 0 first); each ``history[i][key]`` is a nested list
            whose last axis runs over ``ops``; leading axes (sub-policies, stages) are averaged.
        panels: ``{key: y-axis label}``, one panel each, top to bottom.
        ops: operator names (legend).
        path: output image.
        title: figure title.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from dra_dali.viz import save_figure

    epochs = [int(h["epoch"]) for h in history]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.8 * len(panels)), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, (key, label) in zip(axes[:, 0], panels.items()):
        values = np.array([np.asarray(h[key], dtype=float) for h in history])
        values = values.reshape(len(history), -1, len(ops)).mean(axis=1)
        for i, name in enumerate(ops):
            ax.plot(epochs, values[:, i], "-" if i < 10 else "--", color=cmap(i % 20),
                    label=name, marker="." if len(epochs) < 12 else None)
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1, 0].set_xlabel("epoch")
    axes[0, 0].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
