"""Checkpoints of a training run: the runtime layer's, re-exported for code that imports them
from here (train moves onto :mod:`dra_dali.runtime`; new code imports from there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dra_dali.runtime import CheckpointError, rng_state, save_checkpoint, set_rng_state
from dra_dali.runtime import load_checkpoint as _load_checkpoint

__all__ = ["CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]

#: File name of the latest checkpoint inside a run directory.
CHECKPOINT_NAME = "checkpoint.pt"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """:func:`dra_dali.runtime.load_checkpoint` (``weights_only=True``), raising the
    ``RuntimeError`` the training loop catches.

    Raises:
        RuntimeError: no such file, or not a loadable checkpoint (the message names it).
    """
    try:
        return _load_checkpoint(path, map_location)
    except CheckpointError as exc:
        raise RuntimeError(str(exc)) from None
