"""What a DALI graph knows about a DataNode before it runs: its dtype, ndim and layout.

DALI 2.4's ``DataNode`` has ``dtype``/``ndim``/``layout`` attributes, but the graph (pipeline) API
leaves them ``None``: nothing fills them when the graph is defined. Each operator schema can infer
them, though: ``OpSpec.InferOutputMetadata()`` (what DALI's dynamic mode uses) gives an operator's
output metadata from its arguments and its inputs' metadata. :func:`node_metadata` runs it from
the sources of the graph down to a node: ``fn.decoders.image`` gives uint8 HWC, ``fn.resize`` and
``fn.flip`` keep it, ``fn.cast`` sets the dtype, ``fn.transpose`` and ``fn.crop_mirror_normalize``
the layout, ``fn.external_source`` what it was declared with.

It reads DALI internals that have no public equivalent in 2.4 (an operator instance's
``_op.spec``, its ``inputs`` and ``spec``; ``numba_function``'s ``out_types``/``outs_ndim``, as it
has no inference); where they differ (another DALI version) or an operator cannot infer, the
answer is "unknown" (``None``), never an error. ``tests/test_augment_api.py``
pins that the check of :func:`check_images` fires, so such a change is seen.

Example:
    >>> from nvidia.dali import fn, pipeline_def, types
    >>> @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    ... def pipe():
    ...     x = fn.external_source(name="x", dtype=types.UINT8, layout="HWC")
    ...     print(node_metadata(fn.cast(x, dtype=types.FLOAT)).describe())
    ...     return x
    >>> _ = pipe()
    float32 HWC
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from nvidia.dali import types
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import do_not_convert

from dra_dali.errors import DraDaliError

__all__ = ["NodeMetadata", "ImageInputError", "node_metadata", "check_images"]


class ImageInputError(DraDaliError):
    """The images given to ``augment`` are not uint8 HWC; the message names what was found."""


@dataclass(frozen=True)
class NodeMetadata:
    """A node's metadata as the graph infers it; ``None`` where it cannot tell.

    Attributes:
        dtype: numpy name of the element type (``"uint8"``, ``"float32"``).
        ndim: number of dimensions of each sample.
        layout: layout string (``"HWC"``, ``"CHW"``).
        producer: the call that made the node (``"fn.crop_mirror_normalize"``).
    """

    dtype: str | None
    ndim: int | None
    layout: str | None
    producer: str | None

    def describe(self) -> str:
        """``"float32 CHW"``; unknown parts are named as such."""
        dtype = self.dtype or "an unknown dtype"
        if self.layout:
            return f"{dtype} {self.layout}"
        if self.ndim is not None:
            return f"{dtype} with {self.ndim} dimensions and no layout"
        return f"{dtype} with an unknown layout"


def _dtype_name(dtype) -> str | None:
    if dtype is None:
        return None
    try:
        return np.dtype(types.to_numpy_type(dtype)).name
    except (TypeError, KeyError, ValueError):
        return str(getattr(dtype, "name", dtype)).lower()


def _regular_inputs(node: DataNode) -> list[DataNode]:
    """The positional inputs of the operator that made ``node`` (none for a source, or where the
    node carries its own metadata)."""
    instance = node.source
    if instance is None or None not in (node.ndim, node.dtype, node.layout):
        return []
    try:
        return list(instance.inputs[:instance.spec.NumRegularInput()])
    except (AttributeError, TypeError):
        return []


def _infer(node: DataNode, known: dict[str, tuple]) -> tuple:
    """``(ndim, dtype, layout)`` of ``node`` given its inputs' entries in ``known``."""
    own = (node.ndim, node.dtype, node.layout)
    instance = node.source
    if instance is None or None not in own:
        return own
    inputs = _regular_inputs(node)
    try:
        if not inputs:
            spec = instance.spec.copy()          # a source: its arguments say it all
        else:
            spec = instance._op.spec.copy()      # the operator's arguments, without inputs
            for inp in inputs:
                ndim, dtype, layout = known[inp.name]
                spec.AddInput(inp.name, inp.device, ndim, dtype,
                              None if layout is None else str(layout))
            for out in instance.outputs:
                spec.AddOutput(out.name, out.device)
        spec.InferOutputMetadata()
        return _declared(node, tuple(spec.OutputDesc(node.index)[2:]))
    except Exception:  # noqa: BLE001 - an operator or a DALI version that cannot tell: unknown
        return _declared(node, own)


