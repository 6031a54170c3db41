"""The policy: the contract between search, compile and train.

A :class:`Policy` is frozen and validated on construction; YAML is its serialisation. Files are read
with ``yaml.safe_load`` only, unknown keys are rejected and every error names the offending field.

Example:
    >>> from dra_dali import Policy
    >>> policy = Policy.preset("ra-n2-m9")
    >>> policy.depth, round(float(policy.probabilities[0][0]), 4)
    (2, 0.0625)
"""

from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import yaml

from dra_dali.errors import DraDaliError
from dra_dali.ops import OP_NAMES, OPS, PAPER_OPS
from dra_dali.safe_yaml import load_yaml

__all__ = ["Layer", "Policy", "PolicyError", "PolicySample", "FORMAT", "preset_names"]

FORMAT = "dra-policy/1"
_TOP_KEYS = {"format", "ops", "resolution", "scale", "apply_prob", "fill", "layers", "provenance"}
#: Fill of geometric operators when a file has no ``fill`` key (the historical behaviour).
DEFAULT_FILL = 128
# Bounds that keep every number far from float32 overflow in the compiled graph and the graph
# itself small; the published policies use scale <= 3, |logit| < 10, mean and std < 2, 2-3 layers.
MAX_SCALE = 10.0
MAX_LOGIT = 1e9          # -1e9 is the customary "never" (probability 0 in float64)
MAX_MAGNITUDE = 100.0    # |mean| and std, in units of the paper's range
MAX_LAYERS = 32
MAX_RESOLUTION = 16384
_LAYER_KEYS = {"logits", "mean", "std", "dist"}
_DISTS = ("normal", "uniform")


class PolicyError(DraDaliError):
    """A policy is invalid; the message names the field (``layers[1].std[3]``) and the problem."""


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PolicyError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise PolicyError(f"{where}: must be finite, got {value}")
    return value


def _bounded(value: Any, where: str, low: float, high: float) -> float:
    value = _number(value, where)
    if not low <= value <= high:
        raise PolicyError(f"{where}: must lie in [{low:g}, {high:g}], got {value:g}")
    return value


def _numbers(values: Any, where: str, length: int, low: float, high: float) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise PolicyError(f"{where}: expected a list of {length} numbers, "
                          f"got {type(values).__name__}")
    if len(values) != length:
        raise PolicyError(
            f"{where}: expected {length} numbers (one per entry of 'ops'), got {len(values)}")
    return tuple(_bounded(v, f"{where}[{i}]", low, high) for i, v in enumerate(values))


