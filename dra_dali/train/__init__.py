"""Training with the DALI loader: single process or DDP under ``torchrun``, resumable exactly.

Example:
    >>> from dra_dali.train import TrainConfig, train
    >>> config = TrainConfig(data="data/train", val_data="data/val", out="runs/r50",
    ...                      policy="policy.yaml", model="resnet50", epochs=90)
    >>> result = train(config)              # doctest: +SKIP
    >>> result.final["val_top1"]            # doctest: +SKIP
"""

from dra_dali.train.config import TrainConfig, TrainError
from dra_dali.train.trainer import INTERRUPTED_EXIT, RUN_FILES, Trainer, TrainResult, train

__all__ = ["INTERRUPTED_EXIT", "RUN_FILES", "TrainConfig", "TrainError", "TrainResult", "Trainer",
           "train"]
