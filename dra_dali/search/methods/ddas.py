"""DDAS (Direct Differentiable Augmentation Search, Liu et al., ICCV 2021) behind the protocol.

Parameters (§3.1, §3.5.2): the total probability ``p_tp = sigmoid(alpha_tp)`` (whether an image
is augmented at all) and the operation probabilities ``p_o = softmax(alpha_o)`` over K candidates,
each an (operator, magnitude level) pair (magnitude-free operators are one candidate). A policy
``phi`` is ``N_o`` candidates applied in sequence (``ops_per_policy``, 2 in the paper).

One step (Algorithm 1, Eq. 3-17):

1. sample ``L^ = policies_per_step`` policies **uniformly** (§3.5.1: no Matthew effect) and apply
   each to the whole ``train`` batch ``D_0`` (signs drawn per image): ``D_1 .. D_L``;
2. gradients ``g_0 .. g_L`` of the cross-entropy of each batch (one forward/backward each);
3. weights of Eq. 12: ``w_l = p_tp P(phi_l) / Z`` with ``Z = sum_l P(phi_l)``, ``w_0 = 1 - p_tp``;
   the model gradient is ``g = sum_l w_l g_l`` (Eq. 5);
4. the unrolled step ``theta' = theta - eta g`` (plain SGD at the run's current learning rate,
   Eq. 6) and the gradient ``g_val`` of the **clean** ``val`` batch's cross-entropy at ``theta'``
   (``torch.func.functional_call``; the model's batch-norm statistics are not touched);
5. the hypergradient, ``hypergradient: paper`` (default): Eq. 16-17, i.e. the surrogate
   ``sum_l c_l P(D_l)`` with the constants ``c_l = eta g_val.(g_0 - g_l) / (Z Z_g)`` and
   ``Z_g = sum_l |g_val.(g_0 - g_l)|`` (Eq. 15), back-propagated through the sigmoid and softmax;
   ``hypergradient: exact``: the exact derivative of ``L_val(theta - eta sum_l w_l(p) g_l)``
   (``eta g_val.(g_0 - g_l)`` times ``dw_l/dalpha``, as ``w_0 = 1 - sum_l w_l``; ``Z``
   differentiated, no ``Z_g``). The unrolled
   step is linear in the weights and the ``g_l`` do not depend on ``p``, so neither needs second
   derivatives; a test checks both against full autograd.
   Then one Adam step on ``alpha`` (``lr``, ``betas``);
6. the real model update with ``g`` through the run's optimiser (momentum, weight decay, clipping).

Export (§3.5.4): the snapshot after every search epoch becomes one entry of a format-2
``schedule``; ``p_tp`` is smoothed with a 1-D mean filter of size ``gate_smoothing`` (``F_s``;
at the ends the window shrinks to the epochs that exist) and the schedule is upsampled to
``schedule_epochs`` training epochs by nearest neighbour (``null``: the search's epochs). Each
epoch's policy is ``gate: p_tp`` and ``N_o`` identical layers, always applied, whose operator
probabilities are ``p_o`` summed over levels and whose magnitudes are categorical over the
operator's levels with probabilities ``p_o(op, level) / p(op)``.

Cost (``benchmarks/README.md``, search step): the paper's step is ``L^ + 1`` forward/backward
passes over the training batch plus one over the validation batch, about 5x a plain training
step at ``L^ = 3`` and equal batches; nothing is computed twice (the model update reuses the
unrolled step's gradient ``g``, and Eq. 16-17 need only the dot products ``g_val . g_l``, no
second derivatives or finite differences). ``policy_batches: split`` is an option that
deviates from Algorithm 1 (which applies every ``phi_l`` to the whole ``D_0``) to cut that
cost: the batch is cut into ``L^`` groups, ``phi_l`` augments group ``l`` only, and each group
takes one clean and one augmented forward/backward (two passes over the batch's images in all).
The objective stays Eq. 12 in expectation over the random grouping, per image:
``sum_l f_l CE(clean_l) + w_l (CE(aug_l) - CE(clean_l))`` (``f_l`` the group's share of the
batch), whose derivative pairs each ``g_l`` with the clean gradient of the same images in
Eq. 9 and 16-17 (with whole batches this is exactly the paper's step). Each ``g_l`` then comes
from ``B / L^`` images instead of ``B``, so the hypergradient is noisier. Measured on CPU
(resnet-tiny / resnet-20, batch 32): 2.8-3.3x a plain step against 4.8-5.7x for ``full``; in the
sanity protocol (digits, 20 epochs, 3 seeds) Invert first 3 of 3 either way, Rotate90 first
1, 1, 1 with ``full`` but 4, 1, 1 with ``split``, so ``full`` stays the default.

Deviations, where the paper (and its appendix, not in our copy) is silent: the magnitude levels
default to ``(0.2, 0.4, 0.6, 0.8, 1.0)`` (five RandAugment-style levels: the paper's 16 operators
with 5 levels for the 13 that have a magnitude give its ``K = 68``, ``L = K^2 = 4624``);
``alpha`` is optimised with Adam; ``F_s`` defaults to 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call

from dra_dali.ops import OPS
from dra_dali.search.methods import register
from dra_dali.search.methods.base import Batch, OptionsError, SearchMethod, StepContext
from dra_dali.search.ops import apply_op

__all__ = ["DDASMethod", "Candidate", "candidates"]

PAPER_LEVELS = (0.2, 0.4, 0.6, 0.8, 1.0)
_CHOICES = {"hypergradient": ("paper", "exact"), "policy_batches": ("full", "split")}


@dataclass(frozen=True)
class Candidate:
    """One DDAS candidate operation: an operator at one magnitude level."""

    op: str
    level: float
    random_sign: bool

    @property
    def label(self) -> str:
        if OPS[self.op].magnitude_free:
            return self.op
        return f"{self.op}:{self.level:g}" + ("" if self.random_sign or not OPS[self.op].signed
                                                else "+")


def candidates(ops: Sequence[str], levels: Sequence[float],
               op_levels: Mapping[str, Sequence[float]], fixed_sign: Sequence[str]
               ) -> tuple[Candidate, ...]:
    """The candidate list: every operator at every level (its own ``op_levels`` if given),
    magnitude-free operators once; in operator order, levels ascending."""
    out = []
    for op in ops:
        spec = OPS[op]
        op_lv = [0.0] if spec.magnitude_free else sorted(float(v) for v in
                                                          op_levels.get(op, levels))
        for level in op_lv:
            out.append(Candidate(op, level, spec.signed and op not in fixed_sign))
    return tuple(out)


@register
class DDASMethod(SearchMethod):
    """Direct Differentiable Augmentation Search: ``p_tp`` and ``p_o``, one unrolled step."""

    name = "ddas"

    @dataclass(frozen=True)
    class Options:
        """DDAS's recipe keys (under ``ddas:``).

        Attributes:
            policies_per_step: ``L^``, policies sampled per step (paper: 3 CIFAR, 2 ImageNet).
            ops_per_policy: ``N_o``, operations applied in sequence (paper: 2).
            levels: magnitude levels of every operator with a magnitude.
            op_levels: per-operator levels replacing ``levels`` (``{Rotate: [3.0]}``).
            fixed_sign: signed operators drawn with sign +1 only (the sanity check's Rotate90).
            init_gate: initial ``p_tp`` (paper: 0.35).
            lr, betas: Adam on ``alpha_o`` and ``alpha_tp``.
            hypergradient: ``paper`` (Eq. 16-17) or ``exact``.
            policy_batches: ``full`` (the paper: each sampled policy augments the whole batch,
                ``L^ + 1`` passes) or ``split`` (policy ``l`` augments the ``l``-th of ``L^``
                groups of the batch; two passes; a deviation for cost, see the docstring).
            gate_smoothing: ``F_s``, mean-filter size for ``p_tp`` in the exported schedule.
            schedule_epochs: training epochs the schedule is upsampled to (null: search epochs).
        """

        policies_per_step: int = 3
        ops_per_policy: int = 2
        levels: tuple = PAPER_LEVELS
        op_levels: dict = field(default_factory=dict)
        fixed_sign: tuple = ()
        init_gate: float = 0.35
        lr: float = 0.01
        betas: tuple = (0.5, 0.999)
        hypergradient: str = "paper"
        policy_batches: str = "full"
        gate_smoothing: int = 3
        schedule_epochs: int | None = None

    @classmethod
    def check_options(cls, options: Any, config) -> None:
        def bad(key: str, why: str) -> OptionsError:
            return OptionsError(f"ddas.{key}: {why}, got {getattr(options, key)!r}")

        for key in ("policies_per_step", "ops_per_policy", "gate_smoothing", "schedule_epochs"):
            if getattr(options, key) is not None and getattr(options, key) < 1:
                raise bad(key, "must be >= 1")
        if not 0 < options.init_gate < 1:
            raise bad("init_gate", "must lie strictly between 0 and 1")
        if not options.lr > 0:
            raise bad("lr", "must be > 0")
        for key, why in (("hypergradient", "must be 'paper' (Eq. 16-17) or 'exact'"),
                         ("policy_batches", "must be 'full' (the paper) or 'split'")):
            if getattr(options, key) not in _CHOICES[key]:
                raise bad(key, why)
        if options.policy_batches == "split" and config.batch_size < options.policies_per_step:
            raise bad("policy_batches", f"'split' needs batch_size={config.batch_size} >= "
                      f"policies_per_step={options.policies_per_step}")
        _check_candidates(options, config, bad)

    def __init__(self, config, options, *, num_classes: int, device: torch.device) -> None:
        super().__init__(config, options, num_classes=num_classes, device=device)
        self.candidates = candidates(config.ops, options.levels, options.op_levels,
                                     options.fixed_sign)
        gate_logit = math.log(options.init_gate / (1 - options.init_gate))
        self.alpha_o = torch.zeros(len(self.candidates), device=device, requires_grad=True)
        self.alpha_tp = torch.tensor(gate_logit, device=device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.alpha_o, self.alpha_tp], lr=options.lr,
                                          betas=tuple(options.betas))

    # ----- probabilities ----------------------------------------------------------------------
    def probabilities(self) -> torch.Tensor:
        """``p_o`` over the candidates (detached)."""
        return torch.softmax(self.alpha_o.detach(), 0)

    def gate(self) -> float:
        """``p_tp``."""
        return float(torch.sigmoid(self.alpha_tp.detach()))

    # ----- one step ---------------------------------------------------------------------------
    def augment(self, images: torch.Tensor, picks: Sequence[int],
                generator: torch.Generator) -> torch.Tensor:
        """Apply the candidates ``picks`` in sequence to every image (sign drawn per image)."""
        x = images
        n = x.shape[0]
        for index in picks:
            cand = self.candidates[int(index)]
            sign = torch.ones(n)
            if cand.random_sign:
                sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
            x = apply_op(cand.op, x, torch.full((n,), cand.level), sign.to(x.device),
                         self.config.resolution, fill=self.config.fill, generator=generator)
        return x

    def step(self, ctx: StepContext, train: Batch, val: Batch) -> dict[str, float]:
        opts = self.options
        picks = torch.randint(0, len(self.candidates),
                              (opts.policies_per_step, opts.ops_per_policy),
                              generator=ctx.generator)
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        passes = (self._split_passes if opts.policy_batches == "split" else self._full_passes)(
            ctx, train, picks, params)
        weights = self._row_weights(picks, passes.fractions, exact_z=True).detach()
        model_grad = weights @ passes.grads                # Eq. 5 with Eq. 12's weights
        eta = ctx.lr
        val_ce, g_val = _unrolled_val_grad(ctx, params, model_grad, eta, val)
        dots = passes.grads @ g_val                        # g_val . g_r for every row r
        self._policy_step(picks, dots, eta)
        _set_grad(params, model_grad)
        ctx.apply_gradient()
        n_clean = len(passes.fractions)
        return {"model_ce": float(weights @ passes.losses.to(weights.device)),
                "clean_ce": float(passes.fractions @ passes.losses[:n_clean]),
                "clean_acc": passes.clean_acc, "val_ce": val_ce, "gate": self.gate()}

    def _full_passes(self, ctx: StepContext, train: Batch, picks: torch.Tensor,
                     params: Sequence[torch.Tensor]) -> _Passes:
        """The paper's Algorithm 1: every sampled policy applied to the whole batch ``D_0``;
        one forward/backward for each of ``D_0 .. D_L`` (``L^ + 1`` passes over the batch)."""
        with torch.no_grad():
            batches = [train.images] + [self.augment(train.images, p, ctx.generator)
                                        for p in picks]
            batches = [ctx.cutout(x) for x in batches]
        clean, *augmented = [_gradient(ctx, x, train.labels, params) for x in batches]
        return _Passes.of([clean], augmented, [1.0])

    def _split_passes(self, ctx: StepContext, train: Batch, picks: torch.Tensor,
                      params: Sequence[torch.Tensor]) -> _Passes:
        """``policy_batches: split``, a deviation from Algorithm 1 for cost (see the module
        docstring): the batch is cut into ``L^`` groups and policy ``l`` augments group ``l``
        only; one forward/backward of each group clean and augmented, i.e. two passes over the
        batch's images in all instead of ``L^ + 1``."""
        n = train.images.shape[0]
        if n < len(picks):
            raise OptionsError(f"ddas.policy_batches: 'split' needs at least policies_per_step="
                               f"{len(picks)} images per batch, got a batch of {n}")
        clean, augmented, fractions = [], [], []
        for group, pick in zip(torch.arange(n).tensor_split(len(picks)), picks):
            x, y = train.images[group], train.labels[group]
            with torch.no_grad():
                x_aug = ctx.cutout(self.augment(x, pick, ctx.generator))
                x = ctx.cutout(x)
            clean.append(_gradient(ctx, x, y, params))
            augmented.append(_gradient(ctx, x_aug, y, params))
            fractions.append(len(group) / n)
        return _Passes.of(clean, augmented, fractions)

    def _weights(self, picks: torch.Tensor, exact_z: bool) -> torch.Tensor:
        """``(w_0, w_1 .. w_L)`` of Eq. 12 as a differentiable function of ``alpha``."""
        p_o = torch.softmax(self.alpha_o, 0)
        p_tp = torch.sigmoid(self.alpha_tp)
        p_phi = p_o[picks.to(p_o.device)].prod(dim=1)      # P(phi_l), Eq. 3 without p_tp
        z = p_phi.sum() if exact_z else p_phi.sum().detach()
        return torch.cat([(1 - p_tp).view(1), p_tp * p_phi / z])

    def _row_weights(self, picks: torch.Tensor, fractions: torch.Tensor,
                     exact_z: bool) -> torch.Tensor:
        """The weight of every gradient row (clean rows, then ``g_1 .. g_L``): with one clean
        row (the whole batch) Eq. 12's ``(w_0, w_1 .. w_L)``; with one clean row per group
        (``split``) ``f_l - w_l`` for group ``l``'s clean row (``f_l`` its share of the batch):
        an image of group ``l`` is augmented by ``phi_l`` with weight ``w_l``, else clean."""
        weights = self._weights(picks, exact_z)
        if len(fractions) == 1:
            return weights
        return torch.cat([fractions.to(weights.device) - weights[1:], weights[1:]])

    def _policy_step(self, picks: torch.Tensor, dots: torch.Tensor, eta: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        surrogate = self.surrogate(picks, dots, eta)
        if surrogate is not None:
            surrogate.backward()
            self.optimizer.step()

    def surrogate(self, picks: torch.Tensor, dots: torch.Tensor,
                  eta: float) -> torch.Tensor | None:
        """A scalar whose gradient with respect to ``alpha`` is the hypergradient.

        Args:
            picks: ``(L^, N_o)`` candidate indices of the sampled policies.
            dots: products ``g_val . g_r`` for every gradient row: ``(L^ + 1,)`` (the clean
                batch ``g_0``, then ``g_1 .. g_L``) or, with ``policy_batches: split``,
                ``(2 L^,)`` (the clean group gradients, then ``g_1 .. g_L``; group ``l`` is the
                one ``phi_l`` augmented).
            eta: the unrolled step's learning rate.

        Returns:
            The surrogate, or ``None`` when every ``g_val . (g_0 - g_l)`` is 0 (paper mode: no
            direction to normalise, the step is skipped).
        """
        dots = dots.detach()
        n_clean = len(dots) - len(picks)
        if self.options.hypergradient == "exact":
            # d L_val / d alpha = sum_r (dL_val/dtheta') (dtheta'/dweight_r) (dweight_r/dalpha)
            #                   = sum_r (-eta g_val . g_r) dweight_r/dalpha, Z differentiated.
            fractions = torch.zeros(n_clean)  # constants: no gradient either way
            return (-eta * dots) @ self._row_weights(picks, fractions, exact_z=True)
        # g_val . (g_0 - g_l), each g_l against the clean gradient of the images it augmented.
        diffs = dots[:n_clean] - dots[n_clean:]
        z_g = diffs.abs().sum()                            # Eq. 15
        if not z_g > 0:
            return None
        p_o = torch.softmax(self.alpha_o, 0)
        p_phi = p_o[picks.to(p_o.device)].prod(dim=1)
        z = p_phi.sum().detach()
        # Eq. 16-17: constants eta g_val.(g_0 - g_l) / (Z Z_g) times P(D_l) = p_tp P(phi_l).
        return (eta * diffs / (z * z_g)) @ (torch.sigmoid(self.alpha_tp) * p_phi)

    # ----- state, records, export -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"alpha_o": self.alpha_o.detach().cpu(), "alpha_tp": self.alpha_tp.detach().cpu(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.alpha_o.copy_(state["alpha_o"])
            self.alpha_tp.copy_(state["alpha_tp"])
        self.optimizer.load_state_dict(state["optimizer"])

    def snapshot(self) -> dict[str, Any]:
        return {"p_o": self.probabilities().cpu().tolist(), "p_tp": self.gate()}

    def to_policy(self, history: Sequence[Mapping[str, Any]],
                  provenance: Mapping[str, Any]):
        from dra_dali.search.methods.ddas_export import schedule_policy

        return schedule_policy(self, history, provenance)

    def plots(self, history: Sequence[Mapping[str, Any]], policy, out_dir: Path) -> list[Path]:
        from dra_dali.search.plots import plot_ddas

        return [plot_ddas(history, [c.label for c in self.candidates],
                          out_dir / "trajectories.png")]


def _check_candidates(options: Any, config, bad: Callable[[str, str], Exception]) -> None:
    """Refuse levels outside ``[0, scale]`` and operator names that are not in ``ops``."""
    all_levels = list(options.levels) + [v for lv in options.op_levels.values() for v in lv]
    if not options.levels or any(not 0 <= float(v) <= config.scale for v in all_levels):
        raise bad("levels", f"must be non-empty and lie in [0, scale={config.scale}]")
    for key in ("op_levels", "fixed_sign"):
        unknown = [n for n in getattr(options, key) if n not in config.ops]
        if unknown:
            raise bad(key, f"names operator(s) {unknown} that are not in ops")


@dataclass
class _Passes:
    """The training passes of one step: ``grads`` ``(C + L^, P)``, the flattened gradients of
    ``C`` clean passes (``C = 1``: the whole batch; ``C = L^``: one per group, ``split``) and of
    the ``L^`` augmented ones; ``losses`` their cross-entropies; ``fractions`` ``(C,)`` the clean
    passes' shares of the batch; ``clean_acc`` the clean accuracy."""

    grads: torch.Tensor
    losses: torch.Tensor
    fractions: torch.Tensor
    clean_acc: float

    @classmethod
    def of(cls, clean: Sequence[tuple], augmented: Sequence[tuple],
           fractions: Sequence[float]) -> _Passes:
        """From ``(gradient, loss, accuracy)`` triples (see :func:`_gradient`)."""
        rows = [*clean, *augmented]
        frac = torch.tensor(fractions)
        return cls(torch.stack([r[0] for r in rows]), torch.tensor([r[1] for r in rows]), frac,
                   sum(f * c[2] for f, c in zip(fractions, clean)))


def _gradient(ctx: StepContext, images: torch.Tensor, labels: torch.Tensor,
              params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, float, float]:
    """One forward/backward: the flattened gradient of the cross-entropy, its value and the
    accuracy."""
    loss, acc = ctx.train_ce(images, labels)
    return _flat(torch.autograd.grad(loss, params)), float(loss.detach()), acc


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _set_grad(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _unrolled_val_grad(ctx: StepContext, params: Sequence[torch.Tensor], grad: torch.Tensor,
                       eta: float, val: Batch) -> tuple[float, torch.Tensor]:
    """Cross-entropy of the clean ``val`` batch at ``theta' = theta - eta grad`` and its gradient
    with respect to ``theta'`` (flattened). Buffers are copies: running statistics stay put."""
    names = [n for n, p in ctx.model.named_parameters() if p.requires_grad]
    offset, unrolled = 0, {}
    for name, p in zip(names, params):
        n = p.numel()
        unrolled[name] = (p.detach() - eta * grad[offset:offset + n].view_as(p)).requires_grad_()
        offset += n
    buffers = {n: b.clone() for n, b in ctx.model.named_buffers()}
    logits = functional_call(ctx.model, {**unrolled, **buffers}, (ctx.normalize(val.images),))
    loss = F.cross_entropy(logits, val.labels)
    g_val = torch.autograd.grad(loss, list(unrolled.values()))
    return float(loss.detach()), _flat(g_val)
