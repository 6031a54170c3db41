"""Search methods: one module per method behind the protocol of :mod:`.base`.

:data:`METHODS` maps the recipe / ``--method`` name to the method class; each method module
registers itself with :func:`register`, and importing this package imports them all.

Example:
    >>> from dra_dali.search.methods import METHODS, get_method
    >>> "dra" in METHODS and get_method("dra").name == "dra"
    True
"""

from __future__ import annotations

from dra_dali.search.methods.base import (
    Batch,
    NoOptions,
    OptionsError,
    SearchMethod,
    StepContext,
)

__all__ = ["METHODS", "Batch", "NoOptions", "OptionsError", "SearchMethod", "StepContext",
           "get_method", "register"]

#: Registered methods by name, in registration order.
METHODS: dict[str, type[SearchMethod]] = {}


def register(cls: type[SearchMethod]) -> type[SearchMethod]:
    """Class decorator: add a :class:`SearchMethod` subclass to :data:`METHODS` under ``cls.name``.

    Raises:
        ValueError: the class has no name, or another class holds it.
    """
    if not cls.name:
        raise ValueError(f"{cls.__qualname__}: a search method needs a name")
    held = METHODS.get(cls.name)
    if held is not None and held is not cls:
        raise ValueError(f"search method {cls.name!r} is already registered by {held.__module__}")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[SearchMethod]:
    """The method registered as ``name``.

    Raises:
        OptionsError: no such method (the message lists the registered ones).
    """
    try:
        return METHODS[name]
    except KeyError:
        raise OptionsError(f"method: unknown search method {name!r}; available: "
                           f"{', '.join(sorted(METHODS))}") from None


# One import per method module; each registers itself.
from dra_dali.search.methods import das as _das  # noqa: E402,F401
from dra_dali.search.methods import ddas as _ddas  # noqa: E402,F401
from dra_dali.search.methods import dra as _dra  # noqa: E402,F401
from dra_dali.search.methods import faster_aa as _faster_aa  # noqa: E402,F401
