"""Plots of a search: DRA's probability and magnitude trajectories (the paper's Fig. 2), DDAS's
p_o and p_tp over the epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dra_dali.viz import save_figure

__all__ = ["plot_ddas", "plot_trajectories"]


def plot_trajectories(history: Sequence[dict[str, Any]], ops: Sequence[str],
                      path: str | Path) -> Path:
    """Save, per layer, the operator probabilities and the magnitude means over the epochs.

    Args:
        history: per-epoch records with ``epoch``, ``probabilities``, ``mean`` (``(layers, ops)``
            lists), as in a run's ``metrics.jsonl``; epoch 0 is the initial policy.
        ops: operator names (legend).
        path: output image (PNG/PDF/SVG).

    Returns:
        The path written.

    Example:
        >>> plot_trajectories([{"epoch": 0, "probabilities": [[0.5, 0.5]], "mean": [[0.5, 0.5]]}],
        ...                   ["Rotate", "Invert"], "/tmp/traj.png").name
        'traj.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.array([h["epoch"] for h in history])
    probs = np.array([h["probabilities"] for h in history])  # (epochs, layers, ops)
    means = np.array([h["mean"] for h in history])
    depth = probs.shape[1]
    fig, axes = plt.subplots(depth, 2, figsize=(12, 3.2 * depth), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for layer in range(depth):
        for i, name in enumerate(ops):
            style = "-" if i < 10 else "--"
            axes[layer, 0].plot(epochs, probs[:, layer, i], style, color=cmap(i % 20), label=name)
            axes[layer, 1].plot(epochs, means[:, layer, i], style, color=cmap(i % 20), label=name)
        axes[layer, 0].axhline(1.0 / len(ops), color="grey", lw=0.8, ls=":")
        axes[layer, 0].set_ylabel(f"layer {layer + 1}\nprobability")
        axes[layer, 1].set_ylabel("magnitude mean")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    axes[0, 1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.suptitle("DRA search trajectories (dotted: uniform probability)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def plot_ddas(history: Sequence[dict[str, Any]], labels: Sequence[str],
              path: str | Path, top: int = 12) -> Path:
    """Save DDAS's parameters over the epochs: ``p_o`` of the ``top`` candidates with the highest
    final probability (and the mean of the others) and the gate ``p_tp``.

    Args:
        history: per-epoch records with ``epoch``, ``p_o`` and ``p_tp`` (``metrics.jsonl``).
        labels: candidate names (``Rotate:0.4``, ``Invert``).
        path: output image.
        top: candidates drawn individually.

    Returns:
        The path written.

    Example:
        >>> plot_ddas([{"epoch": 0, "p_o": [0.5, 0.5], "p_tp": 0.35}], ["Rotate:1", "Invert"],
        ...           "/tmp/ddas.png").name
        'ddas.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.array([h["epoch"] for h in history])
    p_o = np.array([h["p_o"] for h in history])            # (epochs, candidates)
    order = np.argsort(-p_o[-1])[:top]
    fig, (ax_o, ax_tp) = plt.subplots(1, 2, figsize=(13, 4.2),
                                      gridspec_kw={"width_ratios": [2.2, 1]})
    cmap = plt.get_cmap("tab20")
    for rank, i in enumerate(order):
        ax_o.plot(epochs, p_o[:, i], "-" if rank < 10 else "--", color=cmap(rank % 20),
                  label=labels[i])
    if p_o.shape[1] > len(order):
        rest = np.delete(p_o, order, axis=1).mean(axis=1)
        ax_o.plot(epochs, rest, ":", color="black",
                  label=f"mean of the other {p_o.shape[1] - len(order)}")
    ax_o.axhline(1.0 / p_o.shape[1], color="grey", lw=0.8, ls=":")
    ax_o.set_xlabel("epoch")
    ax_o.set_ylabel("operation probability p_o")
    ax_o.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    ax_tp.plot(epochs, [h["p_tp"] for h in history], "o-", color="tab:red")
    ax_tp.set_ylim(0, 1)
    for ax in (ax_o, ax_tp):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_tp.set_xlabel("epoch")
    ax_tp.set_ylabel("total probability p_tp")
    fig.suptitle(f"DDAS search: top {len(order)} of {p_o.shape[1]} candidates "
                 "(dotted grey: uniform)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
