"""Train and validation DALI pipelines built from a pipeline recipe, with the policy compiled in.

A *pipeline recipe* (YAML in ``pipelines/``) fixes everything around the policy: the crop (random
resized crop for ImageNet-like data, pad-and-crop for CIFAR), the flip, Cutout, the normalisation
and the validation resize. The graph is::

    readers.file (files + labels of scan_images; shuffle, seed, shard_id/num_shards, pad_last_batch)
      -> decode: fused decode-and-random-crop (``decoders.image_random_crop``, "mixed" on GPU)
         for crop: random_resized, plain ``decoders.image`` otherwise
      -> resize to resolution x resolution  |  pad crop  ->  flip  ->  augment(policy)
      -> crop_mirror_normalize (NCHW float, mean/std)  ->  cutout (optional)

Validation: decode -> resize shorter side to ``val_resize`` -> centre crop ``resolution`` ->
normalise.

Both builders return an unbuilt :class:`nvidia.dali.Pipeline` with outputs ``("images",
"labels")`` and a reader named :data:`READER_NAME`; :class:`dra_dali.dali.DALILoader` wraps them
for PyTorch trainers.

Example:
    >>> from dra_dali import Policy
    >>> from dra_dali.data import embedded_dataset
    >>> pipe = build_train_pipeline(embedded_dataset().train,
    ...                             Policy.preset("ra-n2-m9", resolution=32), recipe="demo",
    ...                             batch_size=32)
    >>> images, labels = pipe.run()        # DALI TensorLists: 32 x 3 x 32 x 32 float, 32 labels
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from dra_dali import renamed
from dra_dali.data import DataError, ImageList, scan_images
from dra_dali.errors import DraDaliError
from dra_dali.ops import translate_range_px
from dra_dali.policy import Policy
from dra_dali.recipes import find_recipe, recipe_dirs
from dra_dali.recipes import recipe_names as shipped_recipe_names
from dra_dali.safe_yaml import load_yaml

__all__ = [
    "PipelineRecipe",
    "RecipeError",
    "READER_NAME",
    "OUTPUT_NAMES",
    "recipe_names",
    "load_recipe",
    "resolution_warning",
    "adapt_policy",
    "resolve_policy",
    "build_train_pipeline",
    "build_val_pipeline",
    "build_preview_pipeline",
]

#: Name of the file reader in every pipeline built here (what DALI iterators take as reader_name).
READER_NAME = "Reader"
#: Output names of the train and validation pipelines, in order.
OUTPUT_NAMES = ("images", "labels")

_CROPS = ("random_resized", "pad", "center")
_DTYPES = ("float32", "float16")
_DEVICES = ("cpu", "gpu")


class RecipeError(DraDaliError):
    """A pipeline recipe is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class PipelineRecipe:
    """Everything a train/val pipeline does around the policy. Defaults are the ImageNet ones.

    Attributes:
        name: a label for summaries.
        resolution: output side in pixels (train crop and val centre crop).
        crop: train crop: ``random_resized`` (fused decode-and-random-crop, then resize to
            ``resolution``), ``pad`` (pad by ``pad`` pixels with ``pad_fill``, random ``resolution``
            crop; CIFAR) or ``center`` (the validation transform; no random crop).
        crop_scale: random-resized-crop area fraction range.
        crop_ratio: random-resized-crop aspect-ratio range.
        pad: padding of the ``pad`` crop in pixels.
        pad_fill: value of the padded pixels (0, as torchvision's RandomCrop).
        flip: random horizontal flip (p = 0.5) before the policy.
        cutout: side in pixels of a Cutout square; 0 disables it. Applied after normalisation
            (filled with 0, i.e. the mean colour; DeVries & Taylor) unless
            ``cutout_before_normalize``.
        cutout_before_normalize: cut the uint8 image before normalisation, filled black (0), as
            the DRA authors' CIFAR retraining does (``pipelines/cifar-dra.yaml``).
        val_resize: validation resizes the shorter side to this, then centre-crops ``resolution``.
        mean: per-channel mean in [0, 1] units (multiplied by 255 inside).
        std: per-channel standard deviation in [0, 1] units.
        batch_size: default batch size.
        threads: default number of DALI CPU threads.
        dtype: output dtype, ``float32`` or ``float16``.
    """

    name: str = "imagenet"
    resolution: int = 224
    crop: Literal["random_resized", "pad", "center"] = "random_resized"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    pad: int = 4
    pad_fill: int = 0
    flip: bool = True
    cutout: int = 0
    cutout_before_normalize: bool = False
    val_resize: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    batch_size: int = 256
    threads: int = 4
    dtype: Literal["float32", "float16"] = "float32"

    def _fail(self, field: str, message: str) -> None:
        raise RecipeError(f"recipe {self.name!r}: {field}: {message}")

    def __post_init__(self) -> None:
        self._check_scalars()
        self._check_lists()
        if self.val_resize < self.resolution:
            self._fail("val_resize", f"{self.val_resize} is smaller than resolution "
                                     f"{self.resolution}; the "
                                     "centre crop would not fit")
        if self.cutout > self.resolution:
            self._fail("cutout", f"{self.cutout} px is larger than the image side "
                                 f"{self.resolution}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            self._fail("crop_scale", f"expected 0 < lo <= hi <= 1, got {list(self.crop_scale)}")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            self._fail("crop_ratio", f"expected 0 < lo <= hi, got {list(self.crop_ratio)}")
        if any(s <= 0 for s in self.std):
            self._fail("std", f"must be positive, got {list(self.std)}")

    def _check_scalars(self) -> None:
        for names, low, what in ((("resolution", "batch_size", "threads", "val_resize"), 1,
                                  "a positive integer"),
                                 (("pad", "cutout", "pad_fill"), 0, "a non-negative integer")):
            for name in names:
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, int) or value < low:
                    self._fail(name, f"expected {what}, got {value!r}")
        for name, choices in (("crop", _CROPS), ("dtype", _DTYPES)):
            if getattr(self, name) not in choices:
                self._fail(name, f"expected one of {', '.join(choices)}, got "
                                 f"{getattr(self, name)!r}")
        for name in ("flip", "cutout_before_normalize"):
            if not isinstance(getattr(self, name), bool):
                self._fail(name, f"expected true or false, got {getattr(self, name)!r}")

    def _check_lists(self) -> None:
        for name, length in (("crop_scale", 2), ("crop_ratio", 2), ("mean", 3), ("std", 3)):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != length or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in value):
                self._fail(name, f"expected a list of {length} numbers, got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))

    @classmethod
    def from_dict(cls, data: Any, source: str = "recipe") -> "PipelineRecipe":
        """Build a recipe from a mapping, refusing unknown keys.

        Args:
            data: the mapping (e.g. from ``yaml.safe_load``).
            source: what to call it in error messages (the file path).

        Raises:
            RecipeError: not a mapping, unknown keys (all named), or an invalid field.
        """
        if not isinstance(data, Mapping):
            raise RecipeError(f"{source}: expected a mapping of recipe fields, got "
                              f"{type(data).__name__}")
        data = renamed.translate(data, renamed.PIPELINE, source)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"{source}: unknown key(s) {', '.join(map(str, unknown))}; "
                              f"known keys: {', '.join(sorted(known))}")
        try:
            return cls(**dict(data))
        except RecipeError as exc:
            raise RecipeError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists, numbers), as written to YAML."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def recipe_names() -> list[str]:
    """Names of the shipped pipeline recipes (``imagenet``, ``cifar``, ``demo``, ...)."""
    return shipped_recipe_names("pipelines")


