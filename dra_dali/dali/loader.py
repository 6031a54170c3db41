"""`DALILoader`: a DALI pipeline that behaves like a PyTorch ``DataLoader`` for existing trainers.

Iterating yields ``(images, labels)`` torch tensors (images N x 3 x H x W normalised float on the
pipeline's device, labels int64 of shape N); ``len()`` is the number of batches; every ``iter()``
is a fresh epoch; under ``torch.distributed`` each process reads the shard of its global rank.
It has what trainers look for on a ``DataLoader``: ``batch_size``, ``drop_last``, ``dataset``
(with ``len()``), ``sampler`` and ``set_epoch(n)``, and ``state_dict()`` / ``load_state_dict()``
for an exact mid-epoch resume (DALI's own checkpointing).

Example:
    >>> from dra_dali.dali import DALILoader
    >>> loader = DALILoader("data/train", policy="policy.yaml", recipe="imagenet",
    ...                     batch_size=128, device="cuda", drop_last=True)   # doctest: +SKIP
    >>> for epoch in range(90):                                          # doctest: +SKIP
    ...     loader.set_epoch(epoch)
    ...     for images, labels in loader:
    ...         loss = criterion(model(images), labels)
"""

from __future__ import annotations

import functools
import gc
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import torch

from dra_dali.dali.pipelines import (
    OUTPUT_NAMES,
    READER_NAME,
    PipelineRecipe,
    build_train_pipeline,
    build_val_pipeline,
    load_recipe,
    resolve_policy,
)
from dra_dali.data import ImageList, scan_images
from dra_dali.errors import DraDaliError
from dra_dali.policy import Policy

__all__ = ["DALILoader", "LoaderStateError", "dali_placement", "distributed_shard", "epoch_seed"]

#: Format tag of :meth:`DALILoader.state_dict`.
STATE_FORMAT = "dra-dali-loader/1"


@functools.lru_cache(maxsize=1)
def _builder() -> ThreadPoolExecutor:
    """The thread that builds the next training epoch's pipelines (``build_ahead``)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="dra-dali-next-epoch")


class LoaderStateError(DraDaliError):
    """A loader state (``load_state_dict``) does not fit this loader; the message names the key."""


def distributed_shard() -> tuple[int, int]:
    """``(global rank, world size)`` of ``torch.distributed`` when initialised, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _local_rank() -> int:
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def dali_placement(device: "str | torch.device") -> tuple[str, int | None]:
    """DALI's ``(device, device_id)`` for a torch device or one of the device words.

    The one device vocabulary of the library and the CLI is torch's: ``cpu``, ``cuda`` (the local
    rank's GPU) or ``cuda:N``; DALI's own ``gpu`` is accepted as a synonym of ``cuda``.

    Raises:
        DraDaliError: any other word; the message lists the accepted ones.

    Example:
        >>> dali_placement("cpu"), dali_placement("cuda:1")
        (('cpu', None), ('gpu', 1))
    """
    text = str(device)
    if text == "cpu":
        return "cpu", None
    if text in ("gpu", "cuda"):
        return "gpu", None
    if text.startswith("cuda:") and text[5:].isdigit():
        return "gpu", int(text[5:])
    raise DraDaliError(f"device: expected cpu, cuda or cuda:N (gpu is cuda), got {text!r}")


def epoch_seed(seed: int, epoch: int) -> int:
    """The DALI seed of one training epoch: a function of the loader's seed and the epoch only,
    so that any epoch can be run (or resumed) without running the ones before it."""
    return (seed * 1_000_003 + epoch * 7_919 + 1) % (2 ** 31 - 1)


