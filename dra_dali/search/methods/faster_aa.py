"""Faster AutoAugment (Hataya et al., ECCV 2020) as a search method: ``--method faster-aa``.

The policy (:class:`FasterAAPolicy`) is ``sub_policies`` chains of ``stages`` stages. Each stage
holds, per candidate operator ``k``:

* a weight ``w_k``; the stage's output during search is the image-weighted sum
  ``sum_k softmax(w / temperature)_k * O_k(x)`` over **all** operators (relaxed categorical);
* an apply probability ``p_k``: ``O_k(x) = b * op_k(x, m_k) + (1 - b) * x`` with ``b`` a relaxed
  Bernoulli sample of temperature ``bernoulli_temperature`` per image;
* a magnitude ``m_k`` (one number, learned; random sign per image for signed operators),
  straight through the image where the operator is not differentiable
  (:func:`dra_dali.search.methods.blocks.apply_learned`).

As in the authors' code (``moskomule/dda``, ``faster_autoaugment/policy.py``) every parameter
starts uniform in [0, 1), the weight temperature is 0.05, the Bernoulli temperature 0.1, and the
batch is cut into ``chunks`` pieces that each draw one sub-policy uniformly.

The objective (``faster_autoaugment/search.py``) has no nested loop. Per step, with the critic =
the proxy model with a second head on its penultimate features (:class:`CriticHead`):

1. critic step: ``cls_factor * CE(real) - D(real) + D(aug) + gp_factor * GP`` where ``real`` is
   the ``val`` batch, ``aug`` the policy applied to the ``train`` batch (no gradient to the
   policy) and ``GP`` the WGAN-GP penalty ``(||grad D(x_hat)|| - 1)^2`` on interpolates;
2. policy step: ``cls_factor * CE(critic(aug), y) - D(aug)``, gradient to the policy only.

Both use Adam with ``betas = (0, 0.999)`` (critic: the model and the discriminator head).

Example:
    >>> import torch
    >>> from dra_dali.search.methods.faster_aa import FasterAAPolicy
    >>> policy = FasterAAPolicy(("Rotate", "Invert"), sub_policies=2, stages=2, resolution=32)
    >>> policy(torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(0)).shape
    torch.Size([4, 3, 32, 32])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dra_dali.policy import Policy
from dra_dali.search.methods import register
from dra_dali.search.methods.base import Batch, OptionsError, SearchMethod, StepContext
from dra_dali.search.methods.blocks import (
    apply_learned,
    magnitude_free_mask,
    plot_op_trajectories,
    random_signs,
    relaxed_bernoulli,
)
from dra_dali.search.ops import cutout_centers

__all__ = ["CriticHead", "FasterAA", "FasterAAPolicy", "gradient_penalty", "policy_body"]


class FasterAAPolicy(nn.Module):
    """The differentiable sub-policies of Faster AutoAugment.

    Args:
        ops: candidate operators (catalog names).
        sub_policies: number of sub-policies (paper: 10).
        stages: stages per sub-policy (paper: 2).
        resolution: training resolution (translate range).
        scale: magnitudes are clipped to ``[0, scale]``.
        fill: grey level (0-255) of the geometric fill.
        temperature: temperature of the operator weights' softmax (authors: 0.05).
        bernoulli_temperature: temperature of the relaxed Bernoulli apply mask (authors: 0.1).
        chunks: the batch is cut into this many pieces, each with its own sub-policy (authors: 8).
        generator: draws the initial parameters (uniform in [0, 1), as the authors).
    """

    def __init__(self, ops: Sequence[str], sub_policies: int = 10, stages: int = 2,
                 resolution: int = 32, scale: float = 1.0, fill: int = 128,
                 temperature: float = 0.05, bernoulli_temperature: float = 0.1, chunks: int = 8,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.ops = tuple(ops)
        self.resolution, self.scale, self.fill = int(resolution), float(scale), int(fill)
        self.temperature = float(temperature)
        self.bernoulli_temperature = float(bernoulli_temperature)
        self.chunks = int(chunks)
        shape = (sub_policies, stages, len(self.ops))
        self.weights = nn.Parameter(torch.rand(shape, generator=generator))
        self.probability = nn.Parameter(torch.rand(shape, generator=generator))
        self.magnitude = nn.Parameter(torch.rand(shape, generator=generator) * self.scale)
        self.register_buffer("_free", magnitude_free_mask(self.ops), persistent=False)
        self.clip_()

    @property
    def sub_policies(self) -> int:
        return self.weights.shape[0]

    @property
    def stages(self) -> int:
        return self.weights.shape[1]

    @torch.no_grad()
    def clip_(self) -> None:
        """Clip probabilities to [0, 1] and magnitudes to [0, scale] (after every policy step);
        magnitude-free operators keep magnitude 0."""
        self.probability.clamp_(0.0, 1.0)
        self.magnitude.clamp_(0.0, self.scale)
        self.magnitude.masked_fill_(self._free, 0.0)

    def op_weights(self) -> torch.Tensor:
        """``(sub_policies, stages, ops)`` operator probabilities ``softmax(w / temperature)``."""
        return torch.softmax(self.weights / self.temperature, dim=-1)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a float [0, 1] batch; differentiable in every policy parameter.

        The batch is cut into ``chunks`` pieces (fewer for small batches); each piece draws one
        sub-policy uniformly with ``generator`` and runs its stages.
        """
        pieces = x.chunk(min(self.chunks, x.shape[0]))
        out = []
        for piece in pieces:
            index = int(torch.randint(self.sub_policies, (1,), generator=generator))
            for stage in range(self.stages):
                piece = self._stage(piece, index, stage, generator)
            out.append(piece)
        return torch.cat(out)

    def _stage(self, x: torch.Tensor, sub: int, stage: int,
               generator: torch.Generator | None) -> torch.Tensor:
        b = x.shape[0]
        weights = self.op_weights()[sub, stage]
        signs = random_signs(self.ops, b, generator).to(x.device)
        centers = cutout_centers(b, x.shape[2], x.shape[3], generator).to(x.device)
        magnitude = self.magnitude[sub, stage].clamp(0.0, self.scale)
        total = torch.zeros_like(x)
        for k, name in enumerate(self.ops):
            mask = relaxed_bernoulli(self.probability[sub, stage, k], self.bernoulli_temperature,
                                     (b,), generator).view(-1, 1, 1, 1)
            y = apply_learned(name, x, magnitude[k], signs[k], self.resolution, self.fill,
                              centers)
            total = total + weights[k] * (mask * y + (1.0 - mask) * x)
        return total

    def snapshot(self) -> dict[str, Any]:
        """The parameters as plain lists ``(sub_policies, stages, ops)``: operator weights
        (probabilities), apply probabilities, magnitudes; and ``probabilities``
        ``(stages, ops)``: the chance that the exported policy applies each operator at each
        stage (sub-policies drawn uniformly), the per-layer view the sanity protocol reads."""
        with torch.no_grad():
            weights = self.op_weights()
            apply = self.probability.clamp(0, 1)
            return {"op_weights": weights.cpu().tolist(), "apply_prob": apply.cpu().tolist(),
                    "magnitude": self.magnitude.clamp(0, self.scale).cpu().tolist(),
                    "probabilities": (weights * apply).mean(dim=0).cpu().tolist()}


