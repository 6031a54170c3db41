"""Validation of the plain-Python form of a policy (formats 1 and 2): every error names its field.

Fields are named as in the file: ``layers[1].std[3]``, ``subpolicies[0].layers[1].magnitude[4]
.probs``, ``schedule[2].policy.gate``. Numbers are finite and bounded so that nothing downstream
overflows (float32 in the DALI graph) and the graph stays small.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

from dra_dali.ops import OP_NAMES, OPS
from dra_dali.policy.model import (
    DEFAULT_FILL,
    FORMAT_V1,
    FORMAT_V2,
    Layer,
    Magnitude,
    Policy,
    PolicyError,
    ScheduleEntry,
    SubPolicy,
    build,
)

# Bounds that keep every number far from float32 overflow in the compiled graph and the graph
# itself small; the published policies use scale <= 3, |logit| < 10, mean and std < 2, 2-3 layers.
MAX_SCALE = 10.0
MAX_LOGIT = 1e9          # -1e9 is the customary "never" (probability 0 in float64)
MAX_MAGNITUDE = 100.0    # |mean| and std, in units of the paper's range
MAX_LAYERS = 32
MAX_RESOLUTION = 16384
MAX_LEVELS = 64          # categorical magnitude levels per operator
MAX_SUBPOLICIES = 256
MAX_WEIGHT = 1e9
MAX_SCHEDULE = 10_000    # schedule entries (epochs)
PROBS_TOLERANCE = 1e-6   # |sum(probs) - 1| allowed for categorical magnitudes

_BODY_V1 = {"ops", "resolution", "scale", "apply_prob", "fill", "layers"}
_BODY_V2 = _BODY_V1 | {"gate", "subpolicies"}
_TOP_KEYS = {FORMAT_V1: _BODY_V1 | {"format", "provenance"},
             FORMAT_V2: _BODY_V2 | {"format", "provenance", "schedule"}}
_LAYER_KEYS = {FORMAT_V1: {"logits", "mean", "std", "dist"},
               FORMAT_V2: {"logits", "mean", "std", "dist", "op_apply_prob", "magnitude"}}
_MAGNITUDE_KEYS = {"normal": {"dist", "mean", "std", "random_sign"},
                   "uniform": {"dist", "random_sign"},
                   "categorical": {"dist", "levels", "probs", "random_sign"}}
_V1_DISTS = ("normal", "uniform")


def validate(data: Any) -> Policy:
    """A :class:`Policy` from its plain-Python form (format 1 or 2).

    Raises:
        PolicyError: naming the first invalid field.
    """
    _mapping(data, "a policy", "a mapping of fields")
    fmt = data.get("format", FORMAT_V2)
    if fmt not in _TOP_KEYS:
        raise PolicyError(f"format: expected {FORMAT_V1!r} or {FORMAT_V2!r}, got {fmt!r} "
                          "(a newer or foreign file; upgrade dra-dali or convert it)")
    _refuse_unknown(data, _TOP_KEYS[fmt], "", fmt)
    provenance = data.get("provenance", {}) or {}
    if not isinstance(provenance, Mapping):
        raise PolicyError(f"provenance: expected a mapping, got {type(provenance).__name__}")
    if "schedule" in data:
        return _scheduled(data, dict(provenance))
    return _flat(data, "", dict(provenance), fmt)


# ----- helpers --------------------------------------------------------------------------------
def _mapping(value: Any, where: str, expected: str = "a mapping") -> None:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where} must be {expected}, got {type(value).__name__}")


def _refuse_unknown(raw: Mapping, allowed: set, where: str, fmt: str = FORMAT_V2) -> None:
    unknown = set(raw) - allowed
    if unknown:
        hint = ""
        if fmt == FORMAT_V1 and unknown <= (_TOP_KEYS[FORMAT_V2] | _LAYER_KEYS[FORMAT_V2]):
            hint = " (format-2 keys: write format: dra-policy/2)"
        prefix = f"{where}: " if where else ""
        raise PolicyError(f"{prefix}unknown field(s) {sorted(map(str, unknown))}; "
                          f"allowed: {sorted(allowed)}{hint}")


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


def _list(values: Any, where: str, length: int | None, what: str) -> list:
    if not isinstance(values, (list, tuple)) and not hasattr(values, "__array__"):
        raise PolicyError(f"{where}: expected a list of {what}, got {type(values).__name__}")
    if length is not None and len(values) != length:
        raise PolicyError(f"{where}: expected {length} {what} (one per entry of 'ops'), "
                          f"got {len(values)}")
    return list(values)


def _numbers(values: Any, where: str, length: int, low: float, high: float) -> tuple[float, ...]:
    values = _list(values, where, length, "numbers")
    return tuple(_bounded(v, f"{where}[{i}]", low, high) for i, v in enumerate(values))


def _required(raw: Mapping, key: str, where: str) -> Any:
    if key not in raw:
        raise PolicyError(f"{where}.{key}: missing")
    return raw[key]


def _integer(value: Any, where: str, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not low <= value <= high:
        raise PolicyError(f"{where}: expected {what} in [{low}, {high}], got {value!r}")
    return int(value)


# ----- a flat policy (layers or sub-policies) --------------------------------------------------
def _flat(data: Mapping, prefix: str, provenance: dict, fmt: str) -> Policy:
    ops = _ops(data.get("ops"), f"{prefix}ops")
    scale = _number(data.get("scale", 1.0), f"{prefix}scale")
    if not 0 < scale <= MAX_SCALE:
        raise PolicyError(f"{prefix}scale: must be > 0 and <= {MAX_SCALE:g} (1 = the paper's "
                          f"range, 3 = its extended range), got {scale:g}")
    gate = data.get("gate")
    layers, subpolicies = _augmentation(data, prefix, len(ops), scale, fmt)
    return build(
        ops=ops, layers=layers, subpolicies=subpolicies, scale=scale, provenance=provenance,
        resolution=_integer(data.get("resolution", 224), f"{prefix}resolution", 1,
                            MAX_RESOLUTION, "a positive integer (pixels)"),
        apply_prob=_apply_prob(data.get("apply_prob", [0.2, 0.8]), f"{prefix}apply_prob"),
        fill=_integer(data.get("fill", DEFAULT_FILL), f"{prefix}fill", 0, 255,
                      "an integer grey level"),
        gate=None if gate is None else _bounded(gate, f"{prefix}gate", 0.0, 1.0),
        schedule=())


def _ops(ops: Any, where: str) -> tuple[str, ...]:
    if not isinstance(ops, (list, tuple)) or not ops:
        raise PolicyError(f"{where}: expected a non-empty list of operator names")
    for i, name in enumerate(ops):
        if not isinstance(name, str) or name not in OPS:
            raise PolicyError(f"{where}[{i}]: unknown operator {name!r}; "
                              f"known: {', '.join(OP_NAMES)}")
    if len(set(ops)) != len(ops):
        raise PolicyError(f"{where}: operator names must be unique, got {list(ops)}")
    return tuple(ops)


def _apply_prob(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise PolicyError(f"{where}: expected [lo, hi], got {value!r}")
    lo, hi = (_number(v, f"{where}[{i}]") for i, v in enumerate(value))
    if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
        raise PolicyError(f"{where}: both ends must lie in [0, 1], got [{lo}, {hi}]")
    if lo > hi:
        raise PolicyError(f"{where}: lo must be <= hi, got [{lo}, {hi}]")
    return lo, hi


def _augmentation(data: Mapping, prefix: str, n: int, scale: float, fmt: str):
    if "subpolicies" in data:
        if "layers" in data:
            raise PolicyError(f"{prefix}subpolicies: give either layers or subpolicies, not both")
        return (), _subpolicies(data["subpolicies"], f"{prefix}subpolicies", n, scale)
    return _layers(data.get("layers"), f"{prefix}layers", n, scale, fmt), ()


def _layers(raw: Any, where: str, n: int, scale: float, fmt: str) -> tuple[Layer, ...]:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise PolicyError(f"{where}: expected a non-empty list of layers")
    if len(raw) > MAX_LAYERS:
        raise PolicyError(f"{where}: at most {MAX_LAYERS} layers, got {len(raw)}")
    return tuple(_layer(layer, f"{where}[{j}]", n, scale, fmt) for j, layer in enumerate(raw))


def _layer(raw: Any, where: str, n: int, scale: float, fmt: str) -> Layer:
    if isinstance(raw, Layer):
        raw = _layer_raw(raw)
    _mapping(raw, where, "a mapping with logits and magnitudes")
    _refuse_unknown(raw, _LAYER_KEYS[fmt], where, fmt)
    logits = _numbers(_required(raw, "logits", where), f"{where}.logits", n, -MAX_LOGIT,
                      MAX_LOGIT)
    op_apply_prob = raw.get("op_apply_prob")
    if op_apply_prob is not None:
        op_apply_prob = _numbers(op_apply_prob, f"{where}.op_apply_prob", n, 0.0, 1.0)
    if "magnitude" in raw:
        return Layer(logits, op_apply_prob=op_apply_prob,
                     magnitude=_magnitudes(raw, where, n, scale))
    dist = raw.get("dist", "normal")
    if dist not in _V1_DISTS:
        raise PolicyError(f"{where}.dist: expected one of {_V1_DISTS}, got {dist!r} (per-operator "
                          "distributions go in 'magnitude', format 2)")
    mean = _numbers(_required(raw, "mean", where), f"{where}.mean", n, -MAX_MAGNITUDE,
                    MAX_MAGNITUDE)
    std = _numbers(_required(raw, "std", where), f"{where}.std", n, 0.0, MAX_MAGNITUDE)
    return Layer(logits, mean, std, dist, op_apply_prob=op_apply_prob)


def _layer_raw(layer: Layer) -> dict[str, Any]:
    raw: dict[str, Any] = {"logits": layer.logits}
    if layer.op_apply_prob is not None:
        raw["op_apply_prob"] = layer.op_apply_prob
    if layer.magnitude is not None:
        raw["magnitude"] = layer.magnitude
    if layer.magnitude is None or layer.mean or layer.std:
        raw.update(mean=layer.mean, std=layer.std)
        if layer.magnitude is None or layer.dist != "normal":
            raw["dist"] = layer.dist
    return raw


def _magnitudes(raw: Mapping, where: str, n: int, scale: float) -> tuple[Magnitude, ...]:
    clash = sorted({"mean", "std", "dist"} & set(raw))
    if clash:
        raise PolicyError(f"{where}.magnitude: replaces {clash}; give one or the other")
    values = _list(raw["magnitude"], f"{where}.magnitude", n, "magnitude distributions")
    return tuple(_magnitude(v, f"{where}.magnitude[{i}]", scale) for i, v in enumerate(values))


def _magnitude(raw: Any, where: str, scale: float) -> Magnitude:
    if isinstance(raw, Magnitude):
        raw = _magnitude_raw(raw)
    _mapping(raw, where, "a mapping such as {dist: normal, mean: 0.5, std: 0.1}")
    dist = raw.get("dist", "normal")
    if dist not in _MAGNITUDE_KEYS:
        raise PolicyError(f"{where}.dist: expected one of {tuple(_MAGNITUDE_KEYS)}, got {dist!r}")
    _refuse_unknown(raw, _MAGNITUDE_KEYS[dist], where)
    random_sign = raw.get("random_sign", True)
    if not isinstance(random_sign, bool):
        raise PolicyError(f"{where}.random_sign: expected true or false, got {random_sign!r}")
    if dist == "normal":
        mean = _bounded(_required(raw, "mean", where), f"{where}.mean", -MAX_MAGNITUDE,
                        MAX_MAGNITUDE)
        std = _bounded(_required(raw, "std", where), f"{where}.std", 0.0, MAX_MAGNITUDE)
        return Magnitude("normal", mean, std, random_sign=random_sign)
    if dist == "categorical":
        levels, probs = _categorical(raw, where, scale)
        return Magnitude("categorical", levels=levels, probs=probs, random_sign=random_sign)
    return Magnitude("uniform", random_sign=random_sign)


def _magnitude_raw(m: Magnitude) -> dict[str, Any]:
    raw: dict[str, Any] = {"dist": m.dist, "random_sign": m.random_sign}
    if m.dist == "normal":
        raw.update(mean=m.mean, std=m.std)
    elif m.dist == "categorical":
        raw.update(levels=m.levels, probs=m.probs)
    return raw


def _categorical(raw: Mapping, where: str, scale: float):
    levels = _list(_required(raw, "levels", where), f"{where}.levels", None, "magnitudes")
    if not 0 < len(levels) <= MAX_LEVELS:
        raise PolicyError(f"{where}.levels: expected 1 to {MAX_LEVELS} magnitudes, "
                          f"got {len(levels)}")
    levels = tuple(_bounded(v, f"{where}.levels[{i}]", 0.0, scale) for i, v in enumerate(levels))
    probs = _list(_required(raw, "probs", where), f"{where}.probs", None, "probabilities")
    if len(probs) != len(levels):
        raise PolicyError(f"{where}.probs: expected {len(levels)} probabilities (one per level), "
                          f"got {len(probs)}")
    probs = tuple(_bounded(v, f"{where}.probs[{i}]", 0.0, 1.0) for i, v in enumerate(probs))
    if abs(sum(probs) - 1.0) > PROBS_TOLERANCE:
        raise PolicyError(f"{where}.probs: must sum to 1, got {sum(probs):.6g}")
    return levels, probs


def _subpolicies(raw: Any, where: str, n: int, scale: float) -> tuple[SubPolicy, ...]:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise PolicyError(f"{where}: expected a non-empty list of {{weight, layers}}")
    if len(raw) > MAX_SUBPOLICIES:
        raise PolicyError(f"{where}: at most {MAX_SUBPOLICIES} sub-policies, got {len(raw)}")
    subs = tuple(_subpolicy(s, f"{where}[{k}]", n, scale) for k, s in enumerate(raw))
    for k, sub in enumerate(subs):
        if len(sub.layers) != len(subs[0].layers):
            raise PolicyError(f"{where}[{k}].layers: expected {len(subs[0].layers)} layers like "
                              f"{where}[0] (every sub-policy has the same number of stages; pad "
                              f"with Identity), got {len(sub.layers)}")
    if sum(sub.weight for sub in subs) <= 0:
        raise PolicyError(f"{where}: the weights must not all be 0")
    return subs


def _subpolicy(raw: Any, where: str, n: int, scale: float) -> SubPolicy:
    if isinstance(raw, SubPolicy):
        raw = {"weight": raw.weight, "layers": raw.layers}
    _mapping(raw, where, "a mapping {weight, layers}")
    _refuse_unknown(raw, {"weight", "layers"}, where)
    weight = _bounded(_required(raw, "weight", where), f"{where}.weight", 0.0, MAX_WEIGHT)
    return SubPolicy(weight, _layers(raw.get("layers"), f"{where}.layers", n, scale, FORMAT_V2))


# ----- a schedule -----------------------------------------------------------------------------
def _scheduled(data: Mapping, provenance: dict) -> Policy:
    beside = sorted(set(data) & _BODY_V2)
    if beside:
        raise PolicyError(f"{beside[0]}: not allowed beside 'schedule'; each schedule entry's "
                          "policy is a full policy body")
    raw = data["schedule"]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise PolicyError("schedule: expected a non-empty list of {start_epoch, policy}")
    if len(raw) > MAX_SCHEDULE:
        raise PolicyError(f"schedule: at most {MAX_SCHEDULE} entries, got {len(raw)}")
    entries = tuple(_entry(e, f"schedule[{i}]", provenance) for i, e in enumerate(raw))
    if entries[0].start_epoch != 0:
        raise PolicyError(f"schedule[0].start_epoch: the first entry must start at epoch 0, "
                          f"got {entries[0].start_epoch}")
    for i in range(1, len(entries)):
        if entries[i].start_epoch <= entries[i - 1].start_epoch:
            raise PolicyError(f"schedule[{i}].start_epoch: must be greater than schedule[{i - 1}]"
                              f".start_epoch ({entries[i - 1].start_epoch}), "
                              f"got {entries[i].start_epoch}")
    first = entries[0].policy
    return build(ops=first.ops, layers=(), resolution=first.resolution, scale=first.scale,
                 apply_prob=first.apply_prob, provenance=provenance, fill=first.fill,
                 gate=first.gate, subpolicies=(), schedule=entries)


def _entry(raw: Any, where: str, provenance: dict) -> ScheduleEntry:
    if isinstance(raw, ScheduleEntry):
        raw = {"start_epoch": raw.start_epoch, "policy": raw.policy}
    _mapping(raw, where, "a mapping {start_epoch, policy}")
    _refuse_unknown(raw, {"start_epoch", "policy"}, where)
    start = _integer(_required(raw, "start_epoch", where), f"{where}.start_epoch", 0, 10**9,
                     "an epoch")
    body = _required(raw, "policy", where)
    if isinstance(body, Policy):
        body = {k: v for k, v in body._raw().items() if k not in ("provenance", "format")}
    _mapping(body, f"{where}.policy", "a mapping (a policy body)")
    _refuse_unknown(body, _BODY_V2, f"{where}.policy")
    return ScheduleEntry(start, _flat(body, f"{where}.policy.",
                                      {**provenance, "schedule_start_epoch": start}, FORMAT_V2))
