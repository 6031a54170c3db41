"""Where the shipped recipes live: ``search/*.yaml`` and ``pipelines/*.yaml``.

In a checkout (or an editable install) they are the folders at the repository top; a regular
``pip install`` (or a wheel) puts copies into ``<prefix>/share/dra-dali/``, ``pip install
--user`` into ``<user base>/share/dra-dali/`` (``python -m site --user-base``);
``$DRA_DALI_RECIPES`` (a folder holding ``search/`` and ``pipelines/``) comes first when set.
One lookup serves every command.
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path
from typing import Literal

__all__ = ["RecipeKind", "recipe_dirs", "recipe_names", "find_recipe"]

RecipeKind = Literal["search", "pipelines"]


def recipe_dirs(kind: RecipeKind) -> list[Path]:
    """Folders searched for recipes of ``kind``, in order, those that exist.

    Example:
        >>> [p.name for p in recipe_dirs("pipelines")][:1]
        ['pipelines']
    """
    candidates = []
    if os.environ.get("DRA_DALI_RECIPES"):
        candidates.append(Path(os.environ["DRA_DALI_RECIPES"]) / kind)
    candidates.append(Path(__file__).resolve().parents[1] / kind)   # checkout / editable install
    candidates.append(Path(sys.prefix) / "share" / "dra-dali" / kind)  # regular install
    candidates.append(Path(site.getuserbase()) / "share" / "dra-dali" / kind)  # --user install
    return [p for p in candidates if p.is_dir()]


def recipe_names(kind: RecipeKind) -> list[str]:
    """Names (file stems) of the shipped recipes of ``kind``."""
    return sorted({p.stem for folder in recipe_dirs(kind) for p in folder.glob("*.yaml")})


def find_recipe(kind: RecipeKind, recipe: str | Path) -> Path | None:
    """A recipe file: ``recipe`` itself if it is a file, else the shipped recipe of that name.

    Args:
        kind: ``"search"`` or ``"pipelines"``.
        recipe: a path, or a name such as ``demo`` or ``imagenet``.

    Returns:
        The file, or ``None`` when neither exists (callers raise their own error listing
        :func:`recipe_names`).
    """
    path = Path(recipe)
    if path.is_file():
        return path
    if path.suffix or len(path.parts) != 1:
        return None
    for folder in recipe_dirs(kind):
        if (folder / f"{recipe}.yaml").is_file():
            return folder / f"{recipe}.yaml"
    return None
