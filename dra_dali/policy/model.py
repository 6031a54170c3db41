"""The policy objects: :class:`Policy`, its :class:`Layer`, :class:`Magnitude`, :class:`SubPolicy`
and :class:`ScheduleEntry`; serialisation to the plain-Python / YAML form.

Validation lives in :mod:`dra_dali.policy.parse`; every object here is built through it, so a
``Policy`` that exists is valid.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

import numpy as np
import yaml

from dra_dali.errors import DraDaliError

if TYPE_CHECKING:
    from dra_dali.policy.sampler import PolicySample

FORMAT_V1 = "dra-policy/1"
FORMAT_V2 = "dra-policy/2"
#: The newest format; files that use none of its features are still written as ``dra-policy/1``.
FORMAT = FORMAT_V2
#: Fill of geometric operators when a file has no ``fill`` key (the historical behaviour).
DEFAULT_FILL = 128


class PolicyError(DraDaliError):
    """A policy is invalid; the message names the field (``layers[1].std[3]``) and the problem."""


def softmax(logits) -> np.ndarray:
    """Softmax in float64 (the operator probabilities of a layer)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


@dataclass(frozen=True)
class Magnitude:
    """The magnitude distribution of one operator in one layer (format 2).

    Attributes:
        dist: ``"normal"`` (N(mean, std)), ``"uniform"`` (U(0, scale)) or ``"categorical"``
            (one of ``levels`` with ``probs``, DDAS's magnitude bins). Draws are clipped to
            ``[0, scale]``.
        mean: mean of the normal.
        std: standard deviation of the normal (>= 0; 0 = a fixed magnitude).
        levels: the magnitudes of a categorical distribution.
        probs: their probabilities (sum 1).
        random_sign: signed operators flip the sign with probability 0.5; ``False`` keeps +1
            (a fixed transformation such as a 90-degree rotation).
    """

    dist: Literal["normal", "uniform", "categorical"] = "normal"
    mean: float = 0.0
    std: float = 0.0
    levels: tuple[float, ...] = ()
    probs: tuple[float, ...] = ()
    random_sign: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The YAML form: only the keys of its distribution (``random_sign`` only when false)."""
        if self.dist == "normal":
            out: dict[str, Any] = {"dist": "normal", "mean": self.mean, "std": self.std}
        elif self.dist == "categorical":
            out = {"dist": "categorical", "levels": list(self.levels), "probs": list(self.probs)}
        else:
            out = {"dist": self.dist}
        return out if self.random_sign else {**out, "random_sign": False}


@dataclass(frozen=True)
class Layer:
    """One augmentation layer (a stage of a chain): operator logits and magnitude distributions.

    A format-1 layer has ``mean``/``std``/``dist`` (one distribution family for all operators);
    a format-2 layer may instead give ``magnitude``, one :class:`Magnitude` per operator, and
    ``op_apply_prob``. :attr:`magnitudes` is the per-operator view of either.

    Attributes:
        logits: selecting weights; probabilities are ``softmax(logits)``. A very negative logit
            (e.g. -1e9) gives an operator probability 0.
        mean: per-operator mean magnitude of the normal (format 1).
        std: per-operator standard deviation (>= 0) (format 1).
        dist: ``"normal"`` (magnitude ~ N(mean, std) clipped to [0, scale]) or ``"uniform"``
            (magnitude ~ U(0, scale); mean and std are then unused) (format 1).
        op_apply_prob: per-operator probability that the chosen operator is applied (Faster
            AutoAugment); ``None``: the policy's ``apply_prob`` range.
        magnitude: per-operator magnitude distributions (format 2), replacing mean/std/dist.
    """

    logits: tuple[float, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    dist: Literal["normal", "uniform"] = "normal"
    op_apply_prob: tuple[float, ...] | None = None
    magnitude: tuple[Magnitude, ...] | None = None

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the logits (float64)."""
        return softmax(self.logits)

    @property
    def magnitudes(self) -> tuple[Magnitude, ...]:
        """One :class:`Magnitude` per operator, whichever form the layer was written in."""
        if self.magnitude is not None:
            return self.magnitude
        if self.dist == "uniform":
            return tuple(Magnitude("uniform") for _ in self.logits)
        return tuple(Magnitude("normal", m, s) for m, s in zip(self.mean, self.std))

    @property
    def is_format1(self) -> bool:
        """The layer uses only format-1 keys."""
        return self.magnitude is None and self.op_apply_prob is None

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of the layer."""
        out: dict[str, Any] = {"logits": list(self.logits)}
        if self.op_apply_prob is not None:
            out["op_apply_prob"] = list(self.op_apply_prob)
        if self.magnitude is not None:
            out["magnitude"] = [_FlowDict(m.to_dict()) for m in self.magnitude]
            return out
        out.update({"mean": list(self.mean), "std": list(self.std)})
        return out | ({"dist": self.dist} if self.dist != "normal" else {})


@dataclass(frozen=True)
class SubPolicy:
    """One chain of a mixture (Faster AutoAugment): drawn per image with probability
    ``weight / sum(weights)``, then its layers run in order."""

    weight: float
    layers: tuple[Layer, ...]


@dataclass(frozen=True)
class ScheduleEntry:
    """From epoch ``start_epoch`` on (until the next entry), ``policy`` is the active policy."""

    start_epoch: int
    policy: "Policy"


@dataclass(frozen=True)
class Policy:
    """A validated, immutable augmentation policy (see the README for the file format).

    Exactly one of ``layers`` (a chain), ``subpolicies`` (a weighted mixture of chains) or
    ``schedule`` (per-epoch policies) holds the augmentation. The other fields of a scheduled
    policy mirror its first entry; use :meth:`at_epoch` for the policy of an epoch.

    Args:
        ops: operator names (from the catalog), the order of every per-operator list.
        layers: one :class:`Layer` per augmentation layer (the depth).
        resolution: training resolution in pixels; picks the translate range.
        scale: magnitudes are clipped to ``[0, scale]`` (1.0, or 3.0 for the extended range).
        apply_prob: ``(lo, hi)``: each layer applies its operator with probability
            ``p ~ U(lo, hi)`` drawn per image (where the layer has no ``op_apply_prob``).
        provenance: free-form record of where the policy came from.
        fill: grey level (0-255, all channels) of the pixels that geometric operators bring in
            from outside the image: 0 as the DRA authors, 128 as TF-models RandAugment and DALI.
        gate: format 2: one coin per image for the whole chain (DDAS's p_tp): with probability
            ``gate`` the image is augmented, otherwise left untouched. ``None``: no gate.
        subpolicies: format 2: a weighted mixture of chains instead of ``layers``.
        schedule: format 2: per-epoch policies instead of ``layers``/``subpolicies``.

    Raises:
        PolicyError: on any invalid field, naming it.
    """

    ops: tuple[str, ...] = ()
    layers: tuple[Layer, ...] = ()
    resolution: int = 224
    scale: float = 1.0
    apply_prob: tuple[float, float] = (0.2, 0.8)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    fill: int = DEFAULT_FILL
    gate: float | None = None
    subpolicies: tuple[SubPolicy, ...] = ()
    schedule: tuple[ScheduleEntry, ...] = ()

    def __post_init__(self) -> None:
        from dra_dali.policy.parse import validate

        # Programmatic and file policies share one validation path.
        checked = validate(self._raw())
        for name in _FIELDS:
            object.__setattr__(self, name, getattr(checked, name))

    def _raw(self) -> dict[str, Any]:
        """The fields as an unvalidated mapping (objects kept as they are; parse reads them)."""
        if self.schedule:
            return {"format": FORMAT_V2, "schedule": list(self.schedule),
                    "provenance": self.provenance}
        raw = {"ops": self.ops, "resolution": self.resolution, "scale": self.scale,
               "apply_prob": self.apply_prob, "fill": self.fill, "provenance": self.provenance}
        if self.gate is not None:
            raw["gate"] = self.gate
        if self.subpolicies:
            raw["subpolicies"] = list(self.subpolicies)
        else:
            raw["layers"] = list(self.layers)
        return raw

    # ----- structure ---------------------------------------------------------------------
    @property
    def kind(self) -> Literal["layers", "subpolicies", "schedule"]:
        """Which of ``layers``, ``subpolicies`` or ``schedule`` holds the augmentation."""
        if self.schedule:
            return "schedule"
        return "subpolicies" if self.subpolicies else "layers"

    @property
    def chains(self) -> tuple[SubPolicy, ...]:
        """The policy as a mixture: its sub-policies, or its layers as one sub-policy of weight 1.

        Raises:
            PolicyError: for a scheduled policy (use :meth:`at_epoch`).
        """
        self._refuse_schedule("chains")
        return self.subpolicies or (SubPolicy(1.0, self.layers),)

    @property
    def chain_probabilities(self) -> np.ndarray:
        """Probability of each of :attr:`chains` (weights normalised)."""
        weights = np.array([c.weight for c in self.chains], dtype=np.float64)
        return weights / weights.sum()

    @property
    def depth(self) -> int:
        """Number of augmentation layers (stages; every sub-policy has the same number)."""
        self._refuse_schedule("depth")
        return len(self.chains[0].layers)

    @property
    def format(self) -> str:
        """``dra-policy/1`` when the policy uses no format-2 feature, else ``dra-policy/2``."""
        flat = (self.gate is None and not self.subpolicies and not self.schedule
                and all(layer.is_format1 for layer in self.layers))
        return FORMAT_V1 if flat else FORMAT_V2

    @property
    def schedule_boundaries(self) -> tuple[int, ...]:
        """Epochs at which the active policy changes (the entries' start epochs after 0)."""
        return tuple(entry.start_epoch for entry in self.schedule[1:])

    def at_epoch(self, epoch: int) -> "Policy":
        """The flat policy active at ``epoch`` (0-based); ``self`` without a schedule.

        Raises:
            PolicyError: for a negative or non-integer epoch.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise PolicyError(f"epoch: expected an integer >= 0, got {epoch!r}")
        if not self.schedule:
            return self
        active = [entry for entry in self.schedule if entry.start_epoch <= epoch][-1]
        return active.policy

    def _refuse_schedule(self, what: str) -> None:
        if self.schedule:
            raise PolicyError(f"{what}: this policy has a schedule ({len(self.schedule)} entries, "
                              f"boundaries {list(self.schedule_boundaries)}); take the policy "
                              "of an epoch with policy.at_epoch(epoch)")

    # ----- derived views -----------------------------------------------------------------
    @property
    def probabilities(self) -> np.ndarray:
        """``(layers, ops)`` operator probabilities (for sub-policies: the mixture's marginal)."""
        self._refuse_schedule("probabilities")
        w = self.chain_probabilities
        return sum(wk * np.stack([layer.probabilities for layer in chain.layers])
                   for wk, chain in zip(w, self.chains))

    @property
    def mean(self) -> np.ndarray:
        """``(layers, ops)`` magnitude means of format-1 layers."""
        return np.array([self._format1_layer(j).mean for j in range(self.depth)], np.float64)

    @property
    def std(self) -> np.ndarray:
        """``(layers, ops)`` magnitude standard deviations of format-1 layers."""
        return np.array([self._format1_layer(j).std for j in range(self.depth)], np.float64)

    def _format1_layer(self, j: int) -> Layer:
        self._refuse_schedule("mean/std")
        if self.subpolicies or self.layers[j].magnitude is not None:
            raise PolicyError(f"layers[{j}]: has per-operator magnitude distributions (or the "
                              "policy has sub-policies); read layer.magnitudes instead of "
                              "policy.mean / policy.std")
        return self.layers[j]

    # ----- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists, floats) as written to YAML."""
        if self.schedule:
            return {"format": FORMAT_V2,
                    "schedule": [{"start_epoch": e.start_epoch, "policy": e.policy._body()}
                                 for e in self.schedule],
                    "provenance": _plain(dict(self.provenance))}
        return {"format": self.format, **self._body(),
                "provenance": _plain(dict(self.provenance))}

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ops": list(self.ops), "resolution": self.resolution,
                                "scale": self.scale, "apply_prob": list(self.apply_prob),
                                "fill": self.fill}
        if self.gate is not None:
            body["gate"] = self.gate
        if self.subpolicies:
            body["subpolicies"] = [{"weight": sub.weight,
                                    "layers": [layer.to_dict() for layer in sub.layers]}
                                   for sub in self.subpolicies]
        else:
            body["layers"] = [layer.to_dict() for layer in self.layers]
        return body

    @classmethod
    def from_dict(cls, data: Any) -> "Policy":
        """Build a policy from the plain-Python form, validating every field.

        Raises:
            PolicyError: naming the first invalid field.
        """
        from dra_dali.policy.parse import validate

        return validate(data)

    def to_yaml(self) -> str:
        """The YAML text of the policy (lists of numbers in flow style)."""
        return yaml.dump(self.to_dict(), Dumper=_FlowListDumper, sort_keys=False, width=10_000)

    def save(self, path: str | Path) -> Path:
        """Write the policy as YAML (atomically: temporary file, then rename).

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_yaml())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        """Read and validate a policy file (format 1 or 2).

        Raises:
            PolicyError: if the file is missing, is not YAML text, uses YAML tags, crosses the
                size, alias or depth bounds of :func:`dra_dali.safe_yaml.load_yaml`, or is
                invalid; the message names the file.
        """
        from dra_dali.policy.parse import validate
        from dra_dali.safe_yaml import load_yaml

        path = Path(path)
        data = load_yaml(path, what="policy file", error=PolicyError)
        try:
            return validate(data)
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from None

    @classmethod
    def preset(cls, name: str, resolution: int | None = None) -> "Policy":
        """A ready policy by name; see :func:`~dra_dali.policy.preset_names` and the README.

        Names: ``ra-n{N}-m{M}[-mstd{S}]`` (RandAugment), ``rastar-n{N}-m{M}`` (the DRA paper's
        RA* baseline: apply p ~ U(0.2, 0.8) per layer), timm strings ``rand-m9-n2-mstd0.5``,
        ``ta`` (TrivialAugment) and ``dra-<dataset>-<model>`` (the paper's searched policies).
        The RA, RA*, TA and timm presets fill 128 (TF-models, DALI); the paper's policies fill 0.

        Args:
            name: the preset name.
            resolution: adapt the preset to this training resolution (see
                :meth:`with_resolution`); ``None`` keeps the preset's own (224 for RA/TA/timm,
                the paper's for ``dra-*``).

        Raises:
            PolicyError: for an unknown or malformed name (listing what exists) or a bad
                resolution.
        """
        from dra_dali.policy.presets import preset

        policy = preset(name)
        return policy if resolution is None else policy.with_resolution(resolution)

    def with_resolution(self, resolution: int) -> "Policy":
        """The same policy at another training resolution.

        Magnitudes are normalised, so only the translate range changes: it follows the
        resolution (``dra_dali.ops.translate_range_px``: 10 px at 32, 100 px at 224, the nearer
        of those fractions elsewhere). Every schedule entry is adapted.

        Raises:
            PolicyError: for a resolution that is not a positive integer (pixels).
        """
        if self.schedule:
            entries = tuple(ScheduleEntry(e.start_epoch, e.policy.with_resolution(resolution))
                            for e in self.schedule)
            return replace(self, schedule=entries)
        return replace(self, resolution=resolution)

    def with_provenance(self, **entries: Any) -> "Policy":
        """A copy with provenance entries added or replaced."""
        return replace(self, provenance={**self.provenance, **entries})

    def sha256(self) -> str:
        """Hash of the augmentation content (everything but provenance)."""
        content = {k: v for k, v in self.to_dict().items() if k != "provenance"}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    # ----- reference sampler -------------------------------------------------------------
    def sample(self, n_images: int, seed: int | np.random.Generator = 0) -> "PolicySample":
        """Numpy reference sampler: what the compiled pipeline draws, per image and layer.

        See :func:`dra_dali.policy.sampler.sample` for the draws and the record.

        Raises:
            PolicyError: for a scheduled policy (sample ``policy.at_epoch(epoch)``).
        """
        from dra_dali.policy.sampler import sample

        return sample(self, n_images, seed)


_FIELDS = ("ops", "layers", "resolution", "scale", "apply_prob", "provenance", "fill", "gate",
           "subpolicies", "schedule")


def build(**values: Any) -> Policy:
    """A Policy from already validated values (no second validation)."""
    policy = object.__new__(Policy)
    for name in _FIELDS:
        object.__setattr__(policy, name, values[name])
    return policy


def _plain(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples into YAML-safe Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class _FlowDict(dict):
    """A mapping written on one line (a magnitude entry)."""


class _FlowListDumper(yaml.SafeDumper):
    pass


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(isinstance(v, (int, float, str)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_flow_dict(dumper: yaml.SafeDumper, data: _FlowDict) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", dict(data), flow_style=True)


_FlowListDumper.add_representer(list, _represent_list)
_FlowListDumper.add_representer(_FlowDict, _represent_flow_dict)
