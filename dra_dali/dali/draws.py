"""The per-sample random draws of a policy, as DALI graph code (formats 1 and 2).

The same draws as the numpy reference sampler (:mod:`dra_dali.policy.sampler`), per image:

- with sub-policies, the sub-policy ``k``: ``fn.random.choice`` with the normalised weights;
- with a gate, one ``fn.random.coin_flip(probability=gate)`` shared by every layer;

then per layer:

1. the operator: ``fn.random.choice`` over the operators whose probability is above
   :data:`NEGLIGIBLE_PROBABILITY` (in some sub-policy), weighted by ``softmax(logits)``; with
   sub-policies the probability vector is looked up per sample from ``k`` (``p`` accepts a
   per-sample tensor), so the graph does not grow with the number of sub-policies;
2. the magnitude: every per-(sub-policy, operator) parameter is a ``fn.lookup_table`` on one
   integer cell ``k * A + branch``: N(mean, std), U(0, scale), or a categorical level drawn by
   inverse CDF (``u ~ U(0, 1)``, level = number of cumulative probabilities <= u) whose value is
   looked up on ``cell * L + level``; clipped to ``[0, scale]``; 0 for magnitude-free operators;
3. the sign: ``fn.random.coin_flip`` for signed operators whose ``random_sign`` is true;
4. the apply coin: ``coin_flip(probability=p)`` with ``p`` the chosen operator's
   ``op_apply_prob`` or ``p ~ U(lo, hi)``; times the gate.

Format-1 layers without gate or sub-policies keep the exact graph they always had (same seeds,
same draws). The compiler (:mod:`dra_dali.dali.compiler`) turns the draws into the operator
dispatch; it reads :attr:`LayerDraws.coin` to know whether the apply coin is constant.

A policy with a ``schedule`` has no single graph: build one per schedule entry
(``policy.at_epoch(epoch)``) and switch at ``policy.schedule_boundaries``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dmath
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import do_not_convert

from dra_dali.ops import OPS
from dra_dali.policy import Layer, Policy, PolicyError

__all__ = ["LayerDraws", "PolicyDraws", "policy_draws", "NEGLIGIBLE_PROBABILITY"]

#: Operators whose probability is below this never get a branch. A logit 100 below the others
#: gives about 4e-44; 1e-12 is far below any probability that could show in a training run.
NEGLIGIBLE_PROBABILITY = 1e-12

Coin = Literal["always", "never", "random"]


@dataclass(frozen=True)
class LayerDraws:
    """The draws of one layer (DataNodes hold one scalar per sample).

    Attributes:
        names: operators that have a branch, in branch order.
        branch: int32 index into ``names``.
        op: int32 index into ``policy.ops``.
        sign: int32 +1/-1.
        magnitude: float32 clipped magnitude (0 for magnitude-free operators).
        applied: uint8 1 where the operator runs (its coin and the gate came up).
        level: int32 categorical level index, -1 where the magnitude is not categorical.
        coin: ``"always"`` / ``"never"`` when ``applied`` is constant, else ``"random"``.
    """

    names: list[str]
    branch: DataNode
    op: DataNode
    sign: DataNode
    magnitude: DataNode
    applied: DataNode
    level: DataNode
    coin: Coin


@dataclass(frozen=True)
class PolicyDraws:
    """The draws of a whole policy: one :class:`LayerDraws` per layer and the per-image draws.

    Attributes:
        layers: per-layer draws.
        subpolicy: int32 sub-policy index per image (0 without sub-policies).
        gate: uint8 1 where the image passed the gate (1 without a gate).
    """

    layers: list[LayerDraws]
    subpolicy: DataNode
    gate: DataNode


class _Seeds:
    """Distinct seeds for the random operators (equal seeds would correlate the streams)."""

    def __init__(self, start: int | None):
        self.next_seed = start

    def kw(self) -> dict:
        if self.next_seed is None:
            return {}
        self.next_seed += 1
        return {"seed": self.next_seed - 1}


def _lookup(index: DataNode, values: Sequence[float], dtype=types.FLOAT) -> DataNode:
    """Per-sample ``values[index]`` for an int32 index in ``[0, len(values))``."""
    return fn.lookup_table(index, keys=list(range(len(values))), values=[float(v) for v in values],
                           dtype=dtype, default_value=0.0)


def _constant(like: DataNode, value: int, dtype) -> DataNode:
    return fn.cast(like * 0 + value, dtype=dtype)


@do_not_convert
def policy_draws(policy: Policy, seed: int | None = None) -> PolicyDraws:
    """Every per-sample draw of ``policy`` as DataNodes (call inside a pipeline definition).

    Args:
        policy: a policy without a schedule.
        seed: optional base seed (each random operator gets its own, derived from it).

    Raises:
        PolicyError: for a policy with a schedule (build a graph per ``policy.at_epoch(e)``).
    """
    if policy.kind == "schedule":
        raise PolicyError(f"augment: this policy has a schedule (boundaries "
                          f"{list(policy.schedule_boundaries)}); one DALI graph holds one policy: "
                          "build the graph for policy.at_epoch(epoch) and rebuild it at each "
                          "boundary (DALILoader and train do this)")
    image = _Seeds(None if seed is None else seed * 1000 + 990)
    chains = policy.chains
    subpolicy = None
    if len(chains) > 1:
        subpolicy = fn.cast(fn.random.choice(len(chains), p=list(policy.chain_probabilities),
                                             **image.kw()), dtype=types.INT32)
    gate = None
    if policy.gate is not None and policy.gate < 1.0:
        gate = fn.random.coin_flip(probability=float(policy.gate), dtype=types.UINT8,
                                   **image.kw())
    layers = []
    for j in range(policy.depth):
        seeds = _Seeds(None if seed is None else seed * 1000 + 10 * j)
        plain = subpolicy is None and policy.layers[j].is_format1
        draws = (_format1_layer(policy, policy.layers[j], seeds) if plain
                 else _general_layer(policy, j, subpolicy, seeds))
        layers.append(_gated(draws, gate, policy.gate))
    anchor = layers[0].branch
    return PolicyDraws(layers,
                       subpolicy if subpolicy is not None else _constant(anchor, 0, types.INT32),
                       gate if gate is not None else _constant(anchor, 1, types.UINT8))


def _gated(draws: LayerDraws, gate: DataNode | None, probability: float | None) -> LayerDraws:
    if probability is None or probability >= 1.0 or draws.coin == "never":
        return draws
    if probability <= 0.0:
        return _replace(draws, applied=_constant(draws.branch, 0, types.UINT8), coin="never")
    return _replace(draws, applied=fn.cast(draws.applied * gate, dtype=types.UINT8),
                    coin="random")


def _replace(draws: LayerDraws, **changes) -> LayerDraws:
    from dataclasses import replace

    return replace(draws, **changes)


# ----- format-1 layer (the historical graph) --------------------------------------------------
def _format1_layer(policy: Policy, layer: Layer, seeds: _Seeds) -> LayerDraws:
    probabilities = layer.probabilities
    active = [i for i, p in enumerate(probabilities) if p >= NEGLIGIBLE_PROBABILITY]
    weights = probabilities[active] / probabilities[active].sum()
    names = [policy.ops[i] for i in active]
    branch = fn.cast(fn.random.choice(len(active), p=[float(w) for w in weights], **seeds.kw()),
                     dtype=types.INT32)
    has_magnitude = [0.0 if OPS[n].magnitude_free else 1.0 for n in names]
    if layer.dist == "uniform":
        draw = fn.random.uniform(range=[0.0, policy.scale], **seeds.kw())
    else:
        mean = _lookup(branch, [layer.mean[i] for i in active])
        std = _lookup(branch, [layer.std[i] for i in active])
        draw = mean + std * fn.random.normal(**seeds.kw())
    magnitude = dmath.clamp(draw, 0.0, float(policy.scale)) * _lookup(branch, has_magnitude)
    signed = [1.0 if OPS[n].signed else 0.0 for n in names]
    sign = _sign(branch, signed, seeds)
    applied, coin = _range_coin(branch, policy.apply_prob, seeds)
    return LayerDraws(names, branch, fn.cast(_lookup(branch, active), dtype=types.INT32), sign,
                      fn.cast(magnitude, dtype=types.FLOAT), applied,
                      _constant(branch, -1, types.INT32), coin)


def _sign(cell: DataNode, flips: Sequence[float], seeds: _Seeds) -> DataNode:
    if not any(flips):
        return _constant(cell, 1, types.INT32)
    heads = fn.random.coin_flip(probability=0.5, dtype=types.INT32, **seeds.kw())
    return fn.cast(1 - 2 * (1 - heads) * _lookup(cell, flips, types.INT32), dtype=types.INT32)


def _range_coin(like: DataNode, apply_prob, seeds: _Seeds) -> tuple[DataNode, Coin]:
    lo, hi = apply_prob
    if lo >= 1.0:
        return _constant(like, 1, types.UINT8), "always"
    if hi <= 0.0:
        return _constant(like, 0, types.UINT8), "never"
    p = fn.random.uniform(range=[lo, hi], **seeds.kw()) if hi > lo else float(lo)
    return fn.random.coin_flip(probability=p, dtype=types.UINT8, **seeds.kw()), "random"


# ----- format-2 layer: per-(sub-policy, operator) tables --------------------------------------
@dataclass(frozen=True)
class _Tables:
    """Per-cell parameters of layer j; cell = k * len(active) + branch."""

    active: list[int]
    probabilities: np.ndarray        # (chains, active), rows normalised
    magnitudes: list                 # [chain][active] Magnitude
    apply: list                      # [chain] op_apply_prob tuple or None


def _tables(policy: Policy, j: int) -> _Tables:
    layers = [chain.layers[j] for chain in policy.chains]
    p = np.stack([layer.probabilities for layer in layers])
    active = [i for i in range(len(policy.ops)) if p[:, i].max() >= NEGLIGIBLE_PROBABILITY]
    probabilities = p[:, active]
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    return _Tables(active, probabilities,
                   [[layer.magnitudes[i] for i in active] for layer in layers],
                   [layer.op_apply_prob for layer in layers])


def _general_layer(policy: Policy, j: int, subpolicy: DataNode | None,
                   seeds: _Seeds) -> LayerDraws:
    t = _tables(policy, j)
    names = [policy.ops[i] for i in t.active]
    width = len(t.active)
    if subpolicy is None:
        branch = fn.random.choice(width, p=[float(w) for w in t.probabilities[0]], **seeds.kw())
        branch = fn.cast(branch, dtype=types.INT32)
        cell = branch
    else:
        p = fn.stack(*[_lookup(subpolicy, t.probabilities[:, a]) for a in range(width)])
        branch = fn.cast(fn.random.choice(width, p=p, **seeds.kw()), dtype=types.INT32)
        cell = fn.cast(subpolicy * width + branch, dtype=types.INT32)
    cells = [(k, a) for k in range(len(t.magnitudes)) for a in range(width)]
    magnitude, level = _magnitude(policy, t, cells, cell, seeds)
    flips = [1.0 if OPS[names[a]].signed and t.magnitudes[k][a].random_sign else 0.0
             for k, a in cells]
    applied, coin = _apply_coin(policy, t, cells, cell, seeds)
    return LayerDraws(names, branch, fn.cast(_lookup(branch, t.active), dtype=types.INT32),
                      _sign(cell, flips, seeds), magnitude, applied, level, coin)


def _magnitude(policy: Policy, t: _Tables, cells, cell: DataNode, seeds: _Seeds):
    """The clipped magnitude and the categorical level of each sample."""
    ms = [t.magnitudes[k][a] for k, a in cells]
    free = [OPS[policy.ops[t.active[a]]].magnitude_free for _, a in cells]
    scale = float(policy.scale)
    draw = 0.0
    if any(m.dist == "normal" for m in ms):
        mean = _lookup(cell, [m.mean if m.dist == "normal" else 0.0 for m in ms])
        std = _lookup(cell, [m.std if m.dist == "normal" else 0.0 for m in ms])
        draw = draw + mean + std * fn.random.normal(**seeds.kw())
    if any(m.dist == "uniform" for m in ms):
        uniform = _lookup(cell, [1.0 if m.dist == "uniform" else 0.0 for m in ms])
        draw = draw + uniform * fn.random.uniform(range=[0.0, scale], **seeds.kw())
    level = _constant(cell, -1, types.INT32)
    if any(m.dist == "categorical" for m in ms):
        value, level = _categorical(ms, free, cell, seeds)
        draw = draw + value
    has_magnitude = _lookup(cell, [0.0 if f else 1.0 for f in free])
    magnitude = dmath.clamp(draw + _constant(cell, 0, types.FLOAT), 0.0, scale) * has_magnitude
    return fn.cast(magnitude, dtype=types.FLOAT), level


def _categorical(ms, free, cell: DataNode, seeds: _Seeds):
    """Inverse-CDF level draw per sample: level = #{l : cdf_l(cell) <= u}, u ~ U(0, 1)."""
    width = max(len(m.levels) for m in ms if m.dist == "categorical")
    is_level = [m.dist == "categorical" and not f for m, f in zip(ms, free)]
    u = fn.random.uniform(range=[0.0, 1.0], **seeds.kw())
    index = _constant(cell, 0, types.INT32)
    for b in range(width - 1):
        # 2.0 (never reached) past a cell's last level: float32 rounding cannot overrun it
        cdf = [float(np.cumsum(m.probs)[b] / np.sum(m.probs)) if c and b < len(m.levels) - 1
               else 2.0 for m, c in zip(ms, is_level)]
        index = index + fn.cast(u >= _lookup(cell, cdf), dtype=types.INT32)
    values = [m.levels[b] if c and b < len(m.levels) else 0.0
              for m, c in zip(ms, is_level) for b in range(width)]
    value = _lookup(fn.cast(cell * width + index, dtype=types.INT32), values)
    flag = _lookup(cell, [1 if c else 0 for c in is_level], types.INT32)
    level = fn.cast(flag * (index + 1) - 1, dtype=types.INT32)
    return value, level


