"""An orientation-sensitive proxy dataset: scikit-learn's bundled 8 x 8 digits (no download),
upscaled to 32 x 32 RGB PNGs in image folders (one sub-folder per digit).

Unlike the embedded photo crops (textures a small model recognises at any rotation), a digit
rotated by 90 degrees or inverted is a different-looking image, so the sanity protocol
(``benchmarks/sanity.py --data digits``) can tell whether a search finds a geometric T.
Deterministic (the bundled order, a fixed split, lossless PNG) and cached like the embedded set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dra_dali.data.embedded import EmbeddedDataset, default_cache_dir, materialise_cached

__all__ = ["digits_dataset", "DIGITS_SIDE"]

_VERSION = 1
DIGITS_SIDE = 32      # stored image side (pixels)
_TRAIN_PER_CLASS = 140  # the rest of each class (34 to 43 images) goes to val


def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (n, 8, 8), labels)`` from the scikit-learn wheel."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RuntimeError("the digits dataset needs scikit-learn; install the demo extra: "
                           "pip install 'dra-dali[demo]'") from None
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target


def _build(root: Path) -> None:
    images, labels = _digit_images()
    for digit in range(10):
        for i, image in enumerate(images[labels == digit]):
            split = "train" if i < _TRAIN_PER_CLASS else "val"
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            big = Image.fromarray(image).resize((DIGITS_SIDE, DIGITS_SIDE), Image.BILINEAR)
            big.convert("RGB").save(folder / f"{digit}_{i:04d}.png")
    (root / "dataset.json").write_text(
        f'{{"version": {_VERSION}, "side": {DIGITS_SIDE}, '
        f'"train_per_class": {_TRAIN_PER_CLASS}}}\n')


def digits_dataset(cache_dir: str | Path | None = None) -> EmbeddedDataset:
    """Materialise (once) and return the digits dataset: classes ``"0"`` to ``"9"``, 140
    training and 34 to 43 validation PNGs (32 x 32 RGB, white digit on black) per class.

    Args:
        cache_dir: where to cache it (default :func:`default_cache_dir`).

    Raises:
        RuntimeError: scikit-learn is not installed.
        DataError: the cache folder is not writable (one line; names it).

    Example:
        >>> ds = digits_dataset()
        >>> ds.classes[:3], sorted(p.name for p in ds.root.iterdir())
        (('0', '1', '2'), ['dataset.json', 'train', 'val'])
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / f"digits-v{_VERSION}"
    materialise_cached(cache, root, _build, "the digits dataset")
    return EmbeddedDataset(root=root, train=root / "train", val=root / "val",
                           classes=tuple(str(d) for d in range(10)))
