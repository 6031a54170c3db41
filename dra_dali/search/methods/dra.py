"""DRA (Differentiable RandAugment): the layer :class:`DRAPolicy` and the method's bi-level step
:class:`DRAMethod`.

**The layer**: learnable operator weights and magnitude distributions, applied to a batch.

Per augmentation layer the module holds logits ``w`` (probabilities ``softmax(w)``), and per
operator a magnitude mean ``mu`` and standard deviation ``sigma``. A forward pass, per layer:

1. draws an operator with a hard Gumbel-softmax (temperature ``tau``, straight-through): the
   one-hot ``h`` is exact in the forward pass and carries the soft gradient to ``w``;
2. computes only the drawn operator; the others enter as ``1 * h_o`` (zero in the forward pass),
   so their logits still receive gradient, as in the authors' code, where ``1`` is one grey level
   of their 0-255 images (1/255 here);
3. draws the magnitude ``m = clip(mu + eps * sigma, 0, scale)`` (reparameterised) and feeds the
   operator ``x + (m - stop_grad(m)) / 255`` so that ``m`` receives the operator's input
   gradient (the authors' straight-through term in their 0-255 units); Brightness, Color,
   Sharpness, Contrast and SolarizeAdd also get ``d OP / d m`` through their parameter;
4. draws a random sign for signed operators and an apply coin with ``p ~ U(lo, hi)`` per image;
   an image whose coin fails keeps its input, still weighted by ``h_o`` (Eq. 8 and 12).

``sampling="image"`` (the default) draws the operator per image, as the DRA authors do (their
layer runs image by image under ``tf.map_fn``), and groups the batch by operator;
``sampling="batch"`` draws one operator per batch and layer (an option; magnitude noise, sign and
apply coin stay per image).

Example:
    >>> import torch
    >>> from dra_dali.search.methods.dra import DRAPolicy
    >>> policy = DRAPolicy(depth=2, resolution=32)
    >>> out = policy(torch.rand(8, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    >>> out.shape, policy.to_policy().depth
    (torch.Size([8, 3, 32, 32]), 2)

**The method step**, first-order bi-level as in the paper:

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
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dra_dali.ops import FILL_VALUE, OP_NAMES, OPS, PAPER_OPS
from dra_dali.policy import Layer, Policy
from dra_dali.search.methods import register
from dra_dali.search.methods.base import Batch, SearchMethod, StepContext
from dra_dali.search.ops import apply_op, cutout_centers

__all__ = ["DRAMethod", "DRAPolicy", "build_policy_module"]


class DRAPolicy(nn.Module):
    """Differentiable RandAugment: ``depth`` layers over ``ops`` with learnable ``logits``,
    ``mean`` and ``std``.

    Args:
        ops: operator names from the catalog (default: all 16, in catalog order).
        depth: number of augmentation layers.
        resolution: training resolution (translate range).
        scale: magnitudes are clipped to ``[0, scale]``.
        apply_prob: ``(lo, hi)`` of the per-image apply probability ``p ~ U(lo, hi)``.
        temperature: Gumbel-softmax temperature ``tau``.
        sampling: ``"image"`` (operator drawn per image, the authors' way) or ``"batch"`` (one
            per batch).
        init_logit, init_mean, init_std: initial values (paper: 1e-3, 0.5, 0.1).
        learn_w, learn_mean, learn_std: which parameters are learned (ablations).
        op_gradient: when False every operator passes the gradient straight through (the
            magnitude then learns only from ``x + m - stop_grad(m)`` with an identity Jacobian).
        fill: grey level (0-255) the geometric operators fill with (the DRA authors: 0).

    Raises:
        ValueError: for an unknown operator, a depth below 1, a bad sampling mode or ranges.
    """

    def __init__(self, ops: Sequence[str] = PAPER_OPS, depth: int = 2, resolution: int = 224,
                 scale: float = 1.0, apply_prob: tuple[float, float] = (0.2, 0.8),
                 temperature: float = 0.5, sampling: Literal["image", "batch"] = "image",
                 init_logit: float = 1e-3, init_mean: float = 0.5, init_std: float = 0.1,
                 learn_w: bool = True, learn_mean: bool = True, learn_std: bool = True,
                 op_gradient: bool = True, fill: int = FILL_VALUE) -> None:
        super().__init__()
        unknown = [name for name in ops if name not in OPS]
        if unknown or not ops:
            raise ValueError(f"ops: unknown operator(s) {unknown}; the catalog has: "
                             f"{', '.join(OP_NAMES)}" if unknown else "ops: empty operator list")
        if depth < 1:
            raise ValueError(f"depth must be >= 1 augmentation layer, got {depth}")
        if sampling not in ("image", "batch"):
            raise ValueError(f"sampling must be 'image' or 'batch', got {sampling!r}")
        lo, hi = apply_prob
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"apply_prob must satisfy 0 <= lo <= hi <= 1, got {apply_prob}")
        if not 0 <= fill <= 255:
            raise ValueError(f"fill must be a grey level in [0, 255], got {fill}")
        if temperature <= 0 or scale <= 0:
            raise ValueError(f"temperature and scale must be > 0, got {temperature}, {scale}")
        self.ops = tuple(ops)
        self.resolution = int(resolution)
        self.scale = float(scale)
        self.apply_prob = (float(lo), float(hi))
        self.temperature = float(temperature)
        self.sampling = sampling
        self.op_gradient = op_gradient
        self.fill = int(fill)
        n = len(self.ops)
        self.logits = nn.Parameter(torch.full((depth, n), float(init_logit)), requires_grad=learn_w)
        self.mean = nn.Parameter(torch.full((depth, n), float(init_mean)), requires_grad=learn_mean)
        self.std = nn.Parameter(torch.full((depth, n), float(init_std)), requires_grad=learn_std)
        self.register_buffer("_signed", torch.tensor([OPS[o].signed for o in self.ops]))
        self.clip_()

    @property
    def depth(self) -> int:
        """Number of augmentation layers."""
        return self.logits.shape[0]

    @torch.no_grad()
    def clip_(self) -> None:
        """Clip ``mean`` to ``[0, scale]`` and ``std`` to ``[0, 1]`` (after every policy step)."""
        self.mean.clamp_(0.0, self.scale)
        self.std.clamp_(0.0, 1.0)

    def _one_hot(self, layer: int, rows: int, generator: torch.Generator | None) -> torch.Tensor:
        logits = self.logits[layer].expand(rows, -1)
        u = torch.rand(logits.shape, generator=generator).to(logits.device)
        gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
        soft = torch.softmax((logits + gumbel) / self.temperature, dim=-1)
        index = soft.argmax(dim=-1)
        hard = torch.nn.functional.one_hot(index, soft.shape[-1]).to(soft.dtype)
        return hard - soft.detach() + soft

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch.

        Args:
            x: ``(B, 3, H, W)`` float images in [0, 1].
            generator: CPU random generator for every draw (operator, magnitude noise, sign,
                apply coin, Cutout centre); the global generator when ``None``.

        Returns:
            The augmented ``(B, 3, H, W)`` batch; differentiable with respect to ``logits``,
            ``mean`` and ``std`` (those that are learned) and to ``x``.
        """
        b = x.shape[0]
        for layer in range(self.depth):
            rows = b if self.sampling == "image" else 1
            hard = self._one_hot(layer, rows, generator).expand(b, -1)
            chosen = hard.detach().argmax(dim=-1)
            eps = torch.randn(b, generator=generator).to(x.device)
            sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0).to(x.device)
            lo, hi = self.apply_prob
            p = lo + (hi - lo) * torch.rand(b, generator=generator)
            applied = (torch.rand(b, generator=generator) < p).to(x.device)
            centers = cutout_centers(b, x.shape[2], x.shape[3], generator).to(x.device)
            magnitude = torch.clamp(self.mean[layer, chosen] + eps * self.std[layer, chosen],
                                    0.0, self.scale)
            sign = torch.where(self._signed[chosen], sign, torch.ones_like(sign))
            x = self._apply_layer(x, hard, chosen, magnitude, sign, applied, centers)
        return x

    def _apply_layer(self, x, hard, chosen, magnitude, sign, applied, centers) -> torch.Tensor:
        b = x.shape[0]
        outputs, order = [], []
        rows = torch.arange(b, device=x.device)
        for op_index in torch.unique(chosen).tolist():
            idx = rows[chosen == op_index]
            xi, mi = x[idx], magnitude[idx]
            weight = hard[idx]
            out = apply_op(self.ops[op_index], self._entering(op_index, xi, mi), mi, sign[idx],
                           self.resolution, fill=self.fill, centers=centers[idx],
                           straight_through=None if self.op_gradient else True)
            keep = applied[idx].view(-1, 1, 1, 1)
            # Eq. (8) and (12): an image whose apply coin failed is X^{d-1}, and it is still
            # weighted by h_o (its logits get gradient; its magnitude gets none). Letting it
            # bypass h_o instead (the code before issue 9) gave the same trend on the demo
            # search (blend mean 0.207 vs 0.202 at epoch 12, seed 0; 0.266 vs 0.259 at epoch 9,
            # seed 1), so the paper's form is the only one.
            out = torch.where(keep, out, xi)
            # The 1 * h_o of the operators not drawn is one grey level in the authors' 0-255
            # images: 1/255 here. A 1 in [0, 1] units would be white, and the logits would learn
            # which operator's output is furthest from white (SolarizeAdd top-1 in 6 of 6 layers
            # with nothing transformed in the data, before this was scaled).
            others = (weight.sum(dim=1) - weight[:, op_index]) / 255.0
            out = weight[:, op_index].view(-1, 1, 1, 1) * out + others.view(-1, 1, 1, 1)
            outputs.append(out)
            order.append(idx)
        inverse = torch.empty_like(rows)
        inverse[torch.cat(order)] = rows
        return torch.cat(outputs)[inverse]

    def _entering(self, op_index: int, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """The image the drawn operator sees: ``x + (m - stop_grad(m)) / 255``.

        The straight-through term gives the magnitude the operator's input gradient, summed
        over the pixels. The authors add ``m - stop_grad(m)`` to 0-255 images, one grey level
        per unit of ``m``: 1/255 in the [0, 1] units here. Unlike the authors' code,
        magnitude-free operators (Equalize, AutoContrast, Invert) get no such term: their mean
        and std have no meaning, so they stay at their initial values instead of drifting.
        """
        if OPS[self.ops[op_index]].magnitude_free:
            return x
        return x + ((m - m.detach()) / 255.0).view(-1, 1, 1, 1)

    def to_policy(self, provenance: dict[str, Any] | None = None) -> Policy:
        """The current parameters as a validated :class:`dra_dali.policy.Policy`."""
        def values(t: torch.Tensor) -> list[list[float]]:
            # The shortest decimal that round-trips the float32 value (0.001, not 0.00100000004).
            return [[float(str(v)) for v in row] for row in t.detach().cpu().float().numpy()]

        logits, mean, std = values(self.logits), values(self.mean), values(self.std)
        layers = tuple(Layer(tuple(w), tuple(m), tuple(s)) for w, m, s in zip(logits, mean, std))
        return Policy(self.ops, layers, resolution=self.resolution, scale=self.scale,
                      apply_prob=self.apply_prob, fill=self.fill, provenance=provenance or {})

    @torch.no_grad()
    def probabilities(self) -> torch.Tensor:
        """``(depth, ops)`` softmax of the logits."""
        return torch.softmax(self.logits.detach(), dim=-1)



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
