"""PIL reference implementation of every catalog operator (TensorFlow/PIL RandAugment semantics).

This is the ground truth of the parity tests: the torch search operators and the DALI operators
are both compared against it. Each function registers to its catalog row (``ops.register("pil",
name)``); parameters come from the row's mapping (``dra_dali.ops.parameter``), the pixel
semantics are PIL's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from dra_dali.ops import FILL_VALUE, kernels, parameter, register

# Geometric operators interpolate bilinearly by default (the DALI default, DALI's rand_augment
# and kornia); "nearest" is PIL's own default, which TF-models RandAugment also uses.
RESAMPLE = {"linear": Image.BILINEAR, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class Context:
    """What a reference kernel may need besides the image and the parameter."""

    fill: int = FILL_VALUE
    interpolation: str = "linear"
    center: tuple[int, int] | None = None
    rng: np.random.Generator | None = None


def pil_kernel(name: str):
    """Decorator: register ``kernel(image: PIL.Image, v, ctx) -> PIL.Image | np.ndarray``."""
    return register("pil", name)


def _affine(img: Image.Image, coeffs, ctx: Context) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, tuple(coeffs),
                         resample=RESAMPLE[ctx.interpolation], fillcolor=(ctx.fill,) * 3)


@pil_kernel("ShearX")
def _shear_x(img, v, ctx):
    return _affine(img, (1, v, 0, 0, 1, 0), ctx)


@pil_kernel("ShearY")
def _shear_y(img, v, ctx):
    return _affine(img, (1, 0, 0, v, 1, 0), ctx)


@pil_kernel("TranslateX")
def _translate_x(img, v, ctx):
    return _affine(img, (1, 0, v, 0, 1, 0), ctx)


@pil_kernel("TranslateY")
def _translate_y(img, v, ctx):
    return _affine(img, (1, 0, 0, 0, 1, v), ctx)


@pil_kernel("Rotate")
def _rotate(img, v, ctx):
    return img.rotate(v, resample=RESAMPLE[ctx.interpolation], fillcolor=(ctx.fill,) * 3)


# ImageEnhance blends with any factor, negative ones included, and clips the image.
@pil_kernel("Brightness")
def _brightness(img, v, ctx):
    return ImageEnhance.Brightness(img).enhance(v)


@pil_kernel("Color")
def _color(img, v, ctx):
    return ImageEnhance.Color(img).enhance(v)


@pil_kernel("Sharpness")
def _sharpness(img, v, ctx):
    return ImageEnhance.Sharpness(img).enhance(v)


@pil_kernel("Contrast")
def _contrast(img, v, ctx):
    return ImageEnhance.Contrast(img).enhance(v)


@pil_kernel("Cutout")
def _cutout(img, v, ctx):
    a = np.asarray(img).copy()
    side = int(round(v * a.shape[0]))
    center = ctx.center
    if center is None:
        rng = ctx.rng or np.random.default_rng(0)
        center = (int(rng.integers(a.shape[0])), int(rng.integers(a.shape[1])))
    cy, cx = center
    y0, y1 = max(0, cy - side // 2), min(a.shape[0], cy - side // 2 + side)
    x0, x1 = max(0, cx - side // 2), min(a.shape[1], cx - side // 2 + side)
    a[y0:y1, x0:x1] = 0
    return a


@pil_kernel("Solarize")
def _solarize(img, v, ctx):
    return ImageOps.solarize(img, int(v))


@pil_kernel("Posterize")
def _posterize(img, v, ctx):
    return ImageOps.posterize(img, 8 - int(v))


@pil_kernel("Equalize")
def _equalize(img, v, ctx):
    return ImageOps.equalize(img)


@pil_kernel("AutoContrast")
def _autocontrast(img, v, ctx):
    return ImageOps.autocontrast(img)


@pil_kernel("Invert")
def _invert(img, v, ctx):
    return ImageOps.invert(img)


@pil_kernel("SolarizeAdd")
def _solarize_add(img, v, ctx):
    a = np.asarray(img)
    wide = a.astype(np.int32)
    return np.where(a < 128, np.minimum(wide + int(v), 255), wide).astype(np.uint8)


@pil_kernel("Identity")
def _identity(img, v, ctx):
    return img


def apply_reference(name: str, img: np.ndarray, magnitude: float, sign: int = 1,
                    resolution: int = 224, rng: np.random.Generator | None = None,
                    center: tuple[int, int] | None = None, fill: int = FILL_VALUE,
                    interpolation: str = "linear") -> np.ndarray:
    """Apply catalog operator ``name`` to a uint8 HWC RGB image with PIL.

    Args:
        name: operator name from the catalog (with a registered PIL kernel).
        img: uint8 array of shape (H, W, 3).
        magnitude: normalised magnitude.
        sign: +1/-1 for signed operators.
        resolution: training resolution (translate range).
        rng: random generator for Cutout's centre when ``center`` is not given.
        center: Cutout's centre as (row, column).
        fill: grey level geometric operators bring in.
        interpolation: ``"linear"`` or ``"nearest"`` for the geometric operators.

    Returns:
        The transformed uint8 (H, W, 3) array.
    """
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    table = kernels("pil")
    if name not in table:
        raise KeyError(f"no PIL reference for operator {name!r}")
    v = parameter(name, magnitude, sign, resolution)
    out = table[name](Image.fromarray(img), v, Context(fill, interpolation, center, rng))
    return np.array(out, dtype=np.uint8)


def reference_ops() -> frozenset[str]:
    """The operators with a PIL reference (the registry's, so declared extensions count)."""
    return frozenset(kernels("pil"))


REFERENCE_OPS = reference_ops()