def _apply_coin(policy: Policy, t: _Tables, cells, cell: DataNode, seeds: _Seeds):
    """Bernoulli(op_apply_prob of the cell) where the layer has one, else p ~ U(lo, hi)."""
    if all(apply is None for apply in t.apply):
        return _range_coin(cell, policy.apply_prob, seeds)
    lo, hi = policy.apply_prob
    table = [t.apply[k][t.active[a]] if t.apply[k] is not None else -1.0 for k, a in cells]
    if all(v >= 1.0 or (v < 0 and lo >= 1.0) for v in table):
        return _constant(cell, 1, types.UINT8), "always"
    if all(v == 0.0 or (v < 0 and hi <= 0.0) for v in table):
        return _constant(cell, 0, types.UINT8), "never"
    p = _lookup(cell, [max(v, 0.0) for v in table])
    if any(v < 0 for v in table):      # sub-policies without op_apply_prob use the U(lo, hi) coin
        uses_range = _lookup(cell, [1.0 if v < 0 else 0.0 for v in table])
        p_range = fn.random.uniform(range=[lo, hi], **seeds.kw()) if hi > lo else float(lo)
        p = p + uses_range * p_range
    return fn.random.coin_flip(probability=p, dtype=types.UINT8, **seeds.kw()), "random"