@dataclass(frozen=True)
class Layer:
    """One augmentation layer: operator logits and per-operator magnitude distributions.

    Attributes:
        logits: selecting weights; probabilities are ``softmax(logits)``. ``-inf`` is not allowed;
            a very negative logit (e.g. -100) gives an operator probability 0 in practice.
        mean: per-operator mean magnitude of the normal distribution.
        std: per-operator standard deviation (>= 0).
        dist: ``"normal"`` (magnitude ~ N(mean, std) clipped to [0, scale]) or ``"uniform"``
            (magnitude ~ U(0, scale); mean and std are then unused).
    """

    logits: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dist: Literal["normal", "uniform"] = "normal"

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the logits (float64)."""
        z = np.asarray(self.logits, dtype=np.float64)
        e = np.exp(z - z.max())
        return e / e.sum()


@dataclass(frozen=True)
class PolicySample:
    """Draws of the reference sampler: arrays of shape ``(images, layers)``.

    ``op`` indexes ``policy.ops``; ``sign`` is +1/-1 (always +1 for unsigned operators);
    ``magnitude`` is the clipped draw (0 for magnitude-free operators); ``applied`` is the coin.
    """

    op: np.ndarray
    sign: np.ndarray
    magnitude: np.ndarray
    applied: np.ndarray


@dataclass(frozen=True)
class Policy:
    """A validated, immutable augmentation policy (see the README for the file format).

    Args:
        ops: operator names (from the catalog), the order of every per-operator list.
        layers: one :class:`Layer` per augmentation layer (the depth).
        resolution: training resolution in pixels; picks the translate range.
        scale: magnitudes are clipped to ``[0, scale]`` (1.0, or 3.0 for the extended range).
        apply_prob: ``(lo, hi)``: each layer applies its operator with probability
            ``p ~ U(lo, hi)`` drawn per image.
        provenance: free-form record of where the policy came from.
        fill: grey level (0-255, all channels) of the pixels that geometric operators bring in
            from outside the image: 0 as the DRA authors, 128 as TF-models RandAugment and DALI.

    Raises:
        PolicyError: on any invalid field, naming it.
    """

    ops: tuple[str, ...]
    layers: tuple[Layer, ...]
    resolution: int = 224
    scale: float = 1.0
    apply_prob: tuple[float, float] = (0.2, 0.8)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    fill: int = DEFAULT_FILL

    def __post_init__(self) -> None:
        # Validation runs through from_dict so programmatic and file policies share one path.
        checked = _validate({"ops": list(self.ops), "layers": list(self.layers),
                             "resolution": self.resolution, "scale": self.scale,
                             "apply_prob": list(self.apply_prob), "fill": self.fill,
                             "provenance": self.provenance})
        for name in ("ops", "layers", "resolution", "scale", "apply_prob", "fill", "provenance"):
            object.__setattr__(self, name, getattr(checked, name))

    # ----- derived views -------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Number of augmentation layers."""
        return len(self.layers)

    @property
    def probabilities(self) -> np.ndarray:
        """``(layers, ops)`` operator probabilities."""
        return np.stack([layer.probabilities for layer in self.layers])

    @property
    def mean(self) -> np.ndarray:
        """``(layers, ops)`` magnitude means."""
        return np.array([layer.mean for layer in self.layers], dtype=np.float64)

    @property
    def std(self) -> np.ndarray:
        """``(layers, ops)`` magnitude standard deviations."""
        return np.array([layer.std for layer in self.layers], dtype=np.float64)

    # ----- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists, floats) as written to YAML."""
        return {
            "format": FORMAT,
            "ops": list(self.ops),
            "resolution": self.resolution,
            "scale": self.scale,
            "apply_prob": list(self.apply_prob),
            "fill": self.fill,
            "layers": [
                {"logits": list(l.logits), "mean": list(l.mean), "std": list(l.std)}
                | ({"dist": l.dist} if l.dist != "normal" else {})
                for l in self.layers
            ],
            "provenance": _plain(dict(self.provenance)),
        }

    @classmethod
    def from_dict(cls, data: Any) -> "Policy":
        """Build a policy from the plain-Python form, validating every field.

        Raises:
            PolicyError: naming the first invalid field.
        """
        return _validate(data)

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

    def to_yaml(self) -> str:
        """The YAML text of the policy (lists of numbers in flow style)."""
        return yaml.dump(self.to_dict(), Dumper=_FlowListDumper, sort_keys=False, width=10_000)

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        """Read and validate a policy file.

        Raises:
            PolicyError: if the file is missing, is not YAML text, uses YAML tags, crosses the
                size, alias or depth bounds of :func:`dra_dali.safe_yaml.load_yaml`, or is
                invalid; the message names the file.
        """
        path = Path(path)
        data = load_yaml(path, what="policy file", error=PolicyError)
        try:
            return _validate(data)
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from None

    @classmethod
    def preset(cls, name: str) -> "Policy":
        """A ready policy by name; see :func:`preset_names` and the README.

        Names: ``ra-n{N}-m{M}[-mstd{S}]`` (RandAugment), ``rastar-n{N}-m{M}`` (the DRA paper's
        RA* baseline: apply p ~ U(0.2, 0.8) per layer), timm strings ``rand-m9-n2-mstd0.5``,
        ``ta`` (TrivialAugment) and ``dra-<dataset>-<model>`` (the paper's searched policies).
        The RA, RA*, TA and timm presets fill 128 (TF-models, DALI); the paper's policies fill 0.

        Raises:
            PolicyError: for an unknown or malformed name, listing what exists.
        """
        return _preset(name)

    def with_provenance(self, **entries: Any) -> "Policy":
        """A copy with provenance entries added or replaced."""
        return replace(self, provenance={**self.provenance, **entries})

    def sha256(self) -> str:
        """Hash of the augmentation content (everything but provenance)."""
        import hashlib

        content = {k: v for k, v in self.to_dict().items() if k != "provenance"}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    # ----- reference sampler ---------------------------------------------------------------
    def sample(self, n_images: int, seed: int | np.random.Generator = 0) -> PolicySample:
        """Numpy reference sampler: what the compiled pipeline draws, per image and layer.

        Per layer and image: operator ~ Categorical(softmax(logits)); magnitude ~ N(mean, std)
        of that operator clipped to [0, scale] (U(0, scale) for uniform layers; 0 for
        magnitude-free operators); sign +-1 with probability 0.5 (signed operators only);
        applied = u < p with p ~ U(lo, hi).

        Args:
            n_images: number of images.
            seed: seed or numpy Generator.

        Returns:
            A :class:`PolicySample` of ``(n_images, depth)`` arrays.
        """
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        shape = (n_images, self.depth)
        op = np.empty(shape, dtype=np.int64)
        magnitude = np.zeros(shape)
        free = np.array([OPS[name].magnitude_free for name in self.ops])
        signed = np.array([OPS[name].signed for name in self.ops])
        for j, layer in enumerate(self.layers):
            op[:, j] = rng.choice(len(self.ops), size=n_images, p=layer.probabilities)
            if layer.dist == "uniform":
                draw = rng.uniform(0.0, self.scale, size=n_images)
            else:
                draw = rng.normal(np.asarray(layer.mean)[op[:, j]], np.asarray(layer.std)[op[:, j]])
            magnitude[:, j] = np.where(free[op[:, j]], 0.0, np.clip(draw, 0.0, self.scale))
        sign = np.where(signed[op] & (rng.random(shape) < 0.5), -1, 1)
        p = rng.uniform(self.apply_prob[0], self.apply_prob[1], size=shape)
        applied = rng.random(shape) < p
        return PolicySample(op=op, sign=sign, magnitude=magnitude, applied=applied)


