"""The proxy set of a search: sampling N classes x K images, decoding them up front, crop and flip.

The proxy set is small (the authors: 120 classes x 50 images on ImageNet, 4,000 CIFAR images), so
it is decoded once into a uint8 tensor of squares of side ``stored_size`` (shorter side resized,
centre square kept). The files pass the acceptance rules train applies and are decoded by the same
DALI decoder (:mod:`dra_dali.data.accept`), so a GIF renamed ``.jpg`` is refused and 16-bit or
grayscale images become the same pixels in both. Every image is checked and decoded before the
search starts, so an unusable file stops the run at once with its path. Batches are then cropped
(random-resized crop, pad-and-crop, centre or none), flipped and scaled to [0, 1] in torch before
the policy sees them.

Example:
    >>> from dra_dali.data import embedded_dataset
    >>> from dra_dali.search.config import SearchConfig
    >>> ds = embedded_dataset()
    >>> cfg = SearchConfig(data=str(ds.train), proxy_classes=4, images_per_class=6)
    >>> proxy = load_proxy(cfg)
    >>> proxy.model_half.images.shape, len(proxy.classes)
    (torch.Size([12, 3, 37, 37]), 4)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dra_dali.data import (
    DataError,
    ImageList,
    Problem,
    accept_images,
    decode_rgb,
    exclude,
    name_culprits,
    skip_or_refuse,
)
from dra_dali.search.config import SearchConfig

__all__ = ["ProxyHalf", "ProxySet", "load_proxy", "crop_flip"]


@dataclass(frozen=True)
class ProxyHalf:
    """Decoded images of one half: ``images`` uint8 ``(N, 3, S, S)``, ``labels`` int64 ``(N,)``,
    ``paths`` the source files."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class ProxySet:
    """The two halves of the proxy task, the sampled class names (label order) and the files
    left out (``skip_bad_files``; for the run directory's ``excluded_files.txt``)."""

    model_half: ProxyHalf
    policy_half: ProxyHalf
    classes: tuple[str, ...]
    excluded: tuple[Problem, ...] = ()


def _by_class(images: ImageList) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {name: [] for name in images.classes}
    for path, label in zip(images.paths, images.labels):
        out[images.classes[label]].append(path)
    return out


def _square(pixels: np.ndarray, side: int) -> np.ndarray:
    """The centre square of an RGB array, resized to ``side``."""
    im = Image.fromarray(pixels)
    w, h = im.size
    short = min(w, h)
    left, top = (w - short) // 2, (h - short) // 2
    im = im.crop((left, top, left + short, top + short))
    if short != side:
        im = im.resize((side, side), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _half(paths: list[tuple[Path, int]], side: int) -> ProxyHalf:
    # The acceptance module decodes (the files were just checked strictly; DALI's decoder, as
    # train uses).
    arrays = [_square(pixels, side) for pixels in decode_rgb([p for p, _ in paths], checked=True)]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in paths], dtype=torch.int64)
    return ProxyHalf(images, labels, tuple(str(p) for p, _ in paths))


def load_proxy(config: SearchConfig,
               excluded_before: Sequence[Problem] | None = None) -> ProxySet:
    """Sample and decode the proxy set described by ``config``.

    Classes (``proxy_classes`` of them, or all) and images (``images_per_class``, or all) are
    drawn with ``config.seed``; labels are renumbered 0..N-1 in the order of the sampled class
    names (sorted). Every file is header-checked and every sampled file strictly checked
    before decoding. With ``skip_bad_files`` an unusable file is excluded instead of refused
    (a sampled one: the sample is drawn again, with the same seed, without it), so the proxy
    depends only on the files left and the seed.

    Args:
        config: the search configuration (``data``, ``val_data``, sizes, ``seed``,
            ``skip_bad_files``).
        excluded_before: on resume, the files the run excluded when it started
            (:func:`dra_dali.data.read_excluded`): the same proxy is drawn, and any other
            unusable file is refused.

    Returns:
        The :class:`ProxySet` (``excluded``: the files left out).

    Raises:
        DataError: ``data`` missing or unreadable; fewer classes or images than asked for;
            ``val_data`` classes differ from ``data``'s; an unusable image (path named; without
            ``skip_bad_files`` or on a resume).
    """
    if not config.data:
        raise DataError("data: no training data given (an image folder or a file list)")
    sets = [accept_images(source, skip_bad_files=config.skip_bad_files,
                          excluded_before=excluded_before)
            for source in (config.data, config.val_data) if source]
    train, val = sets[0].images, (sets[1].images if len(sets) > 1 else None)
    _check_same_classes(config, train, val)
    excluded = tuple(dict.fromkeys(p for accepted in sets for p in accepted.excluded))
    while True:
        model_items, policy_items, classes = _sample(config, train, val)
        bad = name_culprits([p for p, _ in model_items + policy_items])
        if not bad:
            break
        skip_or_refuse(config.data, bad, skip_bad_files=config.skip_bad_files,
                       resumed=excluded_before is not None)
        excluded = tuple(dict.fromkeys(excluded + tuple(bad)))
        train = exclude(train, [p for p in bad if p.path in set(train.paths)])
        val = exclude(val, [p for p in bad if p.path in set(val.paths)]) if val else None
    side = config.stored_size
    return ProxySet(_half(model_items, side), _half(policy_items, side), classes, excluded)