def load_recipe(recipe: "str | Path | PipelineRecipe | Mapping[str, Any]") -> PipelineRecipe:
    """Load a pipeline recipe by name (``imagenet``, ``cifar``, ``demo``), path or mapping.

    Args:
        recipe: a :class:`PipelineRecipe` (returned as is), a mapping of fields, a YAML file
            path, or the name of a shipped recipe (see :mod:`dra_dali.recipes`).

    Returns:
        The validated recipe.

    Raises:
        RecipeError: unknown name (listing the known ones), unreadable file, not YAML, unknown
            keys or an invalid field; the message names the file.

    Example:
        >>> load_recipe("cifar").resolution
        32
    """
    if isinstance(recipe, PipelineRecipe):
        return recipe
    if isinstance(recipe, Mapping):
        return PipelineRecipe.from_dict(recipe)
    path = find_recipe("pipelines", recipe)
    if path is None:
        searched = ", ".join(map(str, recipe_dirs("pipelines"))) or "nothing"
        raise RecipeError(f"no pipeline recipe {str(recipe)!r}: not a file, and not one of the "
                          f"shipped recipes: {', '.join(recipe_names()) or 'none'} "
                          f"(searched {searched})")
    data = load_yaml(path, what="pipeline recipe", error=RecipeError)
    if isinstance(data, Mapping) and "name" not in data:
        data = {**data, "name": path.stem}
    return PipelineRecipe.from_dict(data, source=str(path))


