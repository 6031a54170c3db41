"""Policy text and plots: operator probabilities, apply probabilities and magnitude distributions
(the paper's Fig. 3), for every policy form (layers, sub-policies, schedules)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dra_dali.ops import OPS
from dra_dali.policy import Layer, Magnitude, Policy

__all__ = ["describe", "plot_policy", "policy_table", "save_figure"]


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure (creating the folder) and close it; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# ----- text -----------------------------------------------------------------------------------
def describe(policy: Policy) -> str:
    """The whole policy as text: a summary line, then a table per layer (per sub-policy, per
    schedule entry).

    Example:
        >>> print(describe(Policy.preset("ra-n1-m9")).splitlines()[0])
        1 layer, 16 operators, resolution 224, scale 1.0, fill 128, apply p ~ U(1.0, 1.0)
    """
    if policy.kind != "schedule":
        return _summary(policy) + "\n" + policy_table(policy)
    entries = policy.schedule
    lines = [f"schedule of {len(entries)} policies; the active policy changes at epochs "
             f"{list(policy.schedule_boundaries)}"]
    for i, entry in enumerate(entries):
        end = f"{entries[i + 1].start_epoch - 1}" if i + 1 < len(entries) else "on"
        lines.append(f"epochs {entry.start_epoch}-{end}: " + describe(entry.policy))
    return "\n".join(lines)


def _summary(policy: Policy) -> str:
    depth = policy.depth
    text = (f"{depth} layer{'s' if depth > 1 else ''}, {len(policy.ops)} operators, resolution "
            f"{policy.resolution}, scale {policy.scale}, fill {policy.fill}, apply p ~ "
            f"U{tuple(policy.apply_prob)}")
    if policy.gate is not None:
        text += f", gate {policy.gate:g} (one coin per image: augmented or untouched)"
    if policy.kind == "subpolicies":
        text += f", {len(policy.subpolicies)} sub-policies"
    return text


def policy_table(policy: Policy) -> str:
    """A text table per layer: operator, probability, apply probability and magnitude
    distribution, sorted by probability (per sub-policy for a mixture).

    Example:
        >>> print(policy_table(Policy.preset("ra-n1-m9")).splitlines()[0])
        layer 1 (magnitudes clipped to [0, 1.0])
    """
    lines = []
    weights = policy.chain_probabilities
    for k, chain in enumerate(policy.chains):
        indent = ""
        if policy.kind == "subpolicies":
            lines.append(f"sub-policy {k + 1} (probability {weights[k]:.3f})")
            indent = "  "
        for j, layer in enumerate(chain.layers):
            lines += [indent + line for line in _layer_table(policy, layer, j)]
    return "\n".join(lines)


def _layer_table(policy: Policy, layer: Layer, j: int) -> list[str]:
    lines = [f"layer {j + 1} (magnitudes clipped to [0, {policy.scale}])",
             f"  {'operator':<14}{'prob':>8}{'apply':>12}  magnitude"]
    probs = layer.probabilities
    lo, hi = policy.apply_prob
    for i in np.argsort(-probs, kind="stable"):
        name = policy.ops[i]
        apply = (f"{layer.op_apply_prob[i]:.3f}" if layer.op_apply_prob is not None
                 else f"U({lo:g},{hi:g})")
        how = _magnitude_text(name, layer.magnitudes[i], policy.scale)
        lines.append(f"  {name:<14}{probs[i]:>8.3f}{apply:>12}  {how}")
    return lines


def _magnitude_text(name: str, m: Magnitude, scale: float) -> str:
    if OPS[name].magnitude_free:
        return "-"
    if m.dist == "uniform":
        text = f"U(0, {scale:g})"
    elif m.dist == "categorical":
        text = "levels " + " ".join(f"{v:g}:{p:.2f}" for v, p in zip(m.levels, m.probs))
    else:
        text = f"N({m.mean:.3f}, {m.std:.3f})"
    return text + ("  (no random sign)" if OPS[name].signed and not m.random_sign else "")


# ----- plots ----------------------------------------------------------------------------------
def plot_policy(policy: Policy, path: str | Path, title: str | None = None) -> Path:
    """Save a picture of the policy.

    A flat policy: a heat map of operator probabilities per layer (one column per sub-policy and
    layer for a mixture, its weight in the label), the per-operator apply probabilities where
    the policy has them, and the magnitude distributions (normal: mean ± std; uniform: a band;
    categorical: one bar per level, its height the level's probability). A schedule: operator
    probabilities and the gate over the epochs.

    Args:
        policy: the policy to draw.
        path: output image (PNG, PDF or SVG by extension).
        title: figure title (default: the preset name or method from the provenance).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    name = title or str(policy.provenance.get("preset") or policy.provenance.get("method")
                        or "policy")
    if policy.kind == "schedule":
        return save_figure(_schedule_figure(policy, name), path)
    return save_figure(_flat_figure(policy, name), path)


def _columns(policy: Policy) -> list[tuple[str, Layer]]:
    weights = policy.chain_probabilities
    if policy.kind == "subpolicies":
        return [(f"s{k + 1} L{j + 1}\n(w {weights[k]:.2f})", layer)
                for k, chain in enumerate(policy.chains) for j, layer in enumerate(chain.layers)]
    return [(f"layer {j + 1}", layer) for j, layer in enumerate(policy.layers)]


def _flat_figure(policy: Policy, name: str):
    import matplotlib.pyplot as plt

    columns = _columns(policy)
    with_apply = any(layer.op_apply_prob is not None for _, layer in columns)
    n_ops = len(policy.ops)
    ratios = [1, 1, 1.8] if with_apply else [1, 1.8]
    height = max(4.5, 0.42 * n_ops + 2.2)
    fig, axes = plt.subplots(1, len(ratios), figsize=(6 * len(ratios), height),
                             gridspec_kw={"width_ratios": ratios})
    probs = np.stack([layer.probabilities for _, layer in columns], axis=1)
    _heat_map(fig, axes[0], probs, policy.ops, [c for c, _ in columns],
              f"operator probability (uniform = {1 / n_ops:.3f})")
    if with_apply:
        lo, hi = policy.apply_prob
        apply = np.stack([np.asarray(layer.op_apply_prob) if layer.op_apply_prob is not None
                          else np.full(n_ops, (lo + hi) / 2) for _, layer in columns], axis=1)
        _heat_map(fig, axes[1], apply, policy.ops, [c for c, _ in columns],
                  f"apply probability per operator (no list: mean of U({lo:g}, {hi:g}))")
    _magnitude_panel(axes[-1], policy, columns)
    gate = "" if policy.gate is None else f", gate {policy.gate:g}"
    fig.suptitle(f"{name}  ({policy.depth} layers, {n_ops} operators, resolution "
                 f"{policy.resolution}, apply p ~ U{tuple(policy.apply_prob)}, "
                 f"fill {policy.fill}{gate})")
    fig.tight_layout()
    return fig


def _heat_map(fig, ax, values: np.ndarray, ops, labels, title: str) -> None:
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0)
    ax.set_yticks(range(len(ops)), ops)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    for j in range(values.shape[1]):
        for i in range(values.shape[0]):
            colour = "black" if values[i, j] > values.max() * 0.7 else "white"
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color=colour)
    fig.colorbar(image, ax=ax)
    ax.set_title(title, fontsize=10)


