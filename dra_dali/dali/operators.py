"""The catalog operators as DALI graph code on uint8 HWC images.

Every operator has the signature ``op(images, magnitude, sign=None, *, resolution=224)``:

- ``images``: a uint8 HWC :class:`~nvidia.dali.data_node.DataNode` on ``cpu`` or ``gpu``;
- ``magnitude``: a per-sample float32 scalar DataNode (CPU), or a Python number;
- ``sign``: per-sample +1/-1 (CPU DataNode or number) for signed operators; ``None`` means +1;
- ``resolution``: the training resolution, which picks the translate range (``dra_dali.ops``).

The magnitude becomes the operator parameter with :func:`parameter_node`, the DataNode form of
``dra_dali.ops.parameter`` (``clamp(identity + sign * slope * m, lower, upper)``, floored where the
catalog says so), so the mapping lives in the catalog only. Pixel semantics follow the PIL
reference (``tests/pil_reference.py``): geometric operators use the PIL pixel-centre convention,
bilinear interpolation and fill ``FILL_VALUE``; the enhance operators reproduce PIL's blend (float32,
then truncation) and its integer grey level. Per-sample parameters are computed on the CPU and, for
GPU images, copied to the GPU where they enter an arithmetic expression with the images.

Example:
    >>> from nvidia.dali import pipeline_def, fn
    >>> from dra_dali.dali.operators import DALI_OPS
    >>> @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    ... def rotated():
    ...     images = fn.external_source(name="images", layout="HWC")
    ...     return DALI_OPS["Rotate"](images, 0.5, sign=-1)
"""

from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dmath
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import do_not_convert

from dra_dali.ops import FILL_VALUE, OP_NAMES, OPS, parameter

__all__ = ["DALI_OPS", "OperatorFn", "parameter_node"]

Scalar = Union[DataNode, float, int]
OperatorFn = Callable[..., DataNode]


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
    if name not in OPS:
        raise KeyError(f"unknown operator {name!r}; the catalog has: {', '.join(OP_NAMES)}")
    spec = OPS[name]
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


def _warp(images: DataNode, matrix: DataNode) -> DataNode:
    # inverse_map: the matrix maps output pixel centres to input coordinates, as PIL's AFFINE
    # coefficients do, so the PIL coefficients are used unchanged.
    return fn.warp_affine(images, matrix=matrix, fill_value=float(FILL_VALUE),
                          interp_type=types.INTERP_LINEAR, inverse_map=True)


def _affine(images: DataNode, v: Scalar, direction) -> DataNode:
    """Warp with the inverse map ``identity + v * direction`` (2 x 3, PIL coefficient order)."""
    identity = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
    if not isinstance(v, DataNode):
        return _warp(images, (identity + np.float32(v) * np.asarray(direction, np.float32))
                     .ravel().tolist())
    return _warp(images, _const(identity) + v * _const(direction))


def _p(name: str, magnitude: Scalar, sign: Scalar | None, resolution: int,
       integer: bool = False) -> Scalar:
    return parameter_node(name, magnitude, sign, resolution, integer)


# ----- geometric ------------------------------------------------------------------------------
def shear_x(images: DataNode, magnitude: Scalar, sign: Scalar | None = None, *,
            resolution: int = 224) -> DataNode:
    """ShearX: PIL AFFINE ``(1, v, 0, 0, 1, 0)`` about the top-left origin, fill 128."""
    return _affine(images, _p("ShearX", magnitude, sign, resolution), [[0, 1, 0], [0, 0, 0]])


def shear_y(images: DataNode, magnitude: Scalar, sign: Scalar | None = None, *,
            resolution: int = 224) -> DataNode:
    """ShearY: PIL AFFINE ``(1, 0, 0, v, 1, 0)`` about the top-left origin, fill 128."""
    return _affine(images, _p("ShearY", magnitude, sign, resolution), [[0, 0, 0], [1, 0, 0]])


def translate_x(images: DataNode, magnitude: Scalar, sign: Scalar | None = None, *,
                resolution: int = 224) -> DataNode:
    """TranslateX: PIL AFFINE ``(1, 0, v, 0, 1, 0)``; ``v`` in pixels; fill 128."""
    return _affine(images, _p("TranslateX", magnitude, sign, resolution), [[0, 0, 1], [0, 0, 0]])