_TRANSLATES = ("TranslateX", "TranslateY")


def _translates(policy: Policy) -> bool:
    """Whether any operator list of the policy (every schedule entry) has a translation: the
    only operators whose effect depends on the policy's ``resolution``."""
    flats = [entry.policy for entry in policy.schedule] or [policy]
    return any(op in flat.ops for flat in flats for op in _TRANSLATES)


def resolution_warning(policy: Policy, recipe: PipelineRecipe) -> str | None:
    """The note to give when a policy made for another image size is adapted to the pipeline's.

    Only TranslateX/TranslateY depend on the policy's ``resolution`` (their range at m = 1:
    :func:`dra_dali.ops.translate_range_px`, 100 px at 224, 10 px at 32); the pipelines built
    here adapt a policy to the recipe's crop (:func:`adapt_policy`), and this says what that
    changes.

    Returns:
        ``None`` when the sizes match or the policy has no translation, else a sentence naming
        both sizes and the translate range at each.
    """
    return adapt_policy(policy, recipe.resolution, recipe.name)[1]


def adapt_policy(policy: Policy, size: int, recipe: str | None = None
                 ) -> tuple[Policy, str | None]:
    """The policy for a pipeline whose images are ``size`` px, and a note when that changed it.

    Every policy (a preset, a file, an object) is adapted with :meth:`Policy.with_resolution`:
    magnitudes are normalised, so only the translate range moves, and it follows the image size
    as the paper's does (10 px at 32, 100 px at 224, the nearer fraction elsewhere). Keeping the
    policy's own pixels would translate a 224 px policy by 312 % of a 32 px crop (flat grey
    images), a 32 px policy by 4 % of a 224 px one.

    Args:
        policy: the policy.
        size: the pipeline's image side in pixels (the recipe's ``resolution``).
        recipe: the recipe's name, for the note.

    Returns:
        ``(adapted policy, note)``; the note is ``None`` where nothing changed (same size, or no
        TranslateX/TranslateY in the policy).

    Raises:
        PolicyError: ``size`` is not a positive integer.

    Example:
        >>> adapted, note = adapt_policy(Policy.preset("ra-n2-m9"), 32)
        >>> adapted.resolution, note.split(":")[0]
        (32, "the policy was made for 224 px images and is adapted to the pipeline's 32 px")
    """
    if policy.resolution == size and all(e.policy.resolution == size for e in policy.schedule):
        return policy, None
    adapted = policy.with_resolution(size)
    if not _translates(policy):
        return adapted, None
    was, now = translate_range_px(policy.resolution), translate_range_px(size)
    where = f" (recipe {recipe!r})" if recipe else ""
    return adapted, (
        f"the policy was made for {policy.resolution} px images and is adapted to the "
        f"pipeline's {size} px{where}: TranslateX/TranslateY move by up to {now:g} px at m = 1 "
        f"({100 * now / size:.0f} % of the image; {was:g} px, {100 * was / policy.resolution:.0f}"
        f" %, at {policy.resolution} px); give a policy with 'resolution: {size}' to silence this")


def resolve_policy(spec: "Policy | str | Path | None", resolution: int) -> Policy | None:
    """A policy given as an object, a YAML file, a preset name, or ``None`` / ``"none"``, made
    for the pipeline's image size.

    Args:
        spec: the policy, a policy file, a preset name (``ra-n2-m9``, ``rand-m9-mstd0.5``,
            ``dra-imagenet-resnet-50``) or ``None`` / ``"none"`` for no augmentation.
        resolution: the pipeline's image side. Every policy is adapted to it
            (:func:`adapt_policy`): ``ra-n2-m9`` at 32 px translates by up to 10 px, as
            RandAugment does on CIFAR, not by the 100 px of 224 px images. Where that changes a
            file's or an object's translate range, a ``UserWarning`` says so.

    Raises:
        PolicyError: the file is invalid, or the text is neither a file nor a preset (the
            message lists what it tried).

    Example:
        >>> resolve_policy("ra-n2-m9", 32).resolution, resolve_policy("none", 32)
        (32, None)
    """
    from dra_dali.policy import PolicyError

    if spec is None:
        return None
    if isinstance(spec, Policy):
        policy = spec
    elif str(spec).lower() == "none":
        return None
    elif Path(spec).exists() or Path(spec).suffix in (".yaml", ".yml"):
        policy = Policy.load(spec)
    else:
        try:
            return Policy.preset(str(spec), resolution=resolution)
        except PolicyError as exc:
            raise PolicyError(f"policy {str(spec)!r} is not a file and not a preset ({exc}); "
                              "give a policy YAML file, a preset name, or 'none'") from None
    adapted, note = adapt_policy(policy, resolution)
    if note:
        warnings.warn(note, UserWarning, stacklevel=2)
    return adapted


