"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every file of a run directory is written through :func:`atomic_write`: the bytes go to a
temporary file in the same folder (``.<name>.tmp-<pid>``), are flushed to disk (``fsync``), and
the temporary file is renamed over the target (``os.replace``, atomic on POSIX). On any failure,
including Ctrl-C, the temporary file is removed; one left by a killed process is removed by the
next :class:`~dra_dali.runtime.RunDir` on that folder (:func:`remove_stale_temps`).

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write(folder / "config.yaml", "lr: 0.1\\n").read_text()
    'lr: 0.1\\n'
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from dra_dali.errors import DraDaliError

__all__ = ["WriteError", "atomic_write", "remove_stale_temps", "TEMP_MARKER"]

#: Temporary files are named ``.<target name>.tmp-<pid>``.
TEMP_MARKER = ".tmp-"


class WriteError(DraDaliError):
    """A file could not be written (disk full, read-only folder, a symlink in the way); the
    message names the file and the cause."""


def _describe(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return (f"{path}: disk full (no space left on device) while writing it; free some space "
                "and run again (the previous version of the file, if any, is intact)")
    if exc.errno == errno.EDQUOT:
        return f"{path}: disk quota exceeded while writing it; free some space and run again"
    return f"{path}: cannot write ({exc.strerror or exc})"


def write_error(path: str | Path, exc: OSError) -> WriteError:
    """The one-line :class:`WriteError` for an ``OSError`` raised while writing ``path``."""
    return WriteError(_describe(Path(path), exc))


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # some file systems do not allow opening folders; the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: str | Path, data: bytes | memoryview | str) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    Args:
        path: the target file; its folder must exist.
        data: bytes (or any bytes-like object), or text (written as UTF-8).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        WriteError: ``path`` is a symbolic link (never followed: a planted link must not redirect
            a write), the disk is full, or the folder is not writable. The message is one line
            and names the file; the previous content of ``path`` is untouched and no temporary
            file is left.

    Example:
        >>> atomic_write("/tmp/x.txt", b"hello")  # doctest: +SKIP
        PosixPath('/tmp/x.txt')
    """
    path = Path(path)
    if path.is_symlink():
        raise WriteError(f"{path}: is a symbolic link; refusing to write through it (remove the "
                         "link)")
    payload = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        try:
            _write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed writers left in ``folder`` (not in sub-folders).

    Only call it while no other process writes there (a :class:`~dra_dali.runtime.RunDir` holds
    the folder's lock when it does). Also removes the ``<name>.tmp`` files of dra-dali versions
    before the runtime layer.

    Returns:
        The removed paths.
    """
    removed = []
    for entry in Path(folder).iterdir():
        name = entry.name
        stale = (name.startswith(".") and TEMP_MARKER in name) or name.endswith(".tmp")
        if stale and (entry.is_file() or entry.is_symlink()):
            entry.unlink()
            removed.append(entry)
    return sorted(removed)
