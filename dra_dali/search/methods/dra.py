"""DRA (Differentiable RandAugment) behind the method protocol: the layer is
:class:`dra_dali.search.layer.DRAPolicy`; this module is its bi-level step.

Each step (first-order bi-level, as in the paper):

1. **policy step** on the ``val`` batch (DRA's policy half): loss ``CE(f(aug(x)), y) +
   kl_weight * KL(softmax(f(x)) || softmax(f(aug(x))))`` (the clean prediction is a target: no
   gradient), gradient with respect to the policy parameters only, AdamW step, then ``mean``
   clipped to ``[0, scale]`` and ``std`` to ``[0, 1]``;
2. **model step** on the ``train`` batch (the model half) augmented by the current policy (no
   gradient to the policy), then Cutout (``cutout``): cross-entropy, the run's SGD step.
   ``cutout_policy_step: true`` applies that Cutout to the policy step's augmented batch too.

DRA's recipe keys are top-level (``depth``, ``temperature``, ``sampling``, ``init_*``,
``learn_*``, ``op_gradient``, ``kl_weight``, ``policy_*``): they predate the method platform.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from dra_dali.policy import Policy
from dra_dali.search.layer import DRAPolicy
from dra_dali.search.methods import register
from dra_dali.search.methods.base import Batch, SearchMethod, StepContext

__all__ = ["DRAMethod", "build_policy_module"]


def build_policy_module(config) -> DRAPolicy:
    """The :class:`DRAPolicy` a configuration describes."""
    return DRAPolicy(config.ops, depth=config.depth, resolution=config.resolution,
                     scale=config.scale, apply_prob=config.apply_prob,
                     temperature=config.temperature, sampling=config.sampling,  # type: ignore
                     init_logit=config.init_logit, init_mean=config.init_mean,
                     init_std=config.init_std, learn_w=config.learn_w,
                     learn_mean=config.learn_mean, learn_std=config.learn_std,
                     op_gradient=config.op_gradient, fill=config.fill)


@register
class DRAMethod(SearchMethod):
    """Differentiable RandAugment: learned operator weights and normal magnitude distributions."""

    name = "dra"

    def __init__(self, config, options, *, num_classes: int, device: torch.device) -> None:
        super().__init__(config, options, num_classes=num_classes, device=device)
        self.policy = build_policy_module(config).to(device)
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = (torch.optim.AdamW(self.params, lr=config.policy_lr,
                                            betas=config.policy_betas,
                                            weight_decay=config.policy_weight_decay)
                          if self.params else None)

    def step(self, ctx: StepContext, train: Batch, val: Batch) -> dict[str, float]:
        ce_b = kl_b = 0.0
        if self.optimizer is not None:
            ce_b, kl_b = self._policy_step(ctx, val)
        with torch.no_grad():
            xa = self.policy(train.images, ctx.generator)
        xa = ctx.cutout(xa)
        ce_a, acc = ctx.train_ce(xa, train.labels)
        ctx.model_step(ce_a)
        return {"policy_ce": ce_b, "policy_kl": kl_b, "model_ce": float(ce_a.detach()),
                "model_acc": acc}

    def _policy_step(self, ctx: StepContext, val: Batch) -> tuple[float, float]:
        with torch.no_grad():
            clean = ctx.logits(val.images)
        augmented = self.policy(val.images, ctx.generator)
        if self.config.cutout_policy_step:  # the DRA authors' CIFAR search: Cutout in both steps
            augmented = ctx.cutout(augmented)
        logits = ctx.logits(augmented)
        ce = F.cross_entropy(logits, val.labels)
        kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(clean, dim=1),
                      reduction="batchmean", log_target=True)
        kl_weight = self.config.kl_weight
        loss = ce + kl_weight * kl if kl_weight > 0 else ce
        # Gradient with respect to the policy only: the model's weight gradients are not needed.
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        for p, g in zip(self.params, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        self.optimizer.step()
        self.policy.clip_()
        return float(ce.detach()), float(kl.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    def snapshot(self) -> dict[str, Any]:
        return {"probabilities": self.policy.probabilities().cpu().tolist(),
                "mean": self.policy.mean.detach().cpu().tolist(),
                "std": self.policy.std.detach().cpu().tolist()}

    def to_policy(self, history: Sequence[Mapping[str, Any]],
                  provenance: Mapping[str, Any]) -> Policy:
        return self.policy.to_policy(provenance={**provenance,
                                                 "sampling": self.config.sampling})

    def plots(self, history: Sequence[Mapping[str, Any]], policy: Policy,
              out_dir: Path) -> list[Path]:
        from dra_dali.search.plots import plot_trajectories
        from dra_dali.viz import plot_policy

        return [plot_trajectories(history, policy.ops, out_dir / "trajectories.png"),
                plot_policy(policy, out_dir / "policy.png", title="searched DRA policy")]