# ----- graph pieces ------------------------------------------------------------------------------

def _check_device(device: str) -> None:
    if device not in _DEVICES:
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")


def _reader(images: ImageList, *, shuffle: bool, seed: int, shard_id: int, num_shards: int):
    from nvidia.dali import fn

    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} is outside [0, num_shards={num_shards})")
    if len(images) < num_shards:
        raise DataError(f"{images.source}: {len(images)} images cannot be split into "
                        f"{num_shards} shards")
    # shuffle_after_epoch: a full permutation per epoch from one seed shared by all shards, so the
    # shards partition the data exactly (random_shuffle would shuffle only within a buffer). Its
    # seed is shuffle_after_epoch_seed; without it DALI uses one fixed permutation for any seed.
    shuffling = {"shuffle_after_epoch": True, "shuffle_after_epoch_seed": seed} if shuffle else {}
    # dont_use_mmap: plain reads. A file truncated while DALI reads a memory map of it kills the
    # process with SIGBUS (exit 135; measured 6 of 11 runs with files rewritten during training);
    # with plain reads it is a decoder error that the trainer names (issue 14 item 3). Mapped
    # files are also cached by path: a resume in the same process read a repaired file's old bytes.
    return fn.readers.file(files=[str(p) for p in images.paths], labels=list(images.labels),
                           shard_id=shard_id, num_shards=num_shards, pad_last_batch=True,
                           name=READER_NAME, dont_use_mmap=True, **shuffling)


def _decode(jpegs, device: str):
    from nvidia.dali import fn, types

    return fn.decoders.image(jpegs, device="mixed" if device == "gpu" else "cpu",
                             output_type=types.RGB)


