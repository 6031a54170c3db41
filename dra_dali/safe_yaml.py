"""Read YAML from files nobody vetted: plain YAML only, with bounds on size, aliases and depth.

``yaml.safe_load`` runs no code, but a 1.5 KB file of nested aliases (a "billion laughs" bomb)
still expands into billions of nodes as soon as anything walks the result, and deep nesting hits
Python's recursion limit. :func:`load_yaml` first walks the parser's event stream (linear, no
recursion, nothing built) and counts every node as if each alias were expanded in place; it stops
at the first bound crossed. Only then does ``yaml.safe_load`` build the data. Every failure is one
line that names the file (or ``what``) and the reason.

Example:
    >>> load_yaml("a: [1, 2]", what="recipe")
    {'a': [1, 2]}
    >>> load_yaml("a: &x [1, 2]\\nb: *x")["b"]
    [1, 2]
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from dra_dali.errors import DraDaliError

__all__ = ["YamlError", "load_yaml", "MAX_BYTES", "MAX_NODES", "MAX_DEPTH"]

#: Largest file or text accepted (bytes). A 300-epoch schedule policy is well below 2 MiB.
MAX_BYTES = 8 * 1024 * 1024
#: Most nodes (scalars, lists, mappings; every alias counted as its expanded subtree).
MAX_NODES = 1_000_000
#: Deepest nesting of lists and mappings.
MAX_DEPTH = 64


class YamlError(DraDaliError):
    """A YAML file or text could not be read safely; the message names it and says why."""


def load_yaml(source: str | bytes | os.PathLike, what: str = "YAML", *,
              error: type[DraDaliError] = YamlError, max_bytes: int = MAX_BYTES,
              max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse YAML safely: plain data only (no tags), bounded size, alias expansion and depth.

    Args:
        source: a path (``pathlib.Path`` or any ``os.PathLike``) to read, or the YAML itself as
            ``str`` or ``bytes``.
        what: what the YAML is, for messages ("policy file", "search recipe", ...).
        error: the :class:`~dra_dali.errors.DraDaliError` subclass to raise (a reader keeps its
            own error type, e.g. ``PolicyError``).
        max_bytes: size limit of the file or text.
        max_nodes: limit on the nodes the data would have with every alias expanded.
        max_depth: limit on the nesting of lists and mappings.

    Returns:
        The parsed data (``None`` for an empty document).

    Raises:
        error: one line naming the file (or ``what``): unreadable, too large, binary or not
            UTF-8, not valid YAML (with line and column), a YAML tag, too many nodes after alias
            expansion, a recursive alias or too deep.
    """
    name, raw = _read(source, what, error, max_bytes)
    text = _decode(raw, name, error)
    # fewer brackets than the limit cannot nest deeper (the common case: no scan)
    if text.count("[") + text.count("{") > max_depth and _flow_depth(text, max_depth) > max_depth:
        raise error(f"{name}: nested deeper than {max_depth} levels")
    _check_events(text, name, error, max_nodes, max_depth)
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise error(f"{name}: {_one_line(exc)}") from None


def _read(source, what: str, error, max_bytes: int) -> tuple[str, bytes]:
    if isinstance(source, (str, bytes)):
        raw = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
        name = what
    else:
        path = Path(source)
        name = f"{what} {path}"
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise error(f"{name}: too large ({size} bytes; the limit is {max_bytes})")
            raw = path.read_bytes()
        except OSError as exc:
            raise error(f"{name}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        raise error(f"{name}: too large ({len(raw)} bytes; the limit is {max_bytes})")
    return name, raw


def _decode(raw: bytes, name: str, error) -> str:
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise error(f"{name}: binary data, not a YAML text file (NUL byte at offset {nul})")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{name}: not UTF-8 text (undecodable byte at offset {exc.start}); "
                    "is it a binary file?") from None


