"""Helpers shared by the search tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from dra_dali.search import run_search


def interrupt_after_epoch(cfg, out: Path, epoch: int = 1) -> None:
    """Run a search into ``out`` and stop it with a KeyboardInterrupt after ``epoch`` (its
    checkpoint is written first), as Ctrl-C would."""
    def stop(finished_epoch, metrics):
        if finished_epoch == epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, out, progress=False, on_epoch_end=stop)