def _magnitude_panel(ax, policy: Policy, columns) -> None:
    n_ops, scale = len(policy.ops), policy.scale
    width = 0.8 / len(columns)
    y = np.arange(n_ops)
    colours = [f"C{c % 10}" for c in range(len(columns))]
    for c, (label, layer) in enumerate(columns):
        offset = (c - (len(columns) - 1) / 2) * width
        for i, (name, m) in enumerate(zip(policy.ops, layer.magnitudes)):
            if not OPS[name].magnitude_free:
                _draw_magnitude(ax, m, y[i] + offset, width, scale, colours[c],
                                label_levels=len(columns) == 1)
        ax.plot([], [], color=colours[c], label=label.replace("\n", " "))
    for i, name in enumerate(policy.ops):
        if OPS[name].magnitude_free:
            ax.text(0.02 * scale, y[i], "(no magnitude)", va="center", color="grey", fontsize=8)
    ax.set_yticks(y, policy.ops)
    ax.invert_yaxis()
    ax.set_xlim(0, scale * 1.05)
    ax.set_xlabel(f"normalised magnitude (1 = edge of the paper's range, clip at {scale})")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("magnitude: normal mean ± std, uniform band, categorical bars (height = prob)",
                 fontsize=10)


def _draw_magnitude(ax, m: Magnitude, y: float, width: float, scale: float, colour,
                    label_levels: bool) -> None:
    if m.dist == "uniform":
        ax.barh(y, scale, height=width * 0.9, color=colour, alpha=0.25)
    elif m.dist == "categorical":  # bars grow upwards from the band's bottom edge
        top = max(m.probs) or 1.0
        for level, p in zip(m.levels, m.probs):
            ax.bar(level, -p / top * width * 0.9, bottom=y + width * 0.45, width=scale / 80,
                   color=colour)
            if label_levels:
                ax.text(level, y + width * 0.45, f"{p:.2f}", fontsize=6, ha="center", va="top")
    else:
        ax.errorbar(m.mean, y, xerr=m.std, fmt="o", capsize=3, color=colour, markersize=4)
    if not m.random_sign:
        ax.text(scale * 1.02, y, "±", color="red", fontsize=7, va="center")


def _schedule_figure(policy: Policy, name: str):
    import matplotlib.pyplot as plt

    entries = policy.schedule
    starts = [e.start_epoch for e in entries]
    last = starts[-1] + max(1, starts[-1] - starts[-2] if len(starts) > 1 else 1)
    depth = max(e.policy.depth for e in entries)
    has_gate = any(e.policy.gate is not None for e in entries)
    rows = depth + (1 if has_gate else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(11, 3.2 * rows), squeeze=False, sharex=True)
    ops = policy.ops
    colours = plt.get_cmap("tab20")
    for j in range(depth):
        ax = axes[j, 0]
        for i, op in enumerate(ops):
            values = [_stage_probability(e.policy, j, op) for e in entries]
            ax.step(starts + [last], values + values[-1:], where="post", label=op,
                    color=colours(i % 20))
        ax.set_ylabel(f"layer {j + 1}\noperator probability")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(ncol=9, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.02))
    if has_gate:
        gates = [1.0 if e.policy.gate is None else e.policy.gate for e in entries]
        axes[-1, 0].step(starts + [last], gates + gates[-1:], where="post", color="black")
        axes[-1, 0].set_ylim(0, 1.05)
        axes[-1, 0].set_ylabel("gate (P augmented)")
        axes[-1, 0].grid(alpha=0.3)
    for boundary in policy.schedule_boundaries:
        for ax in axes[:, 0]:
            ax.axvline(boundary, color="grey", lw=0.6, ls=":")
    axes[-1, 0].set_xlabel("epoch (dotted: schedule boundaries)")
    fig.suptitle(f"{name}: schedule of {len(entries)} policies")
    fig.tight_layout()
    return fig


def _stage_probability(policy: Policy, j: int, op: str) -> float:
    """Marginal probability of ``op`` in layer ``j`` (0 where the policy lacks the layer/op)."""
    if j >= policy.depth or op not in policy.ops:
        return 0.0
    return float(policy.probabilities[j][policy.ops.index(op)])