def _check_same_classes(config: SearchConfig, train: ImageList, val: ImageList | None) -> None:
    if val is not None and tuple(val.classes) != tuple(train.classes):
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DataError(f"val_data {config.val_data} has different classes from data "
                        f"{config.data}: only in data: {only_train[:10] or 'none'}, only in "
                        f"val_data: {only_val[:10] or 'none'} "
                        f"({len(train.classes)} vs {len(val.classes)} classes)")


_Items = list[tuple[Path, int]]


def _sample(config: SearchConfig, train: ImageList,
            val: ImageList | None) -> tuple[_Items, _Items, tuple[str, ...]]:
    """The proxy's files: ``(model half, policy half, sampled class names)``, drawn from
    ``config.seed`` alone (the same files give the same sample)."""
    rng = np.random.default_rng(config.seed)
    n_classes = config.proxy_classes or len(train.classes)
    if n_classes > len(train.classes):
        raise DataError(f"{config.data}: the proxy asks for {n_classes} classes (proxy_classes) "
                        f"but the data has only {len(train.classes)}")
    if n_classes < 2:
        raise DataError(f"{config.data}: a classification proxy needs at least 2 classes, "
                        f"got {n_classes}")
    picked = sorted(rng.choice(len(train.classes), size=n_classes, replace=False).tolist())
    classes = tuple(train.classes[i] for i in picked)
    train_by, val_by = _by_class(train), _by_class(val) if val is not None else None
    model_items: _Items = []
    policy_items: _Items = []
    for label, name in enumerate(classes):
        files = train_by[name]
        if val_by is None:
            model, policy = _split_one(config, name, files, rng)
        else:
            model, policy = _draw_two(config, name, files, val_by[name], rng)
        model_items += [(p, label) for p in model]
        policy_items += [(p, label) for p in policy]
    return model_items, policy_items, classes


def _split_one(config: SearchConfig, name: str, files: list[Path],
               rng: np.random.Generator) -> tuple[list[Path], list[Path]]:
    """Without ``val_data``: ``images_per_class`` files of the class, split into the halves."""
    k = config.images_per_class or len(files)
    if k > len(files) or k < 2:
        raise DataError(f"{config.data}: class {name!r} has {len(files)} images, the "
                        f"proxy asks for {k} per class (images_per_class; at least 2)")
    chosen = [files[i] for i in rng.choice(len(files), size=k, replace=False)]
    n_policy = _policy_share(config, k)
    return chosen[n_policy:], chosen[:n_policy]


def _draw_two(config: SearchConfig, name: str, files: list[Path], vfiles: list[Path],
              rng: np.random.Generator) -> tuple[list[Path], list[Path]]:
    """With ``val_data``: the model half from ``data``, the policy half from ``val_data``."""
    k = config.images_per_class
    n_policy = _policy_share(config, k) if k else len(vfiles)
    n_model = (k - n_policy) if k else len(files)
    if n_model > len(files) or n_model < 1:
        raise DataError(f"{config.data}: class {name!r} has {len(files)} images, the "
                        f"model half asks for {n_model} (images_per_class minus the "
                        f"policy half)")
    if n_policy > len(vfiles) or n_policy < 1:
        raise DataError(f"{config.val_data}: class {name!r} has {len(vfiles)} images, "
                        f"the policy half asks for {n_policy} (val_images_per_class or "
                        f"images_per_class // 2)")
    model = [files[i] for i in rng.choice(len(files), size=n_model, replace=False)]
    policy = [vfiles[i] for i in rng.choice(len(vfiles), size=n_policy, replace=False)]
    return model, policy


