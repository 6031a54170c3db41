"""One SIGTERM / Ctrl-C mechanism: a flag the loop checks between steps.

A signal handler only sets a flag; the loop looks at it at a safe point (after a step, after a
checkpoint), saves what it needs and ends. The process then exits with the status a shell
reports for a process ended by that signal, so job schedulers see the run as unfinished:
143 (128 + SIGTERM) after SIGTERM, 130 (128 + SIGINT) after Ctrl-C. A second Ctrl-C while the
run is stopping raises ``KeyboardInterrupt`` at once, for users who do not want to wait.

Example:
    >>> with StopSignals() as stop:                      # doctest: +SKIP
    ...     for step in range(steps):
    ...         train_step()
    ...         if stop.requested:
    ...             save_checkpoint(path, state)
    ...             raise SystemExit(stop.exit_code)     # 143 or 130
"""

from __future__ import annotations

import signal
from typing import Any

__all__ = ["StopSignals", "Stopped", "SIGTERM_EXIT", "SIGINT_EXIT"]

#: Exit status after SIGTERM (128 + 15).
SIGTERM_EXIT = 128 + int(signal.SIGTERM)
#: Exit status after Ctrl-C / SIGINT (128 + 2).
SIGINT_EXIT = 128 + int(signal.SIGINT)


class Stopped(Exception):
    """Raised by :meth:`StopSignals.raise_if_requested`; ``exit_code`` is 143 or 130. The CLI
    turns it into that exit status."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + int(signum)


class StopSignals:
    """Context manager catching SIGTERM and SIGINT into a flag while it is active.

    Outside the main thread (where Python cannot install handlers) it installs nothing and the
    flag stays down. Previous handlers are restored on exit.

    Attributes:
        signum: the first signal received (``None`` until one arrives).
    """

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """True once SIGTERM or SIGINT arrived."""
        return self.signum is not None

    @property
    def exit_code(self) -> int | None:
        """143 after SIGTERM, 130 after Ctrl-C, ``None`` if no signal arrived."""
        return None if self.signum is None else 128 + int(self.signum)

    def raise_if_requested(self, message: str = "") -> None:
        """Raise :class:`Stopped` if a signal arrived (call it at a safe point)."""
        if self.signum is not None:
            raise Stopped(self.signum, message)

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> "StopSignals":
        for sig in self._SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                break
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
