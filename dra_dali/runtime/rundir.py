"""A run directory you can trust: one run at a time, refuse / resume / force rules, no symlinks
followed, no stale temporary files, a fresh or truncated ``metrics.jsonl``, and no silently
changed settings on resume.

Example (what a search or a training does; use it on rank 0 only under ``torchrun``):
    >>> config = {"lr": 0.1, "epochs": 3, "seed": 0}
    >>> with RunDir("runs/x", kind="train", config=config, resume=False) as run:  # doctest: +SKIP
    ...     start = run.state["epoch"] if run.resumed else 0   # run.state: the loaded checkpoint
    ...     for epoch in range(start, config["epochs"]):
    ...         ...                                            # train one epoch
    ...         run.metrics.append({"epoch": epoch + 1, "loss": 0.5})   # record first,
    ...         run.save_checkpoint({"epoch": epoch + 1, "model": model.state_dict()})  # then save
    ...     run.write("summary.json", "{}")                    # the finished marker of a training

Resuming with a changed setting that changes results is refused unless named in ``overrides``;
accepted overrides are recorded in ``overrides.jsonl``::

    RunDir("runs/x", "train", {**config, "lr": 0.05}, resume=True, overrides=["lr"])
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterable

import yaml

from dra_dali.errors import DraDaliError
from dra_dali.runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dra_dali.runtime.files import atomic_write, remove_stale_temps
from dra_dali.runtime.metrics import MetricsLog
from dra_dali.safe_yaml import load_yaml

__all__ = ["RunDir", "RunDirError", "CHECKPOINT", "CONFIG", "METRICS", "OVERRIDES", "LOCK",
           "FINISHED", "RUN_FILES"]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
OVERRIDES = "overrides.jsonl"
LOCK = ".lock"
#: The file whose presence means a run of that kind has finished.
FINISHED = {"search": "policy.yaml", "train": "summary.json"}
#: What ``force`` deletes to start over (nothing else in the folder is touched).
RUN_FILES = {
    "search": (CHECKPOINT, CONFIG, METRICS, OVERRIDES, "policy.yaml", "trajectories.png",
               "policy.png", "excluded_files.txt"),
    "train": (CHECKPOINT, CONFIG, METRICS, OVERRIDES, "summary.json", "policy.yaml",
              "config.json", "excluded_files.txt", "tensorboard", "best.pt", "model.pt"),
}


class RunDirError(DraDaliError):
    """The run directory cannot be used as asked; the message says why and what to do."""


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # noqa: ARG002
        return True


def _dump(config: dict[str, Any]) -> str:
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False)


def _parse(text: str | bytes, where: Path) -> dict[str, Any]:
    data = load_yaml(text, what=str(where), error=RunDirError)
    if not isinstance(data, dict):
        raise RunDirError(f"{where}: not a readable run configuration (not a mapping)")
    return data


def _same(a: Any, b: Any) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or a == b


class RunDir:
    """Context manager owning one run directory for the duration of a run.

    On entry, in this order: the folder is checked (a dangling symlink, a file, or a read-only
    location is refused) and created; a lock is taken (a second run on the same folder fails at
    once, naming the holder); symlinks inside the folder are refused; stale temporary files of
    killed writers are deleted; the refuse / resume / force rules are applied; the resolved
    ``config`` is written to ``config.yaml``; ``metrics.jsonl`` is started fresh (a new run) or
    truncated to the checkpoint's epoch (a resume). The lock is released on exit.

    Rules: a new run refuses a folder holding a checkpoint or a finished run unless ``force``
    (which deletes only that kind's :data:`RUN_FILES`); ``resume`` needs a checkpoint, refuses a
    finished run unless ``force`` (train it further), and refuses any setting of ``config`` that
    differs from the saved ``config.yaml`` unless it is listed in ``overrides`` (recorded in
    ``overrides.jsonl``) or in ``ignore`` (settings that do not change results: threads, ...).
    A setting missing from the saved ``config.yaml`` (a run of a version without it) counts as
    its value in ``defaults``: resuming keeps working while the new setting stays at its default.

    Args:
        out: the run directory (created with its parents).
        kind: ``"search"`` or ``"train"`` (which files mark a finished run, which ``force``
            deletes).
        config: the run's resolved settings, plain YAML-able values.
        resume: continue the run from ``checkpoint.pt``.
        force: start over in a folder holding a run, or, with ``resume``, continue a finished one.
        overrides: setting names the user explicitly allows to change on resume.
        ignore: setting names that may change on resume without notice (no effect on results).
        defaults: ``{setting: default}`` of the current schema; a setting the saved
            ``config.yaml`` lacks is compared as its default (a setting without a default, as
            missing, so any value differs).

    Attributes:
        path: the folder.
        state: on resume, the loaded checkpoint (``weights_only=True``); else ``None``.
        metrics: the run's :class:`~dra_dali.runtime.MetricsLog`.
        overridden: on resume, ``{name: (saved, new)}`` of the accepted overrides.

    Raises:
        RunDirError: on entry, whenever a rule refuses; the message is one line and says what to
            do. Nothing in the folder has changed when a rule refuses.
    """

    def __init__(self, out: str | Path, kind: str = "train", config: dict[str, Any] | None = None,
                 *, resume: bool = False, force: bool = False, overrides: Iterable[str] = (),
                 ignore: Iterable[str] = (), defaults: dict[str, Any] | None = None) -> None:
        if kind not in FINISHED:
            raise ValueError(f"kind must be one of {sorted(FINISHED)}, got {kind!r}")
        self.path = Path(out)
        self.kind = kind
        self.config = _parse(_dump(dict(config or {})), self.path / CONFIG)  # as saved
        self.resume, self.force = resume, force
        self.overrides, self.ignore = set(overrides), set(ignore)
        self.defaults = _parse(_dump(dict(defaults or {})), self.path / CONFIG)  # as saved
        self.state: dict[str, Any] | None = None
        self.overridden: dict[str, tuple[Any, Any]] = {}
        self.metrics = MetricsLog(self.path / METRICS)
        self._lock_fd: int | None = None

    # --- paths and writes -------------------------------------------------------------------

    @property
    def resumed(self) -> bool:
        """True when this run continues a checkpoint."""
        return self.state is not None

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def file(self, name: str) -> Path:
        """The path of ``name`` inside the run directory (a plain name; no folders, no links)."""
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"a run file is a plain name, got {name!r}")
        return self.path / name

    def write(self, name: str, data: bytes | str) -> Path:
        """Write a file of the run atomically (see :func:`~dra_dali.runtime.atomic_write`)."""
        return atomic_write(self.file(name), data)

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        """Write ``checkpoint.pt`` atomically (append the epoch's metrics record first)."""
        return save_checkpoint(self.checkpoint_path, state)

    # --- entry and exit ---------------------------------------------------------------------

    def __enter__(self) -> "RunDir":
        self._open_folder()
        self._lock()
        try:
            self._refuse_symlinks()
            remove_stale_temps(self.path)
            if self.resume:
                self._resume()
            else:
                self._start()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._unlock()

    def _open_folder(self) -> None:
        out = self.path
        if out.is_symlink() and not out.exists():
            raise RunDirError(f"{out}: is a symbolic link to {os.readlink(out)}, which does not "
                              "exist; remove the link or choose another run directory")
        if out.exists() and not out.is_dir():
            raise RunDirError(f"{out}: exists and is not a folder; choose another run directory")
        if self.resume and not out.is_dir():
            raise RunDirError(f"{out}: nothing to resume (the folder does not exist); start a new "
                              "run instead")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"{out}: cannot create the run directory ({exc.strerror})") from None

    def _lock(self) -> None:
        lock = self.path / LOCK
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise RunDirError(f"{self.path}: cannot write to the run directory ({exc.strerror}); "
                              "choose a writable location") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise RunDirError(f"{self.path}: in use by another run ({holder}); wait for it to "
                              "end or choose another run directory") from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, {self.kind} run started "
                      f"{stamp}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _refuse_symlinks(self) -> None:
        for folder, dirs, files in os.walk(self.path):
            for name in dirs + files:
                path = Path(folder) / name
                if path.is_symlink():
                    raise RunDirError(f"{path}: symbolic link inside the run directory; a run "
                                      "never writes through links: remove it (nothing was "
                                      "changed)")

    # --- the rules --------------------------------------------------------------------------

    def _start(self) -> None:
        finished = self.file(FINISHED[self.kind])
        held = finished if finished.exists() else self.checkpoint_path
        if held.exists():
            if not self.force:
                what = "a finished run" if held == finished else "an unfinished run"
                raise RunDirError(f"{self.path}: already holds {what} ({held.name}); resume it, "
                                  "start over with force, or choose another run directory "
                                  "(nothing was changed)")
            self._clear()
        self.write(CONFIG, _dump(self.config))
        self.metrics.start_fresh()

    def _clear(self) -> None:
        for name in RUN_FILES[self.kind]:
            path = self.file(name)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _resume(self) -> None:
        if not self.checkpoint_path.exists():
            raise RunDirError(f"{self.path}: nothing to resume (no {CHECKPOINT}); start a new run "
                              "instead")
        finished = self.file(FINISHED[self.kind])
        if finished.exists() and not self.force:
            raise RunDirError(f"{self.path}: holds a finished run ({finished.name}); nothing to "
                              "resume (with force, a resume trains it further)")
        self.overridden = self._check_config()
        try:
            state = load_checkpoint(self.checkpoint_path)
        except CheckpointError as exc:
            raise RunDirError(str(exc)) from None
        epoch = state.get("epoch")
        if not isinstance(epoch, int) or epoch < 0:
            raise RunDirError(f"{self.checkpoint_path}: not a dra-dali run checkpoint (no epoch)")
        if self.overridden:
            self._record_overrides(epoch)
        self.write(CONFIG, _dump(self.config))
        self.metrics.truncate_to_epoch(epoch)
        self.state = state

    def _saved_config(self) -> dict[str, Any] | None:
        path = self.file(CONFIG)
        if not path.is_file():
            return None  # a run of a version that did not write it: nothing to compare
        return _parse(path.read_bytes(), path)

    def _check_config(self) -> dict[str, tuple[Any, Any]]:
        saved = self._saved_config()
        if saved is None:
            return {}
        unknown = sorted(self.overrides - set(self.config))
        if unknown:
            raise RunDirError(f"override of unknown setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(self.config))}")
        saved = {**{k: v for k, v in self.defaults.items() if k in self.config}, **saved}
        keys = [k for k in dict.fromkeys([*saved, *self.config]) if k not in self.ignore]
        changed = {k: (saved.get(k), self.config.get(k)) for k in keys
                   if not _same(saved.get(k), self.config.get(k))}
        refused = {k: v for k, v in changed.items() if k not in self.overrides}
        if refused:
            listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
            raise RunDirError(f"{self.path}: the run was made with other settings ({listed}); "
                              "resume with the saved settings, or override them explicitly to "
                              "continue with the new values (recorded in overrides.jsonl)")
        return changed

    def _record_overrides(self, epoch: int) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from_epoch": epoch,
                  "changed": {k: {"saved": old, "now": new}
                              for k, (old, new) in self.overridden.items()}}
        path = self.file(OVERRIDES)
        previous = path.read_text() if path.is_file() else ""
        self.write(OVERRIDES, previous + json.dumps(record) + "\n")