# ----- validation ---------------------------------------------------------------------------
def _validate(data: Any) -> Policy:
    if not isinstance(data, dict):
        raise PolicyError(f"a policy must be a mapping of fields, got {type(data).__name__}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise PolicyError(f"unknown field(s) {sorted(map(str, unknown))}; "
                          f"allowed: {sorted(_TOP_KEYS)}")
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT:
        raise PolicyError(f"format: expected {FORMAT!r}, got {fmt!r} "
                          "(a newer or foreign file; upgrade dra-dali or convert it)")
    ops = data.get("ops")
    if not isinstance(ops, (list, tuple)) or not ops:
        raise PolicyError("ops: expected a non-empty list of operator names")
    for i, name in enumerate(ops):
        if name not in OPS:
            raise PolicyError(f"ops[{i}]: unknown operator {name!r}; known: {', '.join(OP_NAMES)}")
    if len(set(ops)) != len(ops):
        raise PolicyError(f"ops: operator names must be unique, got {list(ops)}")
    n = len(ops)

    resolution = data.get("resolution", 224)
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral) \
            or not 0 < resolution <= MAX_RESOLUTION:
        raise PolicyError(f"resolution: expected a positive integer (pixels) up to "
                          f"{MAX_RESOLUTION}, got {resolution!r}")
    scale = _number(data.get("scale", 1.0), "scale")
    if not 0 < scale <= MAX_SCALE:
        raise PolicyError(f"scale: must be > 0 and <= {MAX_SCALE:g} (1 = the paper's range, "
                          f"3 = its extended range), got {scale:g}")

    apply_prob = data.get("apply_prob", [0.2, 0.8])
    if not isinstance(apply_prob, (list, tuple)) or len(apply_prob) != 2:
        raise PolicyError(f"apply_prob: expected [lo, hi], got {apply_prob!r}")
    lo, hi = (_number(v, f"apply_prob[{i}]") for i, v in enumerate(apply_prob))
    if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
        raise PolicyError(f"apply_prob: both ends must lie in [0, 1], got [{lo}, {hi}]")
    if lo > hi:
        raise PolicyError(f"apply_prob: lo must be <= hi, got [{lo}, {hi}]")

    raw_layers = data.get("layers")
    if not isinstance(raw_layers, (list, tuple)) or not raw_layers:
        raise PolicyError("layers: expected a non-empty list of layers")
    if len(raw_layers) > MAX_LAYERS:
        raise PolicyError(f"layers: at most {MAX_LAYERS} layers, got {len(raw_layers)}")
    layers = []
    for j, raw in enumerate(raw_layers):
        where = f"layers[{j}]"
        if isinstance(raw, Layer):
            raw = {"logits": raw.logits, "mean": raw.mean, "std": raw.std, "dist": raw.dist}
        if not isinstance(raw, dict):
            raise PolicyError(f"{where}: expected a mapping with logits, mean, std")
        unknown = set(raw) - _LAYER_KEYS
        if unknown:
            raise PolicyError(f"{where}: unknown field(s) {sorted(map(str, unknown))}; "
                              f"allowed: {sorted(_LAYER_KEYS)}")
        dist = raw.get("dist", "normal")
        if dist not in _DISTS:
            raise PolicyError(f"{where}.dist: expected one of {_DISTS}, got {dist!r}")
        for key in ("logits", "mean", "std"):
            if key not in raw:
                raise PolicyError(f"{where}.{key}: missing")
        logits = _numbers(raw["logits"], f"{where}.logits", n, -MAX_LOGIT, MAX_LOGIT)
        mean = _numbers(raw["mean"], f"{where}.mean", n, -MAX_MAGNITUDE, MAX_MAGNITUDE)
        std = _numbers(raw["std"], f"{where}.std", n, 0.0, MAX_MAGNITUDE)
        layers.append(Layer(logits=logits, mean=mean, std=std, dist=dist))

    fill = data.get("fill", DEFAULT_FILL)
    if isinstance(fill, bool) or not isinstance(fill, numbers.Integral) or not 0 <= fill <= 255:
        raise PolicyError(f"fill: expected an integer grey level in [0, 255], got {fill!r}")

    provenance = data.get("provenance", {}) or {}
    if not isinstance(provenance, Mapping):
        raise PolicyError(f"provenance: expected a mapping, got {type(provenance).__name__}")
    policy = object.__new__(Policy)
    for name, value in (("ops", tuple(ops)), ("layers", tuple(layers)), ("resolution", int(resolution)),
                        ("scale", scale), ("apply_prob", (lo, hi)), ("fill", int(fill)),
                        ("provenance", dict(provenance))):
        object.__setattr__(policy, name, value)
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


