"""Scanning image folders and file lists into (path, label) lists; errors name the culprit.

Two layouts are accepted, as DALI's ``fn.readers.file`` does:

* an image folder: ``root/<class>/<image>``; classes are the sub-folders in sorted order and the
  label is the class index;
* a file list: a text file whose lines are ``relative/path label`` (paths relative to the list's
  folder), blank lines and ``#`` comments ignored. Labels are bounded (by ``num_classes`` when
  given, else by :data:`MAX_CLASSES`) and paths stay under the list's folder (no absolute paths,
  no ``..``) unless ``allow_absolute=True``: a crafted list cannot make a scan allocate gigabytes
  or read files anywhere on the machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dra_dali.errors import DraDaliError

__all__ = ["DataError", "ImageList", "IMAGE_EXTENSIONS", "MAX_CLASSES", "scan_images"]

#: Largest class count a file list may imply (labels 0 .. MAX_CLASSES - 1) when the caller does
#: not give the class count; ImageNet-21k has 21,841 classes.
MAX_CLASSES = 100_000

#: File extensions treated as images (what DALI's image decoders read).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp",
                              ".pnm", ".ppm", ".pgm", ".pbm", ".jp2"})


class DataError(DraDaliError):
    """Input data is unusable; the message names the path and what is wrong."""


@dataclass(frozen=True)
class ImageList:
    """Images and their integer labels.

    Attributes:
        root: folder the paths are relative to.
        files: image paths relative to ``root``.
        labels: integer label per file.
        classes: class names by label (for file lists, the label numbers as strings).
        source: the folder or list file that was scanned.
    """

    root: Path
    files: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    source: Path

    def __len__(self) -> int:
        return len(self.files)

    @property
    def paths(self) -> list[Path]:
        """Absolute paths of the images."""
        return [self.root / f for f in self.files]

    def without(self, paths: "set[Path] | frozenset[Path]") -> "ImageList":
        """The same list without the files at ``paths`` (classes unchanged)."""
        keep = [i for i, p in enumerate(self.paths) if p not in paths]
        return ImageList(root=self.root, files=tuple(self.files[i] for i in keep),
                         labels=tuple(self.labels[i] for i in keep), classes=self.classes,
                         source=self.source)

    def file_list_text(self) -> str:
        """The list in DALI's ``file_list`` format (``path label`` per line, relative to root)."""
        return "".join(f"{f} {label}\n" for f, label in zip(self.files, self.labels))


def _scan_folder(root: Path) -> ImageList:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders; expected an image folder laid out as "
                        f"{root}/<class>/<image>.jpg (or pass a file list of 'path label' lines)")
    files, labels = [], []
    for label, folder in enumerate(class_dirs):
        images = sorted(p for p in folder.rglob("*")
                        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise DataError(f"{folder}: class {folder.name!r} holds no image files "
                            f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        files += [str(p.relative_to(root)) for p in images]
        labels += [label] * len(images)
    return ImageList(root=root, files=tuple(files), labels=tuple(labels),
                     classes=tuple(p.name for p in class_dirs), source=root)


def _parse_line(path: Path, number: int, line: str, limit: int,
                allow_absolute: bool) -> tuple[str, int]:
    relative, _, label = line.rpartition(" ")
    if not relative.strip():
        raise DataError(f"{path}:{number}: expected 'relative/path label', got {line[:200]!r}")
    try:
        value = int(label)
    except ValueError:
        raise DataError(f"{path}:{number}: label {label[:40]!r} is not an integer") from None
    if value < 0:
        raise DataError(f"{path}:{number}: label {value} is negative")
    if value >= limit:
        raise DataError(f"{path}:{number}: label {value} is out of range (labels are 0 .. "
                        f"{limit - 1} for {limit} classes)")
    relative = relative.strip()
    escapes = os.path.isabs(relative) or os.path.normpath(relative).split(os.sep)[0] == ".."
    if escapes and not allow_absolute:
        raise DataError(f"{path}:{number}: image path {relative[:200]!r} is outside the list's "
                        f"folder {path.parent}; list paths relative to it (absolute paths and "
                        "'..' are refused unless allow_absolute is set)")
    return relative, value


def _scan_list(path: Path, num_classes: int | None, allow_absolute: bool) -> ImageList:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the file list ({exc})") from None
    root = path.parent
    limit = num_classes if num_classes is not None else MAX_CLASSES
    files, labels = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        relative, value = _parse_line(path, number, line, limit, allow_absolute)
        if not (root / relative).is_file():
            raise DataError(f"{path}:{number}: image {root / relative} does not exist")
        files.append(relative)
        labels.append(value)
    if not files:
        raise DataError(f"{path}: the file list names no images")
    count = num_classes if num_classes is not None else max(labels) + 1
    return ImageList(root=root, files=tuple(files), labels=tuple(labels),
                     classes=tuple(str(i) for i in range(count)), source=path)


def scan_images(source: "str | Path | ImageList", *, num_classes: int | None = None,
                allow_absolute: bool = False) -> ImageList:
    """Scan an image folder or a file list.

    Args:
        source: a folder with one sub-folder per class, or a text file of ``path label`` lines;
            an :class:`ImageList` (already scanned) is returned as is.
        num_classes: for a file list, the class count: labels must be below it (default: the
            largest label + 1, at most :data:`MAX_CLASSES`).
        allow_absolute: for a file list, accept absolute paths and paths with ``..`` that leave
            the list's folder.

    Returns:
        An :class:`ImageList`, files in sorted order within each class.

    Raises:
        DataError: missing path, no classes, an empty class, an unreadable list, a non-integer,
            negative or out-of-range label, a path outside the list's folder, a listed path that
            does not exist; the message names the culprit (file and line).

    Example:
        >>> from dra_dali.data import embedded_dataset
        >>> images = scan_images(embedded_dataset().val)
        >>> len(images), images.classes[:2]
        (500, ('astronaut', 'cat'))
    """
    if isinstance(source, ImageList):
        return source
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such folder or file list")
    if path.is_dir():
        return _scan_folder(path)
    return _scan_list(path, num_classes, allow_absolute)
