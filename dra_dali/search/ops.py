"""Differentiable torch versions of the catalog operators, on float image batches.

Images are ``(B, 3, H, W)`` float tensors **in [0, 1]** (a uint8 grey level ``v`` is ``v / 255``),
the convention of kornia and of ``torchvision.transforms.functional.to_tensor``. Every operator
takes a per-sample magnitude and sign (``(B,)`` tensors) and turns them into its parameter with
:func:`op_parameter`, which reads ``identity``, ``slope_at``, ``bounds_at`` and ``rounding`` from
:data:`dra_dali.ops.OPS`; the pixel semantics follow the PIL reference (``tests/pil_reference.py``).

Gradients, as in the DRA authors' code: operators whose catalog row has ``input_gradient=True``
are differentiable with respect to the image (Solarize with its exact +-1); the others (Posterize,
Equalize) pass the output gradient straight through to the input (``x + stop_grad(f(x) - x)``).
The magnitude reaches the parameter of Brightness, Color, Sharpness, Contrast and SolarizeAdd
undetached (:data:`PARAMETER_GRADIENT_OPS`: the true ``d OP / d m``); every magnitude operator also
gets the straight-through term of the DRA layer (``x + m - stop_grad(m)``, see
:mod:`dra_dali.search.methods.dra`).

Example:
    >>> import torch
    >>> from dra_dali.search.ops import apply_op
    >>> x = torch.rand(4, 3, 32, 32)
    >>> y = apply_op("Rotate", x, torch.full((4,), 0.5), torch.ones(4), resolution=32)
    >>> y.shape
    torch.Size([4, 3, 32, 32])
"""

from __future__ import annotations

import math

import kornia
import torch

from dra_dali.ops import FILL_VALUE, OP_NAMES, OPS, OpSpec, kernels, register

__all__ = ["TORCH_OPS", "PARAMETER_GRADIENT_OPS", "apply_op", "op_parameter", "cutout_centers"]

# PIL's luma weights (ITU-R 601-2) as in Image.convert("L").
_LUMA = (0.299, 0.587, 0.114)


def torch_kernel(name: str):
    """Decorator: register ``kernel(x, v, *, fill, centers, generator, **_)`` (float images in
    [0, 1], ``(B,)`` parameters) as the torch implementation of catalog row ``name``."""
    return register("torch", name)


def op_parameter(spec: OpSpec | str, magnitude: torch.Tensor, sign: torch.Tensor | None = None,
                 resolution: int = 224) -> torch.Tensor:
    """The catalog mapping ``clamp(identity + sign * slope_at(res) * m, *bounds_at(res))``.

    Args:
        spec: catalog row or operator name.
        magnitude: ``(B,)`` normalised magnitudes.
        sign: ``(B,)`` +1/-1 (ignored by unsigned operators; ``None`` means +1).
        resolution: training resolution (the translate range).

    Returns:
        ``(B,)`` parameters in the operator's unit, floored where ``rounding == "floor"``.

    Example:
        >>> op_parameter("Rotate", torch.tensor([0.5, 1.0]), torch.tensor([1.0, -1.0]))
        tensor([ 15., -30.])
    """
    spec = OPS[spec] if isinstance(spec, str) else spec
    m = magnitude.to(torch.float32)
    s = sign.to(m) if (spec.signed and sign is not None) else torch.ones_like(m)
    lower, upper = spec.bounds_at(resolution)
    value = torch.clamp(spec.identity + s * spec.slope_at(resolution) * m, lower, upper)
    if spec.rounding == "floor":
        value = torch.floor(value)
    return value


