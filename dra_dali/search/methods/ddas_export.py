"""DDAS's per-epoch snapshots as a format-2 policy with a ``schedule`` (DDAS §3.5.4).

Every search epoch's snapshot (``p_o`` over the candidates, ``p_tp``) becomes one flat policy:
``gate: p_tp`` (one coin per image: augment or not) and ``ops_per_policy`` identical layers,
always applied, whose operator probabilities are ``p_o`` summed over each operator's levels and
whose magnitudes are categorical over those levels (``p_o(op, level) / p(op)``), so that drawing
an operator and then its level draws each (operator, level) candidate with probability ``p_o``.
``p_tp`` is smoothed with a 1-D mean filter of size ``F_s``; the epochs are upsampled to the
training length by nearest neighbour (training epoch ``e`` replays search epoch
``floor(e * T / E)``), and consecutive equal epochs share one schedule entry.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from dra_dali.ops import OPS
from dra_dali.policy import Policy

__all__ = ["mean_filter", "nearest_upsample", "schedule_policy"]


def mean_filter(values: Sequence[float], size: int) -> list[float]:
    """1-D mean filter of ``size`` (centred; at the ends the window keeps the values that exist).

    Example:
        >>> mean_filter([0.0, 3.0, 0.0, 3.0], 3)
        [1.5, 1.0, 2.0, 1.5]
    """
    half_lo, half_hi = (size - 1) // 2, size // 2
    out = []
    for i in range(len(values)):
        window = values[max(0, i - half_lo):i + half_hi + 1]
        out.append(float(sum(window) / len(window)))
    return out


def nearest_upsample(search_epochs: int, train_epochs: int) -> list[int]:
    """For each training epoch, the search epoch it replays (nearest-neighbour upsampling).

    Example:
        >>> nearest_upsample(3, 7)
        [0, 0, 0, 1, 1, 2, 2]
    """
    return [min(search_epochs - 1, math.floor(e * search_epochs / train_epochs))
            for e in range(train_epochs)]


def _layer(method: Any, p_o: np.ndarray) -> dict[str, Any]:
    ops = list(method.config.ops)
    per_op: dict[str, list[tuple[float, float]]] = {op: [] for op in ops}
    signs: dict[str, bool] = {}
    for cand, p in zip(method.candidates, p_o):
        per_op[cand.op].append((cand.level, float(p)))
        signs[cand.op] = cand.random_sign
    totals = [sum(p for _, p in per_op[op]) for op in ops]
    magnitude = []
    for op, total in zip(ops, totals):
        entry: dict[str, Any] = {"dist": "categorical",
                                 "levels": [lv for lv, _ in per_op[op]],
                                 "probs": [p / total for _, p in per_op[op]]}
        if OPS[op].signed and not signs[op]:
            entry["random_sign"] = False
        magnitude.append(entry)
    return {"logits": [math.log(max(t, 1e-30)) for t in totals], "magnitude": magnitude}


def _body(method: Any, p_o: np.ndarray, gate: float) -> dict[str, Any]:
    cfg = method.config
    layer = _layer(method, p_o)
    return {"ops": list(cfg.ops), "resolution": cfg.resolution, "scale": cfg.scale,
            "fill": cfg.fill, "apply_prob": [1.0, 1.0], "gate": gate,
            "layers": [layer] * method.options.ops_per_policy}


def schedule_policy(method: Any, history: Sequence[Mapping[str, Any]],
                    provenance: Mapping[str, Any]) -> Policy:
    """The DDAS search's format-2 policy (see the module docstring).

    Args:
        method: the :class:`~dra_dali.search.methods.ddas.DDASMethod` (candidates, options).
        history: the run's records, epoch 0 (the initial parameters) first.
        provenance: the run's provenance.
    """
    snaps = [h for h in history if h["epoch"] >= 1] or list(history[-1:])
    gates = mean_filter([float(h["p_tp"]) for h in snaps], method.options.gate_smoothing)
    train_epochs = method.options.schedule_epochs or len(snaps)
    replay = nearest_upsample(len(snaps), train_epochs)
    schedule = []
    for epoch, source in enumerate(replay):
        if epoch and source == replay[epoch - 1]:
            continue
        body = _body(method, np.asarray(snaps[source]["p_o"], dtype=np.float64), gates[source])
        schedule.append({"start_epoch": epoch, "policy": body})
    data = {"format": "dra-policy/2",
            "schedule": schedule,
            "provenance": {**provenance, "gate_smoothing": method.options.gate_smoothing,
                           "schedule_epochs": train_epochs,
                           "hypergradient": method.options.hypergradient}}
    return Policy.from_dict(data)