#: libyaml's safe loader where PyYAML has it (15x faster than the pure-Python one, measured on a
#: 200-layer policy), else the pure-Python one; both build plain data only.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_FLOW_SYNTAX = re.compile(r"""[\[\]{}'"#\\]""")
#: Characters after which a quote opens a quoted scalar (else it is part of a plain scalar: it's).
_SCALAR_STARTS = frozenset(":-[{,?\n")


def _flow_depth(text: str, limit: int) -> int:
    """Nesting of ``[ ]`` / ``{ }`` outside quoted scalars and comments, up to ``limit + 1``.

    PyYAML's scanner keeps a possible key open per flow level and re-checks them all at every
    token, so ``[[[[...`` takes minutes to parse at a few thousand levels (measured: 21 s for
    2,000): this linear scan refuses such nesting before the parser sees it.
    """
    depth = best = 0
    quote = None
    comment_end = -1
    for match in _FLOW_SYNTAX.finditer(text):
        at, char = match.start(), match.group()
        if at < comment_end:
            continue
        if quote is not None:
            if char == quote and not (quote == '"' and text[at - 1] == "\\"):
                quote = None
            continue
        if char in "'\"" and _opens_scalar(text, at):
            quote = char
        elif char == "#" and (at == 0 or text[at - 1] in " \t\n"):
            comment_end = text.find("\n", at) % (len(text) + 1)
        elif char in "[{":
            depth += 1
            best = max(best, depth)
            if best > limit:
                break
        elif char in "]}":
            depth = max(0, depth - 1)
    return best


def _opens_scalar(text: str, at: int) -> bool:
    """Whether the quote at ``at`` opens a quoted scalar (only blanks before it since a
    separator), rather than sitting inside a plain one."""
    back = at - 1
    while back >= 0 and text[back] in " \t":
        back -= 1
    return back < 0 or text[back] in _SCALAR_STARTS


def _check_events(text: str, name: str, error, max_nodes: int, max_depth: int) -> None:
    """Walk the event stream once: count nodes with aliases expanded, track depth and anchors."""
    anchor_size: dict[str, int] = {}
    open_frames: list[list] = []       # [anchor or None, nodes inside so far]
    total = 0
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            size = _node_size(event, anchor_size, open_frames, name, error)
            if size is None:
                continue
            total += size
            if open_frames:
                open_frames[-1][1] += size
            if total > max_nodes:
                raise error(f"{name}: more than {max_nodes} values once its aliases (*name) are "
                            "expanded; refusing it (a YAML alias bomb?)")
            if len(open_frames) > max_depth:
                raise error(f"{name}: nested deeper than {max_depth} levels")
    except yaml.YAMLError as exc:
        raise error(f"{name}: {_one_line(exc)}") from None


def _node_size(event, anchor_size: dict, open_frames: list, name: str, error) -> int | None:
    """Nodes an event adds (an alias adds its anchor's whole subtree); None for bookkeeping."""
    if isinstance(event, yaml.AliasEvent):
        if event.anchor not in anchor_size:
            raise error(f"{name}: alias *{event.anchor} refers to an anchor that is not complete "
                        "(recursive or undefined aliases are not allowed)")
        return anchor_size[event.anchor]
    if isinstance(event, yaml.ScalarEvent):
        if event.anchor is not None:
            anchor_size[event.anchor] = 1
        return 1
    if isinstance(event, yaml.CollectionStartEvent):
        open_frames.append([event.anchor, 0])
        return None
    if isinstance(event, yaml.CollectionEndEvent):
        anchor, inside = open_frames.pop()
        if anchor is not None:
            anchor_size[anchor] = inside + 1
        if open_frames:
            open_frames[-1][1] += inside
        return 1
    return None


def _one_line(exc: yaml.YAMLError) -> str:
    """A YAML error as one line: the problem and where (line, column)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    text = f"not valid YAML{where}: {problem}" + (f" ({context})" if context else "")
    if "could not determine a constructor" in str(exc):
        text = f"YAML tags such as !!python/object are not allowed{where}"
    return " ".join(text.split())
