"""DAS, image-to-image mode (Differentiable Augmentation Search; supplement Sec. F, App. B-C):
``--method das``.

The cell (:class:`DASCell`) chains one DARTS mixed operation per candidate transformation ``T_k``
against Identity (Eq. 4): ``x <- theta_T,k * T_k(x) + theta_I,k * x`` with
``(theta_T,k, theta_I,k) = softmax(tau_T,k, tau_I,k)``; each ``T_k`` has one learned magnitude
(random sign per image for signed operators; gradient straight through the image,
:func:`dra_dali.search.methods.blocks.apply_learned`). The candidates are the recipe's ``ops``
without Identity (the DAS recipe lists the supplement's 14 transformations).

Search, bi-level as DARTS on the target network's validation loss. Augmentation is a
training-only operation (App. C: "DAS is involved only during training"), so the validation batch
is **clean** and the architecture reaches the validation loss only through the weights: per step

1. architect step: the exact gradient of ``CE(f_{w'}(x_val), y_val)`` with
   ``w' = w - eta * grad_w CE(f_w(cell(x_train)), y_train)`` (DARTS' second-order unrolled step at
   the run's learning rate ``eta``, plain SGD, through ``torch.func.functional_call``; batch-norm
   statistics are copies) with respect to ``tau`` and the magnitudes; Adam, ``lr 3e-4``,
   ``betas (0.5, 0.999)``, ``weight_decay 1e-3`` (App. C, DARTS' architect);
2. model step: ``CE(f(cell(x_train)), y_train)`` through the run's optimiser.

The recipe's ``cutout`` applies to the training batch before the cell (App. C: crop, flip and
Cutout on the inputs of the DAS cell).

Final choice (Eq. 5-6, App. B): ``argmax tau`` ends up choosing Identity, so the choice is made by
perturbation (as DARTS-PT): in the last ``select_epochs`` epochs, every step measures for every
candidate the clean validation loss after one virtual training step with that mixed operation
forced to ``T_k`` and, with the same random draws, forced to Identity. A candidate is selected when
forcing ``T_k`` lowers the validation loss on average (``score_k = L(I) - L(T) > min_gain``); at
most ``max_ops`` of them, best first. The policy applies the selected transformations in that
order, each with probability ``theta_T,k`` (the stochastic reading of the mixed operation's blend)
at its learned magnitude.

Example:
    >>> import torch
    >>> from dra_dali.search.methods.das import DASCell
    >>> cell = DASCell(("Rotate", "Invert"), resolution=32)
    >>> cell(torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(0)).shape
    torch.Size([4, 3, 32, 32])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dra_dali.policy import Policy
from dra_dali.search.methods import register
from dra_dali.search.methods.base import Batch, OptionsError, SearchMethod, StepContext
from dra_dali.search.methods.blocks import (
    apply_learned,
    magnitude_free_mask,
    plot_op_trajectories,
    random_signs,
)
from dra_dali.search.ops import cutout_centers

__all__ = ["DAS", "DASCell", "select", "policy_body"]

#: Index of the two alternatives of a mixed operation in ``tau``.
TRANSFORM, IDENTITY = 0, 1
#: The architect's Adam (App. C; betas as DARTS' architect).
_ARCH_LR, _ARCH_BETAS, _ARCH_WD = 3e-4, (0.5, 0.999), 1e-3


class DASCell(nn.Module):
    """The chain of mixed operations ``theta_T T_k(x) + theta_I x`` over ``candidates``.

    Args:
        candidates: transformation names (catalog, not Identity).
        resolution: training resolution (translate range).
        scale: magnitudes are clipped to ``[0, scale]``.
        fill: grey level (0-255) of the geometric fill.
        init_magnitude: initial magnitude of every transformation.
        generator: draws the initial ``tau`` (``1e-3 * N(0, 1)``, as DARTS).
    """

    def __init__(self, candidates: Sequence[str], resolution: int = 32, scale: float = 1.0,
                 fill: int = 128, init_magnitude: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.candidates = tuple(candidates)
        self.resolution, self.scale, self.fill = int(resolution), float(scale), int(fill)
        self.tau = nn.Parameter(1e-3 * torch.randn(len(self.candidates), 2, generator=generator))
        self.magnitude = nn.Parameter(torch.full((len(self.candidates),), float(init_magnitude)))
        self.register_buffer("_free", magnitude_free_mask(self.candidates), persistent=False)
        self.clip_()

    def theta(self) -> torch.Tensor:
        """``(K, 2)`` mixing weights ``softmax(tau)``: column 0 the transformation, 1 Identity."""
        return torch.softmax(self.tau, dim=-1)

    @torch.no_grad()
    def clip_(self) -> None:
        """Magnitudes to ``[0, scale]``; magnitude-free transformations keep 0."""
        self.magnitude.clamp_(0.0, self.scale)
        self.magnitude.masked_fill_(self._free, 0.0)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                forced: tuple[int, int] | None = None) -> torch.Tensor:
        """Run the chain on a float [0, 1] batch.

        Args:
            x: ``(B, 3, H, W)`` images.
            generator: draws the signs and Cutout centres.
            forced: ``(k, TRANSFORM | IDENTITY)``: mixed operation ``k`` takes only that
                alternative (the perturbation); the others stay mixed.
        """
        b = x.shape[0]
        theta = self.theta()
        if forced is not None:
            one_hot = torch.zeros(2, device=theta.device)
            one_hot[forced[1]] = 1.0
            theta = theta.clone()
            theta[forced[0]] = one_hot
        signs = random_signs(self.candidates, b, generator).to(x.device)
        centers = cutout_centers(b, x.shape[2], x.shape[3], generator).to(x.device)
        magnitude = self.magnitude.clamp(0.0, self.scale)
        for k, name in enumerate(self.candidates):
            y = apply_learned(name, x, magnitude[k], signs[k], self.resolution, self.fill,
                              centers)
            x = theta[k, TRANSFORM] * y + theta[k, IDENTITY] * x
        return x


def _clone(generator: torch.Generator) -> torch.Generator:
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    return copy


def unrolled_val_loss(ctx: StepContext, cell: DASCell, train: Batch, val: Batch,
                      generator: torch.Generator, *, create_graph: bool,
                      forced: tuple[int, int] | None = None) -> torch.Tensor:
    """The clean ``val`` cross-entropy after one virtual SGD step (rate ``ctx.lr``) on the
    ``train`` batch augmented by ``cell``; with ``create_graph`` differentiable in the cell."""
    model = ctx.model
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = {n: p for n, p in named}
    augmented = cell(train.images, generator, forced)
    logits = functional_call(model, {**params, **buffers}, (ctx.normalize(augmented),))
    loss = F.cross_entropy(logits, train.labels)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    stepped = {n: p - ctx.lr * g for (n, p), g in zip(named, grads)}
    if not create_graph:
        stepped = {n: p.detach() for n, p in stepped.items()}
    val_logits = functional_call(model, {**stepped, **buffers}, (ctx.normalize(val.images),))
    return F.cross_entropy(val_logits, val.labels)


def select(scores: Sequence[float], counts: Sequence[int], candidates: Sequence[str],
           min_gain: float, max_ops: int | None) -> list[int]:
    """Indices of the selected candidates, best first: measured, ``score > min_gain``, at most
    ``max_ops`` (``None``: no limit)."""
    chosen = [k for k in range(len(candidates)) if counts[k] > 0 and scores[k] > min_gain]
    chosen.sort(key=lambda k: (-scores[k], k))
    return chosen if max_ops is None else chosen[:max_ops]


def policy_body(candidates: Sequence[str], chosen: Sequence[int], theta_t: Sequence[float],
                magnitude: Sequence[float], *, resolution: int, scale: float,
                fill: int) -> dict[str, Any]:
    """The ``dra-policy/2`` body: one layer per selected transformation, in order, that always
    chooses it and applies it with probability ``theta_T`` at its magnitude (fixed). Without a
    selected transformation: one layer of Identity."""
    if not chosen:
        layers = [{"logits": [0.0], "op_apply_prob": [1.0],
                   "magnitude": [{"dist": "normal", "mean": 0.0, "std": 0.0}]}]
        ops = ["Identity"]
    else:
        ops = [candidates[k] for k in chosen]
        layers = []
        for i in range(len(chosen)):
            layers.append({
                "logits": [0.0 if j == i else -100.0 for j in range(len(chosen))],
                "op_apply_prob": [float(f"{theta_t[c]:.6g}") for c in chosen],
                "magnitude": [{"dist": "normal", "mean": float(f"{magnitude[c]:.6g}"),
                               "std": 0.0} for c in chosen]})
    return {"format": "dra-policy/2", "ops": ops, "resolution": int(resolution),
            "scale": float(scale), "fill": int(fill), "apply_prob": [1.0, 1.0],
            "layers": layers}


@register
class DAS(SearchMethod):
    """DAS image-to-image: mixed operations against Identity, chosen by perturbation."""

    name = "das"

    @dataclass(frozen=True)
    class Options:
        """Recipe keys under ``das:``.

        Attributes:
            arch_lr, arch_weight_decay: the architect's Adam (App. C: 3e-4, 1e-3).
            init_magnitude: initial magnitude of every transformation.
            learn_magnitude: the architect also learns the magnitudes.
            select_epochs: the last epochs in which the perturbation is measured.
            min_gain: a transformation is selected when forcing it lowers the validation loss
                by more than this (nats, averaged over the measurements).
            max_ops: at most this many transformations (``null``: every one that qualifies).
            perturb_per_step: candidates measured per step in the selection epochs, in turn
                (``null``: all of them every step; each measurement costs two virtual steps).
        """

        arch_lr: float = _ARCH_LR
        arch_weight_decay: float = _ARCH_WD
        init_magnitude: float = 0.5
        learn_magnitude: bool = True
        select_epochs: int = 1
        min_gain: float = 0.0
        max_ops: int | None = None
        perturb_per_step: int | None = None

    @classmethod
    def check_options(cls, options: Any, config: Any) -> None:
        if not options.arch_lr > 0 or options.arch_weight_decay < 0:
            raise OptionsError(f"das.arch_lr must be > 0 and das.arch_weight_decay >= 0, got "
                               f"{options.arch_lr}, {options.arch_weight_decay}")
        if not 0 <= options.init_magnitude <= config.scale:
            raise OptionsError(f"das.init_magnitude: must lie in [0, scale={config.scale}], "
                               f"got {options.init_magnitude}")
        if not 1 <= options.select_epochs <= config.epochs:
            raise OptionsError(f"das.select_epochs: must lie in [1, epochs={config.epochs}], "
                               f"got {options.select_epochs}")
        for key in ("max_ops", "perturb_per_step"):
            value = getattr(options, key)
            if value is not None and value < 1:
                raise OptionsError(f"das.{key}: must be >= 1 or null, got {value}")
        if not [o for o in config.ops if o != "Identity"]:
            raise OptionsError("ops: DAS needs at least one transformation besides Identity")

    def __init__(self, config, options, *, num_classes: int, device: torch.device) -> None:
        super().__init__(config, options, num_classes=num_classes, device=device)
        candidates = [o for o in config.ops if o != "Identity"]
        self.cell = DASCell(candidates, config.resolution, config.scale, config.fill,
                            options.init_magnitude,
                            generator=torch.Generator().manual_seed(config.seed)).to(device)
        self.cell.magnitude.requires_grad_(options.learn_magnitude)
        self.params = [p for p in self.cell.parameters() if p.requires_grad]
        self.architect = torch.optim.Adam(self.params, lr=options.arch_lr, betas=_ARCH_BETAS,
                                          weight_decay=options.arch_weight_decay)
        k = len(candidates)
        # Perturbation sums: validation loss with mixed operation k forced to T / to Identity.
        self.perturb_sum = torch.zeros(k, 2, dtype=torch.float64)
        self.perturb_count = torch.zeros(k, dtype=torch.int64)
        self.perturb_cursor = 0  # the next candidate to measure (round robin)

    def step(self, ctx: StepContext, train: Batch, val: Batch) -> dict[str, float]:
        # Cutout (``cutout``) on the inputs of the cell, as App. C; the validation batch is clean.
        train = Batch(ctx.cutout(train.images), train.labels)
        val_loss = unrolled_val_loss(ctx, self.cell, train, val, ctx.generator, create_graph=True)
        for p, g in zip(self.params, torch.autograd.grad(val_loss, self.params)):
            p.grad = g
        self.architect.step()
        self.cell.clip_()
        metrics = {"val_ce_unrolled": float(val_loss.detach())}
        if ctx.epoch >= self.config.epochs - self.options.select_epochs:
            metrics["perturbation"] = self._perturb(ctx, train, val)
        with torch.no_grad():
            augmented = self.cell(train.images, ctx.generator)
        ce, accuracy = ctx.train_ce(augmented, train.labels)
        ctx.model_step(ce)
        metrics.update(model_ce=float(ce.detach()), model_acc=accuracy)
        return metrics

    def _perturb(self, ctx: StepContext, train: Batch, val: Batch) -> float:
        """Measure ``perturb_per_step`` candidates (in turn) forced to T and to Identity with
        the same draws; returns the mean ``L(I) - L(T)`` of this step."""
        total = len(self.cell.candidates)
        count = min(self.options.perturb_per_step or total, total)
        gains = []
        for i in range(count):
            k = (self.perturb_cursor + i) % total
            losses = []
            for choice in (TRANSFORM, IDENTITY):
                draws = _clone(ctx.generator)  # the same signs and centres for both choices
                loss = unrolled_val_loss(ctx, self.cell, train, val, draws, create_graph=False,
                                         forced=(k, choice))
                losses.append(float(loss))
                self.perturb_sum[k, choice] += losses[-1]
            self.perturb_count[k] += 1
            gains.append(losses[IDENTITY] - losses[TRANSFORM])
        self.perturb_cursor = (self.perturb_cursor + count) % total
        return sum(gains) / len(gains)

    def scores(self) -> list[float]:
        """Per candidate: mean validation loss forced to Identity minus forced to T (0 where
        never measured)."""
        count = self.perturb_count.clamp(min=1).to(torch.float64)
        mean = self.perturb_sum / count.view(-1, 1)
        return (mean[:, IDENTITY] - mean[:, TRANSFORM]).tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"cell": self.cell.state_dict(), "architect": self.architect.state_dict(),
                "perturb_sum": self.perturb_sum.clone(),
                "perturb_count": self.perturb_count.clone(),
                "perturb_cursor": self.perturb_cursor}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.cell.load_state_dict(state["cell"])
        self.architect.load_state_dict(state["architect"])
        self.perturb_sum = state["perturb_sum"].clone()
        self.perturb_count = state["perturb_count"].clone()
        self.perturb_cursor = int(state["perturb_cursor"])

    def snapshot(self) -> dict[str, Any]:
        """``theta_t``, ``magnitude``, ``perturbation`` (scores), ``measured`` (counts) per
        candidate, and ``probabilities`` ``(1, K)``: the chance that the policy exported now
        applies each candidate (``theta_T`` if selected, else 0), as the sanity protocol reads."""
        with torch.no_grad():
            theta_t = self.cell.theta()[:, TRANSFORM].cpu().tolist()
        chosen = set(self._chosen())
        return {"theta_t": theta_t,
                "magnitude": self.cell.magnitude.detach().clamp(0, self.cell.scale).cpu().tolist(),
                "perturbation": self.scores(), "measured": self.perturb_count.tolist(),
                "probabilities": [[t if k in chosen else 0.0 for k, t in enumerate(theta_t)]]}

    def _chosen(self) -> list[int]:
        return select(self.scores(), self.perturb_count.tolist(), self.cell.candidates,
                      self.options.min_gain, self.options.max_ops)

    def to_policy(self, history: Sequence[Mapping[str, Any]],
                  provenance: Mapping[str, Any]) -> Policy:
        snap = self.snapshot()
        chosen = self._chosen()
        body = policy_body(self.cell.candidates, chosen, snap["theta_t"], snap["magnitude"],
                           resolution=self.config.resolution, scale=self.config.scale,
                           fill=self.config.fill)
        scores = {self.cell.candidates[k]: round(s, 6) for k, s in enumerate(snap["perturbation"])}
        return Policy.from_dict({**body, "provenance": {**provenance,
                                                        "perturbation_scores": scores}})

    def plots(self, history: Sequence[Mapping[str, Any]], policy: Policy,
              out_dir: Path) -> list[Path]:
        from dra_dali.viz import plot_policy

        panels = {"theta_t": "theta_T (weight of T vs Identity)", "magnitude": "magnitude",
                  "perturbation": "perturbation score L(I) - L(T)"}
        return [plot_op_trajectories(history, panels, self.cell.candidates,
                                     out_dir / "trajectories.png",
                                     "DAS mixed operations (perturbation: > 0 selects T)"),
                plot_policy(policy, out_dir / "policy.png", title="DAS: selected transformations")]
