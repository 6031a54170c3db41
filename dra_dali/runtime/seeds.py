"""One seed derivation for every random stream of a run."""

from __future__ import annotations

import hashlib
import json

__all__ = ["derive_seed"]


def derive_seed(seed: int, *names: str | int) -> int:
    """A seed for one named stream of a run, a pure function of the run seed and the names.

    Unlike ``hash()``, the result is the same in every process, Python version and platform, so
    a resumed run, or another rank of a distributed run, derives exactly the same seeds. Streams
    with different names are independent for practical purposes (SHA-256 of the names).

    Args:
        seed: the run's seed.
        names: what the stream is for, e.g. ``"dali", epoch`` or ``"search", "epoch", 3``.

    Returns:
        An integer in ``[0, 2**31 - 1)``, valid for torch, numpy and DALI alike.

    Example:
        >>> derive_seed(0, "dali", 3) == derive_seed(0, "dali", 3) != derive_seed(0, "dali", 4)
        True
    """
    text = json.dumps([int(seed), *names], separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 1)
