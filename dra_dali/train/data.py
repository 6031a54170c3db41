"""The training run's data side: the DALI loaders of the train and validation sets."""

from __future__ import annotations

from typing import Any, Sequence

from dra_dali.dali.loader import DALILoader
from dra_dali.dali.pipelines import PipelineRecipe
from dra_dali.data import Accepted, DataError, ImageList, Problem, accept_images, scan_images
from dra_dali.policy import Policy
from dra_dali.train.config import TrainConfig, TrainError
from dra_dali.train.distributed import DistInfo

__all__ = ["DaliLoaders", "check_datasets"]


def check_datasets(data: str, val_data: str, *, skip_bad_files: bool = False,
                   excluded_before: Sequence[Problem] | None = None) -> tuple[Accepted, Accepted]:
    """Scan the training and validation sets and check they can be trained on together.

    Args:
        data: training image folder or file list.
        val_data: validation image folder or file list.
        skip_bad_files: exclude unusable files (with a warning) instead of refusing them.
        excluded_before: on resume, the files the run excluded when it started
            (:func:`dra_dali.data.read_excluded`): excluded again; any other unusable file is
            refused.

    Returns:
        ``(train, val)``: the :class:`~dra_dali.data.Accepted` sets (``images`` without the
        excluded files, ``excluded`` the files left out).

    Raises:
        TrainError: a set is missing or empty, holds unusable files
            (:func:`dra_dali.data.accept_images`: headers, and a strict decode of small sets), or
            the class lists differ; the message names the setting (``data``, ``val_data``) and
            the files or classes.
    """
    lists = []
    for name, source in (("data", data), ("val_data", val_data)):
        try:
            lists.append(scan_images(source))
        except DataError as exc:
            raise TrainError(f"{name}: {exc}") from None
    train, val = lists
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        detail = (f"only in data: {only_train or 'none'}; only in val_data: "
                  f"{only_val or 'none'}" if (only_train or only_val) else
                  "same names in a different order")
        raise TrainError(f"data {data} and val_data {val_data} have different classes "
                         f"({len(train.classes)} vs {len(val.classes)}; {detail}); labels would "
                         "not match")
    accepted = []
    for name, images in (("data", train), ("val_data", val)):
        try:
            accepted.append(accept_images(images, decode="auto", skip_bad_files=skip_bad_files,
                                          excluded_before=excluded_before))
        except DataError as exc:
            raise TrainError(f"{name}: {exc}") from None
    return accepted[0], accepted[1]


class DaliLoaders:
    """The train and validation :class:`~dra_dali.dali.DALILoader` of one process (its shard
    of the global rank, on the process's device).

    The training loader's epochs depend only on the run seed and the epoch
    (:meth:`DALILoader.set_epoch`), and its position inside an epoch is saved and restored with
    DALI's checkpointing (:meth:`state_dict`), which makes resuming exact.

    Args:
        config: the run configuration (data, batch size, seed, threads).
        policy: the augmentation policy, or ``None`` for crop/flip/normalise only.
        info: this process's place in the process group (device, rank, world).
        recipe: the pipeline recipe.
        excluded_before: on resume, the files the run excluded when it started.

    Attributes:
        excluded: the files left out (``skip_bad_files``, or ``excluded_before``).

    Raises:
        TrainError: bad data (see :func:`check_datasets`).
    """

    def __init__(self, config: TrainConfig, policy: Policy | None, info: DistInfo,
                 recipe: PipelineRecipe, excluded_before: Sequence[Problem] | None = None) -> None:
        train, val = check_datasets(config.data, config.val_data,
                                    skip_bad_files=config.skip_bad_files,
                                    excluded_before=excluded_before)
        self.train_images, self.val_images = train.images, val.images
        self.excluded: tuple[Problem, ...] = tuple(dict.fromkeys(train.excluded + val.excluded))
        self.classes: tuple[str, ...] = self.train_images.classes
        self.num_classes = len(self.classes)
        common = dict(batch_size=config.batch_size, device=str(info.device),
                      num_threads=config.threads, shard_id=info.rank, num_shards=info.world)
        self._train = self._loader("data", self.train_images, policy, recipe, seed=config.seed,
                                   **common)
        self._val = self._loader("val_data", self.val_images, None, recipe, train=False,
                                 seed=config.seed, **common)

    @staticmethod
    def _loader(name: str, images: ImageList, policy: Policy | None, recipe: PipelineRecipe,
                **kwargs: Any) -> DALILoader:
        try:
            return DALILoader(images, policy, recipe, **kwargs)
        except DataError as exc:
            raise TrainError(f"{name}: {exc}") from None

    def train(self, epoch: int) -> DALILoader:
        """This process's training loader, set to ``epoch``."""
        self._train.set_epoch(epoch)
        return self._train

    def val(self) -> DALILoader:
        """This process's validation loader (the same every epoch)."""
        return self._val

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position (:meth:`DALILoader.state_dict`)."""
        return self._train.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the training loader where :meth:`state_dict` was taken."""
        self._train.load_state_dict(state)