def _policy_share(config: SearchConfig, k: int) -> int:
    """Images per class of the second half: ``val_images_per_class``, else ``k // 2``."""
    if config.val_images_per_class is None:
        return k // 2
    if config.val_images_per_class >= k:
        raise DataError(f"val_images_per_class ({config.val_images_per_class}) must be smaller "
                        f"than images_per_class ({k}): the model half needs images too")
    return config.val_images_per_class


def crop_flip(images: torch.Tensor, config: SearchConfig,
              generator: torch.Generator | None = None, *,
              policy_half: bool = False) -> torch.Tensor:
    """Crop, flip and scale a uint8 batch to float [0, 1] at ``config.resolution``.

    Args:
        images: ``(B, 3, S, S)`` uint8 proxy images.
        config: ``crop`` (``random_resized``/``pad``/``center``/``none``), ``crop_scale``, ``pad``,
            ``flip``, ``resolution``, and ``policy_crop`` for the policy half.
        generator: random generator for the crop boxes and flips.
        policy_half: crop as ``policy_crop`` says (``same``: like the model half; ``center`` or
            ``none``: that crop, no flip).

    Returns:
        ``(B, 3, R, R)`` float images in [0, 1].
    """
    crop, flip = config.crop, config.flip
    if policy_half and config.policy_crop != "same":
        crop, flip = config.policy_crop, False
    x = images.float() / 255.0
    r = config.resolution
    if crop == "random_resized":
        x = _random_resized_crop(x, r, config.crop_scale, generator)
    elif crop == "center":
        # Resize to 8/7 of the resolution (256 for 224), keep the central square.
        x = _resize(x, round(r * 8 / 7))
        top = (x.shape[2] - r) // 2
        x = x[:, :, top:top + r, top:top + r]
    else:  # pad or none: resize to the resolution first
        x = _resize(x, r)
        if crop == "pad":
            x = _pad_crop(x, config.pad, generator)
    if flip:
        b = x.shape[0]
        flips = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flips.view(-1, 1, 1, 1), x.flip(3), x)
    return x.clamp(0.0, 1.0)


def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    if x.shape[2:] == (side, side):
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                         antialias=True)


def _random_resized_crop(x: torch.Tensor, r: int, crop_scale: tuple[float, float],
                         generator: torch.Generator | None) -> torch.Tensor:
    """torchvision's RandomResizedCrop: area fraction in ``crop_scale``, aspect in [3/4, 4/3]
    (log-uniform); a box that does not fit is shrunk to the image instead of retried."""
    b, _, h, w = x.shape
    lo, hi = crop_scale
    area = (lo + (hi - lo) * torch.rand(b, generator=generator)) * h * w
    log_ratio = (torch.rand(b, generator=generator) * 2 - 1) * np.log(4 / 3)
    ratio = torch.exp(log_ratio)
    cw = torch.sqrt(area * ratio).clamp(1, w).round()
    ch = torch.sqrt(area / ratio).clamp(1, h).round()
    x0 = torch.floor(torch.rand(b, generator=generator) * (w - cw + 1))
    y0 = torch.floor(torch.rand(b, generator=generator) * (h - ch + 1))
    x1, y1 = x0 + cw - 1, y0 + ch - 1
    boxes = torch.stack([torch.stack([x0, y0], 1), torch.stack([x1, y0], 1),
                         torch.stack([x1, y1], 1), torch.stack([x0, y1], 1)], 1)
    return kornia.geometry.transform.crop_and_resize(x, boxes.to(x), (r, r), align_corners=True)


def _pad_crop(x: torch.Tensor, p: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random window of side ``R`` from the image zero-padded by ``p`` pixels."""
    b, _, r, _ = x.shape
    padded = F.pad(x, (p, p, p, p))
    oy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(r)[None]).view(b, 1, r, 1)
    cols = (ox[:, None] + torch.arange(r)[None]).view(b, 1, 1, r)
    return padded.gather(2, rows.expand(b, 3, r, r + 2 * p)).gather(3, cols.expand(b, 3, r, r))
