"""Data checks: find the files that would make a DALI pipeline fail or silently misbehave.

Two levels:

* headers only (reads a few KiB per file): empty files, unknown content, formats DALI cannot
  decode (GIF), content that does not match the extension (a PNG or GIF renamed to ``.jpg``),
  CMYK / 12-bit JPEGs, 16-bit PNGs, huge dimensions, a missing end marker (truncated). Train and
  search run it before starting through :mod:`dra_dali.data.accept`, which refuses the files
  DALI cannot decode (naming every path) so DALI never dies mid-epoch on a file without saying
  which.
* :func:`check_data` - everything above plus a full decode of every file (in parallel threads),
  which also finds corrupt and truncated image data. JPEGs are decoded in libjpeg-turbo's strict
  mode (``simplejpeg``), so data that decoders accept with only a "Corrupt JPEG data" warning on
  stderr (and turn into garbage pixels) is reported too; other formats are decoded by Pillow.
  ``dra-dali check-data`` runs it.

Example:
    >>> from dra_dali.data import embedded_dataset
    >>> report = check_data(embedded_dataset().val)
    >>> report.ok, report.checked
    (True, 500)
"""

from __future__ import annotations

import os
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from dra_dali.data.scan import IMAGE_EXTENSIONS, ImageList, scan_images

__all__ = ["Problem", "DataReport", "check_data", "check_file", "check_files", "sniff_format",
           "MAX_PIXELS", "BLOCKING"]

#: Images with more pixels than this are reported as huge (decoding them needs gigabytes and
#: exceeds what DALI's decoders are tuned for); Pillow's own decompression-bomb limit.
MAX_PIXELS = 89_478_485

_SUPPORTED = {"jpeg", "png", "bmp", "tiff", "webp", "pnm", "jpeg2000"}
_EXTENSIONS = {"jpeg": {".jpg", ".jpeg"}, "png": {".png"}, "bmp": {".bmp"},
               "tiff": {".tif", ".tiff"}, "webp": {".webp"},
               "pnm": {".pnm", ".ppm", ".pgm", ".pbm"}, "jpeg2000": {".jp2", ".j2k"},
               "gif": {".gif"}}
#: Kinds of finding that make DALI fail on the file; check_headers refuses to start on these.
BLOCKING = frozenset({"empty", "truncated", "corrupt", "not-an-image", "unsupported-format",
                      "unsupported-depth", "huge", "unreadable"})
_HEADER_BYTES = 1 << 16
_TAIL_BYTES = 4096


@dataclass(frozen=True)
class Problem:
    """One finding about one file.

    Attributes:
        path: the file.
        kind: ``empty``, ``truncated``, ``corrupt``, ``not-an-image``, ``unsupported-format``,
            ``unsupported-depth`` (a 12-bit JPEG), ``wrong-extension``, ``cmyk``,
            ``high-bit-depth`` (a 16-bit PNG), ``huge``, ``unreadable``, ``changed`` (a file
            replaced since the pre-check, see :mod:`dra_dali.data.accept`) or
            ``ignored`` (a file in a class folder that the pipeline does not read).
        message: what is wrong and what to do about it.
        severity: ``error`` (DALI would fail on it, or it would be read as something it is not)
            or ``warning`` (DALI reads it, but with a caveat: CMYK, 16-bit, an ignored file).
    """

    path: Path
    kind: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}: {self.message}"


@dataclass
class DataReport:
    """Result of :func:`check_data` / :func:`check_headers`.

    Attributes:
        source: the folder or file list checked.
        checked: number of image files examined.
        problems: findings, sorted by path.
    """

    source: Path
    checked: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        """The findings of severity ``error``."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        """True when no finding is an error."""
        return not self.errors

    def summary(self) -> str:
        """One line per finding, then a count line."""
        lines = [f"{p.severity.upper()} {p}" for p in self.problems]
        lines.append(f"{self.source}: {self.checked} images checked, {len(self.errors)} with "
                     f"errors, {len(self.problems) - len(self.errors)} warnings")
        return "\n".join(lines)


def sniff_format(head: bytes) -> str | None:
    """The image format from a file's first bytes (``jpeg``, ``png``, ``gif``, ...), or None.

    Example:
        >>> sniff_format(b"\\x89PNG\\r\\n\\x1a\\n...")
        'png'
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return "jpeg2000"
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return "pnm"
    return None


def _jpeg_frame(head: bytes) -> tuple[int, int, int, int] | None:
    """(precision, height, width, components) of the first SOF marker, if within ``head``."""
    i = 2
    while i + 4 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:          # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", head[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 10 > len(head):
                return None
            precision, height, width, components = struct.unpack(">BHHB", head[i + 4:i + 10])
            return precision, height, width, components
        if marker == 0xDA:          # start of scan before any frame header
            return None
        i += 2 + length
    return None


