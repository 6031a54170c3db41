"""Compile a policy into DALI graph code: ``augment`` inside a pipeline, ``apply_policy`` on numpy.

Per layer and image the draws of :mod:`dra_dali.dali.draws` pick the operator, its magnitude and
sign and the apply coin. Then, under DALI conditionals, only the images whose coin came up are
split among the operators (a binary ``if``/``else`` split like
``nvidia.dali.auto_aug.core.select``), each operator branch sees only its own samples, and
operators with probability 0 have no branch at all. Nothing runs in Python per batch.

Example:
    >>> from nvidia.dali import pipeline_def, fn
    >>> from dra_dali import Policy
    >>> from dra_dali.dali import augment
    >>> policy = Policy.preset("dra-imagenet-resnet-50")
    >>> @pipeline_def(enable_conditionals=True, batch_size=8, num_threads=2, device_id=None)
    ... def train():
    ...     jpegs, labels = fn.readers.file(file_root="data/train", random_shuffle=True)
    ...     images = fn.decoders.image(jpegs)
    ...     images = fn.resize(images, size=[224, 224])
    ...     return augment(images, policy), labels
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dmath
from nvidia.dali.data_node import DataNode

from dra_dali.dali import cpu_kernels as fused_cpu
from dra_dali.dali.draws import NEGLIGIBLE_PROBABILITY, LayerDraws, policy_draws
from dra_dali.dali.node_meta import check_images
from dra_dali.dali.operators import (
    CPU_KERNELS,
    INTERPOLATIONS,
    DaliKernel,
    dali_kernels,
    fused_on,
    image_size,
    matrix_node,
    runs_fused,
    warp,
)
from dra_dali.ops import OPS, parameter
from dra_dali.policy import Policy, PolicySample

__all__ = ["augment", "apply_policy", "AugmentTrace", "NEGLIGIBLE_PROBABILITY"]

# Stands in for infinite parameter bounds in the per-sample tables.
_HUGE = 1e30


@dataclass(frozen=True)
class AugmentTrace:
    """Per-sample trace DataNodes of :func:`augment`; each has shape ``(depth,)`` per sample.

    Attributes:
        op: int32 index into ``policy.ops`` of the operator drawn in each layer.
        sign: int32 +1/-1 (always +1 for unsigned operators).
        magnitude: float32 clipped magnitude (0 for magnitude-free operators).
        applied: uint8 1 where the operator ran (its apply coin and the gate came up), else 0.
        level: int32 categorical magnitude level per layer, -1 where not categorical.
        subpolicy: int32 scalar per sample: the sub-policy drawn (0 without sub-policies).
        gate: uint8 scalar per sample: 1 where the image passed the gate (1 without a gate).
    """

    op: DataNode
    sign: DataNode
    magnitude: DataNode
    applied: DataNode
    level: DataNode
    subpolicy: DataNode
    gate: DataNode

    def outputs(self) -> tuple[DataNode, ...]:
        """The seven DataNodes in field order, to return from a pipeline definition."""
        return (self.op, self.sign, self.magnitude, self.applied, self.level, self.subpolicy,
                self.gate)


def _table(values: Sequence[float], index: DataNode, dtype=np.float64, node: bool = False):
    """Per-sample ``values[index]``; a plain number when every value is the same (unless
    ``node``)."""
    values = np.asarray(values, dtype=dtype)
    if not node and np.all(values == values.flat[0]):
        return float(values.flat[0]) if values.ndim == 1 else types.Constant(values[0])
    return types.Constant(values)[index]


def _fixed_magnitudes(policy: Policy, j: int, names: Sequence[str]) -> np.ndarray | None:
    """Per active operator the magnitude of layer ``j`` when it is not random (normal with
    std 0, as in RandAugment), else None."""
    if policy.kind != "layers" or not policy.layers[j].is_format1:
        return None        # format-2 magnitudes and sub-policies: drawn per sample
    layer = policy.layers[j]
    index = [policy.ops.index(n) for n in names]
    if layer.dist != "normal" or any(layer.std[i] > 0 for i in index):
        return None
    return np.clip([layer.mean[i] for i in index], 0.0, policy.scale)


def _floors(kernel: DaliKernel) -> bool:
    """The kernel uses the integer part of its parameter (catalog rounding, or PIL's int())."""
    return kernel.integer or OPS[kernel.name].rounding == "floor"


def _parameters(kernels: list[DaliKernel], branch, magnitude, sign, resolution: int,
                fixed: np.ndarray | None = None):
    """The parameter ``v`` of each sample's operator, computed once for all branches: the
    catalog's ``clamp(identity + sign * slope * m, lower, upper)`` with per-sample rows of
    float64 tables, as ``ops.parameter_array`` does (the floor, where a kernel needs it, is taken
    inside its branch). With ``fixed`` magnitudes the parameters, floors included, are
    precomputed by the catalog (one table lookup over operator and sign)."""
    specs = [OPS[k.name] for k in kernels]
    if fixed is not None:
        table = np.array([[parameter(s.name, m, sign, resolution) for sign in (-1, 1)]
                          for s, m in zip(specs, fixed)])
        table = np.where(np.array([_floors(k) for k in kernels])[:, None], np.floor(table), table)
        return _table(table.astype(np.float32).ravel(), branch * 2 + (sign > 0), np.float32,
                      node=True)
    bounds = np.clip([s.bounds_at(resolution) for s in specs], -_HUGE, _HUGE)
    # int32 sign x float64 slope x float32 magnitude: float64 products (no casts needed)
    value = (_table([s.identity for s in specs], branch)
             + sign * _table([s.slope_at(resolution) for s in specs], branch, node=True)
             * magnitude)
    value = dmath.clamp(value, _table(bounds[:, 0], branch), _table(bounds[:, 1], branch))
    return fn.cast(value, dtype=types.FLOAT)


def _linear_form(matrix) -> tuple[np.ndarray, np.ndarray] | None:
    """``(A, B)`` when ``matrix(v, size) == A + v * B`` for every image size, else None."""
    def at(v, size=(224.0, 224.0)):
        return np.array(matrix(v, size), dtype=np.float64)

    base, step = at(0.0), at(1.0) - at(0.0)
    for v, size in ((2.5, (224.0, 224.0)), (-3.0, (160.0, 96.0)), (0.7, (57.0, 31.0))):
        if not np.allclose(at(v, size), base + v * step, atol=1e-9):
            return None
    return base, step


def _affine_matrix(kernels: list[DaliKernel], branch, v, images):
    """One per-sample 2 x 3 matrix for every affine operator of the layer: a table lookup
    ``A[branch] + v * B[branch]`` for the operators linear in ``v`` (shear, translate), plus
    ``(branch == i) * matrix_i(v, size)`` for the others (rotate)."""
    base = np.zeros((len(kernels), 2, 3), np.float32)
    step = np.zeros_like(base)
    others = []
    for i, kernel in enumerate(kernels):
        form = _linear_form(kernel.matrix) if kernel.affine else None
        if form is not None:
            base[i], step[i] = form
        elif kernel.affine:
            others.append(i)
    matrix = types.Constant(base)[branch] + v * types.Constant(step)[branch]
    if others:
        size = image_size(images)
        for i in others:
            matrix = matrix + (branch == i) * matrix_node(kernels[i].matrix, v, size)
    return matrix


@dataclass(frozen=True)
class _Leaf:
    """One branch of a layer's dispatch: one kernel, or a family of operators run by one kernel
    with per-sample parameters (``"affine"``: DALI's warp; ``"fused"``: the fused CPU kernel)."""

    kernel: DaliKernel | None
    family: str = ""


def _family(kernel: DaliKernel, fused: bool, interpolation: str) -> str:
    if fused and runs_fused(kernel, interpolation):
        return "fused"
    return "affine" if kernel.affine else ""


def _leaves(kernels: list[DaliKernel], fused: bool,
            interpolation: str) -> tuple[list[_Leaf], list[int]]:
    """The layer's branches and, per active operator, its branch (-1: passthrough, no branch).
    Operators of a family share one branch, and so do kernels that say they share another's."""
    table = dali_kernels()
    leaves: list[_Leaf] = []
    leaf_of = []
    for kernel in kernels:
        if kernel.passthrough:
            leaf_of.append(-1)
            continue
        family = _family(kernel, fused, interpolation)
        leaf = _Leaf(None, family) if family else _Leaf(table[kernel.shares or kernel.name])
        if leaf not in leaves:
            leaves.append(leaf)
        leaf_of.append(leaves.index(leaf))
    return leaves, leaf_of


@dataclass(frozen=True)
class _Branches:
    """A layer's dispatch: its branches and what every branch receives besides the images."""

    leaves: list[_Leaf]
    v: DataNode
    matrix: DataNode | None
    fused: DataNode | None          # the fused kernel's per-sample parameters
    floored: bool                   # v is floored where kernels need it (precomputed table)
    fill: int
    interpolation: str


def _run_leaf(leaf: _Leaf, images, b: _Branches):
    if leaf.family == "affine":
        return warp(images, b.matrix, b.fill, b.interpolation)
    if leaf.family == "fused":
        return fused_cpu.fused(images, b.fused)
    v = dmath.floor(b.v) if _floors(leaf.kernel) and not b.floored else b.v
    return leaf.kernel.apply(images, v, fill=b.fill, interpolation=b.interpolation)


def _dispatch(b: _Branches, lo: int, hi: int, leaf, images):
    """Run ``b.leaves[leaf]`` per sample: a binary split over the branch index (as
    ``nvidia.dali.auto_aug.core.select``), so each branch sees only its own samples."""
    if lo == hi:
        return _run_leaf(b.leaves[lo], images, b)
    mid = (lo + hi) // 2
    if leaf <= mid:
        out = _dispatch(b, lo, mid, leaf, images)
    else:
        out = _dispatch(b, mid + 1, hi, leaf, images)
    return out


def _fused_kinds(kernels: list[DaliKernel], families: list[str], branch, go):
    """Per sample the fused kernel's kind: its operator's, ``UNCHANGED`` for operators outside
    the kernel (passthrough ones) and, with ``go``, where the apply coin did not come up."""
    kinds = [fused_cpu.AFFINE if k.affine else fused_cpu.FUSED_KINDS.index(k.name)
             if f == "fused" else fused_cpu.UNCHANGED for k, f in zip(kernels, families)]
    kind = _table(kinds, branch, np.float32)
    return kind if go is None else (kind + 1.0) * go - 1.0


def _fused_parameters(kernels, families, layer: LayerDraws, v, matrix, fill: int, go):
    names = [k.name for k, f in zip(kernels, families) if f == "fused"]
    centre = (fn.random.uniform(range=[0.0, 1.0], shape=[2]) if "Cutout" in names else None)
    kind = _fused_kinds(kernels, families, layer.branch, go)
    return fused_cpu.parameters(kind, v, matrix, fill, centre)


def _flush(images, pending: list):
    """Run the fused kernel's pending layers (their parameter blocks, in order) on ``images``."""
    if not pending:
        return images
    params = pending[0] if len(pending) == 1 else fn.cat(*pending, axis=0)
    pending.clear()
    return fused_cpu.fused(images, params)


def _apply_layer(images, pending: list, policy: Policy, j: int, layer: LayerDraws,
                 interpolation: str, cpu_kernel_set: str):
    """The conditional part of a layer: only applied samples whose operator is not a
    passthrough reach the branches; the parameters, the affine matrix and the fused kernel's
    parameters are computed before the split, once for all branches. A layer whose operators
    all run in the fused CPU kernel has no branches: its parameter block joins ``pending``, and
    consecutive such layers run as one kernel call (each image with its kind per layer)."""
    table = dali_kernels()
    kernels = [table[name] for name in layer.names]
    fused = fused_on(images, cpu_kernel_set)
    leaves, leaf_of = _leaves(kernels, fused, interpolation)
    if not leaves or layer.coin == "never":
        return images
    families = [_family(k, fused, interpolation) for k in kernels]
    branch = layer.branch
    fixed = _fixed_magnitudes(policy, j, layer.names)
    v = _parameters(kernels, branch, layer.magnitude, layer.sign, policy.resolution, fixed)
    matrix = _affine_matrix(kernels, branch, v, images) if any(k.affine for k in kernels) else None
    go = layer.applied if layer.coin == "random" else None
    if [leaf.family for leaf in leaves] == ["fused"]:
        pending.append(_fused_parameters(kernels, families, layer, v, matrix, policy.fill, go))
        return images
    images = _flush(images, pending)
    params = (_fused_parameters(kernels, families, layer, v, matrix, policy.fill, None)
              if "fused" in families else None)
    b = _Branches(leaves, v, matrix, params, fixed is not None, policy.fill, interpolation)
    leaf = _table(leaf_of, branch, np.int32) if len(leaves) > 1 or -1 in leaf_of else 0
    if -1 in leaf_of:
        go = leaf >= 0 if go is None else go * (leaf >= 0)
    if go is None:
        images = _dispatch(b, 0, len(leaves) - 1, leaf, images)
    elif go:
        images = _dispatch(b, 0, len(leaves) - 1, leaf, images)
    return images


def augment(images: DataNode, policy: "Policy | str | Path", trace: bool = False,
            seed: int | None = None, interpolation: str = "linear", cpu_kernels: str = "fused",
            resolution: int | None = None):
    """Apply ``policy`` to a batch of uint8 HWC images inside a DALI pipeline definition.

    Call it inside your own ``@pipeline_def(enable_conditionals=True)``; the images may live on
    the CPU or the GPU (the graph is the same; per-sample parameters are drawn on the CPU). On the
    GPU, Cutout and Sharpness read the image shape back on the CPU, which needs DALI's dynamic
    executor (the default; do not pass ``exec_dynamic=False``).

    Args:
        images: uint8 HWC DataNode (``cpu`` or ``gpu``), e.g. the output of a decoder or crop.
        policy: the :class:`~dra_dali.Policy` to apply, a policy file, or a preset name
            (``"rand-m9-mstd0.5"``, ``"dra-imagenet-resnet-50"``).
        trace: also return an :class:`AugmentTrace` with the draws per image and layer.
        seed: optional seed for the random operators (default: derived from the pipeline seed).
        interpolation: ``"linear"`` (bilinear, as DALI's rand_augment and the torch search
            kernels) or ``"nearest"`` (PIL's default, as TF-models RandAugment; about 9x
            cheaper than bilinear in DALI's CPU ``warp_affine``) for the geometric operators.
        cpu_kernels: for CPU images, ``"fused"`` (default: the bilinear warp and the colour
            family as compiled loops, :mod:`dra_dali.dali.cpu_kernels`, same parity, several
            times cheaper) or ``"dali"`` (DALI's operators only: the graph GPU images get).
        resolution: the side of the images in pixels: the policy (object, file or preset) is
            adapted to it (``Policy.with_resolution``: the translate range follows it). A DALI
            graph does not know its images' size when it is defined, so without it the policy
            keeps its own ``resolution`` (a preset's: 224 for RandAugment/TA/timm strings).

    Returns:
        The augmented images (same device, uint8 HWC), or ``(images, AugmentTrace)`` when
        ``trace`` is true.

    Raises:
        TypeError: if ``images`` is not a DataNode or ``policy`` not a Policy.
        ImageInputError: (a ``DraDaliError``) the graph says the images are not uint8 HWC
            (checked here, when the graph is defined, from what DALI's operator schemas infer;
            see :mod:`dra_dali.dali.node_meta`); the message names what it found.
        ValueError: for an unknown interpolation or ``cpu_kernels``.
        PolicyError: ``resolution`` is not a positive integer.

    Warns:
        UserWarning: the graph cannot tell the images' dtype (an external source declared
            without it), so the check cannot run.

    Example:
        >>> # inside @pipeline_def(enable_conditionals=True, ...):
        >>> # images, t = augment(images, policy, trace=True); return (images, *t.outputs())
    """
    if not isinstance(images, DataNode):
        raise TypeError(f"augment: images must be a DALI DataNode (uint8 HWC), got "
                        f"{type(images).__name__}; call augment inside a @pipeline_def")
    check_images(images, "augment")
    policy = _as_policy(policy)
    if resolution is not None:
        policy = policy.with_resolution(resolution)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"augment: interpolation must be one of {sorted(INTERPOLATIONS)}, got "
                         f"{interpolation!r}")
    if cpu_kernels not in CPU_KERNELS:
        raise ValueError(f"augment: cpu_kernels must be one of {list(CPU_KERNELS)}, got "
                         f"{cpu_kernels!r}")
    drawn = policy_draws(policy, seed)
    pending: list = []
    for j, layer in enumerate(drawn.layers):
        images = _apply_layer(images, pending, policy, j, layer, interpolation, cpu_kernels)
    images = _flush(images, pending)
    if not trace:
        return images
    stacked = [fn.stack(*[getattr(layer, f) for layer in drawn.layers])
               for f in ("op", "sign", "magnitude", "applied", "level")]
    return images, AugmentTrace(*stacked, subpolicy=drawn.subpolicy, gate=drawn.gate)


