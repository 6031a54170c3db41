"""The compiled loops of :mod:`dra_dali.dali.cpu_kernels` (numba; imported when a pipeline first
uses a fused kernel, so that importing dra_dali does not load numba).

Every function is compiled with ``cache=True``: the first process compiles (about a minute on a
busy 2-core machine), later ones load the machine code from numba's cache.
"""

from __future__ import annotations

import math

import numpy as np
from numba import carray, cfunc, njit
from numba import types as nb_types
from nvidia.dali.plugin.numba import address_as_void_pointer as _pointer

# ----- per-pixel helpers (numba) --------------------------------------------------------------
# The loops run over the flat C-ordered pixels (RGB triplets) with branch-free clipping, which
# LLVM vectorises: about 50x faster than indexing [y, x, c] with branches.
_ZERO = np.float32(0.0)
_MAX = np.float32(255.0)


@njit(cache=True)
def _truncate(value):
    """PIL's blend output: clip to [0, 255], then truncate (float32 in, uint8 out)."""
    return np.uint8(min(max(value, _ZERO), _MAX))


@njit(cache=True)
def _grey(flat, p):
    """PIL's RGB -> L of the pixel at flat index ``p``: (R * 19595 + G * 38470 + B * 7471 +
    2**15) >> 16."""
    return (np.int32(flat[p]) * 19595 + np.int32(flat[p + 1]) * 38470
            + np.int32(flat[p + 2]) * 7471 + 32768) >> 16


@njit(cache=True)
def _blend_constant(out, image, centre, factor):
    """``Image.blend(constant grey image, image, factor)``."""
    o, im = out.reshape(-1), image.reshape(-1)
    for i in range(im.size):
        o[i] = _truncate(centre + factor * (np.float32(im[i]) - centre))


@njit(cache=True)
def _color(out, image, factor):
    o, im = out.reshape(-1), image.reshape(-1)
    for p in range(0, im.size, 3):
        grey = np.float32(_grey(im, p))
        for k in range(3):
            o[p + k] = _truncate(grey + factor * (np.float32(im[p + k]) - grey))


@njit(cache=True)
def _contrast(out, image, factor):
    """Blend with the image's mean grey level, ``int(mean + 0.5)`` as PIL's ImageStat."""
    im = image.reshape(-1)
    total = 0
    for p in range(0, im.size, 3):
        total += _grey(im, p)
    mean = math.floor(total / (image.shape[0] * image.shape[1]) + 0.5)
    _blend_constant(out, image, np.float32(mean), factor)


# PIL's SMOOTH kernel: weights / 13 as float32, summed in float32 row by row (Filter.c), then
# rounded to uint8.
_EDGE = np.float32(1.0 / 13.0)
_CENTRE = np.float32(5.0 / 13.0)


@njit(cache=True)
def _row3(flat, i, weight):
    return (np.float32(flat[i - 3]) * _EDGE + np.float32(flat[i]) * weight
            + np.float32(flat[i + 3]) * _EDGE)


@njit(cache=True)
def _sharpness(out, image, factor):
    """Blend with the SMOOTH-filtered image; the 1-pixel border keeps its values (PIL's
    filter copies it, so the blend leaves it unchanged)."""
    h, w = image.shape[0], image.shape[1]
    o, im = out.reshape(-1), image.reshape(-1)
    o[:] = im
    stride = 3 * w
    for y in range(1, h - 1):
        for i in range(y * stride + 3, (y + 1) * stride - 3):
            total = _ZERO + _row3(im, i + stride, _EDGE)
            total += _row3(im, i, _CENTRE)
            total += _row3(im, i - stride, _EDGE)
            smooth = np.float32(_truncate(total + np.float32(0.5)))
            o[i] = _truncate(smooth + factor * (np.float32(im[i]) - smooth))


@njit(cache=True)
def _apply_tables(out, image, tables):
    """``out[..., c] = tables[c][image[..., c]]`` (3 channels)."""
    o, im = out.reshape(-1), image.reshape(-1)
    for p in range(0, im.size, 3):
        o[p] = tables[0, im[p]]
        o[p + 1] = tables[1, im[p + 1]]
        o[p + 2] = tables[2, im[p + 2]]


