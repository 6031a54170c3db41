"""The training configuration: one frozen record, written to ``config.yaml`` in the run directory
(``dra-dali train --config RUN/config.yaml`` runs it again)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dra_dali import renamed
from dra_dali.devices import DEVICE_WORDS, valid_device
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
        out: run directory (``config.yaml``, ``policy.yaml``, ``metrics.jsonl``,
            ``checkpoint.pt``, ``best.pt``, ``model.pt``, ``summary.json``).
        policy: a policy file, a preset name (``ra-n2-m9``), or ``"none"`` (no augmentation
            beyond the pipeline's crop and flip).
        model: a :func:`dra_dali.models.create_model` name.
        epochs: training epochs.
        batch_size: images per step *per process* (the global batch is ``batch_size * world``).
        lr: peak learning rate; ``None``: ``0.1 * global_batch / lr_reference_batch``.
        lr_reference_batch: the batch of the linear LR rule: 128 (the DRA authors' CIFAR rule),
            256 for their ImageNet retraining.
        momentum: SGD (Nesterov) momentum.
        weight_decay: L2 decay of weights; norm layers and biases are never decayed.
        warmup_epochs: linear warmup length (then cosine decay to 0).
        warmup_start: the learning rate at the first step, as a fraction of ``lr`` (0.01; the
            DRA authors' retraining warms up from 0).
        label_smoothing: cross-entropy label smoothing.
        pipeline: pipeline recipe around the policy (crop, flip, normalisation, image size): a
            name from ``pipelines/`` (``imagenet``, ``cifar``, ``demo``) or a YAML file.
        seed: seeds model init, data order and augmentation; same seed, same run.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` (the local rank's GPU) or
            ``"cuda:N"``; DALI decodes and augments on the same device.
        amp: mixed precision on CUDA (ignored on CPU).
        threads: DALI CPU threads per process.
        max_steps: stop each epoch after this many steps (``None``: full epochs); for smoke runs.
        skip_bad_files: exclude unusable image files found before the run starts (with a
            warning; listed in the run directory's ``excluded_files.txt``) instead of stopping;
            a resumed run excludes the same files. A file that breaks during the run still
            stops it (a DALI reader's file list is fixed), naming the file.
    """

    data: str
    val_data: str
    out: str
    policy: str = "none"
    model: str = "resnet-tiny"
    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None
    lr_reference_batch: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    warmup_start: float = 0.01
    label_smoothing: float = 0.1
    pipeline: str = "imagenet"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    threads: int = 2
    max_steps: int | None = None
    skip_bad_files: bool = False

    def __post_init__(self) -> None:
        for name in ("data", "val_data", "out", "policy", "pipeline"):
            value = getattr(self, name)
            if isinstance(value, Path):
                object.__setattr__(self, name, str(value))
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise TrainError(f"train.{name}: must be a finite number, got {value}")
        checks = [
            ("epochs", self.epochs >= 1, ">= 1"),
            ("lr", self.lr is None or self.lr <= 10, "at most 10"),
            ("weight_decay", self.weight_decay <= 1, "at most 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr_reference_batch", self.lr_reference_batch >= 1, ">= 1"),
            ("lr", self.lr is None or self.lr > 0, "> 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"),
            ("warmup_start", 0 <= self.warmup_start <= 1, "in [0, 1]"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("device", valid_device(self.device), DEVICE_WORDS),
            ("threads", self.threads >= 1, ">= 1"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, ">= 1"),
            ("skip_bad_files", isinstance(self.skip_bad_files, bool), "true or false"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise TrainError(f"train.{name}: must be {rule}, got {getattr(self, name)!r}")

    def peak_lr(self, world_size: int) -> float:
        """The peak learning rate for ``world_size`` processes (see ``lr``)."""
        if self.lr is not None:
            return self.lr
        return 0.1 * self.batch_size * world_size / self.lr_reference_batch

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{setting: default}`` of the settings that have one (a run saved before a setting
        existed resumes as if it had the default)."""
        return {f.name: f.default for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are refused.

        Raises:
            TrainError: unknown keys or invalid values.
        """
        data = renamed.translate(data, renamed.TRAIN, "training configuration")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainError(f"unknown training configuration key(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in data)
        if missing:
            raise TrainError(f"training configuration: missing {', '.join(missing)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise TrainError(f"training configuration: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, **changes: Any) -> "TrainConfig":
        """Read a configuration file (a run's ``config.yaml`` or one of your own), then apply
        ``changes`` (``None`` values are ignored).

        Raises:
            TrainError: unreadable file, not a mapping, unknown keys or invalid values; the
                message names the file.
        """
        from dra_dali.safe_yaml import load_yaml

        data = load_yaml(Path(path), what="training configuration", error=TrainError)
        if not isinstance(data, dict):
            raise TrainError(f"{path}: expected a mapping of training settings")
        data = renamed.translate(data, renamed.TRAIN, str(path))
        merged = {**data, **{k: v for k, v in changes.items() if v is not None}}
        try:
            return cls.from_dict(merged)
        except TrainError as exc:
            raise TrainError(f"{path}: {exc}") from None

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
