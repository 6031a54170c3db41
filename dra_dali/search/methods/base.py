"""The search-method protocol: what a method owns, and what the run gives it.

A search is one run (:mod:`dra_dali.search.searcher`) and one method. The **run** owns the proxy
data (two halves), the model and its optimiser and learning-rate schedule, the run directory,
the loop over epochs and steps, checkpoints, resume, SIGTERM, ``metrics.jsonl`` and the progress
bar; it knows no method. A **method** (one module in :mod:`dra_dali.search.methods`, registered
under its recipe name) owns its policy parameters and their optimiser, and:

* ``step(ctx, train, val)``: one search step given the run's :class:`StepContext` (the model,
  its optimiser, normalisation, random generator, configuration) and one batch of each proxy
  half: ``train`` from the model-update half, ``val`` from the other half (DRA's policy half,
  DDAS's clean validation half). The method updates its parameters **and** the model (through
  :meth:`StepContext.model_step` or the model optimiser), and returns scalar metrics
  (``{"model_ce": ..., ...}``), averaged per epoch into ``metrics.jsonl``. The run steps the
  learning-rate schedule after each step;
* ``state_dict()`` / ``load_state_dict(state)``: its parameters and optimiser state, for the
  checkpoint; tensors, numbers, strings, lists and dicts only (checkpoints load with
  ``weights_only=True``);
* ``snapshot()``: a JSON-able record of its parameters (e.g. ``{"probabilities": [...]}``); the
  run takes one before the first epoch and one after each, and appends it with the epoch's
  metrics to the history (``metrics.jsonl``, one line per epoch);
* ``to_policy(history, provenance)``: the searched :class:`dra_dali.policy.Policy` (``history``:
  the records above, epoch 0 first; DDAS builds its per-epoch schedule from them);
* ``plots(history, policy, out_dir)``: its figures in the run directory; returns their paths.

A method's own recipe keys live in a dataclass ``Options`` (frozen, with defaults): a recipe
gives them in a mapping under the method's name, e.g. ``ddas: {policies_per_step: 3}``; the
configuration validates them with :meth:`SearchMethod.parse_options` (errors name
``ddas.policies_per_step``). Keys that every method shares (``ops``, ``resolution``, ``scale``,
``epochs``, ``batch_size``, model optimiser) stay at the top level of :class:`SearchConfig`;
DRA's own keys (``depth``, ``temperature``, ...) are top-level too, as they were before methods.

Register a method with :func:`dra_dali.search.methods.register` (one decorator per module)::

    @register
    class MyMethod(SearchMethod):
        name = "my-method"

        @dataclass(frozen=True)
        class Options:
            lr: float = 0.01

        def __init__(self, config, options, *, num_classes, device): ...
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dra_dali.errors import DraDaliError

if TYPE_CHECKING:
    from dra_dali.policy import Policy
    from dra_dali.search.config import SearchConfig

__all__ = ["Batch", "NoOptions", "OptionsError", "SearchMethod", "StepContext"]


class OptionsError(DraDaliError):
    """A method option is invalid; the message names it (``ddas.init_gate``)."""


@dataclass(frozen=True)
class NoOptions:
    """Options of a method without its own recipe keys."""


@dataclass(frozen=True)
class Batch:
    """One proxy batch on the run's device: ``images`` float ``(B, 3, R, R)`` in [0, 1] (cropped
    and flipped, not normalised), ``labels`` int64 ``(B,)``."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class StepContext:
    """What the run lends a method for one step.

    Attributes:
        config: the search configuration.
        model: the proxy model (in train mode).
        optimizer: the model's optimiser (SGD; its learning rate follows the run's schedule).
        normalize: ``x -> (x - mean) / std`` with the recipe's ``normalize``.
        generator: CPU random generator of every augmentation draw of this epoch.
        epoch: the epoch this step belongs to (0-based; DAS measures its perturbation in the
            last ones).
    """

    config: SearchConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    normalize: Callable[[torch.Tensor], torch.Tensor]
    generator: torch.Generator
    epoch: int = 0

    @property
    def lr(self) -> float:
        """The model's current learning rate (the unrolled step's ``eta``)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The model's logits for float [0, 1] images."""
        return self.model(self.normalize(images))

    def model_step(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` to the model, clip the gradient norm (``grad_clip``), step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.apply_gradient()

    def apply_gradient(self) -> None:
        """Clip the model's ``.grad`` (``grad_clip``) and take an optimiser step."""
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()

    def cutout(self, images: torch.Tensor) -> torch.Tensor:
        """Cutout of ``config.cutout`` pixels at a random centre per image (no-op when 0)."""
        from dra_dali.ops import OPS
        from dra_dali.search.ops import apply_op

        side = self.config.cutout
        if side <= 0:
            return images
        magnitude = torch.full((images.shape[0],), side / (images.shape[2] * OPS["Cutout"].slope))
        return apply_op("Cutout", images, magnitude, generator=self.generator)

    def train_ce(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Cross-entropy of the model on a batch and its accuracy (a float)."""
        logits = self.logits(images)
        accuracy = float((logits.detach().argmax(1) == labels).float().mean())
        return F.cross_entropy(logits, labels), accuracy


class SearchMethod:
    """Base class of a search method (see the module docstring for the protocol).

    Subclasses set ``name`` (the recipe and ``--method`` name) and, if they have recipe keys,
    a frozen dataclass ``Options``; they implement every method below that raises
    ``NotImplementedError`` here.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def __init__(self, config: SearchConfig, options: Any, *, num_classes: int,
                 device: torch.device) -> None:
        self.config = config
        self.options = options
        self.num_classes = num_classes
        self.device = device

    # ----- options ----------------------------------------------------------------------------
    @classmethod
    def parse_options(cls, values: Mapping[str, Any] | None, config: SearchConfig) -> Any:
        """Build and check the method's ``Options`` from a recipe mapping.

        Raises:
            OptionsError: unknown key, a value of the wrong type, or one that :meth:`check_options`
                refuses; the message names ``<method>.<key>``.
        """
        values = dict(values or {})
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        unknown = sorted(str(k) for k in values if k not in fields)
        if unknown:
            raise OptionsError(f"{cls.name}: unknown option(s) {unknown}; known: "
                               f"{', '.join(sorted(fields)) or 'none'}")
        converted = {k: _coerce(f"{cls.name}.{k}", v, _default(fields[k]))
                     for k, v in values.items()}
        options = cls.Options(**converted)
        cls.check_options(options, config)
        return options

    @classmethod
    def check_options(cls, options: Any, config: SearchConfig) -> None:
        """Refuse invalid option values (``OptionsError`` naming ``<method>.<key>``)."""

    # ----- the protocol -----------------------------------------------------------------------
    def step(self, ctx: StepContext, train: Batch, val: Batch) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_policy(self, history: Sequence[Mapping[str, Any]],
                  provenance: Mapping[str, Any]) -> Policy:
        raise NotImplementedError

    def plots(self, history: Sequence[Mapping[str, Any]], policy: Policy,
              out_dir: Path) -> list[Path]:
        raise NotImplementedError


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def _coerce(name: str, value: Any, default: Any) -> Any:
    """A recipe value converted to the type of the option's default (lists for tuples)."""
    if value is None or default is None:
        return value
    # bool before int (a bool is an int); numbers refuse bools; tuples take lists.
    accepted = {bool: (bool,), int: (int, float), float: (int, float), tuple: (list, tuple),
                str: (str,), dict: (dict,)}
    kind = next((k for k in accepted if isinstance(default, k)), None)
    ok = kind is not None and isinstance(value, accepted[kind]) and not (
        kind in (int, float) and isinstance(value, bool)) and not (
        kind is int and isinstance(value, float) and not value.is_integer())
    if not ok:
        raise OptionsError(f"{name}: cannot use {value!r} (expected a value like {default!r})")
    return kind(value) if kind in (int, float, tuple) else value