@njit(cache=True)
def _auto_contrast_tables(image):
    """Per channel ``int(x * scale + offset)`` over [min, max] in float64; flat channels as
    they are (PIL's ImageOps.autocontrast)."""
    tables = np.empty((image.shape[2], 256), np.uint8)
    for c in range(image.shape[2]):
        lo, hi = 255, 0
        for y in range(image.shape[0]):
            for x in range(image.shape[1]):
                lo = min(lo, image[y, x, c])
                hi = max(hi, image[y, x, c])
        for level in range(256):
            tables[c, level] = level
        if hi > lo:
            scale = 255.0 / (hi - lo)
            offset = -lo * scale
            for level in range(256):
                tables[c, level] = min(max(int(level * scale + offset), 0), 255)
    return tables


@njit(cache=True)
def _level_table(kind, v):
    """The lookup table of a per-level operator (kinds 5-8: Solarize, Posterize, Invert,
    SolarizeAdd), ``v`` taken as PIL takes it: its integer part."""
    n = int(math.floor(v))
    table = np.empty((3, 256), np.uint8)
    for level in range(256):
        if kind == 5:                                  # invert levels >= the threshold
            value = 255 - level if level >= n else level
        elif kind == 6:                                # clear the lowest n bits
            value = level & (256 - (1 << n))
        elif kind == 7:
            value = 255 - level
        else:                                          # add n below 128, saturating
            value = min(level + n, 255) if level < 128 else level
        table[:, level] = value
    return table


# ----- bilinear warp ------------------------------------------------------------------------
@njit(cache=True)
def _tap(image, y, x, c, fill):
    if 0 <= y < image.shape[0] and 0 <= x < image.shape[1]:
        return np.float64(image[y, x, c])
    return fill


@njit(cache=True)
def _round8(value):
    """Round half up and clip to uint8 (float64 in)."""
    return np.uint8(min(max(math.floor(value + 0.5), 0.0), 255.0))


@njit(cache=True)
def _bilinear_edge(out, image, y, x, ix, iy, dx, dy, fill):
    """Output pixel (y, x) from the neighbours of (ix, iy) when some lie outside the image
    (taken as ``fill``)."""
    for ch in range(3):
        top = _tap(image, iy, ix, ch, fill)
        top += (_tap(image, iy, ix + 1, ch, fill) - top) * dx
        bottom = _tap(image, iy + 1, ix, ch, fill)
        bottom += (_tap(image, iy + 1, ix + 1, ch, fill) - bottom) * dx
        out[y, x, ch] = _round8(top + (bottom - top) * dy)


@njit(cache=True)
def _bilinear_rows(out, image, a, b, c, d, e, f, fill):
    """Every output pixel from its input point ``(a, b, c; d, e, f) . (x + 0.5, y + 0.5, 1)``
    (pixel centres at +0.5), bilinear over the four neighbours; flat indexing inside."""
    h, w = image.shape[0], image.shape[1]
    o, im = out.reshape(-1), image.reshape(-1)
    stride = 3 * w
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            sx = a * (x + 0.5) + b * (y + 0.5) + c - 0.5
            sy = d * (x + 0.5) + e * (y + 0.5) + f - 0.5
            x0, y0 = math.floor(sx), math.floor(sy)
            dx, dy = sx - x0, sy - y0
            ix, iy = int(x0), int(y0)
            if not (0 <= ix and ix + 1 < w and 0 <= iy and iy + 1 < h):
                _bilinear_edge(out, image, y, x, ix, iy, dx, dy, fill)
                continue
            q, p = (y * out.shape[1] + x) * 3, iy * stride + ix * 3
            for k in range(3):
                top = np.float64(im[p + k])
                top += (np.float64(im[p + 3 + k]) - top) * dx
                bottom = np.float64(im[p + stride + k])
                bottom += (np.float64(im[p + stride + 3 + k]) - bottom) * dx
                # a convex combination of levels: in [0, 255], so truncating value + 0.5 is
                # _round8 without the clip (15 % faster)
                o[q + k] = np.uint8(top + (bottom - top) * dy + 0.5)


