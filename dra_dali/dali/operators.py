"""The catalog operators as DALI graph code on uint8 HWC images, registered to their catalog rows.

Each operator is declared once in :mod:`dra_dali.ops`; its DALI kernel registers to that row here
(``@dali_kernel`` / ``@dali_affine``, in the style of ``nvidia.dali.auto_aug``'s
``@augmentation``) and takes the operator's *parameter* (``v``, computed from the magnitude by
the catalog's mapping, :func:`parameter_node`), not the magnitude:

- ``@dali_kernel(name)``: ``kernel(images, v, *, fill, interpolation, **_) -> images``;
- ``@dali_affine(name)``: ``matrix(v, size) -> [[a, b, c], [d, e, f]]``, PIL's AFFINE
  coefficients (output pixel centre -> input point), written over numbers and DataNodes. The
  compiler runs every affine operator of a layer through one ``fn.warp_affine`` with a
  per-sample matrix (operators whose matrix is linear in ``v`` share one table lookup).

:func:`apply_op` runs one operator from a magnitude (tests, benchmarks). Pixel semantics follow
the PIL reference (``tests/pil_reference.py``): geometric operators use the PIL pixel-centre
convention, bilinear (or nearest) interpolation and the policy's fill; the enhance operators
reproduce PIL's blend (float32, then truncation) and its integer grey level. Per-sample
parameters are computed on the CPU and, for GPU images, copied to the GPU where they enter an
arithmetic expression with the images.

Example:
    >>> from nvidia.dali import pipeline_def, fn
    >>> from dra_dali.dali.operators import apply_op
    >>> @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    ... def rotated():
    ...     images = fn.external_source(name="images", layout="HWC")
    ...     return apply_op("Rotate", images, 0.5, sign=-1, fill=0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dmath
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import do_not_convert

from dra_dali.dali import cpu_kernels as fused
from dra_dali.ops import FILL_VALUE, OP_NAMES, OPS, kernels, parameter, register

__all__ = ["CPU_KERNELS", "DALI_OPS", "DaliKernel", "INTERPOLATIONS", "apply_op", "dali_affine",
           "dali_kernel", "dali_kernels", "fused_on", "image_size", "matrix_node", "parameter_node",
           "runs_fused", "warp"]

Scalar = Union[DataNode, float, int]

#: Interpolation of the geometric operators: PIL's BILINEAR (the default, as DALI's
#: rand_augment and the torch search kernels) or NEAREST (PIL's default, as TF-models).
INTERPOLATIONS = {"linear": types.INTERP_LINEAR, "nearest": types.INTERP_NN}

#: Kernels for CPU images: ``"fused"`` runs every operator of ``cpu_kernels.FUSED_KINDS`` and the
#: bilinear affine family as one compiled loop (:mod:`dra_dali.dali.cpu_kernels`, several times
#: cheaper on the CPU, same parity tests); ``"dali"`` keeps DALI's operators everywhere, the graph
#: the GPU runs. GPU images always take DALI's operators.
CPU_KERNELS = ("fused", "dali")


def fused_on(images: DataNode, cpu_kernels: str) -> bool:
    """Whether ``images`` take the fused CPU kernels (CPU images and ``cpu_kernels="fused"``)."""
    if cpu_kernels not in CPU_KERNELS:
        raise ValueError(f"cpu_kernels must be one of {list(CPU_KERNELS)}, got {cpu_kernels!r}")
    return cpu_kernels == "fused" and images.device == "cpu"


@dataclass(frozen=True)
class DaliKernel:
    """The DALI implementation of one catalog row.

    Attributes:
        name: the catalog row.
        apply: ``(images, v, *, fill, interpolation, **extra) -> images``.
        matrix: affine operators only: ``(v, size) -> 2 x 3`` PIL AFFINE coefficients, where
            ``size`` is the image's ``(width, height)`` (numbers, or an integer DataNode).
        integer: the kernel takes the integer part of ``v`` (PIL's int() of a threshold).
        passthrough: the kernel returns the images unchanged (Identity: no branch at all).
        shares: in a compiled policy, run this other operator's kernel with this operator's
            parameter (Invert is Solarize at threshold 0): one branch for both.
    """

    name: str
    apply: Callable[..., DataNode]
    matrix: Callable | None = None
    integer: bool = False
    passthrough: bool = False
    shares: str | None = None

    @property
    def affine(self) -> bool:
        return self.matrix is not None


def dali_kernel(name: str, *, integer: bool = False, passthrough: bool = False,
                shares: str | None = None):
    """Decorator: register ``kernel(images, v, *, fill, interpolation, **_)`` for row ``name``."""
    def add(function):
        register("dali", name, DaliKernel(name, do_not_convert(function), None, integer,
                                          passthrough, shares))
        return function
    return add


def dali_affine(name: str):
    """Decorator: register ``matrix(v, size)`` (PIL AFFINE, output -> input; ``size`` = the
    image's ``(width, height)``) for row ``name``; the images go through :func:`warp` with it."""
    def add(matrix):
        def apply(images, v, *, fill=FILL_VALUE, interpolation="linear", **_):
            return warp(images, matrix_node(matrix, v, image_size(images)), fill, interpolation)
        register("dali", name, DaliKernel(name, do_not_convert(apply), matrix))
        return matrix
    return add


def dali_kernels() -> dict[str, DaliKernel]:
    """The registered DALI kernels, keyed by operator name in catalog order."""
    return kernels("dali")


def _spec(name: str):
    if name not in OPS:
        raise KeyError(f"unknown operator {name!r}; the catalog has: {', '.join(OPS)}")
    return OPS[name]


def parameter_node(name: str, magnitude: Scalar, sign: Scalar | None = None,
                   resolution: int = 224, integer: bool = False) -> DataNode | float:
    """The catalog parameter of operator ``name`` as a per-sample DataNode.

    Applies ``clamp(identity + sign * slope_at(resolution) * m, *bounds_at(resolution))`` and the
    floor for ``rounding == "floor"``, exactly as ``dra_dali.ops.parameter_array`` does in numpy.

    Args:
        name: catalog operator name.
        magnitude: per-sample float32 DataNode (CPU) or a Python number.
        sign: per-sample +1/-1 DataNode or number; ignored for unsigned operators; ``None`` = +1.
        resolution: training resolution (translate range).
        integer: also take the integer part (in float64, before the float32 result), as PIL does
            with the thresholds of Solarize and SolarizeAdd.

    Returns:
        A float32 DataNode (or a float when every input is a Python number).

    Raises:
        KeyError: for an operator the catalog does not have.

    Example:
        >>> parameter_node("Rotate", 0.5, sign=-1)
        -15.0
    """
    spec = _spec(name)
    lower, upper = spec.bounds_at(resolution)
    if not any(isinstance(x, DataNode) for x in (magnitude, sign)):
        value = parameter(name, float(magnitude), 1 if sign is None else int(sign), resolution)
        return float(math.floor(value)) if integer else value
    # float64 like the catalog's numpy mapping: in float32, 1 + 0.9 * 3 is 3.6999998, and PIL's
    # truncating blend then lands one level lower on some pixels.
    value = _times(_f64(magnitude), spec.slope_at(resolution))
    if spec.signed and sign is not None:
        value = value * _f64(sign)
    value = _plus(value, spec.identity)
    if math.isfinite(lower) and math.isfinite(upper):
        value = dmath.clamp(value, float(lower), float(upper))
    elif math.isfinite(lower):
        value = dmath.max(value, float(lower))
    elif math.isfinite(upper):
        value = dmath.min(value, float(upper))
    if spec.rounding == "floor" or integer:
        value = dmath.floor(value)
    return fn.cast(value, dtype=types.FLOAT)


# ----- helpers --------------------------------------------------------------------------------
def _f64(value: Scalar) -> DataNode:
    if isinstance(value, DataNode):
        return fn.cast(value, dtype=types.FLOAT64)
    return float(value)


def _split32(constant: float) -> tuple[float, float]:
    """``constant`` as the sum of two float32 numbers: DALI keeps scalar constants in float32,
    so a float64 product is formed from exactly representable parts."""
    high = float(np.float32(constant))
    return high, float(np.float32(constant - high))


def _times(node: DataNode, constant: float) -> DataNode:
    high, low = _split32(constant)
    return node * high + node * low if low else node * high


def _plus(node: DataNode, constant: float) -> DataNode:
    high, low = _split32(constant)
    return node + high + low if low else node + high


def _like(images: DataNode, value: Scalar) -> Scalar:
    """Move a per-sample CPU parameter next to the images (GPU arithmetic needs GPU operands)."""
    if isinstance(value, DataNode) and images.device == "gpu" and value.device != "gpu":
        return value.gpu()
    return value


def _const(array) -> DataNode:
    return types.Constant(np.asarray(array, dtype=np.float32))


# DALI converts float to integer rounding half away from zero, so for a float32 v,
# convert(v - 0.5) == clip(floor(v), 0, 255): PIL's truncation in one conversion (v - 0.5 is exact
# for 0.5 <= v < 2**23; below 0.5 both give 0). fn.brightness converts much faster than fn.cast.
_TRUNCATE_SHIFT = -0.5 / 255.0
_ZERO16 = types.Constant(0, dtype=types.INT16)
_U8_MAX = types.Constant(255, dtype=types.UINT8)
_U8_128 = types.Constant(128, dtype=types.UINT8)
# PIL's L = (R*19595 + G*38470 + B*7471 + 2**15) >> 16 equals round-half-up of the dot product
# with these weights; every partial sum is a multiple of 2**-16 below 256, exact in float32.
_LUMA_WEIGHTS = (np.array([19595, 38470, 7471], np.float64) / 65536).astype(np.float32).tolist()


def _truncate_to_uint8(value: DataNode) -> DataNode:
    """uint8 ``clip(floor(value), 0, 255)`` of a float32 DataNode (PIL's blend output)."""
    return fn.brightness(value, brightness=1.0, brightness_shift=_TRUNCATE_SHIFT,
                         dtype=types.UINT8)


def _luma(images: DataNode) -> DataNode:
    """PIL's RGB -> L conversion, bit exact, as a uint8 (H, W, 1) DataNode."""
    return fn.coord_transform(images, M=_LUMA_WEIGHTS, dtype=types.UINT8)


def _blend(degenerate: DataNode, images: DataNode, factor: Scalar) -> DataNode:
    """PIL ``Image.blend(degenerate, image, factor)``: ``degenerate + factor * (image -
    degenerate)`` in float32 (the difference is exact in int16), then clip and truncate.
    ``degenerate`` is a uint8 image or a per-sample float scalar (a constant grey image).

    ``fn.brightness_contrast`` would be faster for a constant grey image but does not round like
    PIL (it is off by one level where the product lands just below an integer)."""
    value = degenerate + _like(images, factor) * ((images + _ZERO16) - degenerate)
    return _truncate_to_uint8(value)


def apply_op(name: str, images: DataNode, magnitude: Scalar, sign: Scalar | None = None, *,
             resolution: int = 224, fill: int = FILL_VALUE, interpolation: str = "linear",
             cpu_kernels: str = "fused", **extra) -> DataNode:
    """Apply catalog operator ``name`` with a per-sample magnitude (and sign) to uint8 HWC images.

    Args:
        name: catalog operator with a registered DALI kernel.
        images: uint8 HWC DataNode on ``cpu`` or ``gpu``.
        magnitude: per-sample float32 DataNode (CPU) or a number.
        sign: per-sample +1/-1 for signed operators; ``None`` = +1.
        resolution: training resolution (translate range).
        fill: grey level of the pixels geometric operators bring in.
        interpolation: ``"linear"`` or ``"nearest"`` (geometric operators).
        cpu_kernels: ``"fused"`` or ``"dali"`` for CPU images (see :data:`CPU_KERNELS`).
        extra: kernel-specific options (Cutout: ``center``).

    Raises:
        KeyError: for an operator without a DALI kernel.
    """
    table = dali_kernels()
    if name not in table:
        raise KeyError(f"no DALI kernel for operator {name!r}; registered: {', '.join(table)}")
    kernel = table[name]
    v = parameter_node(name, magnitude, sign, resolution, integer=kernel.integer)
    if fused_on(images, cpu_kernels) and runs_fused(kernel, interpolation):
        return fused.fused(images, _fused_parameters(kernel, images, v, fill, extra.get("center")))
    return kernel.apply(images, v, fill=fill, interpolation=interpolation, **extra)


def runs_fused(kernel: DaliKernel, interpolation: str) -> bool:
    """Whether the fused CPU kernel runs ``kernel`` (bilinear only, for the affine family)."""
    return fused.fusable(kernel.name, kernel.affine) and (
        not kernel.affine or interpolation == "linear")


def _fused_parameters(kernel: DaliKernel, images: DataNode, v: Scalar, fill: int, center):
    if kernel.affine:
        return fused.parameters(fused.AFFINE, v, matrix_node(kernel.matrix, v, image_size(images)),
                                fill)
    centre = None
    if kernel.name == "Cutout":           # the fused kernel takes the centre as u = centre / size
        hw = fn.cast(images.shape(device="cpu")[0:2], dtype=types.FLOAT)
        centre = (fn.random.uniform(range=[0.0, 1.0], shape=[2]) if center is None
                  else (center + 0.5) / hw)
    return fused.parameters(fused.FUSED_KINDS.index(kernel.name), v, centre=centre)


def warp(images: DataNode, matrix, fill: int = FILL_VALUE,
         interpolation: str = "linear") -> DataNode:
    """``fn.warp_affine`` with PIL's AFFINE coefficients (output pixel centres -> input points;
    DALI's ``inverse_map`` uses the same convention), the fill and the interpolation."""
    return fn.warp_affine(images, matrix=matrix, fill_value=float(fill),
                          interp_type=INTERPOLATIONS[interpolation], inverse_map=True)


def image_size(images: DataNode) -> DataNode:
    """Per-sample ``(width, height)`` of HWC images as an integer CPU DataNode (arithmetic with
    a float gives float32)."""
    return images.shape(device="cpu")[1::-1]


def matrix_node(matrix: Callable, v: Scalar, size):
    """The 2 x 3 matrix of an affine operator as a per-sample DataNode (or a constant list)."""
    rows = matrix(v, size)
    if isinstance(rows, DataNode):
        return rows
    entries = [e for row in rows for e in row]
    if not any(isinstance(e, DataNode) for e in entries):
        return [float(e) for e in entries]
    anchor = next(e for e in entries if isinstance(e, DataNode)) * 0.0
    nodes = [e if isinstance(e, DataNode) else anchor + float(e) for e in entries]
    return fn.reshape(fn.stack(*nodes), shape=[2, 3])


# ----- geometric: PIL AFFINE coefficients (output -> input) -----------------------------------
@dali_affine("ShearX")
def shear_x(v, size):
    """ShearX: PIL AFFINE ``(1, v, 0, 0, 1, 0)`` about the top-left origin."""
    return [[1.0, v, 0.0], [0.0, 1.0, 0.0]]


@dali_affine("ShearY")
def shear_y(v, size):
    """ShearY: PIL AFFINE ``(1, 0, 0, v, 1, 0)`` about the top-left origin."""
    return [[1.0, 0.0, 0.0], [v, 1.0, 0.0]]


@dali_affine("TranslateX")
def translate_x(v, size):
    """TranslateX: PIL AFFINE ``(1, 0, v, 0, 1, 0)``; ``v`` in pixels."""
    return [[1.0, 0.0, v], [0.0, 1.0, 0.0]]


@dali_affine("TranslateY")
def translate_y(v, size):
    """TranslateY: PIL AFFINE ``(1, 0, 0, 0, 1, v)``; ``v`` in pixels."""
    return [[1.0, 0.0, 0.0], [0.0, 1.0, v]]


@dali_affine("Rotate")
def rotate(v, size):
    """Rotate: ``v`` degrees counter-clockwise about the centre, size kept (PIL Image.rotate).

    PIL's inverse map is the rotation by ``v`` in (x, y) pixel coordinates about ``(W/2, H/2)``;
    on DataNodes that is one ``fn.transforms.rotation`` (checked against the formula in tests).
    """
    if isinstance(v, DataNode) or isinstance(size, DataNode):
        center = size * 0.5 if isinstance(size, DataNode) else [float(x) * 0.5 for x in size]
        return fn.transforms.rotation(angle=v, center=center)
    c, s = math.cos(math.radians(v)), math.sin(math.radians(v))
    cx, cy = size[0] * 0.5, size[1] * 0.5
    return [[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy]]


# ----- colour ---------------------------------------------------------------------------------
@dali_kernel("Brightness")
def brightness(images: DataNode, v: Scalar, **_) -> DataNode:
    """Brightness: PIL blend with black, factor ``v`` (``trunc(v * x)``, clipped)."""
    return fn.brightness(images, brightness=v, brightness_shift=_TRUNCATE_SHIFT)


@dali_kernel("Color")
def color(images: DataNode, v: Scalar, **_) -> DataNode:
    """Color: PIL blend with the grey (L) image, factor ``v``."""
    return _blend(_luma(images), images, v)


@dali_kernel("Contrast")
def contrast(images: DataNode, v: Scalar, **_) -> DataNode:
    """Contrast: PIL blend with the image's mean grey level (rounded to an integer)."""
    mean = fn.reductions.mean(_luma(images), dtype=types.FLOAT)
    center = dmath.floor(mean + 0.5)
    return _blend(center, images, v)


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0


@dali_kernel("Sharpness")
def sharpness(images: DataNode, v: Scalar, **_) -> DataNode:
    """Sharpness: PIL blend with the SMOOTH-filtered image; the 1-pixel border is kept unchanged.

    The smoothing runs on the interior only (``mode="valid"``, rounded to uint8 like PIL's
    filter), the blend's change is padded with zeros back to the full size, so border pixels stay
    as they are, like PIL's filter.
    """
    smooth = fn.filter(images, _SMOOTH, mode="valid")
    inner = images[1:-1, 1:-1]
    change = (_blend(smooth, inner, v) + _ZERO16) - inner
    shape = fn.cast(images.shape(device="cpu")[0:2], dtype=types.INT32)
    change = fn.slice(change, start=[-1, -1], shape=shape, axis_names="HW",
                      out_of_bounds_policy="pad", fill_values=0)
    return fn.cast(images + change, dtype=types.UINT8)


@dali_kernel("Cutout")
def cutout(images: DataNode, v: Scalar, *, center: DataNode | None = None, **_) -> DataNode:
    """Cutout: zero a square of side ``round(v * H)`` at a random centre, clipped at the borders
    (the DRA authors fill 0, whatever the policy's fill).

    Args:
        center: optional per-sample ``(row, column)`` float DataNode; by default it is drawn
            uniformly over the pixel grid, as the PIL reference does.
    """
    hw = fn.cast(images.shape(device="cpu")[0:2], dtype=types.FLOAT)
    # Python's round() is half-to-even, floor(x + 0.5) half-up; they differ only at exact .5.
    side = dmath.floor(v * hw[0] + 0.5)
    if center is None:     # u < 1, so floor(u * size) < size in float32 too
        center = dmath.floor(fn.random.uniform(range=[0.0, 1.0], shape=[2]) * hw)
    return fn.erase(images, anchor=center - dmath.floor(side * 0.5), shape=fn.stack(side, side),
                    axis_names="HW", fill_value=0.0)


@dali_kernel("Solarize", integer=True)
def solarize(images: DataNode, v: Scalar, **_) -> DataNode:
    """Solarize: invert pixels >= the threshold (PIL takes the integer part of the threshold)."""
    return images ^ ((images >= _like(images, v)) * _U8_MAX)      # x ^ 255 == 255 - x


@dali_kernel("Posterize")
def posterize(images: DataNode, v: Scalar, **_) -> DataNode:
    """Posterize: clear the lowest ``v`` bits (PIL ``posterize(img, 8 - v)``)."""
    mask = fn.cast(256.0 - dmath.pow(2.0, v), dtype=types.UINT8)
    return images & _like(images, mask)


@dali_kernel("Equalize")
def equalize(images: DataNode, v: Scalar = 0.0, **_) -> DataNode:
    """Equalize: per-channel histogram equalisation.

    Deliberate difference: DALI's ``fn.equalize`` follows OpenCV's lookup table
    (``round((cdf - cdf_min) * 255 / (N - cdf_min))``) while PIL uses
    ``(cdf_exclusive + step // 2) // step`` with ``step = (N - count of the top level) // 255``.
    DALI has no per-sample histogram operator to rebuild PIL's table in the graph; the two tables
    differ by a few levels (the catalog row's parity tolerance).
    """
    return fn.equalize(images)


@dali_kernel("AutoContrast")
def auto_contrast(images: DataNode, v: Scalar = 0.0, **_) -> DataNode:
    """AutoContrast: per-channel stretch of [min, max] to [0, 255], PIL's truncating table.

    PIL's table is ``int(x * scale + offset)`` in double precision; float32 lands one level
    lower on about 1 % of the pixels, so the per-pixel expression is evaluated in float64.
    Flat channels get scale 1 and offset 0 (identity, as in PIL).
    """
    lo = fn.cast(fn.reductions.min(images, axes=[0, 1], keep_dims=True), dtype=types.FLOAT64)
    hi = fn.cast(fn.reductions.max(images, axes=[0, 1], keep_dims=True), dtype=types.FLOAT64)
    flat = hi <= lo
    scale = 255.0 / (hi - lo + flat * 255.0)
    offset = (flat - 1) * lo * scale - 0.5            # -lo * scale, or 0 for a flat channel
    return fn.cast(images * scale + offset, dtype=types.UINT8)


@dali_kernel("Invert", shares="Solarize")
def invert(images: DataNode, v: Scalar = 0.0, **_) -> DataNode:
    """Invert: ``255 - x``."""
    return _U8_MAX - images


@dali_kernel("SolarizeAdd", integer=True)
def solarize_add(images: DataNode, v: Scalar, **_) -> DataNode:
    """SolarizeAdd: add ``int(v)`` to pixels below 128, saturating at 255."""
    add = _like(images, fn.cast(v, dtype=types.UINT8))
    low = images < _U8_128
    return images + low * dmath.min(add, _U8_MAX - images)


@dali_kernel("Identity", passthrough=True)
def identity(images: DataNode, v: Scalar = 0.0, **_) -> DataNode:
    """Identity: the images unchanged."""
    return images


def _built_in(name: str):
    def op(images, magnitude, sign=None, **kwargs):
        return apply_op(name, images, magnitude, sign, **kwargs)
    op.__name__ = op.__qualname__ = name
    op.__doc__ = dali_kernels()[name].apply.__doc__
    return do_not_convert(op)


#: Operator name -> ``op(images, magnitude, sign=None, *, resolution, fill, interpolation)`` for
#: the built-in catalog (:func:`apply_op` for any registered kernel). The kernels contain no
#: data-dependent ``if``, so they are exempt from DALI's AutoGraph rewriting (``do_not_convert``):
#: converting them again for every conditional branch made a policy take seconds to define.
DALI_OPS: dict[str, Callable[..., DataNode]] = {name: _built_in(name) for name in OP_NAMES}
parameter_node = do_not_convert(parameter_node)