def policy_body(snapshot: dict[str, Any], ops: Sequence[str], *, resolution: int, scale: float,
                fill: int) -> dict[str, Any]:
    """The ``dra-policy/2`` body of a Faster AutoAugment snapshot (:meth:`FasterAAPolicy.snapshot`).

    One sub-policy per searched sub-policy, weight ``1 / sub_policies`` (the search draws them
    uniformly); per stage the operator probabilities as logits (``log`` of the weights, so that
    ``softmax(logits)`` gives them back), the per-operator apply probability and a fixed magnitude
    per operator (``normal`` with ``std 0``; signed operators keep their random sign, as in search).
    """
    weights = snapshot["op_weights"]
    count = len(weights)
    subpolicies = []
    for sub in range(count):
        layers = []
        for stage, probs in enumerate(weights[sub]):
            logits = [_log(p) for p in probs]
            magnitude = [{"dist": "normal", "mean": _round(m), "std": 0.0}
                         for m in snapshot["magnitude"][sub][stage]]
            layers.append({"logits": logits,
                           "op_apply_prob": [_round(p) for p in snapshot["apply_prob"][sub][stage]],
                           "magnitude": magnitude})
        subpolicies.append({"weight": 1.0 / count, "layers": layers})
    return {"format": "dra-policy/2", "ops": list(ops), "resolution": int(resolution),
            "scale": float(scale), "fill": int(fill), "apply_prob": [1.0, 1.0],
            "subpolicies": subpolicies}


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def _log(probability: float) -> float:
    # softmax(w / 0.05) underflows to 0 for far-behind operators: keep them at a very negative
    # (finite) logit, which policies accept as "never chosen".
    return _round(float(torch.log(torch.tensor(max(probability, 1e-40), dtype=torch.float64))))