@njit(cache=True)
def _shift(out, image, dx, dy, fill):
    """A translation by whole pixels: what the bilinear warp gives there (every input point
    is a pixel centre, so each output pixel is one input pixel or the fill), as a copy."""
    h, w = image.shape[0], image.shape[1]
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            sy, sx = y + dy, x + dx
            for ch in range(out.shape[2]):
                out[y, x, ch] = (image[sy, sx, ch] if 0 <= sy < h and 0 <= sx < w
                                 else _round8(fill))


@njit(cache=True)
def _warp_run(out, image, params):
    """``params``: PIL's AFFINE coefficients ``a..f`` (output pixel centre -> input point),
    then the fill."""
    a, b, c = np.float64(params[0]), np.float64(params[1]), np.float64(params[2])
    d, e, f = np.float64(params[3]), np.float64(params[4]), np.float64(params[5])
    fill = np.float64(params[6])
    if a == 1 and b == 0 and d == 0 and e == 1 and c == math.floor(c) and f == math.floor(f):
        _shift(out, image, int(c), int(f), fill)
        return
    _bilinear_rows(out, image, a, b, c, d, e, f, fill)


@njit(cache=True)
def _equalize_tables(image):
    """PIL's ImageOps.equalize per channel: ``step = (N - count of the top level) // 255``,
    level ``i`` -> ``(step // 2 + count below i) // step``; identity for a channel with one level
    or ``step == 0``."""
    tables = np.empty((image.shape[2], 256), np.uint8)
    for c in range(image.shape[2]):
        histogram = np.zeros(256, np.int64)
        for y in range(image.shape[0]):
            for x in range(image.shape[1]):
                histogram[image[y, x, c]] += 1
        levels, top = 0, 0
        for level in range(256):
            if histogram[level]:
                levels, top = levels + 1, histogram[level]
        step = (image.shape[0] * image.shape[1] - top) // 255
        below = step // 2
        for level in range(256):
            tables[c, level] = level if levels <= 1 or step == 0 else min(below // step, 255)
            below += histogram[level]
    return tables


@njit(cache=True)
def _cutout(out, image, v, u_row, u_col):
    """Zero a square of side ``floor(v * H + 0.5)`` centred at ``floor(u * (H, W))``, clipped at
    the borders; float32 arithmetic like the graph kernel."""
    h, w = np.float32(image.shape[0]), np.float32(image.shape[1])
    side = math.floor(np.float32(v) * h + np.float32(0.5))
    half = math.floor(np.float32(side) * np.float32(0.5))
    top = int(math.floor(np.float32(u_row) * h) - half)
    left = int(math.floor(np.float32(u_col) * w) - half)
    out[:] = image
    side = int(side)
    out[max(top, 0):max(min(top + side, image.shape[0]), 0),
        max(left, 0):max(min(left + side, image.shape[1]), 0), :] = 0


@njit(cache=True)
def _colour_run(out, image, params):
    """``params = (kind, v)``: kind indexes COLOUR_KINDS of :mod:`dra_dali.dali.cpu_kernels`."""
    kind, factor = int(params[0]), np.float32(params[1])
    if kind == 0:
        _blend_constant(out, image, np.float32(0.0), factor)
    elif kind == 1:
        _color(out, image, factor)
    elif kind == 2:
        _contrast(out, image, factor)
    elif kind == 3:
        _sharpness(out, image, factor)
    elif kind == 4:
        _apply_tables(out, image, _auto_contrast_tables(image))
    else:
        _apply_tables(out, image, _level_table(kind, params[1]))


@njit(cache=True)
def _fused_run(out, image, params):
    """``params = (kind, v, a, b, c, d, e, f, fill, u_row, u_col)``: ``kind`` indexes FUSED_KINDS
    of :mod:`dra_dali.dali.cpu_kernels` (-1: unchanged; one past the end: the affine warp with
    PIL's AFFINE coefficients ``a..f`` and the fill; Cutout's centre from ``u`` in [0, 1))."""
    kind = int(params[0])
    if kind < 0:
        out[:] = image
    elif kind == 11:
        _warp_run(out, image, params[2:9])
    elif kind == 10:
        _apply_tables(out, image, _equalize_tables(image))
    elif kind == 9:
        _cutout(out, image, params[1], params[9], params[10])
    else:
        _colour_run(out, image, params)


@njit(cache=True)
def _chain_run(out, image, params):
    """Apply the 11-value parameter blocks of ``params`` in order (one per policy layer), each
    to the previous block's result; blocks whose kind is -1 (unchanged) cost nothing, and the
    last applied block writes straight into ``out``."""
    last = -1
    for start in range(0, params.size, 11):
        if params[start] >= 0:
            last = start
    if last < 0:
        out[:] = image
        return
    source = image
    for start in range(0, last, 11):
        if params[start] >= 0:
            target = np.empty_like(image)
            _fused_run(target, source, params[start:start + 11])
            source = target
    _fused_run(out, source, params[last:last + 11])


# ----- the C entry points DALI's numba_function calls (cached on disk by numba) --------------
# DALI's own wrapper compiles a new C callback for every operator it creates (30 s for the
# colour kernel on this machine); these are compiled once and cached, and handed to
# NumbaFunction in place of its wrapper. ABI: per sample, arrays of data pointers and of
# pointers to int64 shapes (dali/operators/numba_function/numba_func.cc).
_RUN_SIGNATURE = nb_types.void(nb_types.uint64, nb_types.uint64, nb_types.uint64, nb_types.int32,
                               nb_types.uint64, nb_types.uint64, nb_types.uint64, nb_types.int32)
_SETUP_SIGNATURE = nb_types.void(nb_types.uint64, nb_types.uint64, nb_types.int32,
                                 nb_types.uint64, nb_types.uint64, nb_types.int32, nb_types.int32)


@njit(cache=True)
def _arrays(out_ptr, in_ptr, in_shapes_ptr):
    """The sample's output image, input image (same shape) and float32 parameters."""
    outs = carray(_pointer(out_ptr), 1, dtype=np.uint64)
    ins = carray(_pointer(in_ptr), 2, dtype=np.uint64)
    shapes = carray(_pointer(in_shapes_ptr), 2, dtype=np.uint64)
    shape = carray(_pointer(shapes[0]), 3, dtype=np.int64)
    count = carray(_pointer(shapes[1]), 1, dtype=np.int64)[0]
    size = (shape[0], shape[1], shape[2])
    return (carray(_pointer(outs[0]), size, dtype=np.uint8),
            carray(_pointer(ins[0]), size, dtype=np.uint8),
            carray(_pointer(ins[1]), count, dtype=np.float32))


@cfunc(_RUN_SIGNATURE, nopython=True, cache=True)
def _fused_c(out_ptr, out_shapes, out_ndims, num_outs, in_ptr, in_shapes, in_ndims, num_ins):
    out, image, params = _arrays(out_ptr, in_ptr, in_shapes)
    _chain_run(out, image, params)


@cfunc(_SETUP_SIGNATURE, nopython=True, cache=True)
def _same_shape_c(out_shapes, out_ndims, num_outs, in_shapes, in_ndims, num_ins, samples):
    """The output of each sample has the shape of its first input (the image)."""
    outs = carray(_pointer(out_shapes), samples, dtype=np.uint64)
    ins = carray(_pointer(in_shapes), samples, dtype=np.uint64)
    for i in range(samples):
        target = carray(_pointer(outs[i]), 3, dtype=np.int64)
        source = carray(_pointer(ins[i]), 3, dtype=np.int64)
        for d in range(3):
            target[d] = source[d]


#: The C entry point of the fused kernel.
FUSED = _fused_c
#: The setup callback: each output has the shape of the sample's image.
SAME_SHAPE = _same_shape_c
