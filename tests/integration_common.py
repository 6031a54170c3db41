"""Shared pieces of the trainer integration tests (timm, Lightning, Accelerate): the data, a
small CNN, and the coverage bookkeeping.

Training labels are *sample indices* (every training image is its own label) so that a test can
tell which images an epoch delivered; the user code of each trainer (the LightningModule, the
Accelerate loop, the timm loss) maps an index to its class with :data:`CLASS_OF` before the loss,
which is the only concession to the bookkeeping. Validation uses the class labels as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from dra_dali import Policy
from dra_dali.data import ImageList, scan_images
from dra_dali.policy import Layer

PER_CLASS = 40          # 10 classes x 40 = 400 training images
BATCH = 32              # 400 / 32: 12 full batches and a partial one of 16


def indexed_train(embedded) -> tuple[ImageList, torch.Tensor]:
    """``PER_CLASS`` training images per class, labelled by their index; and index -> class."""
    full = scan_images(embedded.train)
    keep = [i for i, label in enumerate(full.labels) if i - full.labels.index(label) < PER_CLASS]
    files = tuple(full.files[i] for i in keep)
    images = ImageList(root=full.root, files=files, labels=tuple(range(len(files))),
                       classes=tuple(str(i) for i in range(len(files))), source=full.source)
    return images, torch.tensor([full.labels[i] for i in keep])


def small_policy() -> Policy:
    """Three operators at 32 px: a policy graph that builds in about a second."""
    layer = Layer(logits=(0.0, 0.5, -0.5), mean=(0.3, 0.5, 0.0), std=(0.1, 0.1, 0.0))
    return Policy(ops=("Rotate", "Color", "Invert"), layers=(layer, layer), resolution=32)


def small_cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, num_classes))


def assert_each_sample_once(seen: dict[int, list[int]], n: int, epochs: int,
                            drop_last: bool) -> None:
    """Every epoch delivered distinct samples: all ``n`` of them, or with ``drop_last`` all but
    the remainder ``n % BATCH``, and not the same order twice."""
    assert sorted(seen) == list(range(epochs)), sorted(seen)
    for epoch, ids in seen.items():
        assert len(ids) == len(set(ids)), f"epoch {epoch}: a sample came twice"
        expected = n - n % BATCH if drop_last else n
        assert len(ids) == expected and set(ids) <= set(range(n)), (epoch, len(ids))
    orders = [tuple(ids) for ids in seen.values()]
    assert len(set(orders)) == len(orders), "two epochs had the same order"