def _train_crop(jpegs, recipe: PipelineRecipe, device: str):
    """Decode and randomly crop to ``resolution x resolution`` uint8 HWC."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    if recipe.crop == "random_resized":
        images = fn.decoders.image_random_crop(
            jpegs, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB,
            random_area=list(recipe.crop_scale), random_aspect_ratio=list(recipe.crop_ratio),
            num_attempts=10)
        return fn.resize(images, size=[recipe.resolution, recipe.resolution])
    if recipe.crop == "center":
        return _center(_decode(jpegs, device), recipe)
    # pad: a resolution x resolution window whose top-left corner is uniform over
    # [-pad, dim - resolution + pad] on each axis; out-of-image pixels are pad_fill.
    images = _decode(jpegs, device)
    shape = fn.cast(fn.peek_image_shape(jpegs), dtype=types.FLOAT)
    starts = []
    for axis in (0, 1):
        span = shape[axis] - (recipe.resolution - 2 * recipe.pad - 1)
        u = fn.random.uniform(range=[0.0, 1.0])
        starts.append(fn.cast(dmath.floor(u * span) - recipe.pad, dtype=types.INT32))
    start = fn.stack(*starts)
    return fn.slice(images, start=start, shape=[recipe.resolution, recipe.resolution],
                    axis_names="HW", out_of_bounds_policy="pad", fill_values=recipe.pad_fill)


def _center(images, recipe: PipelineRecipe):
    from nvidia.dali import fn

    images = fn.resize(images, resize_shorter=recipe.val_resize)
    return fn.crop(images, crop=[recipe.resolution, recipe.resolution], out_of_bounds_policy="pad")


def _normalize(images, recipe: PipelineRecipe, mirror=None):
    from nvidia.dali import fn, types

    return fn.crop_mirror_normalize(
        images, dtype=types.FLOAT16 if recipe.dtype == "float16" else types.FLOAT,
        output_layout="CHW", mean=[255 * m for m in recipe.mean],
        std=[255 * s for s in recipe.std], **({"mirror": mirror} if mirror is not None else {}))


def _labels(labels, device: str):
    return labels.gpu() if device == "gpu" else labels


def _pipeline_kwargs(recipe: PipelineRecipe, batch_size: int | None, num_threads: int | None,
                     device: str, device_id: int | None, seed: int,
                     checkpoint: str | None = None) -> dict[str, Any]:
    _check_device(device)
    if device == "gpu" and device_id is None:
        device_id = 0
    # Checkpointing is always on (DALI: no cost while no checkpoint is taken), so that a loader
    # can save its exact position at any step; ``checkpoint`` restores one.
    return {"batch_size": batch_size or recipe.batch_size,
            "num_threads": num_threads or recipe.threads,
            "device_id": device_id if device == "gpu" else None, "seed": seed,
            "enable_checkpointing": True, "checkpoint": checkpoint}


def build_train_pipeline(data: "str | Path | ImageList", policy: Policy | None = None,
                         recipe: "str | Path | PipelineRecipe" = "imagenet", *,
                         batch_size: int | None = None, device: str = "cpu",
                         device_id: int | None = None, num_threads: int | None = None,
                         seed: int = 0, shard_id: int = 0, num_shards: int = 1,
                         shuffle: bool = True, warn: bool = True, checkpoint: str | None = None,
                         cpu_kernels: str = "fused"):
    """The training pipeline: reader, decode + random crop, flip, the policy, normalise.

    Args:
        data: image folder (``root/<class>/*.jpg``), file list (``path label`` lines) or a
            scanned :class:`~dra_dali.data.ImageList`; labels follow its class order.
        policy: the augmentation policy (``None``: crop, flip and normalise only), adapted to
            the recipe's image size (:func:`adapt_policy`).
        recipe: recipe name (``imagenet``, ``cifar``, ``demo``), YAML path or object.
        batch_size: samples per batch (default: the recipe's).
        device: ``"gpu"`` (mixed decode, GPU operators; needs CUDA to build) or ``"cpu"``.
        device_id: CUDA device for ``gpu`` (default 0); ignored on ``cpu``.
        num_threads: DALI CPU threads (default: the recipe's).
        seed: one seed for the shuffle and the augmentation draws; the same seed, data and
            sharding give the same batches. Shards share the shuffle (so they partition each
            epoch) and draw augmentations from ``seed + 7919 * shard_id``.
        shard_id: this process's shard (global rank) in ``[0, num_shards)``.
        num_shards: number of shards (world size).
        shuffle: shuffle each epoch (a full permutation; the first epoch too).
        warn: emit the note of :func:`adapt_policy` as a ``UserWarning`` when the policy was
            made for another image size and adapting it changes its translate range (the
            policy is adapted to the recipe's ``size`` either way).
        checkpoint: a DALI checkpoint (``Pipeline.checkpoint()`` of a pipeline built with the
            same arguments) to continue from; every pipeline is built with
            ``enable_checkpointing=True``.
        cpu_kernels: the policy's kernels on CPU images (``augment``'s option): ``"fused"`` or
            ``"dali"`` (DALI's operators only, which a serialised pipeline needs).

    Returns:
        An unbuilt :class:`nvidia.dali.Pipeline` with outputs ``images`` (N x 3 x size x size,
        normalised float) and ``labels`` (N x 1 int32), reader named :data:`READER_NAME`
        (padded last batch: wrap it with a PARTIAL last-batch policy, as DALILoader does).

    Raises:
        DataError: the data cannot be scanned or has fewer images than shards.
        RecipeError: the recipe is invalid.
        ValueError: a bad device or shard id.

    Example:
        >>> pipe = build_train_pipeline("data/train", Policy.load("policy.yaml"), "imagenet",
        ...                             device="gpu", batch_size=128)  # doctest: +SKIP
    """
    from nvidia.dali import fn, pipeline_def

    recipe = load_recipe(recipe)
    images_list = scan_images(data)
    kwargs = _pipeline_kwargs(recipe, batch_size, num_threads, device, device_id,
                              seed + 7919 * shard_id, checkpoint)
    if policy is not None:
        policy, note = adapt_policy(policy, recipe.resolution, recipe.name)
        if note and warn:
            warnings.warn(note, UserWarning, stacklevel=2)

    @pipeline_def(enable_conditionals=policy is not None, **kwargs)
    def train_pipeline():
        jpegs, labels = _reader(images_list, shuffle=shuffle, seed=seed, shard_id=shard_id,
                                num_shards=num_shards)
        images = _train_crop(jpegs, recipe, device)
        mirror = fn.random.coin_flip(probability=0.5) if recipe.flip else None
        if policy is not None:
            if mirror is not None:
                # Flip before the policy, as the paper's transforms do (Shear is about the
                # top-left corner, so flipping afterwards would not be the same transform).
                images = fn.flip(images, horizontal=mirror)
                mirror = None
            from dra_dali.dali.compiler import augment

            images = augment(images, policy, cpu_kernels=cpu_kernels)
        if recipe.cutout and recipe.cutout_before_normalize:
            images = _apply_cutout(images, recipe, fill=0.0)          # uint8 HWC, black
        images = _normalize(images, recipe, mirror)
        if recipe.cutout and not recipe.cutout_before_normalize:
            images = _apply_cutout(images, recipe, fill=0.0)          # normalised: the mean colour
        return images, _labels(labels, device)

    return train_pipeline()


def _apply_cutout(images, recipe: PipelineRecipe, fill: float):
    from nvidia.dali import fn
    from nvidia.dali import math as dmath

    centre = fn.random.uniform(range=[0.0, float(recipe.resolution)], shape=[2])
    anchor = dmath.floor(centre) - recipe.cutout // 2
    return fn.erase(images, anchor=anchor, shape=[float(recipe.cutout)] * 2, axis_names="HW",
                    fill_value=fill)


def build_val_pipeline(data: "str | Path | ImageList",
                       recipe: "str | Path | PipelineRecipe" = "imagenet", *,
                       batch_size: int | None = None, device: str = "cpu",
                       device_id: int | None = None, num_threads: int | None = None,
                       seed: int = 0, shard_id: int = 0, num_shards: int = 1,
                       checkpoint: str | None = None):
    """The validation pipeline: reader (no shuffle), decode, resize shorter side, centre crop,
    normalise.

    Args and Returns as :func:`build_train_pipeline` (no policy, no shuffle): outputs
    ``images`` (N x 3 x size x size) and ``labels`` (N x 1 int32), reader :data:`READER_NAME`.

    Raises:
        DataError, RecipeError, ValueError: as :func:`build_train_pipeline`.

    Example:
        >>> pipe = build_val_pipeline("data/val", "imagenet", batch_size=200)  # doctest: +SKIP
    """
    from nvidia.dali import pipeline_def

    recipe = load_recipe(recipe)
    images_list = scan_images(data)
    kwargs = _pipeline_kwargs(recipe, batch_size, num_threads, device, device_id, seed, checkpoint)

    @pipeline_def(**kwargs)
    def val_pipeline():
        jpegs, labels = _reader(images_list, shuffle=False, seed=seed, shard_id=shard_id,
                                num_shards=num_shards)
        images = _center(_decode(jpegs, device), recipe)
        return _normalize(images, recipe), _labels(labels, device)

    return val_pipeline()


def build_preview_pipeline(data: "str | Path | ImageList", policy: Policy,
                           recipe: "str | Path | PipelineRecipe" = "imagenet", *,
                           images: int = 6, samples: int = 7, device: str = "cpu",
                           device_id: int | None = None, seed: int = 0):
    """A pipeline that renders the policy on a few validation-style crops, for previews.

    It reads ``images`` files spread over the classes, each ``samples`` times in a row, takes the
    validation crop (``size`` px) and applies :func:`~dra_dali.dali.augment`; one run returns
    ``originals`` and ``augmented`` (uint8 HWC, batch of ``images * samples``).

    Args:
        data: image folder, file list or :class:`~dra_dali.data.ImageList`.
        policy: the policy to render, adapted to the recipe's size (:func:`adapt_policy`).
        recipe: gives the crop size and validation resize.
        images: how many source images.
        samples: augmentations per source image.
        device, device_id, seed: as :func:`build_train_pipeline`.

    Returns:
        An unbuilt pipeline with outputs ``originals``, ``augmented``.

    Raises:
        DataError, RecipeError, ValueError: as :func:`build_train_pipeline`.
    """
    from nvidia.dali import fn, pipeline_def

    recipe = load_recipe(recipe)
    policy = adapt_policy(policy, recipe.resolution)[0]
    scanned = scan_images(data)
    picks = np.linspace(0, len(scanned) - 1, num=min(images, len(scanned))).round().astype(int)
    files = [str(scanned.paths[i]) for i in picks for _ in range(samples)]
    kwargs = _pipeline_kwargs(recipe, len(files), 2, device, device_id, seed)

    @pipeline_def(enable_conditionals=True, **kwargs)
    def preview_pipeline():
        jpegs, _ = fn.readers.file(files=files, labels=[0] * len(files), name=READER_NAME)
        originals = _center(_decode(jpegs, device), recipe)
        from dra_dali.dali.compiler import augment

        return originals, augment(originals, policy)

    return preview_pipeline()
