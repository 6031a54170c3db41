"""``metrics.jsonl``: one JSON object per line, one line per epoch.

Example:
    >>> import tempfile, pathlib
    >>> log = MetricsLog(pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl")
    >>> log.start_fresh()                       # a new run: nothing from an earlier one
    >>> log.append({"epoch": 1, "loss": 2.3})
    >>> log.append({"epoch": 2, "loss": 1.9})
    >>> [r["epoch"] for r in log.truncate_to_epoch(1)]   # resuming from epoch 1's checkpoint
    [1]
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dra_dali.errors import DraDaliError
from dra_dali.runtime.files import atomic_write, write_error

__all__ = ["MetricsLog", "MetricsError"]


class MetricsError(DraDaliError):
    """``metrics.jsonl`` holds a line that is not JSON (other than a partial last line)."""


class MetricsLog:
    """The ``metrics.jsonl`` of a run.

    Write the epoch's record with :meth:`append` *before* saving that epoch's checkpoint: a kill
    between the two then leaves one record too many, which :meth:`truncate_to_epoch` removes on
    resume, never one too few.

    Args:
        path: the file (usually ``run_dir / "metrics.jsonl"``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def start_fresh(self) -> None:
        """Empty the file: a fresh run never appends to the records of an earlier one."""
        atomic_write(self.path, b"")

    def append(self, record: dict[str, Any]) -> None:
        """Add one record as one line (flushed to disk). A partial last line left by a killed
        writer is dropped first, so every line stays a whole record.

        Raises:
            WriteError: disk full or the file cannot be written (one line, names the file).
            MetricsError: the record holds values JSON cannot represent (NaN is written as
                ``NaN``, as Python's json does).
        """
        try:
            line = json.dumps(record) + "\n"
        except (TypeError, ValueError) as exc:
            raise MetricsError(f"{self.path}: cannot record {record!r} ({exc})") from None
        if self.path.is_symlink():
            atomic_write(self.path, b"")  # raises the symlink refusal
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        try:
            self._drop_partial_line(fd)
            os.write(fd, line.encode())
            os.fsync(fd)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        finally:
            os.close(fd)

    @staticmethod
    def _drop_partial_line(fd: int) -> None:
        size = os.fstat(fd).st_size
        if not size or os.pread(fd, 1, size - 1) == b"\n":
            return
        start = max(0, size - (1 << 20))
        tail = os.pread(fd, size - start, start)
        os.ftruncate(fd, start + tail.rfind(b"\n") + 1 if b"\n" in tail else start)

    def read(self) -> list[dict[str, Any]]:
        """The records, in order. A partial last line (the writer was killed mid-line) is
        skipped; a file that does not exist reads as no records.

        Raises:
            MetricsError: a line other than the last one is not JSON (names the line).
        """
        if not self.path.is_file():
            return []
        lines = self.path.read_text(errors="replace").split("\n")
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines):  # no newline after it: a write cut short
                    break
                raise MetricsError(f"{self.path}:{number}: not a JSON record ({line[:80]!r}); "
                                   "the file was edited or damaged") from None
        return records

    def truncate_to_epoch(self, epoch: int) -> list[dict[str, Any]]:
        """Keep the records of epochs ``<= epoch`` (those the checkpoint being resumed covers)
        and drop the rest, and any partial last line, from the file.

        Args:
            epoch: the checkpoint's completed epochs.

        Returns:
            The records kept.
        """
        kept = [r for r in self.read() if r.get("epoch", 0) <= epoch]
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept
