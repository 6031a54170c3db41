"""The embedded demo dataset: real photos that ship inside installed packages, cut into a small
image-classification set (one class per source photo), materialised as JPEG image folders.

Nothing is downloaded: the photos come from the scikit-image and scikit-learn wheels (the ``demo``
extra). The set is deterministic (fixed seed, fixed crop geometry, fixed JPEG quality) and cached.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from dra_dali.data.scan import DataError

__all__ = ["EmbeddedDataset", "embedded_dataset", "EMBEDDED_CLASSES", "default_cache_dir"]

#: Source photos, one class each: (class name, package, file inside the package's data folder).
EMBEDDED_CLASSES: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "skimage", "data/astronaut.png"),
    ("cat", "skimage", "data/chelsea.png"),
    ("coffee", "skimage", "data/coffee.png"),
    ("galaxy", "skimage", "data/hubble_deep_field.jpg"),
    ("tissue", "skimage", "data/ihc.png"),
    ("motorcycle", "skimage", "data/motorcycle_left.png"),
    ("retina", "skimage", "data/retina.jpg"),
    ("rocket", "skimage", "data/rocket.jpg"),
    ("palace", "sklearn", "datasets/images/china.jpg"),
    ("flower", "sklearn", "datasets/images/flower.jpg"),
)
_VERSION = 2
_SIDE = 64            # stored image side (pixels); pipelines crop/resize from here
_TRAIN_PER_CLASS = 200
_VAL_PER_CLASS = 50
_SEED = 20231
_QUALITY = 90
_TRAIN_FRACTION = 0.7


@dataclass(frozen=True)
class EmbeddedDataset:
    """Paths of the materialised embedded dataset.

    Attributes:
        root: the dataset directory.
        train: image folder (``train/<class>/*.jpg``).
        val: image folder (``val/<class>/*.jpg``).
        classes: class names in label order (sorted, as image-folder scanning orders them).
    """

    root: Path
    train: Path
    val: Path
    classes: tuple[str, ...]


def default_cache_dir() -> Path:
    """``$DRA_DALI_CACHE`` if set, else ``$XDG_CACHE_HOME/dra-dali`` (``~/.cache/dra-dali``)."""
    if os.environ.get("DRA_DALI_CACHE"):
        return Path(os.environ["DRA_DALI_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dra-dali"


def _load_photo(package: str, relative: str) -> np.ndarray:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the embedded dataset needs the {package!r} package for its photos; "
            "install the demo extra: pip install 'dra-dali[demo]'")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise RuntimeError(f"photo {path} is missing from the installed {package!r} package")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _split(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The photo cut across its longer side: the first 70 % for training, the rest for validation,
    so validation crops show parts of the scene the model never saw (a real generalisation gap)."""
    h, w = photo.shape[:2]
    if w >= h:
        cut = int(w * _TRAIN_FRACTION)
        return photo[:, :cut], photo[:, cut:]
    cut = int(h * _TRAIN_FRACTION)
    return photo[:cut], photo[cut:]


def _crops(region: np.ndarray, count: int, short: int,
           rng: np.random.Generator) -> list[Image.Image]:
    """Random square crops of 12-28 % of the whole photo's shorter side, random flip."""
    h, w = region.shape[:2]
    out = []
    for _ in range(count):
        side = min(int(short * rng.uniform(0.12, 0.28)), h, w)
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(region[y:y + side, x:x + side]).resize((_SIDE, _SIDE),
                                                                     Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(crop)
    return out


def _build(root: Path) -> None:
    rng = np.random.default_rng(_SEED)
    for name, package, relative in EMBEDDED_CLASSES:
        photo = _load_photo(package, relative)
        train_region, val_region = _split(photo)
        short = min(photo.shape[:2])
        for split, items in (("train", _crops(train_region, _TRAIN_PER_CLASS, short, rng)),
                             ("val", _crops(val_region, _VAL_PER_CLASS, short, rng))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, crop in enumerate(items):
                crop.save(folder / f"{name}_{i:04d}.jpg", quality=_QUALITY)
    meta = {"version": _VERSION, "classes": [c[0] for c in EMBEDDED_CLASSES], "side": _SIDE,
            "train_per_class": _TRAIN_PER_CLASS, "val_per_class": _VAL_PER_CLASS}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))


def embedded_dataset(cache_dir: str | Path | None = None) -> EmbeddedDataset:
    """Materialise (once) and return the embedded demo dataset.

    Ten classes (one per photo shipped with scikit-image / scikit-learn), 200 training and 50
    validation JPEGs of 64 x 64 pixels per class: 2,500 images, built in a few seconds and
    cached. Built into a temporary folder and renamed into place, so a half-built set is never
    used.

    Args:
        cache_dir: where to cache it (default :func:`default_cache_dir`).

    Returns:
        An :class:`EmbeddedDataset` with the train and val image folders.

    A stale entry (a dangling symlink, a folder left without ``dataset.json``) is replaced.

    Raises:
        RuntimeError: if scikit-image or scikit-learn (the ``demo`` extra) is not installed.
        DataError: the cache folder is not writable (one line; names it).

    Example:
        >>> ds = embedded_dataset()
        >>> len(ds.classes), sorted(p.name for p in ds.root.iterdir())
        (10, ['dataset.json', 'train', 'val'])
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / f"embedded-v{_VERSION}"
    classes = tuple(sorted(c[0] for c in EMBEDDED_CLASSES))
    materialise_cached(cache, root, _build, "the embedded dataset")
    return EmbeddedDataset(root=root, train=root / "train", val=root / "val", classes=classes)


def _remove_stale(root: Path) -> None:
    """Remove a cache entry without ``dataset.json``: a symlink (dangling or not; its target is
    never touched) or a partial folder (renamed aside first, so a concurrent builder never sees
    it half-deleted)."""
    if root.is_symlink():
        root.unlink(missing_ok=True)
    elif root.exists():
        aside = root.with_name(f".stale-{root.name}-{os.getpid()}")
        try:
            root.rename(aside)
        except FileNotFoundError:  # another process removed it first
            return
        shutil.rmtree(aside, ignore_errors=True)


def materialise_cached(cache: Path, root: Path, build: Callable[[Path], None],
                       what: str) -> None:
    """Build a cached dataset at ``root`` with ``build(folder)`` unless ``root/dataset.json``
    exists (shared by the embedded and the digits datasets)."""
    if (root / "dataset.json").is_file():
        return
    try:
        _materialise(cache, root, build)
    except OSError as exc:
        raise DataError(f"{cache}: cannot build {what} there ({exc.strerror or exc}); "
                        "set DRA_DALI_CACHE to a writable folder") from None


def _materialise(cache: Path, root: Path, build: Callable[[Path], None]) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    tmp = Path(tempfile.mkdtemp(prefix=".embedded-", dir=cache))
    try:
        build(tmp)
        try:
            tmp.rename(root)
        except OSError:  # another process finished first; use its copy
            if not (root / "dataset.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
