"""The training configuration: one frozen record, written to ``config.json`` in the run directory."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dra_dali.errors import DraDaliError

__all__ = ["TrainConfig", "TrainError"]


class TrainError(DraDaliError):
    """A training run cannot start or continue; the message names the culprit and the fix."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    Attributes:
        data: training images (image folder ``root/<class>/*.jpg`` or a ``path label`` file list).
        val_data: validation images, same layout and the same classes as ``data``.
        out: run directory (``config.json``, ``policy.yaml``, ``metrics.jsonl``,
            ``checkpoint.pt``, ``summary.json``).
        policy: a policy file, a preset name (``ra-n2-m9``), or ``"none"`` (no augmentation
            beyond the pipeline's crop and flip).
        model: a :func:`dra_dali.models.create_model` name.
        epochs: training epochs.
        batch_size: images per step *per process* (the global batch is ``batch_size * world``).
        lr: peak learning rate; ``None``: ``0.1 * global_batch / 128`` (the CIFAR rule the DRA
            paper uses).
        momentum: SGD (Nesterov) momentum.
        weight_decay: L2 decay of weights; norm layers and biases are never decayed.
        warmup_epochs: linear warmup length from ``lr / 100`` (then cosine decay to 0).
        label_smoothing: cross-entropy label smoothing.
        pipeline: pipeline recipe around the policy (crop, flip, normalisation, image size): a
            name from ``pipelines/`` (``imagenet``, ``cifar``, ``demo``) or a YAML file.
        seed: seeds model init, data order and augmentation; same seed, same run.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        amp: mixed precision on CUDA (ignored on CPU).
        workers: DALI CPU threads per process.
        max_steps: stop each epoch after this many steps (``None``: full epochs); for smoke runs.
    """

    data: str
    val_data: str
    out: str
    policy: str = "none"
    model: str = "resnet-tiny"
    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    pipeline: str = "imagenet"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    workers: int = 2
    max_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("data", "val_data", "out", "policy", "pipeline"):
            value = getattr(self, name)
            if isinstance(value, Path):
                object.__setattr__(self, name, str(value))
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise TrainError(f"{name} must be a finite number, got {value}")
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.lr is None or self.lr <= 10, f"lr must be at most 10, got {self.lr}"),
            (self.weight_decay <= 1, f"weight_decay must be at most 1, got {self.weight_decay}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (0 <= self.label_smoothing < 1,
             f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.device in ("auto", "cpu", "cuda"),
             f"device must be auto, cpu or cuda, got {self.device!r}"),
            (self.workers >= 1, f"workers must be >= 1, got {self.workers}"),
            (self.max_steps is None or self.max_steps >= 1,
             f"max_steps must be >= 1, got {self.max_steps}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainError(message)

    def peak_lr(self, world_size: int) -> float:
        """The peak learning rate for ``world_size`` processes (see ``lr``)."""
        return self.lr if self.lr is not None else 0.1 * self.batch_size * world_size / 128

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are refused.

        Raises:
            TrainError: unknown keys or invalid values.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainError(f"unknown training configuration keys: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
