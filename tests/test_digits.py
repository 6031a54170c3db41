"""The digits proxy dataset (scikit-learn's bundled 8 x 8 digits at 32 px): layout, classes,
content and determinism."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from dra_dali.data import digits_dataset, scan_images


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digits_dataset(tmp_path_factory.mktemp("digits-a"))


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_digits_layout_and_classes(digits):
    train, val = scan_images(digits.train), scan_images(digits.val)
    assert digits.classes == tuple("0123456789") == train.classes == val.classes
    assert np.bincount(train.labels).tolist() == [140] * 10
    assert len(train) + len(val) == 1797 and np.bincount(val.labels).min() >= 34
    with Image.open(train.paths[0]) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)


def test_digits_content_is_the_bundled_digit(digits):
    from sklearn.datasets import load_digits

    source = load_digits()
    first_zero = source.images[source.target == 0][0]
    with Image.open(digits.train / "0" / "0_0000.png") as im:
        pixels = np.asarray(im).astype(float)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
    small = np.asarray(Image.fromarray(pixels[..., 0].astype(np.uint8)).resize((8, 8),
                                                                               Image.BOX))
    assert np.abs(small / 255.0 - first_zero / 16.0).mean() < 0.08
    # Orientation-sensitive: a quarter turn changes the image (a 0 is taller than wide).
    assert np.abs(np.rot90(pixels[..., 0]) - pixels[..., 0]).mean() > 20


def test_digits_dataset_is_deterministic_and_cached(digits, tmp_path):
    rebuilt = digits_dataset(tmp_path)
    assert _digests(rebuilt.root) == _digests(digits.root)
    marker = rebuilt.root / "dataset.json"
    stamp = marker.stat().st_mtime_ns
    assert digits_dataset(tmp_path).root == rebuilt.root and marker.stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".embedded-")]
