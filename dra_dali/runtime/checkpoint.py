"""Checkpoints: written atomically, always read with ``torch.load(weights_only=True)``.

``weights_only=True`` means a checkpoint file can hold tensors, containers and plain Python
values only; loading one never runs code, whoever made the file. Keep checkpoint states to those
types (a :meth:`state_dict`, numbers, strings, lists, dicts; RNG states via :func:`rng_state`).

Example:
    >>> import tempfile, pathlib, torch
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pt"
    >>> _ = save_checkpoint(path, {"epoch": 3, "w": torch.ones(2), "rng": rng_state()})
    >>> state = load_checkpoint(path)
    >>> state["epoch"], state["w"].tolist()
    (3, [1.0, 1.0])
    >>> set_rng_state(state["rng"])   # continue every random stream where it was
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dra_dali.errors import DraDaliError
from dra_dali.runtime.files import atomic_write

if TYPE_CHECKING:
    import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]


class CheckpointError(DraDaliError):
    """A checkpoint is missing or not a loadable dra-dali checkpoint; the message names it."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Serialise ``state`` with ``torch.save`` and write it with
    :func:`~dra_dali.runtime.atomic_write`: a reader, or a resume after a kill at any moment,
    sees the previous checkpoint or this one, never half of one.

    Args:
        path: destination file (its folder is created).
        state: tensors, containers and plain Python values only (``weights_only``-loadable).

    Returns:
        The path written.

    Raises:
        WriteError: disk full, folder not writable, or ``path`` is a symlink (one line).
    """
    import torch  # here, not at the top: run directories and signals work without torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write(path, buffer.getbuffer())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: no code from the file runs.

    Args:
        path: the checkpoint file.
        map_location: where tensors go (default: the CPU; RNG states must stay there).

    Returns:
        The saved dict.

    Raises:
        CheckpointError: no such file, a symlink, or not a loadable checkpoint (garbage, a
            truncated file, or a file that needs code to load); the message names the file.
    """
    import torch

    path = Path(path)
    if path.is_symlink():
        raise CheckpointError(f"{path}: is a symbolic link; refusing to load a checkpoint "
                              "through it")
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable dra-dali checkpoint ({reason[:200]})") \
            from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a readable dra-dali checkpoint (holds a "
                              f"{type(state).__name__}, not a dict)")
    return state


def rng_state() -> dict[str, Any]:
    """The Python, numpy, torch (and CUDA) random states, as tensors and plain numbers only, so
    a checkpoint holding them stays loadable with ``weights_only=True``."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _plain(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import numpy as np
    import torch

    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