class CriticHead(nn.Module):
    """The critic's second head: ``Linear(F, F) -> ReLU -> Linear(F, 1)`` on the proxy model's
    penultimate features (the input of its last ``nn.Linear``, the classification head), as in
    the authors' ``Discriminator``."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, features), nn.ReLU(),
                                 nn.Linear(features, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).view(-1)


class FeatureTap:
    """Captures the input of a model's last ``nn.Linear`` (its penultimate features) on every
    forward pass, so that the discriminator head reads the classifier's features.

    Raises:
        ValueError: the model has no ``nn.Linear`` layer.
    """

    def __init__(self, model: nn.Module) -> None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(model).__name__}: Faster AutoAugment's critic needs a model "
                             "whose classifier is an nn.Linear layer")
        self.layer = linears[-1]
        self.features: torch.Tensor | None = None
        self._handle = self.layer.register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:  # noqa: ARG002
        self.features = inputs[0]

    def remove(self) -> None:
        self._handle.remove()


def critic_outputs(model: nn.Module, tap: FeatureTap, head: CriticHead,
                   images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(class logits, critic value)`` of a batch (``images`` already normalised)."""
    logits = model(images)
    return logits, head(tap.features)


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None) -> torch.Tensor:
    """WGAN-GP: ``mean((||grad_x critic(x_hat)||_2 - 1)^2)`` at ``x_hat = a real + (1 - a) fake``,
    ``a ~ U(0, 1)`` per image, the norm over each image's pixels (Gulrajani et al.).

    Args:
        critic: ``images -> (B,)`` critic values (differentiable, ``create_graph`` is used).
        real, fake: batches of the same shape.
        generator: draws ``a``.
    """
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=generator).to(real)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    value = critic(mixed)
    (grad,) = torch.autograd.grad(value.sum(), mixed, create_graph=True)
    # The authors' code takes the norm over the channel axis only (grad.norm(2, dim=1)); this is
    # the penalty of the WGAN-GP paper, the norm over the whole image.
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


#: Adam's betas of both optimisers in the authors' search (``optim.Adam(..., betas=(0, 0.999))``).
_BETAS = (0.0, 0.999)


