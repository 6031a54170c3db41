"""The per-sample random draws of a policy layer, as DALI graph code.

Per layer and image (the same draws as the numpy reference sampler ``Policy.sample``):

1. the operator: ``fn.random.choice`` over the layer's operators with probability > 0, weighted
   by ``softmax(logits)``;
2. the magnitude: ``fn.random.normal`` with the chosen operator's mean and standard deviation
   (looked up per sample), clipped to ``[0, scale]``; ``fn.random.uniform(range=[0, scale])`` for
   ``dist: uniform`` layers; 0 for magnitude-free operators;
3. the sign: ``fn.random.coin_flip`` for signed operators, +1 otherwise;
4. the apply coin: ``p ~ U(lo, hi)`` then ``coin_flip(probability=p)`` (always on for [1, 1]).

The compiler (:mod:`dra_dali.dali.compiler`) turns these draws into the operator dispatch.
"""

from __future__ import annotations

from typing import Sequence

from nvidia.dali import fn, types
from nvidia.dali import math as dmath
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import do_not_convert

from dra_dali.ops import OPS
from dra_dali.policy import Policy

__all__ = ["draws", "NEGLIGIBLE_PROBABILITY"]

#: Operators whose probability is below this never get a branch. A logit 100 below the others
#: gives about 4e-44; 1e-12 is far below any probability that could show in a training run.
NEGLIGIBLE_PROBABILITY = 1e-12


def _lookup(index: DataNode, values: Sequence[float], dtype=types.FLOAT) -> DataNode:
    """Per-sample ``values[index]`` for an int32 index in ``[0, len(values))``."""
    return fn.lookup_table(index, keys=list(range(len(values))), values=[float(v) for v in values],
                           dtype=dtype, default_value=0.0)


@do_not_convert
def draws(policy: Policy, j: int, seed: int | None):
    """The per-sample random draws of layer ``j``; returns the branch table and the DataNodes."""
    layer = policy.layers[j]
    probabilities = layer.probabilities
    active = [i for i, p in enumerate(probabilities) if p >= NEGLIGIBLE_PROBABILITY]
    weights = probabilities[active] / probabilities[active].sum()
    names = [policy.ops[i] for i in active]
    seeds = iter(range(seed, seed + 5)) if seed is not None else None

    def kw():
        # one distinct seed per random operator: equal seeds would give correlated streams
        return {} if seeds is None else {"seed": next(seeds)}

    branch = fn.cast(fn.random.choice(len(active), p=[float(w) for w in weights], **kw()),
                     dtype=types.INT32)
    op_index = fn.cast(_lookup(branch, active), dtype=types.INT32)

    has_magnitude = [0.0 if OPS[n].magnitude_free else 1.0 for n in names]
    if layer.dist == "uniform":
        draw = fn.random.uniform(range=[0.0, policy.scale], **kw())
    else:
        mean = _lookup(branch, [layer.mean[i] for i in active])
        std = _lookup(branch, [layer.std[i] for i in active])
        draw = mean + std * fn.random.normal(**kw())
    magnitude = dmath.clamp(draw, 0.0, float(policy.scale)) * _lookup(branch, has_magnitude)
    magnitude = fn.cast(magnitude, dtype=types.FLOAT)

    signed = [1.0 if OPS[n].signed else 0.0 for n in names]
    if any(signed):
        heads = fn.random.coin_flip(probability=0.5, dtype=types.INT32, **kw())
        sign = fn.cast(1 - 2 * (1 - heads) * _lookup(branch, signed, types.INT32),
                       dtype=types.INT32)
    else:
        sign = fn.cast(branch * 0 + 1, dtype=types.INT32)

    lo, hi = policy.apply_prob
    if lo >= 1.0:
        applied = fn.cast(branch * 0 + 1, dtype=types.UINT8)
    elif hi <= 0.0:
        applied = fn.cast(branch * 0, dtype=types.UINT8)
    else:
        p = fn.random.uniform(range=[lo, hi], **kw()) if hi > lo else float(lo)
        applied = fn.random.coin_flip(probability=p, dtype=types.UINT8, **kw())
    return names, branch, op_index, sign, magnitude, applied