def translate_y(images: DataNode, magnitude: Scalar, sign: Scalar | None = None, *,
                resolution: int = 224) -> DataNode:
    """TranslateY: PIL AFFINE ``(1, 0, 0, 0, 1, v)``; ``v`` in pixels; fill 128."""
    return _affine(images, _p("TranslateY", magnitude, sign, resolution), [[0, 0, 0], [0, 0, 1]])


def rotate(images: DataNode, magnitude: Scalar, sign: Scalar | None = None, *,
           resolution: int = 224) -> DataNode:
    """Rotate: ``v`` degrees counter-clockwise about the centre, size kept, fill 128."""
    angle = _p("Rotate", magnitude, sign, resolution)
    return fn.rotate(images, angle=angle, keep_size=True, fill_value=float(FILL_VALUE),
                     interp_type=types.INTERP_LINEAR)


# ----- colour ---------------------------------------------------------------------------------
def brightness(images: DataNode, magnitude: Scalar, sign: Scalar | None = None, *,
               resolution: int = 224) -> DataNode:
    """Brightness: PIL blend with black, factor ``v`` (``trunc(v * x)``, clipped)."""
    factor = _p("Brightness", magnitude, sign, resolution)
    return fn.brightness(images, brightness=factor, brightness_shift=_TRUNCATE_SHIFT)


def color(images: DataNode, magnitude: Scalar, sign: Scalar | None = None, *,
          resolution: int = 224) -> DataNode:
    """Color: PIL blend with the grey (L) image, factor ``v``."""
    return _blend(_luma(images), images, _p("Color", magnitude, sign, resolution))


def contrast(images: DataNode, magnitude: Scalar, sign: Scalar | None = None, *,
             resolution: int = 224) -> DataNode:
    """Contrast: PIL blend with the image's mean grey level (rounded to an integer)."""
    mean = fn.reductions.mean(_luma(images), dtype=types.FLOAT)
    center = dmath.floor(mean + 0.5)
    return _blend(center, images, _p("Contrast", magnitude, sign, resolution))


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0


def sharpness(images: DataNode, magnitude: Scalar, sign: Scalar | None = None, *,
              resolution: int = 224) -> DataNode:
    """Sharpness: PIL blend with the SMOOTH-filtered image; the 1-pixel border is kept unchanged.

    The smoothing runs on the interior only (``mode="valid"``, rounded to uint8 like PIL's
    filter), the blend's change is padded with zeros back to the full size, so border pixels stay
    as they are, like PIL's filter.
    """
    factor = _p("Sharpness", magnitude, sign, resolution)
    smooth = fn.filter(images, _SMOOTH, mode="valid")
    inner = images[1:-1, 1:-1]
    change = (_blend(smooth, inner, factor) + _ZERO16) - inner
    shape = fn.cast(images.shape(device="cpu")[0:2], dtype=types.INT32)
    start = types.Constant(np.array([-1, -1], dtype=np.int32))
    change = fn.slice(change, start=start, shape=shape, axis_names="HW",
                      out_of_bounds_policy="pad", fill_values=0)
    return fn.cast(images + change, dtype=types.UINT8)


def cutout(images: DataNode, magnitude: Scalar, sign: Scalar | None = None, *,
           resolution: int = 224, center: DataNode | None = None) -> DataNode:
    """Cutout: zero a square of side ``round(v * H)`` at a random centre, clipped at the borders.

    Args:
        center: optional per-sample ``(row, column)`` float DataNode; by default it is drawn
            uniformly over the pixel grid, as the PIL reference does.
    """
    side_fraction = _p("Cutout", magnitude, sign, resolution)
    hw = fn.cast(images.shape(device="cpu")[0:2], dtype=types.FLOAT)
    # Python's round() is half-to-even, floor(x + 0.5) half-up; they differ only at exact .5.
    side = dmath.floor(side_fraction * hw[0] + 0.5)
    if center is None:
        center = dmath.floor(fn.random.uniform(range=[0.0, 1.0], shape=[2]) * hw)
        center = dmath.min(center, hw - 1.0)
    anchor = center - dmath.floor(side / 2.0)
    extent = fn.cat(fn.expand_dims(side, axes=[0]), fn.expand_dims(side, axes=[0]))
    return fn.erase(images, anchor=fn.cast(anchor, dtype=types.FLOAT),
                    shape=fn.cast(extent, dtype=types.FLOAT), axis_names="HW",
                    fill_value=0.0)


