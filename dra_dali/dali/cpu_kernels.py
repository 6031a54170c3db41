"""The fused CPU kernel: the catalog operators' pixel work as one compiled loop per image.

DALI's CPU operators make one full pass over the image per operator, and PIL's truncating blend
needs four or five of them (grey image, int16 widening, blend, truncation): the bit-exact Color,
Contrast and Sharpness graph kernels cost 1.5-2.1 ms per 224 px image and DALI's CPU bilinear
``warp_affine`` about 2.5 ms. A compiled policy also pays for its conditional branches (a split
and a merge of every input per level of the dispatch). Here one loop per image does the same
arithmetic, compiled with numba and run by DALI's ``numba_function`` operator on the
pipeline's threads (one sample per task); costs are measured in ``benchmarks/README.md``.

:func:`fused` runs every operator of :data:`FUSED_KINDS` and the affine family (bilinear) with
per-sample :func:`parameters` ``(kind, v, matrix, fill, centre)``, so a compiled layer whose
operators are all fusable is one operator without conditional branches: each image gets its
own kind, :data:`UNCHANGED` where the apply coin did not come up. The loops
(:mod:`dra_dali.dali.cpu_loops`) reproduce PIL's arithmetic (float32 blends truncated to uint8,
the integer grey level, the 3 x 3 SMOOTH filter, float64 tables, the bilinear affine in float64
with DALI's fill at the border) and are held to the same parity tests as the graph kernels.

Only CPU images take this kernel; GPU pipelines keep DALI's own operators (the graph kernels of
:mod:`dra_dali.dali.operators`), and ``augment(..., cpu_kernels="dali")`` selects those on the
CPU too (a serialised pipeline needs them: DALI cannot serialise a numba function). The loops
are compiled once per installation (numba's on-disk cache; about a minute on a busy 2-core
machine) and loaded in about a second by later processes.

Deliberate difference: Equalize here is PIL's, bit exact (a per-image histogram is cheap in a
loop); DALI's ``fn.equalize`` (GPU images, ``cpu_kernels="dali"``) uses OpenCV's table.
"""

from __future__ import annotations

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import do_not_convert

__all__ = ["AFFINE", "FUSED_KINDS", "UNCHANGED", "fusable", "fused", "parameters"]

#: Operators of the fused kernel by kind code (the kernel's per-sample ``kind``): the blends,
#: the per-level tables, Cutout and Equalize; the affine family is kind :data:`AFFINE`.
FUSED_KINDS = ("Brightness", "Color", "Contrast", "Sharpness", "AutoContrast", "Solarize",
               "Posterize", "Invert", "SolarizeAdd", "Cutout", "Equalize")
#: Kind code of the affine warp (any operator whose DALI kernel is ``@dali_affine``).
AFFINE = len(FUSED_KINDS)
#: Kind code of a sample the kernel leaves unchanged.
UNCHANGED = -1

_OPERATOR: list = []


def _operator():
    """The DALI NumbaFunction operator running the fused kernel (created once per process)."""
    if not _OPERATOR:
        from nvidia.dali.plugin.numba import NumbaFunction

        from dra_dali.dali import cpu_loops

        class FusedCpuKernel(NumbaFunction):
            """NumbaFunction with the cached C entry points instead of its own wrapper."""

            def _get_run_fn_cpu(self, *args):
                return cpu_loops.FUSED.address

            def _get_setup_fn_cpu(self, setup_fn):
                return cpu_loops.SAME_SHAPE.address

        _OPERATOR.append(FusedCpuKernel(
            run_fn=None, setup_fn=True, out_types=[types.UINT8],
            in_types=[types.UINT8, types.FLOAT], outs_ndim=[3], ins_ndim=[3, 1], device="cpu"))
    return _OPERATOR[0]


def fusable(name: str, affine: bool) -> bool:
    """Whether the fused kernel runs operator ``name`` (``affine``: its kernel is a warp)."""
    return affine or name in FUSED_KINDS


def _piece(value, size: int) -> DataNode | np.ndarray:
    if isinstance(value, DataNode):
        return fn.cast(fn.reshape(value, shape=[size]), dtype=types.FLOAT)
    return np.asarray(value, np.float32).reshape(size)


@do_not_convert
def parameters(kind, v=0.0, matrix=None, fill: float = 0.0, centre=None) -> DataNode:
    """The fused kernel's 11 per-sample parameters ``(kind, v, matrix (6), fill, centre (2))``.

    Args:
        kind: kind code per sample (DataNode or number): a :data:`FUSED_KINDS` index,
            :data:`AFFINE` or :data:`UNCHANGED`.
        v: the operator parameter (DataNode or number).
        matrix: 2 x 3 PIL AFFINE coefficients (DataNode or numbers) for the affine kind.
        fill: the warp's fill level.
        centre: Cutout's centre as ``u`` in [0, 1)^2 (row, column), scaled by the image size in
            the kernel (``floor(u * size)``, the graph kernel's draw); DataNode or numbers.
    """
    pieces = [_piece(kind, 1), _piece(v, 1), _piece(np.zeros(6) if matrix is None else matrix, 6),
              _piece(fill, 1), _piece((0.0, 0.0) if centre is None else centre, 2)]
    if not any(isinstance(x, DataNode) for x in pieces):
        return types.Constant(np.concatenate(pieces), device="cpu")
    merged: list = []
    for x in pieces:                      # consecutive constants as one
        if merged and not isinstance(x, DataNode) and not isinstance(merged[-1], DataNode):
            merged[-1] = np.concatenate([merged[-1], x])
        else:
            merged.append(x)
    nodes = [x if isinstance(x, DataNode) else types.Constant(x, device="cpu") for x in merged]
    return fn.cat(*nodes, axis=0)


@do_not_convert
def fused(images: DataNode, params: DataNode) -> DataNode:
    """Run the fused kernel on uint8 HWC CPU images with per-sample :func:`parameters`: one
    block, or several concatenated (the layers of a policy), applied in order."""
    # numba_function outputs carry no layout; the branches of a conditional must agree
    return fn.reshape(_operator()(images, params), layout="HWC")
