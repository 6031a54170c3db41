"""Which image files a run may use, and how they become pixels: one module for search and train.

* :func:`accept_images` - scan a folder or file list and apply the acceptance rules: files DALI
  cannot decode (:data:`~dra_dali.data.checks.BLOCKING`: empty, truncated, corrupt, not an image,
  GIF, 12-bit JPEG, huge) are refused with every path named, or, with ``skip_bad_files``,
  excluded and listed (:meth:`Accepted.excluded_text`, written to ``excluded_files.txt`` in the
  run directory); files DALI reads with a caveat (a PNG renamed ``.jpg``, CMYK, 16-bit) are
  warned about. It also records each accepted file's size and modification time. A resumed run
  passes the list it wrote (:func:`read_excluded`) as ``excluded_before``: it trains on the same
  files.
* :func:`recheck_changed` - at each epoch start: a ``stat`` pass, and a full (strict) check of
  the files replaced since they were accepted, so a swapped file is named before DALI reads it.
* :func:`name_culprits` - after a decoder failure: re-check a batch's files and name the bad ones.
* :func:`decode_rgb` - the pixels: DALI's CPU decoder, the one train's pipeline uses, so
  grayscale (replicated), 16-bit (scaled as ``round(v / 257)``), palette, CMYK and RGBA (alpha
  dropped) images become the same RGB bytes in search as in train.

Example:
    >>> from dra_dali.data import embedded_dataset
    >>> accepted = accept_images(embedded_dataset().val)
    >>> len(accepted.images), accepted.excluded
    (500, ())
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from dra_dali.data.checks import BLOCKING, Problem, check_files
from dra_dali.data.scan import DataError, ImageList, scan_images

__all__ = ["Accepted", "AUTO_DECODE_LIMIT", "EXCLUDED_FILE", "FileGuard", "accept_images",
           "check_headers", "exclude", "excluded_text", "read_excluded", "refusal",
           "skip_or_refuse", "recheck_changed", "name_culprits", "decode_rgb", "file_stamps"]

#: Where a run lists the files ``skip_bad_files`` excluded (one per line: path, kind, reason).
EXCLUDED_FILE = "excluded_files.txt"
#: ``decode="auto"`` decodes every file of sets up to this size (a strict decode of a small JPEG
#: takes well under a millisecond), and checks only headers of larger ones.
AUTO_DECODE_LIMIT = 20_000
_SHOWN = 20


def file_stamps(paths: Sequence[Path]) -> dict[Path, tuple[int, int]]:
    """``{path: (size, mtime_ns)}``; a missing file gets ``(-1, -1)``."""
    stamps = {}
    for path in paths:
        try:
            info = os.stat(path)
            stamps[path] = (info.st_size, info.st_mtime_ns)
        except OSError:
            stamps[path] = (-1, -1)
    return stamps


@dataclass(frozen=True)
class Accepted:
    """The outcome of :func:`accept_images`.

    Attributes:
        images: the files to use (without the excluded ones).
        excluded: the findings of the files left out (``skip_bad_files``); empty otherwise.
        stamps: ``{path: (size, mtime_ns)}`` of the accepted files when they were checked.
    """

    images: ImageList
    excluded: tuple[Problem, ...] = ()
    stamps: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def excluded_text(self) -> str:
        """The excluded files, one ``path: kind: reason`` line each (``excluded_files.txt``)."""
        return excluded_text(self.excluded)


def excluded_text(problems: Sequence[Problem]) -> str:
    """The content of ``excluded_files.txt``: one ``path: kind: reason`` line per file
    (:func:`read_excluded` reads it back)."""
    return "".join(f"{p}\n" for p in problems)


def _listing(problems: Sequence[Problem]) -> str:
    shown = "\n  ".join(str(p) for p in problems[:_SHOWN])
    more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return f"\n  {shown}{more}"


def refusal(source: "Path | str", problems: Sequence[Problem]) -> DataError:
    """The error for unusable files found before a run: every path named (the first 20 in the
    message), and the two ways on (fix them, or ``skip_bad_files``)."""
    return DataError(f"{source}: {len(problems)} unusable image file(s):{_listing(problems)}\n"
                     f"fix or remove them, or skip them (skip_bad_files; the skipped files are "
                     f"listed in the run directory); `dra-dali check-data {source}` checks all")


def skip_or_refuse(source: "Path | str", problems: Sequence[Problem], *, skip_bad_files: bool,
                   resumed: bool = False) -> None:
    """What a run does with unusable files it found: a resumed run refuses them (it continues on
    the files it started with), a run without ``skip_bad_files`` refuses them
    (:func:`refusal`), and one with it warns that it skips them.

    Raises:
        DataError: the files are refused (every path named, the first 20 in the message).
    """
    if resumed:
        raise DataError(f"{source}: {len(problems)} file(s) unusable now that the run did not "
                        f"exclude when it started:{_listing(problems)}\na resumed run trains on "
                        "the files it started with: fix or restore them, or start a new run")
    if not skip_bad_files:
        raise refusal(source, problems)
    warnings.warn(f"{source}: skipping {len(problems)} unusable image file(s) (skip_bad_files; "
                  f"listed in the run directory's {EXCLUDED_FILE}):{_listing(problems)}",
                  UserWarning, stacklevel=3)


_LINE = re.compile(rf"^(?P<path>.+?): (?P<kind>{'|'.join(sorted(BLOCKING))}): (?P<message>.*)$")


def read_excluded(folder: "str | Path") -> tuple[Problem, ...]:
    """The files a run excluded when it started: ``folder/excluded_files.txt`` as written from
    :meth:`Accepted.excluded_text` (empty when the run wrote none).

    Raises:
        DataError: the listing is a symbolic link or a line is not ``path: kind: reason``.

    Example:
        >>> read_excluded("runs/none-excluded")
        ()
    """
    path = Path(folder) / EXCLUDED_FILE
    if path.is_symlink():
        raise DataError(f"{path}: symbolic link inside the run directory; remove it")
    if not path.is_file():
        return ()
    found = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        match = _LINE.match(line)
        if match is None:
            raise DataError(f"{path}:{number}: not a 'path: kind: reason' line of excluded files")
        found.append(Problem(Path(match["path"]), match["kind"], match["message"]))
    return tuple(found)


def _warn_caveats(source: Path, problems: Sequence[Problem]) -> None:
    readable = [p for p in problems if p.kind not in BLOCKING | {"ignored"}]
    if readable:
        warnings.warn(f"{source}: {len(readable)} file(s) DALI can read but with a caveat:"
                      f"{_listing(readable)}", UserWarning, stacklevel=3)


def accept_images(source: "str | Path | ImageList", *, decode: bool | str = False,
                  skip_bad_files: bool = False,
                  excluded_before: Sequence[Problem] | None = None,
                  num_classes: int | None = None, allow_absolute: bool = False,
                  threads: int | None = None) -> Accepted:
    """Scan ``source`` and apply the acceptance rules that search and train share.

    Args:
        source: image folder, file list, or a scanned :class:`ImageList`.
        decode: also decode every file (strict for JPEGs: finds corrupt data that decoders read
            with only a warning); default: headers and file ends only (fast); ``"auto"``:
            decode sets of up to :data:`AUTO_DECODE_LIMIT` files (what train does; larger sets
            are checked in full by ``dra-dali check-data``).
        skip_bad_files: exclude unusable files instead of refusing them (with a warning); they
            are listed in :attr:`Accepted.excluded` (write :meth:`Accepted.excluded_text` to the
            run folder).
        excluded_before: a resumed run's :func:`read_excluded`: those files stay excluded (also
            when usable now) and any other unusable file is refused, ``skip_bad_files`` or not,
            so that the run continues on the files it started with.
        num_classes: for a file list, the class count its labels must stay below.
        allow_absolute: for a file list, accept paths outside the list's folder.
        threads: checking threads.

    Returns:
        An :class:`Accepted`.

    Raises:
        DataError: the source cannot be scanned; unusable files (without ``skip_bad_files``,
            or on a resume; every path is named, the first 20 in the message); a class left
            with no image.
    """
    images = scan_images(source, num_classes=num_classes, allow_absolute=allow_absolute)
    before: tuple[Problem, ...] = ()
    if excluded_before is not None:
        listed = set(images.paths)
        before = tuple(p for p in excluded_before if p.path in listed)
        images = images.without({p.path for p in before})
    stamps = file_stamps(images.paths)  # before checking: a later change is always seen
    if decode == "auto":
        decode = len(images) <= AUTO_DECODE_LIMIT
    problems = check_files(images.paths, decode=bool(decode), threads=threads)
    _warn_caveats(images.source, problems)
    blocking = [p for p in problems if p.kind in BLOCKING]
    if blocking:
        skip_or_refuse(images.source, blocking, skip_bad_files=skip_bad_files,
                       resumed=excluded_before is not None)
        images = exclude(images, blocking)
        for path in {p.path for p in blocking}:
            stamps.pop(path, None)
    return Accepted(images, before + tuple(blocking), stamps)


def exclude(images: ImageList, problems: Sequence[Problem]) -> ImageList:
    """``images`` without the files of ``problems``.

    Raises:
        DataError: a class is left with no image (the problems are listed).
    """
    images = images.without({p.path for p in problems})
    empty = sorted(set(images.classes) - {images.classes[label] for label in images.labels})
    if empty:
        raise DataError(f"{images.source}: after skipping {len(problems)} unusable file(s), "
                        f"class(es) {empty[:10]} hold no image:{_listing(problems)}")
    return images


def check_headers(source: "str | Path | ImageList", threads: int | None = None) -> ImageList:
    """The fast pre-flight check: :func:`accept_images` without decoding; returns the images.

    Raises:
        DataError: unusable files (every path named) or an unscannable source.

    Example:
        >>> from dra_dali.data import embedded_dataset
        >>> len(check_headers(embedded_dataset().val))
        500
    """
    return accept_images(source, threads=threads).images


def recheck_changed(accepted: Accepted, threads: int | None = None) -> list[Problem]:
    """At an epoch start: ``stat`` every accepted file and fully check (strict decode) those
    whose size or modification time changed since they were accepted; their stamps are then
    updated, so each change is checked once.

    Returns:
        The unusable files among the changed ones (empty when all is well). A caller that
        cannot skip them raises ``DataError`` naming them before the epoch's first batch.

    Example:
        >>> bad = recheck_changed(accepted)                    # doctest: +SKIP
        >>> if bad: raise DataError(...)                       # doctest: +SKIP
    """
    now = file_stamps(list(accepted.stamps))
    changed = [p for p, stamp in now.items() if stamp != accepted.stamps[p]]
    accepted.stamps.update(now)
    if not changed:
        return []
    found = check_files(changed, decode=True, threads=threads)
    return [p for p in found if p.kind in BLOCKING]


def name_culprits(paths: Sequence[Path | str], threads: int | None = None) -> list[Problem]:
    """After a decoder failure on a batch: fully check (strict decode) the batch's files and
    return the unusable ones (with why), so the error can name them.

    Example:
        >>> name_culprits(["data/a.jpg", "data/b.jpg"])        # doctest: +SKIP
        [Problem(path=PosixPath('data/b.jpg'), kind='corrupt', ...)]
    """
    found = check_files([Path(p) for p in paths], decode=True, threads=threads)
    return [p for p in found if p.kind in BLOCKING]


class FileGuard:
    """The files of a running training: named before DALI can crash on them, or after it failed.

    Args:
        images: the accepted training images (their sizes and modification times are taken now).
        next_step: the line that ends every error: what to do next (how to resume).

    Example (the training loop's one place that fetches batches):
        >>> guard = FileGuard(train_images, "continue with --resume")  # doctest: +SKIP
        >>> guard.check_epoch_start()   # doctest: +SKIP
        >>> try:                        # doctest: +SKIP
        ...     batch = next(iterator)
        ... except RuntimeError as exc:                        # DALI's decoder failed
        ...     raise guard.failure(exc) from None

    ``check_epoch_start`` raises a :class:`DataError` naming a replaced file that no longer
    decodes.
    """

    def __init__(self, images: ImageList, next_step: str = "") -> None:
        self.accepted = Accepted(images, (), file_stamps(images.paths))
        self.next_step = next_step

    def check_epoch_start(self) -> None:
        """A ``stat`` pass; files whose size or modification time changed are checked in full.

        Raises:
            DataError: a changed file is unusable now (named, with why).
        """
        bad = recheck_changed(self.accepted)
        if bad:
            raise DataError(f"{self.accepted.images.source}: {len(bad)} file(s) replaced since "
                            f"the run started and now unusable:{_listing(bad)}\n{self.next_step}")

    def failure(self, exc: BaseException, next_step: str | None = None) -> DataError:
        """The error to raise after a decoder failure: the culprits named (changed files, or
        every file of sets up to :data:`AUTO_DECODE_LIMIT`, re-checked strictly), the decoder's
        message, and ``next_step`` (default: the guard's)."""
        bad = recheck_changed(self.accepted)
        images = self.accepted.images
        if not bad and len(images) <= AUTO_DECODE_LIMIT:
            bad = name_culprits(images.paths)
        named = (f"the unusable file(s):{_listing(bad)}" if bad else
                 f"no file was found unusable (run `dra-dali check-data {images.source}`)")
        return DataError(f"{images.source}: the decoder failed ({_decoder_reason(exc)}); "
                         f"{named}\n{next_step or self.next_step}")


def _decoder_reason(exc: BaseException) -> str:
    """The line of a DALI pipeline error that says what failed (the one after
    ``encountered:``, e.g. ``nvImageCodec failure: '#4'``), else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return repr(exc)
    if "encountered:" in lines[:-1]:
        return lines[lines.index("encountered:") + 1][:300]
    return lines[0][:300]


def decode_rgb(paths: Sequence[Path], threads: int = 2, batch_size: int = 32, *,
               checked: bool = False) -> list[np.ndarray]:
    """Decode files to ``(H, W, 3)`` uint8 RGB arrays with DALI's CPU decoder, as train does.

    Every file is checked first (strict decode for JPEGs): unusable files are refused, all of
    them named, before any reaches the decoder.

    Args:
        paths: the image files.
        threads: DALI CPU threads.
        batch_size: files per DALI batch.
        checked: the caller has just checked these files with :func:`name_culprits` (and found
            none unusable): do not check them again.

    Returns:
        One array per path, in order.

    Raises:
        DataError: unusable files (every path named).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        return []
    bad = [] if checked else name_culprits(paths)
    if bad:
        raise DataError(f"{len(bad)} unusable image file(s):{_listing(bad)}\nfix or remove them")
    return _dali_decode(paths, threads, min(batch_size, len(paths)))


def _dali_decode(paths: list[Path], threads: int, batch_size: int) -> list[np.ndarray]:
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=None,
                  prefetch_queue_depth=1)
    def pipe():
        data, _ = fn.readers.file(files=[str(p) for p in paths], labels=[0] * len(paths),
                                  random_shuffle=False, pad_last_batch=True,
                                  dont_use_mmap=True)  # a file truncated meanwhile: no SIGBUS
        return fn.decoders.image(data, device="cpu", output_type=types.RGB)

    pipeline = pipe()
    pipeline.build()
    arrays: list[np.ndarray] = []
    try:
        while len(arrays) < len(paths):
            batch = pipeline.run()[0]
            arrays += [np.array(batch[i]) for i in range(len(batch))]
    finally:
        del pipeline
    return arrays[:len(paths)]
