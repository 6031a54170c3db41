"""Embedded dataset and image-folder / file-list scanning."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from dra_dali.data import DataError, embedded_dataset, scan_images


def test_embedded_dataset_layout(embedded):
    train, val = scan_images(embedded.train), scan_images(embedded.val)
    assert len(train) == 2000 and len(val) == 500
    assert train.classes == val.classes == embedded.classes
    assert np.bincount(train.labels).tolist() == [200] * 10
    with Image.open(train.paths[0]) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)


def test_embedded_dataset_is_deterministic(tmp_path, embedded):
    rebuilt = embedded_dataset(tmp_path)
    for split in ("train", "val"):
        a = sorted((embedded.root / split).rglob("*.jpg"))
        b = sorted((rebuilt.root / split).rglob("*.jpg"))
        assert [p.relative_to(embedded.root) for p in a] == [p.relative_to(rebuilt.root) for p in b]
    sample = sorted((embedded.root / "val").rglob("*.jpg"))[::37]
    for path in sample:
        twin = rebuilt.root / path.relative_to(embedded.root)
        digest = hashlib.sha256(path.read_bytes()).digest()
        assert digest == hashlib.sha256(twin.read_bytes()).digest()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".embedded-")]


def test_embedded_classes_are_distinct_photos(embedded):
    """Mean colours differ between classes: the classes come from different photos."""
    images = scan_images(embedded.val)
    means = np.zeros((10, 3))
    for path, label in zip(images.paths, images.labels):
        with Image.open(path) as im:
            means[label] += np.asarray(im, dtype=np.float64).mean(axis=(0, 1)) / 50
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(10, dtype=bool)].min() > 3.0


def _image(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)


def test_scan_folder_labels_follow_sorted_classes(tmp_path):
    for cls in ("zebra", "ant"):
        for i in range(2):
            _image(tmp_path / cls / f"{i}.jpg")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    images = scan_images(tmp_path)
    assert images.classes == ("ant", "zebra")
    assert images.files == ("ant/0.jpg", "ant/1.jpg", "zebra/0.jpg", "zebra/1.jpg")
    assert images.labels == (0, 0, 1, 1)
    assert images.file_list_text().splitlines()[2] == "zebra/0.jpg 1"
    # an already scanned list is returned as is, not scanned again
    (tmp_path / "zebra" / "2.jpg").write_bytes(b"")
    assert scan_images(images) is images


def test_scan_file_list(tmp_path):
    _image(tmp_path / "a" / "x.jpg")
    _image(tmp_path / "b" / "y y.png")
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\na/x.jpg 3\n\nb/y y.png 0\n")
    images = scan_images(listing)
    assert images.files == ("a/x.jpg", "b/y y.png") and images.labels == (3, 0)
    assert images.classes == ("0", "1", "2", "3")
    assert images.paths[1] == tmp_path / "b" / "y y.png"


@pytest.mark.parametrize("content,message", [
    ("a/x.jpg cat\n", r"list.txt:1: label 'cat' is not an integer"),
    ("a/x.jpg 1\nmissing.jpg 2\n", r"list.txt:2: image .*missing.jpg does not exist"),
    ("a/x.jpg -1\n", "label -1 is negative"),
    ("justonefield\n", "expected 'relative/path label'"),
    ("# nothing\n", "names no images"),
])
def test_bad_file_lists_name_the_line(tmp_path, content, message):
    _image(tmp_path / "a" / "x.jpg")
    (tmp_path / "list.txt").write_text(content)
    with pytest.raises(DataError, match=message):
        scan_images(tmp_path / "list.txt")


def test_bad_folders_name_the_culprit(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        scan_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_images(tmp_path / "empty")
    _image(tmp_path / "data" / "cat" / "1.jpg")
    (tmp_path / "data" / "dog").mkdir()
    with pytest.raises(DataError, match=r"dog: class 'dog' holds no image files"):
        scan_images(tmp_path / "data")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="cannot read the file list"):
        scan_images(tmp_path / "binary.txt")
