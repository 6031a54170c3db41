"""The one device vocabulary of every command, recipe and configuration.

``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``, ``cuda`` (the current or local
rank's GPU) or ``cuda:N``. DALI's placement (``cpu``/``gpu`` and a device id) is derived from it
by :func:`dra_dali.dali.loader.dali_placement`.

Example:
    >>> valid_device("cuda:1"), valid_device("gpu0")
    (True, False)
    >>> resolve_device("cpu")
    'cpu'
"""

from __future__ import annotations

__all__ = ["DEVICE_WORDS", "valid_device", "resolve_device"]

#: What the error messages and the CLI help list.
DEVICE_WORDS = "auto, cpu, cuda or cuda:N"


def valid_device(device: str) -> bool:
    """Whether ``device`` is one of the device words: auto, cpu, cuda, cuda:N."""
    text = str(device)
    return text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit())


def resolve_device(device: str) -> str:
    """``device`` with ``auto`` replaced by ``cuda`` when torch sees a GPU, else ``cpu``."""
    if str(device) != "auto":
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