def _jpeg_problems(path: Path, head: bytes, tail: bytes) -> tuple[list[Problem], tuple | None]:
    problems = []
    frame = _jpeg_frame(head)
    size = None
    if frame is not None:
        precision, height, width, components = frame
        size = (width, height)
        if components == 4:
            # A warning, not an error: DALI 2.4's CPU decoder converts it to RGB (checked
            # here), but GPU decoding and Adobe-inverted CMYK vary by version and file.
            problems.append(Problem(path, "cmyk",
                                    "CMYK/YCCK JPEG: DALI's CPU decoder converts it to RGB, "
                                    "GPU decoding may fall back to the CPU or give wrong "
                                    "colours; converting it to an RGB JPEG is safest",
                                    severity="warning"))
        if precision != 8:
            problems.append(Problem(path, "unsupported-depth",
                                    f"{precision}-bit JPEG: DALI decodes 8-bit JPEGs only (it "
                                    f"would fail mid-epoch); re-encode it as 8-bit"))
    if b"\xff\xd9" not in tail:
        problems.append(Problem(path, "truncated",
                                "no JPEG end-of-image marker: the file was cut short "
                                "(incomplete download or copy); re-fetch it"))
    return problems, size


def _png_problems(path: Path, head: bytes, tail: bytes) -> tuple[list[Problem], tuple | None]:
    if len(head) < 26:
        return [], None
    problems = []
    width, height, depth = struct.unpack(">IIB", head[16:25])
    if depth == 16:
        problems.append(Problem(path, "high-bit-depth",
                                "16-bit PNG: the uint8 pipeline scales it to 8 bits "
                                "(round(v / 257)); convert it to 8 bits to control how",
                                severity="warning"))
    if b"IEND" not in tail:
        problems.append(Problem(path, "truncated",
                                "no PNG IEND chunk: the file was cut short; re-fetch it"))
    return problems, (width, height)


def _format_problems(path: Path, head: bytes, size: int) -> tuple[str | None, list[Problem]]:
    """The sniffed format and the findings that stop any further check of the file."""
    if size == 0:
        return None, [Problem(path, "empty", "the file is empty (0 bytes); delete or re-export "
                                             "it")]
    fmt = sniff_format(head)
    suffix = path.suffix.lower()
    if fmt is None:
        return None, [Problem(path, "not-an-image", f"the content is not a known image format "
                                                    f"(first bytes {head[:8]!r}); remove it from "
                                                    f"the data")]
    if fmt not in _SUPPORTED:
        renamed = f" (named {suffix})" if suffix not in _EXTENSIONS.get(fmt, ()) else ""
        return fmt, [Problem(path, "unsupported-format",
                             f"{fmt.upper()} image{renamed}: DALI cannot decode {fmt.upper()}; "
                             f"convert it to PNG or JPEG")]
    return fmt, []


def _header_problems(path: Path, head: bytes, tail: bytes, size: int) -> list[Problem]:
    fmt, fatal = _format_problems(path, head, size)
    if fatal or fmt is None:
        return fatal
    problems = []
    suffix = path.suffix.lower()
    if suffix not in _EXTENSIONS[fmt]:
        problems.append(Problem(path, "wrong-extension",
                                f"the content is {fmt.upper()} but the name ends in {suffix}; "
                                f"rename it to {sorted(_EXTENSIONS[fmt])[0]} (or re-encode it)"))
    by_format = {"jpeg": _jpeg_problems, "png": _png_problems}
    found, dims = by_format[fmt](path, head, tail) if fmt in by_format else ([], None)
    problems += found
    if dims is not None and dims[0] * dims[1] > MAX_PIXELS:
        problems.append(Problem(path, "huge",
                                f"{dims[0]} x {dims[1]} pixels (> {MAX_PIXELS:,}): decoding "
                                f"needs gigabytes per image; downscale it"))
    return problems


def _read_ends(path: Path) -> tuple[bytes, bytes, int]:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(_HEADER_BYTES)
        if size > _HEADER_BYTES:
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
        else:
            tail = head[-_TAIL_BYTES:]
    return head, tail, size


#: simplejpeg's colour space argument for each colour space its header reader reports.
_JPEG_OUTPUT = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}


def _strict_jpeg_problems(path: Path) -> list[Problem]:
    """Decode a JPEG with libjpeg-turbo stopping on warnings ("Corrupt JPEG data: ...", which
    other decoders print to stderr without a path and then return garbage pixels)."""
    import simplejpeg

    data = path.read_bytes()
    try:
        colorspace = simplejpeg.decode_jpeg_header(data)[2]
        simplejpeg.decode_jpeg(data, colorspace=_JPEG_OUTPUT.get(colorspace, "RGB"),
                               strict=True)
    except ValueError as exc:
        text = str(exc).strip()
        if "premature end" in text.lower():
            return [Problem(path, "truncated", f"the image data ends early (libjpeg: {text}); "
                                               "re-fetch it")]
        return [Problem(path, "corrupt", f"corrupt JPEG data (libjpeg: {text}); "
                                         f"{_lenient_outcome(data)}; re-fetch or remove it")]
    return []


