"""Keys and values renamed so that one concept has one name across commands and recipes.

Recipes, training configurations and run directories written by earlier versions keep loading:
an old key or value is translated to its new name with a :class:`FutureWarning` that says what
to write instead.

Example:
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     translate({"size": 32, "crop": "pad_crop"}, PIPELINE, "recipe 'cifar'")
    {'resolution': 32, 'crop': 'pad'}
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Renames", "PIPELINE", "SEARCH", "TRAIN", "translate"]


@dataclass(frozen=True)
class Renames:
    """Old key -> new key, and (key, old value) -> new value, of one kind of file."""

    keys: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[tuple[str, str], str] = field(default_factory=dict)


#: Pipeline recipes (``pipelines/*.yaml``, :class:`dra_dali.dali.PipelineRecipe`).
PIPELINE = Renames(keys={"size": "resolution", "scale": "crop_scale", "ratio": "crop_ratio",
                         "num_threads": "threads"},
                   values={("crop", "pad_crop"): "pad"})
#: Search recipes (``search/*.yaml``, :class:`dra_dali.search.SearchConfig`).
SEARCH = Renames(keys={"lr_batch": "lr_reference_batch"},
                 values={("crop", "rrc"): "random_resized"})
#: Training configurations (``train --config``, a train run's ``config.yaml``).
TRAIN = Renames(keys={"workers": "threads"})


def translate(data: Mapping[str, Any], renames: Renames, where: str) -> dict[str, Any]:
    """``data`` with renamed keys and values replaced by their new names (warning once each).

    Args:
        data: a mapping as read from YAML.
        renames: the renames of this kind of file.
        where: what to call the file in the warning (its path or recipe name).

    Returns:
        A new dict; ``data`` itself is not changed. A key given under both its old and its new
        name keeps the new one's value.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        new_key = renames.keys.get(key, key) if isinstance(key, str) else key
        if new_key != key:
            _warn(where, f"key '{key}' is now '{new_key}'")
            if new_key in data:
                continue
        if isinstance(value, str) and (new_key, value) in renames.values:
            new_value = renames.values[(new_key, value)]
            _warn(where, f"{new_key}: '{value}' is now '{new_value}'")
            value = new_value
        out[new_key] = value
    return out


def _warn(where: str, what: str) -> None:
    warnings.warn(f"{where}: {what} (one name per concept across recipes); please update the "
                  "file", FutureWarning, stacklevel=4)