class _FlowListDumper(yaml.SafeDumper):
    pass


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(isinstance(v, (int, float, str)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowListDumper.add_representer(list, _represent_list)


# ----- presets ------------------------------------------------------------------------------
# Presets pin their operator lists: a new catalog operator changes no preset and no preset hash.
# PAPER_OPS is the DRA paper's 16 (RandAugment's 14, Cutout, SolarizeAdd), never the catalog.
# timm's RandAugment op set: the paper's 16 without Cutout (timm applies erasing separately).
_TIMM_OPS = tuple(name for name in PAPER_OPS if name != "Cutout")
#: Fill of the RandAugment / TrivialAugment / timm presets: TF-models RandAugment and DALI use 128.
_RA_FILL = 128
#: Fill of the paper's searched policies: the DRA authors fill 0 in search and retraining.
_PAPER_FILL = 0


def _paper_policies() -> dict[str, Any]:
    text = resources.files("dra_dali.presets").joinpath("dra_paper_policies.json").read_text()
    return json.loads(text)


def preset_names() -> list[str]:
    """Names accepted by :meth:`Policy.preset` (patterns shown for the parametrised families)."""
    paper = [f"dra-{key}" for key in _paper_policies()["policies"]]
    return ["ra-n{N}-m{M}[-mstd{S}]", "rastar-n{N}-m{M}",
            "rand-m{M}-n{N}[-mstd{S}][-mmax{X}][-p{P}]", "ta"] + paper


def _uniform_layers(depth: int, n_ops: int, mean: float, std: float,
                    dist: str = "normal") -> tuple[Layer, ...]:
    zeros = (0.0,) * n_ops
    return tuple(Layer(zeros, (mean,) * n_ops, (std,) * n_ops, dist) for _ in range(depth))


def _randaugment(n: int, m: float, mstd: float, scale: float, p: tuple[float, float],
                 ops: Sequence[str], name: str) -> Policy:
    if n < 1:
        raise PolicyError(f"preset {name!r}: the number of layers N must be >= 1, got {n}")
    if mstd > 100:  # timm: mstd > 100 means uniform magnitude in [0, m]; uniform over [0, scale]
        layers = _uniform_layers(n, len(ops), 0.0, 0.0, "uniform")
    else:
        layers = _uniform_layers(n, len(ops), m / 10.0, mstd / 10.0)
    return Policy(tuple(ops), layers, scale=scale, apply_prob=p, fill=_RA_FILL,
                  provenance={"method": "preset", "preset": name})


_RA = re.compile(r"^ra-n(\d+)-m(\d+(?:\.\d+)?)(?:-mstd(\d+(?:\.\d+)?))?$")
_RASTAR = re.compile(r"^rastar-n(\d+)-m(\d+(?:\.\d+)?)$")
#: RA*, the DRA paper's RandAugment baseline: each layer applies its operator with p ~ U(0.2, 0.8).
_RASTAR_APPLY_PROB = (0.2, 0.8)


def _preset(name: str) -> Policy:
    if not isinstance(name, str):
        raise PolicyError(f"preset name must be a string, got {name!r}")
    if name == "ta":
        # TrivialAugment: one layer, uniform choice, magnitude uniform over the whole range.
        return Policy(PAPER_OPS, _uniform_layers(1, len(PAPER_OPS), 0.0, 0.0, "uniform"),
                      apply_prob=(1.0, 1.0), fill=_RA_FILL,
                      provenance={"method": "preset", "preset": "ta"})
    match = _RA.match(name)
    if match:
        n, m, mstd = int(match[1]), float(match[2]), float(match[3] or 0.0)
        return _randaugment(n, m, mstd, max(1.0, m / 10.0), (1.0, 1.0), PAPER_OPS, name)
    match = _RASTAR.match(name)
    if match:
        n, m = int(match[1]), float(match[2])
        return _randaugment(n, m, 0.0, max(1.0, m / 10.0), _RASTAR_APPLY_PROB, PAPER_OPS, name)
    if name.startswith("rand-"):
        return _timm_preset(name)
    if name.startswith("dra-"):
        return _paper_preset(name)
    raise PolicyError(f"unknown preset {name!r}; known: {', '.join(preset_names())}")


def _paper_preset(name: str) -> Policy:
    data = _paper_policies()
    key = name[len("dra-"):]
    if key not in data["policies"]:
        raise PolicyError(f"unknown preset {name!r}; the paper's policies are: "
                          + ", ".join(f"dra-{k}" for k in data["policies"]))
    entry = data["policies"][key]
    layers = tuple(Layer(tuple(w), tuple(mu), tuple(sd))
                   for w, mu, sd in zip(entry["W"], entry["MEAN"], entry["STD"]))
    return Policy(tuple(data["ops"]), layers, resolution=int(entry["resolution"]),
                  scale=float(entry["scale"]), apply_prob=tuple(data["apply_prob_range"]),
                  fill=_PAPER_FILL,
                  provenance={"method": "dra", "preset": name,
                              "source": "Xiao et al., Differentiable RandAugment, IEEE TIP "
                                        "2023 (authors' released policy)",
                              "dataset_model": key})


def _timm_preset(name: str) -> Policy:
    """timm ``rand-`` config strings: m, n, mstd, mmax, p are mapped; inc is accepted.

    The mapping is approximate in two places: the operators follow this catalog's TF/PIL semantics
    (timm's ``inc1`` increasing variants; ``inc0`` is not reproduced) and translations use the
    catalog's range (100 px at 224, about timm's 0.45 of the image size).
    """
    values = {"m": 9.0, "n": 2, "mstd": 0.0, "mmax": 10.0, "p": 0.5}
    for part in name.split("-")[1:]:
        key = re.match(r"^[a-z]+", part)
        key = key[0] if key else ""
        raw = part[len(key):]
        if key not in {"m", "n", "mstd", "mmax", "p", "inc"}:
            raise PolicyError(f"preset {name!r}: unknown timm RandAugment key {part!r}; "
                              "supported: m, n, mstd, mmax, p, inc")
        try:
            values[key] = int(raw) if key == "n" else float(raw)
        except ValueError:
            raise PolicyError(f"preset {name!r}: {key} needs a number, got {raw!r}") from None
    if not 0 <= values["p"] <= 1:
        raise PolicyError(f"preset {name!r}: p must lie in [0, 1], got {values['p']}")
    return _randaugment(int(values["n"]), values["m"], values["mstd"],
                        max(values["mmax"], 1e-6) / 10.0, (values["p"], values["p"]), _TIMM_OPS,
                        name)
