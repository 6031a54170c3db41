"""The training loop's data side: DALI loaders for the train and validation sets."""

from __future__ import annotations

import gc
from typing import Any

from dra_dali.data import DataError, ImageList, accept_images, scan_images
from dra_dali.policy import Policy
from dra_dali.train.config import TrainConfig, TrainError
from dra_dali.train.distributed import DistInfo

__all__ = ["DaliLoaders", "check_datasets", "epoch_seed"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The DALI seed of one epoch: a function of the run seed and the epoch only, so a resumed
    run reads exactly the batches the uninterrupted run would have read."""
    return (seed * 1_000_003 + epoch * 7_919 + 1) % (2 ** 31 - 1)


def check_datasets(data: str, val_data: str) -> tuple[ImageList, ImageList]:
    """Scan the training and validation sets and check they can be trained on together.

    Args:
        data: training image folder or file list.
        val_data: validation image folder or file list.

    Returns:
        ``(train, val)`` image lists.

    Raises:
        TrainError: a set is missing or empty, holds unusable files
            (:func:`dra_dali.data.accept_images`: headers, and a strict decode of small sets), or
            the class lists differ; the message names the set and the files or classes.
    """
    lists = []
    for flag, source in (("--data", data), ("--val-data", val_data)):
        try:
            lists.append(scan_images(source))
        except DataError as exc:
            raise TrainError(f"{flag}: {exc}") from None
    train, val = lists
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        detail = (f"only in --data: {only_train or 'none'}; only in --val-data: "
                  f"{only_val or 'none'}" if (only_train or only_val) else
                  "same names in a different order")
        raise TrainError(f"--data {data} and --val-data {val_data} have different classes "
                         f"({len(train.classes)} vs {len(val.classes)}; {detail}); labels would "
                         "not match")
    for flag, images in (("--data", train), ("--val-data", val)):
        try:
            accept_images(images, decode="auto")
        except DataError as exc:
            raise TrainError(f"{flag}: {exc}") from None
    return train, val


class DaliLoaders:
    """Train and validation :class:`~dra_dali.dali.DALILoader` objects for one process.

    The training loader is rebuilt every epoch with :func:`epoch_seed` (shuffle and
    augmentation draws depend only on the run seed and the epoch, which makes resuming exact);
    the validation loader is built once. Both read this process's shard (global rank).

    Args:
        config: the run configuration (data, pipeline recipe, batch size, seed, workers).
        policy: the augmentation policy, or ``None`` for crop/flip/normalise only.
        info: this process's place in the process group.

    Raises:
        TrainError: bad data or recipe (see :func:`check_datasets`).
    """

    def __init__(self, config: TrainConfig, policy: Policy | None, info: DistInfo) -> None:
        from dra_dali.dali.pipelines import RecipeError, load_recipe

        try:
            self.recipe = load_recipe(config.pipeline)
        except RecipeError as exc:
            raise TrainError(f"--pipeline: {exc}") from None
        self.train_images, self.val_images = check_datasets(config.data, config.val_data)
        self.classes: tuple[str, ...] = self.train_images.classes
        self.num_classes = len(self.classes)
        self.config, self.policy, self.info = config, policy, info
        self._device = "gpu" if info.device.type == "cuda" else "cpu"
        self._train: Any = None
        self._train_epoch, self._train_iterated = -1, False
        self._val = self._loader(self.val_images, None, train=False, seed=config.seed)

    def _loader(self, images: ImageList, policy: Policy | None, train: bool, seed: int) -> Any:
        from dra_dali.dali.loader import DALILoader

        try:
            return DALILoader(images, policy, self.recipe, batch_size=self.config.batch_size,
                              train=train, device=self._device,
                              device_id=self.info.local_rank if self._device == "gpu" else None,
                              num_threads=self.config.workers, seed=seed,
                              shard_id=self.info.rank, num_shards=self.info.world)
        except DataError as exc:
            raise TrainError(f"{'--data' if train else '--val-data'}: {exc}") from None

    def train(self, epoch: int) -> Any:
        """This process's training batches of ``epoch``: a fresh DALI loader, except that asking
        again for the epoch of the last loader, before iterating it, returns that one (the loop
        asks for epoch 0 once to count its steps)."""
        if self._train is not None:
            if self._train_epoch == epoch and not self._train_iterated:
                self._train_iterated = True
                return self._train
            self._train = None
            gc.collect()  # release the previous epoch's pipeline (threads, buffers) now
        self._train = self._loader(self.train_images, self.policy, train=True,
                                   seed=epoch_seed(self.config.seed, epoch))
        self._train_epoch, self._train_iterated = epoch, False
        return self._train

    def val(self) -> Any:
        """This process's validation batches (the same every epoch)."""
        return self._val
