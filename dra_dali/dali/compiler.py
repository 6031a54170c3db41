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
from typing import Sequence

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali.data_node import DataNode

from dra_dali.dali.draws import NEGLIGIBLE_PROBABILITY, LayerDraws, policy_draws
from dra_dali.dali.operators import DALI_OPS
from dra_dali.policy import Policy, PolicySample

__all__ = ["augment", "apply_policy", "AugmentTrace", "NEGLIGIBLE_PROBABILITY"]


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


def _dispatch(names, lo: int, hi: int, branch, images, magnitude, sign, resolution: int):
    """Run ``DALI_OPS[names[branch]]`` per sample: a binary split over the branch index, so each
    operator sees only its own samples (DALI conditionals)."""
    if lo == hi:
        return DALI_OPS[names[lo]](images, magnitude, sign, resolution=resolution)
    mid = (lo + hi) // 2
    if branch <= mid:
        out = _dispatch(names, lo, mid, branch, images, magnitude, sign, resolution)
    else:
        out = _dispatch(names, mid + 1, hi, branch, images, magnitude, sign, resolution)
    return out


def _apply_layer(images, policy: Policy, layer: LayerDraws):
    """The conditional part of a layer: only applied samples reach the operator branches."""
    sign_f = fn.cast(layer.sign, dtype=types.FLOAT)
    last = len(layer.names) - 1
    args = (layer.names, 0, last, layer.branch)
    if layer.coin == "always":
        images = _dispatch(*args, images, layer.magnitude, sign_f, policy.resolution)
    elif layer.coin == "random":
        if layer.applied:
            images = _dispatch(*args, images, layer.magnitude, sign_f, policy.resolution)
    return images


def augment(images: DataNode, policy: Policy, trace: bool = False, seed: int | None = None):
    """Apply ``policy`` to a batch of uint8 HWC images inside a DALI pipeline definition.

    Call it inside your own ``@pipeline_def(enable_conditionals=True)``; the images may live on
    the CPU or the GPU (the graph is the same; per-sample parameters are drawn on the CPU). On the
    GPU, Cutout and Sharpness read the image shape back on the CPU, which needs DALI's dynamic
    executor (the default; do not pass ``exec_dynamic=False``).

    Args:
        images: uint8 HWC DataNode (``cpu`` or ``gpu``), e.g. the output of a decoder or crop.
        policy: the :class:`~dra_dali.Policy` to apply.
        trace: also return an :class:`AugmentTrace` with the draws per image and layer.
        seed: optional seed for the random operators (default: derived from the pipeline seed).

    Returns:
        The augmented images (same device, uint8 HWC), or ``(images, AugmentTrace)`` when
        ``trace`` is true.

    Raises:
        TypeError: if ``images`` is not a DataNode or ``policy`` not a Policy.

    Example:
        >>> # inside @pipeline_def(enable_conditionals=True, ...):
        >>> # images, t = augment(images, policy, trace=True); return (images, *t.outputs())
    """
    if not isinstance(images, DataNode):
        raise TypeError(f"augment: images must be a DALI DataNode (uint8 HWC), got "
                        f"{type(images).__name__}; call augment inside a @pipeline_def")
    if not isinstance(policy, Policy):
        raise TypeError(f"augment: policy must be a dra_dali.Policy (Policy.load(path) or "
                        f"Policy.preset(name)), got {type(policy).__name__}")
    drawn = policy_draws(policy, seed)
    for layer in drawn.layers:
        images = _apply_layer(images, policy, layer)
    if not trace:
        return images
    stacked = [fn.stack(*[getattr(layer, f) for layer in drawn.layers])
               for f in ("op", "sign", "magnitude", "applied", "level")]
    return images, AugmentTrace(*stacked, subpolicy=drawn.subpolicy, gate=drawn.gate)


def apply_policy(policy: Policy, images: np.ndarray | Sequence[np.ndarray], seed: int = 0,
                 device: str = "cpu", trace: bool = False, batch_size: int = 256,
                 num_threads: int = 2):
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

    if device not in ("cpu", "gpu"):
        raise ValueError(f"apply_policy: device must be 'cpu' or 'gpu', got {device!r}")
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ValueError(f"apply_policy: images must be (N, H, W, 3) uint8, got an array of "
                         f"shape {images.shape}")
    items = list(images)
    if not items:
        raise ValueError("apply_policy: no images given")
    for i, im in enumerate(items):
        im = np.asarray(im)
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"apply_policy: image {i} must be uint8 (H, W, 3) RGB, got "
                             f"dtype {im.dtype} shape {im.shape}")
    if not isinstance(policy, Policy):
        raise TypeError(f"apply_policy: policy must be a dra_dali.Policy, got "
                        f"{type(policy).__name__}")
    if device == "gpu":
        from nvidia.dali.backend import GetCUDADeviceCount

        if GetCUDADeviceCount() == 0:
            raise RuntimeError("apply_policy(device='gpu') needs a CUDA GPU and this machine has "
                               "none visible; use device='cpu' (the same graph on the CPU)")
    batch = max(1, min(batch_size, len(items)))

    @pipeline_def(enable_conditionals=True, batch_size=batch, num_threads=num_threads,
                  device_id=0 if device == "gpu" else None, seed=seed, prefetch_queue_depth=1)
    def _pipe():
        data = fn.external_source(name="images", layout="HWC", dtype=types.UINT8)
        if device == "gpu":
            data = data.gpu()
        if trace:
            out, t = augment(data, policy, trace=True)
            return (out, *t.outputs())
        return augment(data, policy)

    pipe = _pipe()
    pipe.build()
    results: list[np.ndarray] = []
    columns: list[list[np.ndarray]] = [[] for _ in range(7)]
    for start in range(0, len(items), batch):
        chunk = [np.ascontiguousarray(im) for im in items[start:start + batch]]
        pipe.feed_input("images", chunk)
        outputs = pipe.run()
        if device == "gpu":
            outputs = [o.as_cpu() for o in outputs]
        results.extend(np.array(o) for o in outputs[0])
        if trace:
            for f in range(7):
                columns[f].append(np.stack([np.array(x) for x in outputs[1 + f]]))
    del pipe
    shapes = {r.shape for r in results}
    out = np.stack(results) if len(shapes) == 1 else results
    if not trace:
        return out
    op, sign, magnitude, applied, level, subpolicy, gate = (np.concatenate(c) for c in columns)
    sample = PolicySample(op=op.astype(np.int64), sign=sign.astype(np.int64),
                          magnitude=magnitude.astype(np.float64), applied=applied.astype(bool),
                          level=level.astype(np.int64), subpolicy=subpolicy.astype(np.int64),
                          gate=gate.astype(bool))
    return out, sample