def _shard_sizes(n: int, num_shards: int) -> list[int]:
    # DALI's split of n samples into shards (readers: floor((i + 1) * n / k) - floor(i * n / k)).
    return [(i + 1) * n // num_shards - i * n // num_shards for i in range(num_shards)]


class _Samples:
    """``loader.dataset``: the images of the loader (``len()``), with ``set_epoch`` as a sampler
    has it. It is not indexable: DALI reads and decodes the files itself."""

    def __init__(self, loader: "DALILoader") -> None:
        self._loader = loader
        self.images = loader.images
        self.classes = loader.classes

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self._loader.set_epoch(epoch)

    def __repr__(self) -> str:
        return f"DALILoader.dataset({self.images.source}, {len(self)} images)"


class _EpochSampler:
    """``loader.sampler`` of a training loader: ``set_epoch`` (the shuffle of each epoch is a
    function of the seed and the epoch) and ``len()`` (this shard's samples per epoch)."""

    def __init__(self, loader: "DALILoader") -> None:
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        self._loader.set_epoch(epoch)

    def __len__(self) -> int:
        return self._loader.shard_size

    def __repr__(self) -> str:
        return f"DALILoader.sampler(shard {self._loader.shard_id}/{self._loader.num_shards})"


class DALILoader:
    """A DALI train or validation pipeline as an iterable of ``(images, labels)`` torch tensors.

    Args:
        data: image folder (``root/<class>/*.jpg``), file list, or a scanned
            :class:`~dra_dali.data.ImageList`.
        policy: augmentation policy for training: a :class:`~dra_dali.Policy`, a policy file, a
            preset name (``"dra-imagenet-resnet-50"``, ``"rand-m9-mstd0.5"``) or ``None``
            (crop/flip/normalise only); made for the recipe's image size (see
            :func:`~dra_dali.dali.pipelines.resolve_policy`). Must be ``None`` when ``train`` is
            false.
        recipe: pipeline recipe name (``imagenet``, ``cifar``, ``demo``), YAML path or object.
        batch_size: samples per batch per process (default: the recipe's).
        train: the training pipeline (shuffled, augmented) or the validation one.
        drop_last: drop each epoch's last partial batch (DALI's ``DROP`` last-batch policy);
            default: keep it (``PARTIAL``), neither padded nor repeated.
        device: ``cpu``, ``cuda`` (the local rank's GPU) or ``cuda:N``; ``gpu`` is ``cuda``.
        device_id: CUDA device; default the local rank (``LOCAL_RANK``), ignored on CPU.
        num_threads: DALI CPU threads (default: the recipe's).
        seed: shuffle and augmentation seed; same seed and epoch, same batches.
        shard_id, num_shards: this process's shard; default the global rank and world size of
            ``torch.distributed`` when it is initialised, else the whole data set.
        build_ahead: training: build the next epoch's pipeline in a background thread while
            this epoch runs (from its second batch on), so that the next epoch starts without
            waiting for it; ``False`` builds each epoch's pipeline when it starts.

    Attributes:
        images: the scanned :class:`~dra_dali.data.ImageList`.
        classes: class names in label order; ``num_classes``: their number.
        recipe: the resolved :class:`~dra_dali.dali.PipelineRecipe`.
        policy: the resolved policy (``None`` without augmentation).
        batch_size, drop_last: as given (``batch_size`` resolved).
        dataset: the images (``len()`` is the number of images of all shards).
        sampler: for training, an object with ``set_epoch`` (what trainers call); ``None`` for
            validation. ``batch_sampler`` is ``None``, as on a ``DataLoader`` with a batch size.
        epoch: the epoch the next ``iter()`` runs.

    Raises:
        DataError, RecipeError, PolicyError, DraDaliError: bad data, recipe, policy, device or
            shard (see :func:`~dra_dali.dali.build_train_pipeline`).

    Notes:
        Each training epoch is a DALI pipeline of its own, seeded by :func:`epoch_seed` of
        ``seed`` and the epoch, with the policy of that epoch (``policy.at_epoch(epoch)``: a
        scheduled policy switches at its ``schedule_boundaries``): ``set_epoch(n)`` selects the
        epoch (as with a ``DistributedSampler``); without it every ``iter()`` runs the next
        epoch. A validation loader keeps its one pipeline from a complete epoch to the next
        (DALI's iterator ``reset()``). Leaving an epoch early (``break``) costs nothing: the next
        ``iter()`` starts a new pipeline rather than reading the rest of the old one.

        ``len()`` is the same on every rank: ``ceil(largest shard / batch_size)``, or with
        ``drop_last`` ``floor(smallest shard / batch_size)``. Shards partition each epoch (sizes
        differ by at most one image). Without ``drop_last``, where a rank's shard is one short
        exactly at a batch boundary, its last batch repeats its last image instead of being
        empty (as DALI's padding and ``DistributedSampler`` do), so no rank computes a loss over
        zero images.

    Example:
        >>> from dra_dali.data import embedded_dataset
        >>> loader = DALILoader(embedded_dataset().val, recipe="demo", batch_size=64, train=False)
        >>> len(loader), next(iter(loader))[0].shape
        (8, torch.Size([64, 3, 32, 32]))
    """

    def __init__(self, data: "str | Path | ImageList", policy: "Policy | str | Path | None" = None,
                 recipe: "str | Path | PipelineRecipe" = "imagenet", *,
                 batch_size: int | None = None, train: bool = True, drop_last: bool = False,
                 device: "str | torch.device" = "cpu", device_id: int | None = None,
                 num_threads: int | None = None, seed: int = 0, shard_id: int | None = None,
                 num_shards: int | None = None, build_ahead: bool = True) -> None:
        if policy is not None and not train:
            raise DraDaliError("policy: a validation DALILoader (train=False) takes no policy")
        rank, world = distributed_shard()
        self.shard_id = rank if shard_id is None else shard_id
        self.num_shards = world if num_shards is None else num_shards
        self._dali_device, placed_id = dali_placement(device)
        if self._dali_device == "gpu" and device_id is None:
            device_id = _local_rank() if placed_id is None else placed_id
        self.device_id = device_id if self._dali_device == "gpu" else None
        self.recipe = load_recipe(recipe)
        self.images = scan_images(data)
        self.policy = resolve_policy(policy, self.recipe.resolution)
        self.classes = self.images.classes
        self.num_classes = len(self.classes)
        self.batch_size = batch_size or self.recipe.batch_size
        self.train, self.drop_last, self.seed = train, bool(drop_last), seed
        self.num_threads = num_threads
        self.dataset = _Samples(self)
        self.sampler = _EpochSampler(self) if train else None
        self.batch_sampler = None      # as a DataLoader built with batch_size (trainers look)
        self.epoch = 0
        self._resume: dict[str, Any] | None = None
        self._running: dict[str, Any] | None = None   # the epoch being iterated
        self.build_ahead = bool(build_ahead)
        self._ahead: tuple[int, Any] | None = None     # (epoch, Future of its pipeline)
        # Build the first epoch's pipeline now: bad data, policy or shard fail here, not at the
        # first batch; iter() uses it when it is still the right epoch.
        self._prepared = self._open(0, None)

    # ----- the DataLoader surface ----------------------------------------------------------------
    @property
    def shard_size(self) -> int:
        """Samples of this process's shard per epoch."""
        return _shard_sizes(len(self.images), self.num_shards)[self.shard_id]

    def __len__(self) -> int:
        sizes = _shard_sizes(len(self.images), self.num_shards)
        if self.drop_last:
            return min(sizes) // self.batch_size
        return math.ceil(max(sizes) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` run ``epoch`` (its shuffle and augmentation draws depend only
        on the seed and the epoch). A resumed epoch (``load_state_dict``) is kept when ``epoch``
        is that epoch."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise DraDaliError(f"epoch: expected a non-negative integer, got {epoch!r}")
        if self._resume is not None and self._resume["epoch"] != epoch:
            self._resume = None
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: the epoch is taken at the first next(), not here, because trainers
        # (Lightning) may call iter() before set_epoch() for the same epoch.
        return self._batches()

    def _start(self) -> dict[str, Any]:
        """The pipeline of the epoch to run now: the prepared one, a resumed one, or a new one."""
        epoch, resume = self.epoch, self._resume
        self._resume = None
        prepared, self._prepared = self._prepared, None
        ahead, self._ahead = self._ahead, None
        if ahead is not None and (ahead[0] != epoch or resume is not None):
            ahead[1].cancel()                   # built for another epoch: not used
        elif ahead is not None and prepared is None:
            prepared = ahead[1].result()        # built while the previous epoch ran
        # A validation pipeline is the same every epoch (no shuffle, no policy): any epoch runs
        # on the one kept after a complete epoch.
        if prepared is not None and resume is None and (prepared["epoch"] == epoch
                                                         or not self.train):
            running = prepared
        else:
            prepared = None
            gc.collect()  # release an abandoned epoch's pipeline (threads, buffers) now
            running = self._open(epoch, resume["dali"] if resume else None)
        running["batch"] = resume["batch"] if resume else 0
        self._running = running
        self.epoch = epoch + 1
        return running

    def state_dict(self) -> dict[str, Any]:
        """The loader's position: the epoch and, inside an epoch, DALI's checkpoint of the
        pipeline (reader position and every random generator) after the last batch returned.

        Returns:
            A dict of plain values (DALI's checkpoint is ``bytes``; ``torch.save``-able and
            loadable with ``weights_only``), for
            :meth:`load_state_dict` of a loader built with the same arguments.
        """
        running = self._running
        if running is None or running["batch"] >= len(self):
            return {"format": STATE_FORMAT, "epoch": self.epoch, "batch": 0, "dali": None}
        return {"format": STATE_FORMAT, "epoch": running["epoch"], "batch": running["batch"],
                "dali": running["iterator"].checkpoints()[0]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where :meth:`state_dict` was taken: the next ``iter()`` returns the rest of
        that epoch, exactly the batches the saved loader would have returned.

        Raises:
            LoaderStateError: not a loader state, or a position past this loader's epoch.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise LoaderStateError(f"loader state: expected a dict with format {STATE_FORMAT!r}")
        epoch, batch = state.get("epoch"), state.get("batch")
        if not isinstance(epoch, int) or epoch < 0:
            raise LoaderStateError(f"loader state: epoch: expected an integer >= 0, got {epoch!r}")
        if not isinstance(batch, int) or not 0 <= batch <= len(self):
            raise LoaderStateError(f"loader state: batch: expected 0..{len(self)} (this loader's "
                                   f"batches per epoch), got {batch!r}")
        self.epoch = epoch
        self._resume = {"epoch": epoch, "batch": batch, "dali": state.get("dali")} \
            if state.get("dali") else None

    # ----- pipelines ------------------------------------------------------------------------
    def _open(self, epoch: int, checkpoint: str | None) -> dict[str, Any]:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        common = dict(batch_size=self.batch_size, device=self._dali_device,
                      device_id=self.device_id, num_threads=self.num_threads,
                      shard_id=self.shard_id, num_shards=self.num_shards, checkpoint=checkpoint)
        if self.train:
            # A scheduled policy (format 2) gives each epoch its own flat policy: every epoch
            # has a pipeline of its own, so the switch at a boundary is a new graph.
            policy = self.policy.at_epoch(epoch) if self.policy is not None else None
            pipeline = build_train_pipeline(self.images, policy, self.recipe,
                                            seed=epoch_seed(self.seed, epoch), warn=epoch == 0,
                                            **common)
        else:
            pipeline = build_val_pipeline(self.images, self.recipe, seed=self.seed, **common)
        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        iterator = DALIGenericIterator(pipeline, list(OUTPUT_NAMES), reader_name=READER_NAME,
                                       last_batch_policy=policy, auto_reset=False)
        return {"epoch": epoch, "pipeline": pipeline, "iterator": iterator, "batch": 0}

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch: the one place where DALI's outputs become torch tensors."""
        running = self._start()
        previous = None
        while running["batch"] < len(self):
            try:
                out = next(running["iterator"])[0]
            except StopIteration:
                break
            images, labels = out["images"], out["labels"].reshape(-1).long()
            if len(labels) == 0:
                if previous is None:
                    break
                # A shard one image short of the others, at a batch boundary: DALI's padded batch
                # is all padding. Repeat this shard's last image (what DALI pads with) so every
                # rank takes the same number of non-empty steps (an empty batch gives a NaN loss).
                images, labels = previous[0][-1:], previous[1][-1:]
            previous = (images, labels)
            running["batch"] += 1
            yield images, labels
            if running["batch"] == 1 and self.train and self.build_ahead:
                self._build_next(running["epoch"] + 1)
        if not self.train and running["batch"] >= len(self):
            # The epoch is complete: reset DALI's iterator (what it is for) and keep the pipeline
            # for the next epoch instead of building a new one (1-2 s on a busy CPU).
            running["iterator"].reset()
            self._prepared = {**running, "batch": 0}

    def _build_next(self, epoch: int) -> None:
        """Start building ``epoch``'s pipeline in the background (one builder thread for all
        loaders); :meth:`_start` takes it if that is the epoch that runs next."""
        self._ahead = (epoch, _builder().submit(self._open, epoch, None))

    @property
    def pipeline(self):
        """The DALI pipeline of the epoch being iterated (or about to be)."""
        current = self._running or self._prepared
        return current["pipeline"] if current else None

    def __repr__(self) -> str:
        return (f"DALILoader({self.images.source}, recipe={self.recipe.name!r}, "
                f"batch_size={self.batch_size}, drop_last={self.drop_last}, "
                f"device={self._dali_device!r}, shard {self.shard_id}/{self.num_shards}, "
                f"{len(self)} batches)")