def _lenient_outcome(data: bytes) -> str:
    """What a decoder that only warns makes of a JPEG that fails the strict decode."""
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=False)
    except ValueError:
        return "it cannot be decoded"
    return "decoders read it with only a warning and return garbage pixels"


def _decode_problems(path: Path, fmt: str | None) -> list[Problem]:
    if fmt == "jpeg":
        return _strict_jpeg_problems(path)
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        return [Problem(path, "huge", f"{exc}; downscale it")]
    except OSError as exc:
        text = str(exc)
        if "truncated" in text.lower():
            return [Problem(path, "truncated", f"the image data ends early ({text}); re-fetch it")]
        return [Problem(path, "corrupt", f"cannot be decoded ({text}); re-fetch or remove it")]
    except Exception as exc:  # Pillow raises assorted errors (SyntaxError, ValueError) on bad data
        return [Problem(path, "corrupt", f"cannot be decoded ({type(exc).__name__}: {exc}); "
                                         f"re-fetch or remove it")]
    return []


def check_file(path: str | Path, decode: bool = True) -> list[Problem]:
    """Check one image file.

    Args:
        path: the file.
        decode: also decode the whole image (finds corrupt data); else headers only.

    Returns:
        The findings (empty when the file is fine).
    """
    path = Path(path)
    try:
        head, tail, size = _read_ends(path)
    except OSError as exc:
        return [Problem(path, "unreadable", f"cannot read the file ({exc.strerror})")]
    problems = _header_problems(path, head, tail, size)
    if decode and not any(p.kind in BLOCKING for p in problems):
        problems += _decode_problems(path, sniff_format(head))
    return problems


def _ignored_files(images: ImageList) -> list[Problem]:
    """Files in the class folders of an image folder that the pipeline will not read."""
    if not images.source.is_dir():
        return []
    listed = {images.root / f for f in images.files}
    out = []
    for folder in sorted({(images.root / f).parent for f in images.files}):
        for p in sorted(folder.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p not in listed \
                    and p.suffix.lower() not in IMAGE_EXTENSIONS:
                out.append(Problem(p, "ignored", f"not read by the pipeline (extension "
                                                 f"{p.suffix or 'none'!s} is not an image type "
                                                 f"DALI decodes)", severity="warning"))
    return out


def check_files(paths: "list[Path]", decode: bool = True, threads: int | None = None,
                progress: Callable[[int], None] | None = None) -> list[Problem]:
    """:func:`check_file` over many files in parallel threads.

    Args:
        paths: the files.
        decode: also decode every image (strict for JPEGs); else headers only.
        threads: threads (default: 2 per CPU core with decoding, 4 without; at most 32).
        progress: called with 1 after each file.

    Returns:
        The findings, sorted by path.
    """
    threads = threads or min(32, (os.cpu_count() or 1) * (2 if decode else 4))
    problems: list[Problem] = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for found in pool.map(lambda p: check_file(p, decode), paths, chunksize=16):
            problems += found
            if progress is not None:
                progress(1)
    problems.sort(key=lambda p: (str(p.path), p.kind))
    return problems


def _run(images: ImageList, decode: bool, threads: int | None,
         progress: Callable[[int], None] | None) -> DataReport:
    problems = check_files(images.paths, decode, threads, progress) + _ignored_files(images)
    problems.sort(key=lambda p: (str(p.path), p.kind))
    return DataReport(source=images.source, checked=len(images), problems=problems)


def check_data(source: "str | Path | ImageList", threads: int | None = None,
               progress: Callable[[int], None] | None = None, decode: bool = True) -> DataReport:
    """Scan an image folder or file list and decode every file, in parallel threads.

    Args:
        source: image folder, file list, or a scanned :class:`ImageList`.
        threads: threads (default: 2 per CPU core, at most 32).
        progress: called with 1 after each file (e.g. a tqdm ``update``).
        decode: decode every image (default); ``False`` checks headers and file ends only.

    Returns:
        A :class:`DataReport`; ``report.ok`` is False when any file has an error.

    Raises:
        DataError: the folder or list itself cannot be scanned (see
            :func:`~dra_dali.data.scan_images`).

    Example:
        >>> report = check_data("data/train")            # doctest: +SKIP
        >>> print(report.summary())                      # doctest: +SKIP
    """
    return _run(scan_images(source), decode=decode, threads=threads, progress=progress)
