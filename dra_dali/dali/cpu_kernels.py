"""Fused CPU kernels: the pixel work of the costly operators as one compiled loop each.

DALI's CPU operators make one full pass over the image per operator, and PIL's truncating blend
needs four or five of them (grey image, int16 widening, blend, truncation), so the bit-exact
Color, Contrast, Sharpness and AutoContrast graph kernels cost 1.0-2.1 ms per 224 px image, and
DALI's CPU bilinear ``warp_affine`` 2.3 ms. Here the same arithmetic runs as one loop per image,
compiled with numba and run by DALI's ``numba_function`` operator on the pipeline's threads (one
sample per task): 0.2-0.3 ms for a blend and about 0.5 ms for the warp (measured in
``benchmarks/README.md``). The loops reproduce PIL's arithmetic (float32 blends truncated to
uint8, the integer grey level, the 3 x 3 SMOOTH filter, float64 autocontrast tables, the
bilinear affine in float64) and are held to the same parity tests as the graph kernels.

Only CPU images take these kernels; GPU pipelines keep DALI's own operators (the graph kernels
of :mod:`dra_dali.dali.operators`), and ``augment(..., cpu_kernels="dali")`` selects those on
the CPU too. Each kernel is compiled once per process, when a pipeline first uses it (a few
seconds).

- :func:`colour`: Brightness, Color, Contrast, Sharpness and AutoContrast in one kernel, with
  per-sample ``(kind, factor)`` (one branch for the whole family in a compiled policy);
- :func:`warp_bilinear`: the affine family's bilinear warp with a per-sample 2 x 3 matrix.
"""

from __future__ import annotations

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import do_not_convert

__all__ = ["COLOUR_KINDS", "colour", "warp_bilinear"]

#: Operators of the fused colour kernel, by kind code (the kernel's per-sample ``kind``): the
#: blends, then the per-level tables.
COLOUR_KINDS = ("Brightness", "Color", "Contrast", "Sharpness", "AutoContrast", "Solarize",
                "Posterize", "Invert", "SolarizeAdd")


_OPERATORS: dict = {}


def _operator(kernel: str):
    """A DALI NumbaFunction operator running ``kernel`` (created once per process)."""
    if kernel not in _OPERATORS:
        from nvidia.dali.plugin.numba import NumbaFunction

        from dra_dali.dali import cpu_loops

        entry = cpu_loops.ENTRY_POINTS[kernel]

        class FusedCpuKernel(NumbaFunction):
            """NumbaFunction with the cached C entry points instead of its own wrapper."""

            def _get_run_fn_cpu(self, *args):
                return entry.address

            def _get_setup_fn_cpu(self, setup_fn):
                return cpu_loops.SAME_SHAPE.address

        _OPERATORS[kernel] = FusedCpuKernel(
            run_fn=None, setup_fn=True, out_types=[types.UINT8],
            in_types=[types.UINT8, types.FLOAT], outs_ndim=[3], ins_ndim=[3, 1], device="cpu")
    return _OPERATORS[kernel]


def _run(kernel: str, images: DataNode, params: DataNode) -> DataNode:
    # numba_function outputs carry no layout; the branches of a conditional must agree
    return fn.reshape(_operator(kernel)(images, params), layout="HWC")


def _flat(value, size: int) -> DataNode:
    if isinstance(value, DataNode):
        return fn.cast(fn.reshape(value, shape=[size]), dtype=types.FLOAT)
    return types.Constant(np.asarray(value, np.float32).reshape(size), device="cpu")


@do_not_convert
def colour(images: DataNode, kind, factor) -> DataNode:
    """The fused colour kernel: per sample ``COLOUR_KINDS[kind]`` with blend factor ``factor``
    (ignored by AutoContrast). ``kind`` and ``factor`` are numbers or per-sample DataNodes."""
    if isinstance(kind, DataNode) or isinstance(factor, DataNode):
        like = kind if isinstance(kind, DataNode) else factor
        params = fn.stack(*[fn.cast(x, dtype=types.FLOAT) if isinstance(x, DataNode)
                            else like * 0.0 + float(x) for x in (kind, factor)])
    else:
        params = _flat([kind, factor], 2)
    return _run("colour", images, fn.cast(params, dtype=types.FLOAT))


@do_not_convert
def warp_bilinear(images: DataNode, matrix, fill: float) -> DataNode:
    """Bilinear affine warp, PIL's AFFINE convention (``matrix`` maps output pixel centres to
    input points), pixels outside the image taken as ``fill``: DALI's ``warp_affine`` semantics
    (the fill blends into the border), bilinear weights in float64 like PIL's."""
    if isinstance(matrix, DataNode):
        params = fn.cat(fn.reshape(matrix, shape=[6]), types.Constant(
            np.float32([fill]), device="cpu"), axis=0)
    else:
        params = _flat([*np.ravel(matrix), fill], 7)
    return _run("warp", images, fn.cast(params, dtype=types.FLOAT))
