"""The runtime layer shared by ``search`` and ``train``: run directories, atomic writes,
checkpoints, ``metrics.jsonl``, stop signals and seeds.

* :func:`atomic_write` - every file of a run is written through it (temp file, fsync, rename).
* :func:`save_checkpoint` / :func:`load_checkpoint` - ``weights_only=True`` always;
  :func:`rng_state` / :func:`set_rng_state` make RNG states checkpoint-safe.
* :class:`MetricsLog` - ``metrics.jsonl``, one record per epoch.
* :class:`RunDir` - lock, refuse / resume / force rules, config check on resume.
* :class:`StopSignals` - SIGTERM / Ctrl-C as a flag; exit 143 / 130.
* :func:`derive_seed` - one seed derivation for every random stream.

Every error is a :class:`~dra_dali.errors.DraDaliError` with a one-line message naming the file.
"""

from dra_dali.runtime.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dra_dali.runtime.files import TEMP_MARKER, WriteError, atomic_write, remove_stale_temps
from dra_dali.runtime.metrics import MetricsError, MetricsLog
from dra_dali.runtime.rundir import (
    CHECKPOINT,
    CONFIG,
    FINISHED,
    LOCK,
    METRICS,
    OVERRIDES,
    RUN_FILES,
    RunDir,
    RunDirError,
)
from dra_dali.runtime.seeds import derive_seed
from dra_dali.runtime.signals import SIGINT_EXIT, SIGTERM_EXIT, Stopped, StopSignals

__all__ = ["CHECKPOINT", "CONFIG", "CheckpointError", "FINISHED", "LOCK", "METRICS",
           "MetricsError", "MetricsLog", "OVERRIDES", "RUN_FILES", "RunDir", "RunDirError",
           "SIGINT_EXIT", "SIGTERM_EXIT", "Stopped", "StopSignals", "TEMP_MARKER", "WriteError",
           "atomic_write", "derive_seed", "load_checkpoint", "remove_stale_temps", "rng_state",
           "save_checkpoint", "set_rng_state"]
