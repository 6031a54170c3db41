"""The operator catalog: one table that the search (torch), the DALI compiler and the tests share.

Magnitudes are normalised: ``m = 0`` is no change, ``m = 1`` is the edge of the range of the
paper's Table I and ``m`` may go up to a policy's ``scale`` (3.0 for the extended range).
Every operator turns a magnitude into its parameter with the same linear rule

    parameter = clamp(identity + sign * slope * m, lower, upper)

where ``sign`` is +1 or -1 for signed operators (drawn with probability 0.5 each) and always +1
otherwise. Backends read ``identity``, ``slope`` and the bounds from here and apply the rule with
their own arithmetic (numpy, torch tensors, DALI data nodes), so the mapping is written once.

Semantics follow the TensorFlow/PIL RandAugment that the paper re-implemented (uint8 HWC images).

Example:
    >>> from dra_dali.ops import OPS, parameter
    >>> parameter("Rotate", 0.5, sign=-1)
    -15.0
    >>> OPS["Posterize"].rounding
    'floor'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

__all__ = [
    "OpSpec",
    "Parity",
    "OPS",
    "OP_NAMES",
    "PAPER_OPS",
    "FILL_VALUE",
    "translate_range_px",
    "parameter",
    "parameter_array",
    "register",
    "kernels",
    "declare",
    "withdraw",
]

#: Constant used by the geometric operators for pixels that come from outside the image.
FILL_VALUE = 128

#: Translate range (pixels at m = 1) for the two resolutions of the paper.
_TRANSLATE_PX = {32: 10, 224: 100}


def translate_range_px(resolution: int) -> float:
    """Pixels of translation at ``m = 1`` for images of side ``resolution``.

    The paper uses 10 px at 32 px (CIFAR) and 100 px at 224 px (ImageNet). Other resolutions take
    the fraction of the nearer of those two (10/32 below 128 px, 100/224 from 128 px up).

    Args:
        resolution: training image side in pixels.

    Returns:
        The translation in pixels that ``m = 1`` stands for.

    Raises:
        ValueError: if ``resolution`` is not positive.

    Example:
        >>> translate_range_px(224), translate_range_px(32), translate_range_px(448)
        (100.0, 10.0, 200.0)
    """
    if resolution <= 0:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
    if resolution in _TRANSLATE_PX:
        return float(_TRANSLATE_PX[resolution])
    reference = 32 if resolution < 128 else 224
    return _TRANSLATE_PX[reference] * resolution / reference


@dataclass(frozen=True)
class Parity:
    """Tolerances of an operator's parity tests, in grey levels of 0..255 (read by the tests).

    Attributes:
        dali_pil: DALI kernel against the PIL reference: ``"exact"`` (bit exact), ``"geometric"``
            (bit exact at whole-pixel translations, else at most 1 level off outside the border
            band where PIL and DALI interpolate the fill differently) or ``(mean, max)`` absolute
            error.
        dali_torch: DALI kernel against the torch search kernel: ``(mean, max)`` absolute error
            (outside the border band for geometric operators).
        torch_pil: torch search kernel against the PIL reference: ``(mean absolute error,
            fraction of pixels off by more than 2 levels)``; measured worst cases in the rows.
    """

    dali_pil: str | tuple[float, float] = "exact"
    dali_torch: tuple[float, float] = (1e-3, 1e-3)
    torch_pil: tuple[float, float] = (0.0, 0.0)


_EXACT = Parity()


def _geometric(torch_pil: tuple[float, float]) -> Parity:
    # torch (kornia) blends the fill into the border like DALI, PIL clamps: the border differs
    return Parity("geometric", (0.5, 1.0), torch_pil)


def _blend(torch_pil: tuple[float, float]) -> Parity:
    # torch keeps float images, PIL and DALI truncate (and round their grey/smoothed images)
    return Parity("exact", (1.5, 3.0), torch_pil)


@dataclass(frozen=True)
class OpSpec:
    """One row of the catalog.

    Attributes:
        name: operator name as used in policy files.
        kind: ``"geometric"`` (moves pixels) or ``"color"`` (changes values in place).
        signed: the parameter's deviation from ``identity`` flips sign with probability 0.5.
        magnitude_free: the operator ignores the magnitude (Equalize, AutoContrast, Invert,
            Identity).
        identity: parameter value at ``m = 0``.
        slope: parameter change per unit of magnitude. For translations it is per pixel of
            ``translate_range_px`` and is multiplied by that range (see :meth:`slope_at`).
        lower: smallest valid parameter (extended magnitudes clamp here).
        upper: largest valid parameter.
        unit: what the parameter measures.
        rounding: ``"floor"`` where the parameter is an integer taken by flooring (Posterize).
        input_gradient: the torch search operator is differentiable with respect to its input;
            where False the search passes the gradient straight through.
        parity: the tolerances of the parity tests (:class:`Parity`).
    """

    name: str
    kind: Literal["geometric", "color"]
    signed: bool
    magnitude_free: bool
    identity: float
    slope: float
    lower: float
    upper: float
    unit: str
    rounding: Literal["none", "floor"] = "none"
    input_gradient: bool = True
    parity: Parity = _EXACT

    def slope_at(self, resolution: int) -> float:
        """Parameter change per unit of magnitude at the given training resolution."""
        if self.unit == "pixels":
            return self.slope * translate_range_px(resolution)
        return self.slope

    def bounds_at(self, resolution: int) -> tuple[float, float]:
        """Valid parameter bounds at the given resolution (translations stop at the image size)."""
        if self.unit == "pixels":
            return (-float(resolution), float(resolution))
        return (self.lower, self.upper)


def _row(name, kind, signed, identity, slope, lower, upper, unit, **kw) -> OpSpec:
    return OpSpec(name, kind, signed, False, identity, slope, lower, upper, unit, **kw)


def _free(name: str, input_gradient: bool, **kw) -> OpSpec:
    return OpSpec(name, "color", False, True, 0.0, 0.0, 0.0, 0.0, "none",
                  input_gradient=input_gradient, **kw)


_INF = math.inf
_PAPER_ROWS = (
    _row("ShearX", "geometric", True, 0.0, 0.3, -1.0, 1.0, "shear factor",
         parity=_geometric((0.8, 0.015))),          # measured worst (0.59, 0.009)
    _row("ShearY", "geometric", True, 0.0, 0.3, -1.0, 1.0, "shear factor",
         parity=_geometric((0.8, 0.015))),
    # slope 1 x translate_range_px(resolution); bounds are +-resolution (see OpSpec.bounds_at).
    _row("TranslateX", "geometric", True, 0.0, 1.0, -_INF, _INF, "pixels",
         parity=_geometric((0.6, 0.012))),          # (0.46, 0.008)
    _row("TranslateY", "geometric", True, 0.0, 1.0, -_INF, _INF, "pixels",
         parity=_geometric((0.6, 0.012))),
    _row("Rotate", "geometric", True, 0.0, 30.0, -180.0, 180.0, "degrees",
         parity=_geometric((1.0, 0.025))),          # (0.76, 0.017)
    # Blend factors are not clamped at 0: past m = 1 with sign -1 they go negative (extrapolation
    # away from the degenerate image) and the backends clip the image, as the DRA authors' code
    # does (their enhance ops take any factor); clamping at 0 changed about half of the
    # Color/Sharpness/Contrast draws of dra-imagenet-resnet-200 (scale 3).
    _row("Brightness", "color", True, 1.0, 0.9, -_INF, _INF, "blend factor",
         parity=_blend((0.6, 0.0))),                # (0.49, 0)
    _row("Color", "color", True, 1.0, 0.9, -_INF, _INF, "blend factor",
         parity=_blend((0.7, 0.0))),                # (0.52, 0)
    _row("Sharpness", "color", True, 1.0, 0.9, -_INF, _INF, "blend factor",
         parity=_blend((0.8, 0.0))),                # (0.63, 0)
    _row("Contrast", "color", True, 1.0, 0.9, -_INF, _INF, "blend factor",
         parity=_blend((0.7, 0.0))),                # (0.59, 0)
    _row("Cutout", "color", False, 0.0, 0.2, 0.0, 1.0, "fraction of height"),
    # Solarize keeps its exact +-1 input gradient (the DRA authors' tf.where); only Posterize
    # and Equalize are straight-through in the search (paper III-B-3).
    _row("Solarize", "color", False, 256.0, -256.0, 0.0, 256.0, "threshold"),
    _row("Posterize", "color", False, 0.0, 4.0, 0.0, 7.0, "bits removed", rounding="floor",
         input_gradient=False),
    # DALI's fn.equalize uses OpenCV's table, not PIL's (see dra_dali.dali.operators.equalize).
    _free("Equalize", input_gradient=False, parity=Parity((11.0, 25), (13.0, 25))),
    _free("AutoContrast", input_gradient=True, parity=_blend((0.6, 0.0))),   # (0.49, 0)
    _free("Invert", input_gradient=True),
    _row("SolarizeAdd", "color", False, 0.0, 110.0, 0.0, 255.0, "addition",
         parity=_blend((0.0, 0.0))),
)
# Operators beyond the paper's 16 (Identity: the no-op of TrivialAugment, Faster AA and DDAS).
_EXTRA_ROWS = (
    _free("Identity", input_gradient=True),
)

#: The catalog, keyed by operator name: the paper's operators in the paper's order, then the rest.
OPS: dict[str, OpSpec] = {row.name: row for row in _PAPER_ROWS + _EXTRA_ROWS}
#: Every catalog operator (the paper's 16, then Identity).
OP_NAMES: tuple[str, ...] = tuple(OPS)
#: The DRA paper's 16 operators in the paper's order: the default operator list of searches and
#: of the presets (a new catalog operator changes neither).
PAPER_OPS: tuple[str, ...] = tuple(row.name for row in _PAPER_ROWS)


def _spec(name: str) -> OpSpec:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown operator {name!r}; the catalog has: {', '.join(OPS)}") from None


def parameter_array(name: str, magnitude, sign=1, resolution: int = 224) -> np.ndarray:
    """Vectorised :func:`parameter` over numpy arrays of magnitudes and signs."""
    spec = _spec(name)
    m = np.asarray(magnitude, dtype=np.float64)
    s = np.asarray(sign, dtype=np.float64) if spec.signed else 1.0
    lower, upper = spec.bounds_at(resolution)
    value = np.clip(spec.identity + s * spec.slope_at(resolution) * m, lower, upper)
    if spec.rounding == "floor":
        value = np.floor(value)
    return value


def parameter(name: str, magnitude: float, sign: int = 1, resolution: int = 224) -> float:
    """The operator parameter for a normalised magnitude.

    Args:
        name: operator name from :data:`OPS`.
        magnitude: normalised magnitude (0 = no change, 1 = edge of the paper's range).
        sign: +1 or -1; ignored by unsigned operators.
        resolution: training resolution (selects the translate range).

    Returns:
        The parameter in the operator's unit (see ``OPS[name].unit``).

    Raises:
        KeyError: for an operator name the catalog does not have.

    Example:
        >>> parameter("Solarize", 0.25), parameter("TranslateX", 1.0, resolution=32)
        (192.0, 10.0)
    """
    return float(parameter_array(name, magnitude, sign, resolution))


# ----- kernels: each backend registers its implementation of a row ------------------------------
_BUILT_IN = frozenset(OP_NAMES)
_KERNELS: dict[str, dict[str, Any]] = {}


def declare(spec: OpSpec) -> OpSpec:
    """Add an operator row to the catalog (an extension, or a toy operator in a test).

    Its kernels then register with :func:`register` like the built-in ones; policies may name it
    and the DALI compiler dispatches to it. The built-in rows cannot be replaced.

    Raises:
        ValueError: if the name is already in the catalog.
    """
    if spec.name in OPS:
        raise ValueError(f"operator {spec.name!r} is already in the catalog")
    OPS[spec.name] = spec
    return spec


def withdraw(name: str) -> None:
    """Remove a row added with :func:`declare` and its kernels (built-in rows stay)."""
    if name in _BUILT_IN:
        raise ValueError(f"{name!r} is a built-in catalog operator and cannot be withdrawn")
    OPS.pop(name, None)
    for table in _KERNELS.values():
        table.pop(name, None)


def register(backend: str, name: str, kernel: Any = None) -> Callable[[Any], Any]:
    """Register ``kernel`` as the ``backend`` (``"dali"``, ``"torch"``, ``"pil"``) implementation
    of catalog row ``name``; used as a decorator, like DALI's ``@augmentation``.

    Example:
        >>> @register("pil", "Identity")          # doctest: +SKIP
        ... def identity(image, v, ctx):
        ...     return image
    """
    _spec(name)

    def add(obj: Any) -> Any:
        _KERNELS.setdefault(backend, {})[name] = obj
        return obj

    return add(kernel) if kernel is not None else add


def kernels(backend: str) -> dict[str, Any]:
    """The kernels registered for ``backend``, keyed by operator name in catalog order."""
    table = _KERNELS.get(backend, {})
    return {name: table[name] for name in OPS if name in table}
