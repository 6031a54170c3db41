"""Optimiser and learning-rate schedule: SGD Nesterov, linear warmup, cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["build_optimizer", "build_scheduler", "warmup_cosine"]


def build_optimizer(model: nn.Module, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum; weight decay only on weights of convolutions and linear
    layers (parameters with 2+ dimensions), never on norm-layer parameters or biases.

    Args:
        model: the model whose trainable parameters are optimised.
        lr: peak learning rate (the scheduler scales it).
        momentum: Nesterov momentum (0 disables momentum and Nesterov).
        weight_decay: L2 decay of the decayed group.

    Returns:
        A ``torch.optim.SGD`` with two parameter groups: ``decay`` then ``no_decay``.

    Example:
        >>> opt = build_optimizer(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), 0.1, 0.9, 5e-4)
        >>> [len(g["params"]) for g in opt.param_groups], opt.param_groups[1]["weight_decay"]
        ([1, 3], 0.0)
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, start: float = 0.01) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based; the step about to be taken).

    Linear warmup from ``start`` (1 % by default; 0 as in the DRA authors' retraining) to 100 %
    over ``warmup_steps``, then cosine decay to 0 at ``total_steps``.

    Example:
        >>> [round(warmup_cosine(s, 10, 2), 3) for s in (0, 1, 2, 6, 10)]
        [0.01, 0.505, 1.0, 0.5, 0.0]
    """
    if step < warmup_steps:
        return start + (1.0 - start) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class _WarmupCosine:
    """The schedule as an object: LambdaLR saves its ``__dict__`` (two ints) in its state."""

    def __init__(self, total_steps: int, warmup_steps: int, start: float) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.start = start

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.start)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_steps: int, warmup_start: float = 0.01
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`warmup_cosine`; call ``step()`` after each
    optimiser step.

    Args:
        optimizer: the optimiser (its ``lr`` is the peak).
        total_steps: optimiser steps in the whole run.
        warmup_steps: steps of linear warmup.
        warmup_start: the multiplier at step 0 (warmup rises linearly from it to 1).

    Returns:
        The scheduler; its ``state_dict()`` holds only numbers (safe for ``weights_only`` loads).
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, _WarmupCosine(total_steps, warmup_steps, warmup_start))
