"""Training with the DALI loader: single process or DDP under ``torchrun``, resumable.

Example:
    >>> from dra_dali.train import TrainConfig, train
    >>> config = TrainConfig(data="data/train", val_data="data/val", out="runs/r50",
    ...                      policy="policy.yaml", model="resnet50", epochs=90)
    >>> result = train(config)              # doctest: +SKIP
    >>> result.final["val_top1"]            # doctest: +SKIP
"""

from dra_dali.train.checkpoint import load_checkpoint, save_checkpoint
from dra_dali.train.config import TrainConfig, TrainError
from dra_dali.train.loop import (
           INTERRUPTED_EXIT,
           RUN_FILES,
           Loaders,
           TrainResult,
           resolve_policy,
           train,
)

__all__ = ["INTERRUPTED_EXIT", "Loaders", "RUN_FILES", "TrainConfig", "TrainError", "TrainResult",
           "load_checkpoint", "resolve_policy", "save_checkpoint", "train"]
