"""PIL reference implementation of every catalog operator (TensorFlow/PIL RandAugment semantics).

This is the ground truth of the parity tests: the torch search operators and the DALI operators
are both compared against it. Parameters come from ``dra_dali.ops.parameter`` so the mapping from
magnitude is the catalog's; the pixel semantics are PIL's.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from dra_dali.ops import FILL_VALUE, OP_NAMES, parameter

_FILL = (FILL_VALUE,) * 3
# Geometric operators interpolate bilinearly in every backend (the paper's code used PIL's
# default nearest; bilinear is what DALI's warp_affine and kornia do, and is smoother to learn).
_RESAMPLE = Image.BILINEAR


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, coeffs, resample=_RESAMPLE, fillcolor=_FILL)


def _cutout(img: np.ndarray, side: int, center: tuple[int, int]) -> np.ndarray:
    out = img.copy()
    cy, cx = center
    y0, y1 = max(0, cy - side // 2), min(img.shape[0], cy - side // 2 + side)
    x0, x1 = max(0, cx - side // 2), min(img.shape[1], cx - side // 2 + side)
    out[y0:y1, x0:x1] = 0
    return out


def apply_reference(name: str, img: np.ndarray, magnitude: float, sign: int = 1,
                    resolution: int = 224, rng: np.random.Generator | None = None,
                    center: tuple[int, int] | None = None) -> np.ndarray:
    """Apply catalog operator ``name`` to a uint8 HWC RGB image with PIL.

    Args:
        name: operator name from the catalog.
        img: uint8 array of shape (H, W, 3).
        magnitude: normalised magnitude.
        sign: +1/-1 for signed operators.
        resolution: training resolution (translate range).
        rng: random generator for Cutout's centre when ``center`` is not given.
        center: Cutout's centre as (row, column).

    Returns:
        The transformed uint8 (H, W, 3) array.
    """
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    v = parameter(name, magnitude, sign, resolution)
    pil = Image.fromarray(img)
    if name == "ShearX":
        out = _affine(pil, (1, v, 0, 0, 1, 0))
    elif name == "ShearY":
        out = _affine(pil, (1, 0, 0, v, 1, 0))
    elif name == "TranslateX":
        out = _affine(pil, (1, 0, v, 0, 1, 0))
    elif name == "TranslateY":
        out = _affine(pil, (1, 0, 0, 0, 1, v))
    elif name == "Rotate":
        out = pil.rotate(v, resample=_RESAMPLE, fillcolor=_FILL)
    elif name == "Brightness":
        out = ImageEnhance.Brightness(pil).enhance(v)
    elif name == "Color":
        out = ImageEnhance.Color(pil).enhance(v)
    elif name == "Sharpness":
        out = ImageEnhance.Sharpness(pil).enhance(v)
    elif name == "Contrast":
        out = ImageEnhance.Contrast(pil).enhance(v)
    elif name == "Cutout":
        side = int(round(v * img.shape[0]))
        if center is None:
            rng = rng or np.random.default_rng(0)
            center = (int(rng.integers(img.shape[0])), int(rng.integers(img.shape[1])))
        return _cutout(img, side, center)
    elif name == "Solarize":
        out = ImageOps.solarize(pil, int(v))
    elif name == "Posterize":
        out = ImageOps.posterize(pil, 8 - int(v))
    elif name == "Equalize":
        out = ImageOps.equalize(pil)
    elif name == "AutoContrast":
        out = ImageOps.autocontrast(pil)
    elif name == "Invert":
        out = ImageOps.invert(pil)
    elif name == "Identity":
        return img.copy()
    elif name == "SolarizeAdd":
        wide = img.astype(np.int32)
        return np.where(img < 128, np.minimum(wide + int(v), 255), wide).astype(np.uint8)
    else:
        raise KeyError(f"no PIL reference for operator {name!r}")
    return np.asarray(out, dtype=np.uint8)


REFERENCE_OPS = frozenset(OP_NAMES)