@register
class FasterAA(SearchMethod):
    """Faster AutoAugment: sub-policies learned against a WGAN-GP critic (see the module doc).

    ``train`` is the batch the policy augments, ``val`` the "original" batch the critic compares
    it with: the policy learns to make the model half look like the other half (in the sanity
    protocol, the transformed half).
    """

    name = "faster-aa"

    @dataclass(frozen=True)
    class Options:
        """Recipe keys under ``faster-aa:`` (defaults: the authors' ``config/search.yaml``)."""

        sub_policies: int = 10
        stages: int = 2
        temperature: float = 0.05
        bernoulli_temperature: float = 0.1
        chunks: int = 8
        cls_factor: float = 0.1
        gp_factor: float = 10.0
        policy_lr: float = 1e-3
        critic_lr: float = 1e-3

    @classmethod
    def check_options(cls, options: Any, config: Any) -> None:
        for key in ("sub_policies", "stages", "chunks"):
            if getattr(options, key) < 1:
                raise OptionsError(f"faster-aa.{key}: must be >= 1, got {getattr(options, key)}")
        for key in ("temperature", "bernoulli_temperature", "policy_lr", "critic_lr"):
            if not getattr(options, key) > 0:
                raise OptionsError(f"faster-aa.{key}: must be > 0, got {getattr(options, key)}")
        for key in ("cls_factor", "gp_factor"):
            if getattr(options, key) < 0:
                raise OptionsError(f"faster-aa.{key}: must be >= 0, got {getattr(options, key)}")

    def __init__(self, config, options, *, num_classes: int, device: torch.device) -> None:
        super().__init__(config, options, num_classes=num_classes, device=device)
        init = torch.Generator().manual_seed(config.seed)
        self.policy = FasterAAPolicy(
            config.ops, options.sub_policies, options.stages, config.resolution, config.scale,
            config.fill, options.temperature, options.bernoulli_temperature, options.chunks,
            generator=init).to(device)
        self.policy_opt = torch.optim.Adam(self.policy.parameters(), lr=options.policy_lr,
                                           betas=_BETAS)
        # The critic's head needs the model's feature width: built at the first step.
        self.head: CriticHead | None = None
        self.tap: FeatureTap | None = None
        self.critic_opt: torch.optim.Optimizer | None = None
        self._pending: Mapping[str, Any] | None = None

    def _critic(self, model: nn.Module) -> None:
        if self.head is not None:
            return
        self.tap = FeatureTap(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + 1)
            self.head = CriticHead(self.tap.layer.in_features).to(self.device)
        self.critic_opt = torch.optim.Adam([*model.parameters(), *self.head.parameters()],
                                           lr=self.options.critic_lr, betas=_BETAS)
        if self._pending is not None:
            self.head.load_state_dict(self._pending["head"])
            self.critic_opt.load_state_dict(self._pending["critic_opt"])
            self._pending = None

    def _outputs(self, ctx: StepContext, images: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return critic_outputs(ctx.model, self.tap, self.head, ctx.normalize(images))

    def step(self, ctx: StepContext, train: Batch, val: Batch) -> dict[str, float]:
        self._critic(ctx.model)
        metrics = self._critic_step(ctx, train, val)
        metrics.update(self._policy_step(ctx, train))
        return metrics

    def _critic_step(self, ctx: StepContext, train: Batch, val: Batch) -> dict[str, float]:
        opts = self.options
        with torch.no_grad():
            augmented = self.policy(train.images, ctx.generator)
        logits, d_real = self._outputs(ctx, val.images)
        ce = F.cross_entropy(logits, val.labels)
        _, d_aug = self._outputs(ctx, augmented)
        n = min(len(val.labels), len(train.labels))
        gp = gradient_penalty(lambda im: self._outputs(ctx, im)[1], val.images[:n],
                              augmented[:n], ctx.generator)
        loss = opts.cls_factor * ce - d_real.mean() + d_aug.mean() + opts.gp_factor * gp
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        accuracy = float((logits.detach().argmax(1) == val.labels).float().mean())
        return {"model_ce": float(ce.detach()), "model_acc": accuracy,
                "wasserstein": float((d_real.mean() - d_aug.mean()).detach()),
                "gradient_penalty": float(gp.detach())}

    def _policy_step(self, ctx: StepContext, train: Batch) -> dict[str, float]:
        logits, d_aug = self._outputs(ctx, self.policy(train.images, ctx.generator))
        ce = F.cross_entropy(logits, train.labels)
        loss = self.options.cls_factor * ce - d_aug.mean()
        params = list(self.policy.parameters())
        # Gradient to the policy only: the critic is fixed during this step.
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        self.policy_opt.step()
        self.policy.clip_()
        return {"policy_ce": float(ce.detach()), "policy_loss": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        critic = ({"head": self.head.state_dict(), "critic_opt": self.critic_opt.state_dict()}
                  if self.head is not None else self._pending)
        return {"policy": self.policy.state_dict(), "policy_opt": self.policy_opt.state_dict(),
                "critic": critic}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.policy_opt.load_state_dict(state["policy_opt"])
        self._pending = state["critic"]
        if self.head is not None and self._pending is not None:
            self.head.load_state_dict(self._pending["head"])
            self.critic_opt.load_state_dict(self._pending["critic_opt"])
            self._pending = None

    def snapshot(self) -> dict[str, Any]:
        return self.policy.snapshot()

    def to_policy(self, history: Sequence[Mapping[str, Any]],
                  provenance: Mapping[str, Any]) -> Policy:
        body = policy_body(self.policy.snapshot(), self.policy.ops,
                           resolution=self.config.resolution, scale=self.config.scale,
                           fill=self.config.fill)
        return Policy.from_dict({**body, "provenance": dict(provenance)})

    def plots(self, history: Sequence[Mapping[str, Any]], policy: Policy,
              out_dir: Path) -> list[Path]:
        from dra_dali.viz import plot_policy

        panels = {"op_weights": "operator weight", "apply_prob": "apply probability",
                  "magnitude": "magnitude"}
        return [plot_op_trajectories(
            history, panels, self.policy.ops, out_dir / "trajectories.png",
            f"Faster AutoAugment parameters (mean over {self.policy.sub_policies} sub-policies "
            f"x {self.policy.stages} stages)"),
            plot_policy(policy, out_dir / "policy.png", title="searched Faster AutoAugment policy")]
