"""Policy plots: operator probabilities and magnitude distributions (the paper's Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dra_dali.ops import OPS
from dra_dali.policy import Policy

__all__ = ["plot_policy", "policy_table", "save_figure"]


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure (creating the folder) and close it; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def policy_table(policy: Policy) -> str:
    """A text table per layer: operator, probability, magnitude mean and std, sorted by probability.

    Example:
        >>> print(policy_table(Policy.preset("ra-n1-m9")).splitlines()[0])
        layer 1 (magnitude ~ N(mean, std) clipped to [0, 1.0]; apply p ~ U(1.0, 1.0))
    """
    lines = []
    lo, hi = policy.apply_prob
    for j, layer in enumerate(policy.layers):
        if layer.dist == "uniform":
            how = f"magnitude ~ U(0, {policy.scale})"
        else:
            how = f"magnitude ~ N(mean, std) clipped to [0, {policy.scale}]"
        lines.append(f"layer {j + 1} ({how}; apply p ~ U({lo}, {hi}))")
        lines.append(f"  {'operator':<14}{'prob':>8}{'mean':>9}{'std':>9}")
        probs = layer.probabilities
        for i in np.argsort(-probs, kind="stable"):
            no_magnitude = layer.dist == "uniform" or OPS[policy.ops[i]].magnitude_free
            mean = "-" if no_magnitude else f"{layer.mean[i]:.3f}"
            std = "-" if no_magnitude else f"{layer.std[i]:.3f}"
            lines.append(f"  {policy.ops[i]:<14}{probs[i]:>8.3f}{mean:>9}{std:>9}")
    return "\n".join(lines)


def plot_policy(policy: Policy, path: str | Path, title: str | None = None) -> Path:
    """Save a picture of the policy: a heat map of operator probabilities per layer (left) and
    the magnitude mean +- std per operator and layer (right).

    Args:
        policy: the policy to draw.
        path: output image (PNG, PDF or SVG by extension).
        title: figure title (default: the preset name or method from the provenance).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = policy.probabilities
    n_ops = len(policy.ops)
    fig, (ax_p, ax_m) = plt.subplots(1, 2, figsize=(13, 0.38 * n_ops + 1.8),
                                     gridspec_kw={"width_ratios": [1, 1.6]})
    image = ax_p.imshow(probs.T, aspect="auto", cmap="viridis")
    ax_p.set_yticks(range(n_ops), policy.ops)
    ax_p.set_xticks(range(policy.depth), [f"layer {j + 1}" for j in range(policy.depth)])
    uniform = 1.0 / n_ops
    for j in range(policy.depth):
        for i in range(n_ops):
            colour = "black" if probs[j, i] > probs.max() * 0.7 else "white"
            ax_p.text(j, i, f"{probs[j, i]:.3f}", ha="center", va="center", fontsize=8,
                      color=colour)
    fig.colorbar(image, ax=ax_p, label=f"probability (uniform = {uniform:.3f})")
    ax_p.set_title("operator probability")

    width = 0.8 / policy.depth
    y = np.arange(n_ops)
    free = np.array([OPS[name].magnitude_free for name in policy.ops])
    for j, layer in enumerate(policy.layers):
        offset = (j - (policy.depth - 1) / 2) * width
        if layer.dist == "uniform":
            ax_m.barh(y + offset, [policy.scale] * n_ops, height=width * 0.9, alpha=0.3,
                      label=f"layer {j + 1}: U(0, {policy.scale})")
        else:
            mean, std = np.asarray(layer.mean), np.asarray(layer.std)
            ax_m.errorbar(mean[~free], y[~free] + offset, xerr=std[~free], fmt="o", capsize=3,
                          label=f"layer {j + 1}: mean ± std")
    for i in np.flatnonzero(free):
        ax_m.text(0.02 * policy.scale, y[i], "(no magnitude)", va="center", color="grey",
                  fontsize=8)
    ax_m.set_yticks(y, policy.ops)
    ax_m.invert_yaxis()
    ax_m.set_xlim(0, policy.scale * 1.05)
    ax_m.set_xlabel(f"normalised magnitude (1 = edge of the paper's range, clip at {policy.scale})")
    ax_m.grid(axis="x", alpha=0.3)
    ax_m.legend(loc="lower right", fontsize=8)
    ax_m.set_title("magnitude distribution")
    name = title or str(policy.provenance.get("preset") or policy.provenance.get("method") or "policy")
    fig.suptitle(f"{name}  ({policy.depth} layers, {n_ops} operators, resolution "
                 f"{policy.resolution}, apply p ~ U{tuple(policy.apply_prob)}, "
                 f"fill {policy.fill})")
    fig.tight_layout()
    return save_figure(fig, path)