def _declared(node: DataNode, found: tuple) -> tuple:
    """Fill what the schema cannot infer from the operator's own declaration of its outputs:
    DALI's ``numba_function`` has no inference but is given ``out_types`` and ``outs_ndim``."""
    ndim, dtype, layout = found
    op = getattr(node.source, "_op", None)
    index = node.index or 0

    def pick(name: str, value):
        declared = getattr(op, name, None)
        if value is None and isinstance(declared, (list, tuple)) and index < len(declared):
            return declared[index]
        return value

    return pick("outs_ndim", ndim), pick("out_types", dtype), layout


def _producer(node: DataNode) -> str | None:
    """``fn.crop_mirror_normalize``: how the user called the operator that made ``node``."""
    op = getattr(node.source, "_op", None)
    if op is None:
        return None
    called = getattr(op, "_init_args", {})
    module, name = called.get("_module"), called.get("_display_name")
    if isinstance(module, str) and isinstance(name, str):
        return f"{module.removeprefix('nvidia.dali.')}.{name}"
    return type(op).__name__


@do_not_convert
def node_metadata(node: DataNode) -> NodeMetadata:
    """The dtype, ndim and layout DALI's operator schemas infer for ``node``, without running
    anything (it adds no operator to the graph).

    Args:
        node: a DataNode of a graph being defined (inside a ``@pipeline_def``).

    Returns:
        The :class:`NodeMetadata`; ``None`` in the fields the graph cannot tell (an
        ``external_source`` declared without ``dtype``/``layout``, a ``python_function``).
    """
    known: dict[str, tuple] = {}
    stack = [node]
    while stack:            # post-order over the graph above `node`, without recursion
        top = stack[-1]
        if top.name in known:
            stack.pop()
            continue
        pending = [inp for inp in _regular_inputs(top) if inp.name not in known]
        if pending:
            stack.extend(pending)
            continue
        known[top.name] = _infer(top, known)
        stack.pop()
    ndim, dtype, layout = known[node.name]
    producer = _producer(node)
    layout = None if layout is None else (str(layout) or None)
    return NodeMetadata(dtype=_dtype_name(dtype), ndim=ndim, layout=layout, producer=producer)


def check_images(node: DataNode, who: str = "augment") -> NodeMetadata:
    """Refuse a node that is not uint8 HWC, when the graph is defined.

    Args:
        node: the images.
        who: the function to name in the message.

    Returns:
        The node's :class:`NodeMetadata`.

    Raises:
        ImageInputError: the graph says the dtype is not uint8, the layout not HWC, or the
            samples not 3-D; the message names what it found and the operator that made it.

    Warns:
        UserWarning: where the graph cannot tell the dtype (so nothing can be checked before
            the pipeline runs); it says how to declare it. A layout the graph cannot tell (DALI's
            arithmetic operators drop it) is not checked and not warned about.
    """
    meta = node_metadata(node)
    wrong = (meta.dtype not in (None, "uint8")
             or (meta.layout is not None and meta.layout != "HWC")
             or (meta.layout is None and meta.ndim not in (None, 3)))
    source = f", the output of {meta.producer}" if meta.producer else ""
    if wrong:
        raise ImageInputError(
            f"{who}: images must be uint8 HWC (as fn.decoders.image gives them, before "
            f"fn.crop_mirror_normalize); found {meta.describe()}{source}")
    if meta.dtype is None:
        warnings.warn(
            f"{who}: cannot check that the images are uint8 HWC: the graph does not tell their "
            f"dtype{source}; declare it (e.g. fn.external_source(..., dtype=types.UINT8, "
            f"layout='HWC'))", UserWarning, stacklevel=3)
    return meta