def cutout_centers(batch: int, height: int, width: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Random Cutout centres, ``(B, 2)`` integer (row, column), uniform over the image."""
    rows = torch.randint(0, height, (batch,), generator=generator)
    cols = torch.randint(0, width, (batch,), generator=generator)
    return torch.stack([rows, cols], dim=1)


# ----- geometric ------------------------------------------------------------------------------
def _warp(x: torch.Tensor, inverse: torch.Tensor, fill: float) -> torch.Tensor:
    """Warp with PIL's convention: ``inverse`` (B, 2, 3) maps output to input in continuous
    coordinates whose pixel centres are at ``index + 0.5``; bilinear, grey level ``fill``
    (0-255) outside."""
    b, _, h, w = x.shape
    # To pixel-index coordinates (centres at integers): x_in = A (x_out + .5) + t - .5.
    a = inverse[:, :, :2]
    t = inverse[:, :, 2] + (a.sum(dim=2) * 0.5) - 0.5
    full = torch.zeros(b, 3, 3, dtype=x.dtype, device=x.device)
    full[:, :2, :2] = a
    full[:, :2, 2] = t
    full[:, 2, 2] = 1.0
    forward = torch.linalg.inv(full)[:, :2, :]  # kornia wants the source -> destination map
    fill_value = torch.full((3,), fill / 255.0, dtype=x.dtype, device=x.device)
    # Deliberately differs from PIL at the border: PIL interpolates edge pixels with the image's
    # own border (clamped reads) for up to one pixel outside, kornia blends with the fill value.
    return kornia.geometry.transform.warp_affine(x, forward, (h, w), mode="bilinear",
                                                 padding_mode="fill", align_corners=True,
                                                 fill_value=fill_value)


def _affine_rows(b: int, like: torch.Tensor) -> torch.Tensor:
    eye = torch.zeros(b, 2, 3, dtype=like.dtype, device=like.device)
    eye[:, 0, 0] = 1.0
    eye[:, 1, 1] = 1.0
    return eye


def _affine_entry(row: int, col: int):
    """An operator that sets one entry of the identity affine (output -> input map) to ``v``:
    (0, 1) ShearX, (1, 0) ShearY, (0, 2) TranslateX, (1, 2) TranslateY, as PIL's AFFINE."""
    def op(x, v, fill=FILL_VALUE, **_):
        m = _affine_rows(x.shape[0], x)
        m[:, row, col] = v
        return _warp(x, m, fill)
    return op


@torch_kernel("Rotate")
def _rotate(x, v, fill=FILL_VALUE, **_):
    # PIL Image.rotate: counter-clockwise by v degrees about (W/2, H/2), output -> input map.
    h, w = x.shape[-2:]
    angle = -v * (math.pi / 180.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    cx, cy = w / 2.0, h / 2.0
    m = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
    m[:, 0, 0], m[:, 0, 1] = cos, sin
    m[:, 1, 0], m[:, 1, 1] = -sin, cos
    m[:, 0, 2] = cos * (-cx) + sin * (-cy) + cx
    m[:, 1, 2] = -sin * (-cx) + cos * (-cy) + cy
    return _warp(x, m, fill)


# ----- colour ---------------------------------------------------------------------------------
def _blend(degenerate: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: ``degenerate + v * (x - degenerate)`` clipped to [0, 1]."""
    return torch.clamp(degenerate + v.view(-1, 1, 1, 1) * (x - degenerate), 0.0, 1.0)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return kornia.color.rgb_to_grayscale(x, rgb_weights=torch.tensor(_LUMA, dtype=x.dtype,
                                                                      device=x.device))


@torch_kernel("Brightness")
def _brightness(x, v, **_):
    return _blend(torch.zeros_like(x), x, v)


@torch_kernel("Color")
def _color(x, v, **_):
    return _blend(_grey(x).expand_as(x), x, v)


@torch_kernel("Contrast")
def _contrast(x, v, **_):
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(mean.expand_as(x), x, v)


_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0


@torch_kernel("Sharpness")
def _sharpness(x, v, **_):
    kernel = _SMOOTH.to(dtype=x.dtype, device=x.device)[None]
    smooth = kornia.filters.filter2d(x, kernel, border_type="replicate")
    # PIL keeps the one-pixel border of the degenerate image equal to the original.
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth[..., 1:-1, 1:-1]
    return _blend(degenerate, x, v)


@torch_kernel("Cutout")
def _cutout(x, v, centers=None, generator=None, **_):
    b, _, h, w = x.shape
    if centers is None:
        centers = cutout_centers(b, h, w, generator)
    centers = centers.to(x.device)
    side = torch.round(v * h)
    y0 = centers[:, 0] - torch.div(side, 2, rounding_mode="floor")
    x0 = centers[:, 1] - torch.div(side, 2, rounding_mode="floor")
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    inside = ((rows >= y0.view(-1, 1, 1)) & (rows < (y0 + side).view(-1, 1, 1))
              & (cols >= x0.view(-1, 1, 1)) & (cols < (x0 + side).view(-1, 1, 1)))
    return x * (~inside).unsqueeze(1).to(x.dtype)


def _levels(x: torch.Tensor) -> torch.Tensor:
    return torch.round(torch.clamp(x, 0.0, 1.0) * 255.0)


@torch_kernel("Solarize")
def _solarize(x, v, **_):
    # The threshold and the SolarizeAdd addition are whole grey levels (PIL takes int()).
    threshold = torch.floor(v).view(-1, 1, 1, 1)
    return torch.where(_levels(x) >= threshold, 1.0 - x, x)


@torch_kernel("Posterize")
def _posterize(x, v, **_):
    step = torch.pow(2.0, v).view(-1, 1, 1, 1)
    return torch.floor(_levels(x) / step) * step / 255.0


@torch_kernel("Equalize")
def _equalize(x, v=None, **_):
    # PIL ImageOps.equalize per channel, on the image's grey levels.
    b, c, h, w = x.shape
    levels = _levels(x).to(torch.int64).reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    last_level = 255 - torch.argmax((hist.flip(1) > 0).to(torch.int64), dim=1)
    last = hist.gather(1, last_level[:, None])[:, 0]
    step = torch.div(h * w - last, 255, rounding_mode="floor")
    before = torch.cumsum(hist, dim=1) - hist
    safe = torch.clamp(step, min=1)[:, None]
    lut = torch.clamp(torch.div(before + torch.div(safe, 2, rounding_mode="floor"), safe,
                                rounding_mode="floor"), max=255)
    identity = torch.arange(256, device=x.device).expand_as(lut)
    lut = torch.where((step > 0)[:, None], lut, identity)
    out = lut.gather(1, levels).to(x.dtype) / 255.0
    return out.view(b, c, h, w)


@torch_kernel("AutoContrast")
def _autocontrast(x, v=None, **_):
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 1.0 / torch.where(flat, torch.ones_like(hi),
                                                                         hi - lo))
    out = (x - lo) * scale
    return torch.where(flat, x, torch.clamp(out, 0.0, 1.0))


@torch_kernel("Invert")
def _invert(x, v=None, **_):
    return 1.0 - x


@torch_kernel("Identity")
def _identity(x, v=None, **_):
    return x


@torch_kernel("SolarizeAdd")
def _solarize_add(x, v, **_):
    # Deviation: the DRA authors add the float ``v``; the forward here floors it like PIL and
    # DALI (at most 1/255 per pixel), and the floor is straight-through (``v`` keeps gradient 1),
    # so d out / d v is the authors' (1/255 per grey level where not clipped).
    whole = v + (torch.floor(v) - v).detach()
    added = torch.clamp(x + whole.view(-1, 1, 1, 1) / 255.0, max=1.0)
    return torch.where(_levels(x) < 128, added, x)


for _name, _entry in (("ShearX", (0, 1)), ("ShearY", (1, 0)), ("TranslateX", (0, 2)),
                      ("TranslateY", (1, 2))):
    register("torch", _name, _affine_entry(*_entry))
#: Operators whose parameter carries the magnitude's gradient (``d OP / d m``), as in the DRA
#: authors' code: the blend factor of Brightness, Color, Sharpness, Contrast and the SolarizeAdd
#: addition are float tensors there. The others get none: TF has no gradient through the
#: geometric transform matrix, Cutout and Posterize cast to int, the Solarize threshold only
#: enters ``tf.where``'s condition, and Equalize, AutoContrast, Invert take no magnitude.
PARAMETER_GRADIENT_OPS = frozenset({"Brightness", "Color", "Sharpness", "Contrast",
                                    "SolarizeAdd"})
#: Names of the operators implemented in torch (a test asserts this equals ``OP_NAMES``).
TORCH_OPS: tuple[str, ...] = tuple(kernels("torch"))


def apply_op(name: str, x: torch.Tensor, magnitude: torch.Tensor, sign: torch.Tensor | None = None,
             resolution: int = 224, *, fill: float = FILL_VALUE,
             centers: torch.Tensor | None = None, generator: torch.Generator | None = None,
             straight_through: bool | None = None) -> torch.Tensor:
    """Apply catalog operator ``name`` to a float image batch with per-sample magnitudes.

    Args:
        name: operator name from :data:`dra_dali.ops.OPS`.
        x: ``(B, 3, H, W)`` float images in [0, 1].
        magnitude: ``(B,)`` normalised magnitudes; the gradient reaches them through the
            parameter of the operators in :data:`PARAMETER_GRADIENT_OPS` only.
        sign: ``(B,)`` +1/-1 for signed operators (``None``: +1).
        resolution: training resolution (selects the translate range).
        fill: grey level (0-255 units, like a policy's ``fill``) of the pixels that geometric
            operators bring in from outside the image.
        centers: Cutout centres ``(B, 2)`` as (row, column); random when ``None``.
        generator: random generator for Cutout centres.
        straight_through: pass the output gradient straight to the input instead of the
            operator's own gradient; default: the catalog's ``not input_gradient``.

    Returns:
        The ``(B, 3, H, W)`` transformed images.

    Raises:
        KeyError: for an operator that the catalog or this module does not have.
        ValueError: for a batch that is not ``(B, 3, H, W)`` or magnitudes of the wrong length.
    """
    table = kernels("torch")
    if name not in table:
        raise KeyError(f"unknown operator {name!r}; the catalog has: {', '.join(OP_NAMES)}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
    if magnitude.shape != (x.shape[0],):
        raise ValueError(f"{name}: expected {x.shape[0]} magnitudes, got shape "
                         f"{tuple(magnitude.shape)}")
    spec = OPS[name]
    if name not in PARAMETER_GRADIENT_OPS:
        magnitude = magnitude.detach()
    v = op_parameter(spec, magnitude, sign, resolution).to(device=x.device, dtype=x.dtype)
    if straight_through is None:
        straight_through = not spec.input_gradient
    if straight_through:
        base = x.detach()
        out = table[name](base, v, fill=fill, centers=centers, generator=generator)
        return x + (out - base).detach()
    return table[name](x, v, fill=fill, centers=centers, generator=generator)