def solarize(images: DataNode, magnitude: Scalar, sign: Scalar | None = None, *,
             resolution: int = 224) -> DataNode:
    """Solarize: invert pixels >= the threshold (PIL takes the integer part of the threshold)."""
    threshold = _like(images, _p("Solarize", magnitude, sign, resolution, integer=True))
    inverted = images >= threshold
    return inverted * (_U8_MAX - images) + (inverted ^ True) * images


def posterize(images: DataNode, magnitude: Scalar, sign: Scalar | None = None, *,
              resolution: int = 224) -> DataNode:
    """Posterize: clear the lowest ``v`` bits (PIL ``posterize(img, 8 - v)``)."""
    bits = _p("Posterize", magnitude, sign, resolution)
    mask = fn.cast(256.0 - dmath.pow(2.0, bits), dtype=types.UINT8)
    return images & _like(images, mask)


def equalize(images: DataNode, magnitude: Scalar = 0.0, sign: Scalar | None = None, *,
             resolution: int = 224) -> DataNode:
    """Equalize: per-channel histogram equalisation.

    Deliberate difference: DALI's ``fn.equalize`` follows OpenCV's lookup table
    (``round((cdf - cdf_min) * 255 / (N - cdf_min))``) while PIL uses
    ``(cdf_exclusive + step // 2) // step`` with ``step = (N - count of the top level) // 255``.
    DALI has no per-sample histogram operator to rebuild PIL's table in the graph; the two tables
    differ by a few levels (the parity test states the tolerance).
    """
    return fn.equalize(images)


def auto_contrast(images: DataNode, magnitude: Scalar = 0.0, sign: Scalar | None = None, *,
                  resolution: int = 224) -> DataNode:
    """AutoContrast: per-channel stretch of [min, max] to [0, 255], PIL's truncating table.

    PIL's table is ``int(x * scale + offset)`` in double precision; float32 lands one level
    lower on about 1 % of the pixels, so the per-pixel expression is evaluated in float64.
    Flat channels keep scale 1 and offset 0 (identity, as in PIL).
    """
    lo = fn.cast(fn.reductions.min(images, axes=[0, 1], keep_dims=True), dtype=types.FLOAT64)
    hi = fn.cast(fn.reductions.max(images, axes=[0, 1], keep_dims=True), dtype=types.FLOAT64)
    spread = hi - lo
    flat = spread <= 0.0
    scale = 255.0 / (spread + flat) * (flat ^ True) + flat
    offset = -lo * scale * (flat ^ True)
    return fn.cast(images * scale + offset - 0.5, dtype=types.UINT8)


def invert(images: DataNode, magnitude: Scalar = 0.0, sign: Scalar | None = None, *,
           resolution: int = 224) -> DataNode:
    """Invert: ``255 - x``."""
    return _U8_MAX - images


def solarize_add(images: DataNode, magnitude: Scalar, sign: Scalar | None = None, *,
                 resolution: int = 224) -> DataNode:
    """SolarizeAdd: add ``int(v)`` to pixels below 128, saturating at 255."""
    add = _like(images, fn.cast(_p("SolarizeAdd", magnitude, sign, resolution, integer=True),
                                dtype=types.UINT8))
    low = images < _U8_128
    return images + low * dmath.min(add, _U8_MAX - images)


def identity(images: DataNode, magnitude: Scalar = 0.0, sign: Scalar | None = None, *,
             resolution: int = 224) -> DataNode:
    """Identity: the images unchanged."""
    return images


#: Operator name -> DALI graph function, in the catalog's order. The functions contain no
#: data-dependent ``if``, so they are exempt from DALI's AutoGraph rewriting (``do_not_convert``):
#: converting them again for every conditional branch made a policy take seconds to define.
DALI_OPS: dict[str, OperatorFn] = {
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Rotate": rotate,
    "Brightness": brightness,
    "Color": color,
    "Sharpness": sharpness,
    "Contrast": contrast,
    "Cutout": cutout,
    "Solarize": solarize,
    "Posterize": posterize,
    "Equalize": equalize,
    "AutoContrast": auto_contrast,
    "Invert": invert,
    "SolarizeAdd": solarize_add,
    "Identity": identity,
}
DALI_OPS = {name: do_not_convert(op) for name, op in DALI_OPS.items()}
parameter_node = do_not_convert(parameter_node)
