"""The numpy reference sampler: what the compiled DALI pipeline draws, per image and layer.

Per image: a sub-policy ``k ~ Categorical(weights)`` (always 0 for a plain chain) and, with a
gate, one coin ``gate_passed ~ Bernoulli(gate)``. Then per layer ``j`` of sub-policy ``k``:

1. operator ``i ~ Categorical(softmax(logits))``;
2. magnitude from operator ``i``'s distribution: N(mean, std), U(0, scale), or a categorical
   level ``l ~ Categorical(probs)`` with magnitude ``levels[l]``; clipped to ``[0, scale]``;
   0 for magnitude-free operators;
3. sign -1 with probability 0.5 for signed operators whose ``random_sign`` is true, else +1;
4. applied: ``u < op_apply_prob[i]`` where the layer has per-operator apply probabilities,
   else ``u < p`` with ``p ~ U(lo, hi)``; and the gate passed.

Example:
    >>> from dra_dali import Policy
    >>> draws = Policy.preset("ra-n2-m9").sample(1000, seed=0)
    >>> draws.op.shape, bool(draws.applied.all()), bool(draws.gate.all())
    ((1000, 2), True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dra_dali.ops import OPS
from dra_dali.policy.model import Layer, Magnitude, Policy

__all__ = ["PolicySample", "sample"]


@dataclass(frozen=True)
class PolicySample:
    """Draws per image and layer (the sampler's, or a compiled pipeline's trace).

    Attributes:
        op: ``(images, layers)`` int index into ``policy.ops``.
        sign: ``(images, layers)`` +1/-1 (always +1 for unsigned operators and for operators
            with ``random_sign: false``).
        magnitude: ``(images, layers)`` the clipped draw (0 for magnitude-free operators).
        applied: ``(images, layers)`` bool: the operator ran (its coin came up and the gate,
            if any, passed).
        level: ``(images, layers)`` int index of the categorical level drawn; -1 where the
            operator's magnitude is not categorical or the operator has no magnitude.
        subpolicy: ``(images,)`` int index of the sub-policy drawn (0 for a plain chain).
        gate: ``(images,)`` bool: the image passed the gate (all true without a gate).

    ``level``, ``subpolicy`` and ``gate`` are ``None`` where the producer did not record them.
    """

    op: np.ndarray
    sign: np.ndarray
    magnitude: np.ndarray
    applied: np.ndarray
    level: np.ndarray | None = None
    subpolicy: np.ndarray | None = None
    gate: np.ndarray | None = None


def sample(policy: Policy, n_images: int, seed: int | np.random.Generator = 0) -> PolicySample:
    """Draw ``n_images`` images' worth of augmentation decisions from ``policy``.

    Args:
        policy: a policy without a schedule (take ``policy.at_epoch(epoch)`` first).
        n_images: number of images.
        seed: seed or numpy Generator.

    Returns:
        A :class:`PolicySample` with every field filled.

    Raises:
        PolicyError: for a scheduled policy.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    chains = policy.chains
    depth = policy.depth
    k = (rng.choice(len(chains), size=n_images, p=policy.chain_probabilities)
         if len(chains) > 1 else np.zeros(n_images, dtype=np.int64))
    columns = {"op": np.zeros((n_images, depth), np.int64),
               "sign": np.ones((n_images, depth), np.int64),
               "magnitude": np.zeros((n_images, depth)),
               "applied": np.zeros((n_images, depth), bool),
               "level": np.full((n_images, depth), -1, np.int64)}
    for j in range(depth):
        for c, chain in enumerate(chains):
            rows = np.flatnonzero(k == c)
            if rows.size:
                for name, values in _layer_draws(policy, chain.layers[j], rows.size, rng).items():
                    columns[name][rows, j] = values
    gate = (rng.random(n_images) < policy.gate if policy.gate is not None
            else np.ones(n_images, bool))
    columns["applied"] &= gate[:, None]
    return PolicySample(**columns, subpolicy=k.astype(np.int64), gate=gate)


def _layer_draws(policy: Policy, layer: Layer, size: int, rng: np.random.Generator) -> dict:
    op = rng.choice(len(policy.ops), size=size, p=layer.probabilities)
    magnitudes = layer.magnitudes
    magnitude, level = np.zeros(size), np.full(size, -1, np.int64)
    for i in np.unique(op):
        rows = op == i
        magnitude[rows], level[rows] = _magnitude_draws(magnitudes[i], int(rows.sum()),
                                                        policy.scale, rng)
    free = np.array([OPS[name].magnitude_free for name in policy.ops])[op]
    magnitude = np.where(free, 0.0, np.clip(magnitude, 0.0, policy.scale))
    level = np.where(free, -1, level)
    flips = np.array([OPS[name].signed and m.random_sign
                      for name, m in zip(policy.ops, magnitudes)])
    sign = np.where(flips[op] & (rng.random(size) < 0.5), -1, 1)
    if layer.op_apply_prob is not None:
        p = np.asarray(layer.op_apply_prob)[op]
    else:
        p = rng.uniform(policy.apply_prob[0], policy.apply_prob[1], size=size)
    return {"op": op, "sign": sign, "magnitude": magnitude, "level": level,
            "applied": rng.random(size) < p}


def _magnitude_draws(m: Magnitude, size: int, scale: float, rng: np.random.Generator):
    """``size`` unclipped draws of one distribution and their categorical level (-1 if none)."""
    if m.dist == "categorical":
        probs = np.asarray(m.probs) / np.sum(m.probs)
        level = rng.choice(len(m.levels), size=size, p=probs)
        return np.asarray(m.levels)[level], level
    if m.dist == "uniform":
        return rng.uniform(0.0, scale, size=size), -1
    return rng.normal(m.mean, m.std, size=size), -1
