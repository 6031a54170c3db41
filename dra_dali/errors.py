"""One base for every error the library raises on purpose.

Library errors name the field, file or setting at fault (``layers[1].std[3]``, ``train.lr``), never
a command-line flag: the CLI catches :class:`DraDaliError`, prints the message on one line and exits
with status 1. Anything else that escapes is a bug and keeps its traceback.

It derives from ``ValueError`` so that callers who caught the historical ``ValueError`` subclasses
(``PolicyError``, ``DataError``, ...) keep working.
"""

from __future__ import annotations

__all__ = ["DraDaliError"]


class DraDaliError(ValueError):
    """Base of all dra-dali errors; the message names the culprit and, where there is one, the
    fix."""

    # Raised inside a DALI pipeline definition with conditionals (``augment``), an error passes
    # through DALI's AutoGraph, which re-creates only exceptions whose ``__init__`` is
    # ``Exception.__init__`` (or a few built-ins) and turns any other into a ``StagingError``.
    # This keeps the type (the message gains AutoGraph's "in user code" trace before it).
    __init__ = Exception.__init__