def _as_policy(policy: "Policy | str | Path") -> Policy:
    """A Policy as it is; a path to an existing file loaded; any other text as a preset name."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, (str, Path)):
        return Policy.load(policy) if Path(policy).is_file() else Policy.preset(str(policy))
    raise TypeError(f"augment: policy must be a dra_dali.Policy, a policy file or a preset name, "
                    f"got {type(policy).__name__}")


def _checked_images(images) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ValueError(f"apply_policy: images must be (N, H, W, 3) uint8, got an array of "
                         f"shape {images.shape}")
    items = [np.ascontiguousarray(im) for im in images]
    if not items:
        raise ValueError("apply_policy: no images given")
    for i, im in enumerate(items):
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"apply_policy: image {i} must be uint8 (H, W, 3) RGB, got "
                             f"dtype {im.dtype} shape {im.shape}")
    return items


def _check_target(policy, device: str) -> None:
    if device not in ("cpu", "gpu"):
        raise ValueError(f"apply_policy: device must be 'cpu' or 'gpu', got {device!r}")
    if not isinstance(policy, Policy):
        raise TypeError(f"apply_policy: policy must be a dra_dali.Policy, got "
                        f"{type(policy).__name__}")
    if device == "gpu":
        from nvidia.dali.backend import GetCUDADeviceCount

        if GetCUDADeviceCount() == 0:
            raise RuntimeError("apply_policy(device='gpu') needs a CUDA GPU and this machine has "
                               "none visible; use device='cpu' (the same graph on the CPU)")


def _run_batches(pipe, items: list[np.ndarray], batch: int, trace: bool):
    """Feed ``items`` in batches; the images and, with ``trace``, the seven trace columns."""
    results: list[np.ndarray] = []
    columns: list[list[np.ndarray]] = [[] for _ in range(7)]
    for start in range(0, len(items), batch):
        pipe.feed_input("images", items[start:start + batch])
        outputs = [o.as_cpu() if hasattr(o, "as_cpu") else o for o in pipe.run()]
        results.extend(np.array(o) for o in outputs[0])
        for f in range(7 if trace else 0):
            columns[f].append(np.stack([np.array(x) for x in outputs[1 + f]]))
    return results, columns


def apply_policy(policy: Policy, images: np.ndarray | Sequence[np.ndarray], seed: int = 0,
                 device: str = "cpu", trace: bool = False, batch_size: int = 256,
                 num_threads: int = 2, interpolation: str = "linear",
                 cpu_kernels: str = "fused"):
    """Run the compiled policy on in-memory images (numpy in, numpy out).

    The same graph as :func:`augment`, fed by an external source. Same seed, same output.

    Args:
        policy: the policy to apply.
        images: uint8 array ``(N, H, W, 3)`` or a sequence of uint8 ``(H, W, 3)`` arrays.
        seed: pipeline seed.
        device: ``"cpu"`` (runs here) or ``"gpu"`` (needs CUDA and a GPU, device 0).
        trace: also return a :class:`~dra_dali.policy.PolicySample` of ``(N, depth)`` arrays:
            operator index, sign, magnitude and applied flag per image and layer.
        batch_size: images per DALI batch.
        num_threads: DALI CPU threads.
        interpolation: geometric operators' interpolation, ``"linear"`` or ``"nearest"``.
        cpu_kernels: ``"fused"`` or ``"dali"`` kernels on the CPU (see :func:`augment`).

    Returns:
        The augmented images (an ``(N, H, W, 3)`` array when all outputs have one shape,
        otherwise a list), and with ``trace`` the :class:`PolicySample`.

    Raises:
        ValueError: for images that are not uint8 HWC RGB, an empty batch or an unknown device.
        RuntimeError: for ``device="gpu"`` without a CUDA GPU.

    Example:
        >>> import numpy as np
        >>> from dra_dali import Policy
        >>> out = apply_policy(Policy.preset("ra-n2-m9"), np.zeros((4, 32, 32, 3), np.uint8))
        >>> out.shape
        (4, 32, 32, 3)
    """
    from nvidia.dali import pipeline_def

    _check_target(policy, device)
    items = _checked_images(images)
    batch = max(1, min(batch_size, len(items)))

    @pipeline_def(enable_conditionals=True, batch_size=batch, num_threads=num_threads,
                  device_id=0 if device == "gpu" else None, seed=seed, prefetch_queue_depth=1)
    def _pipe():
        data = fn.external_source(name="images", layout="HWC", dtype=types.UINT8)
        if device == "gpu":
            data = data.gpu()
        if trace:
            out, t = augment(data, policy, trace=True, interpolation=interpolation,
                             cpu_kernels=cpu_kernels)
            return (out, *t.outputs())
        return augment(data, policy, interpolation=interpolation, cpu_kernels=cpu_kernels)

    pipe = _pipe()
    pipe.build()
    results, columns = _run_batches(pipe, items, batch, trace)
    del pipe
    out = np.stack(results) if len({r.shape for r in results}) == 1 else results
    if not trace:
        return out
    op, sign, magnitude, applied, level, subpolicy, gate = (np.concatenate(c) for c in columns)
    sample = PolicySample(op=op.astype(np.int64), sign=sign.astype(np.int64),
                          magnitude=magnitude.astype(np.float64), applied=applied.astype(bool),
                          level=level.astype(np.int64), subpolicy=subpolicy.astype(np.int64),
                          gate=gate.astype(bool))
    return out, sample
