"""Search configuration: one dataclass, loaded from a recipe YAML (``search/*.yaml``) + overrides.

Every recipe key is a field of :class:`SearchConfig`; unknown keys are refused, naming them.
Command-line flags and ``--set key=value`` override recipe values; the resolved configuration is
written into the run directory as ``config.yaml``.

Example:
    >>> cfg = SearchConfig.from_recipe(None, {"epochs": 2, "model": "resnet-tiny"})
    >>> cfg.epochs, cfg.effective_lr
    (2, 0.0125)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dra_dali import renamed
from dra_dali.devices import DEVICE_WORDS, valid_device
from dra_dali.errors import DraDaliError
from dra_dali.ops import OP_NAMES, OPS, PAPER_OPS
from dra_dali.recipes import find_recipe, recipe_names
from dra_dali.safe_yaml import load_yaml

__all__ = ["SearchConfig", "ConfigError"]


class ConfigError(DraDaliError):
    """A recipe or override is invalid; the message names the key (and the file)."""


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs; the field names are the recipe keys.

    Attributes:
        method: search method (:data:`dra_dali.search.methods.METHODS`: ``dra``, ``ddas``, ...).
        method_options: the method's own keys; a recipe gives them under the method's name
            (``ddas: {policies_per_step: 3}``), validated by the method.
        data: image folder or file list the proxy set is sampled from.
        val_data: optional image folder / list for the policy-update half (same classes).
        skip_bad_files: exclude unusable image files (with a warning; listed in the run
            directory's ``excluded_files.txt``) instead of stopping; a resumed search excludes
            the same files.
        model: model registry name (:func:`dra_dali.models.create_model`).
        proxy_classes: classes sampled for the proxy task (``null``: all).
        images_per_class: images per class in the proxy set (``null``: all); without
            ``val_data`` they are split into a model half (``K - K // 2``) and a policy half
            (``K // 2``); with ``val_data`` the model half takes ``K - K // 2`` per class from
            ``data`` and the policy half ``K // 2`` per class from ``val_data``.
        val_images_per_class: size per class of the second half (DRA's policy half, DDAS's
            validation half) instead of ``K // 2``; the model half keeps the rest of ``K``
            (DDAS on ImageNet: ``images_per_class: 70``, ``val_images_per_class: 20``).
        resolution: training resolution of the search (and of the policy).
        decode_size: side of the square the proxy images are decoded to before crop
            (``null``: ``resolution`` for ``crop: pad``, ``8/7 * resolution`` otherwise).
        crop: ``random_resized`` (random-resized crop), ``pad`` (pad-and-crop, CIFAR),
            ``center`` (the stored square resized to ``8/7 * resolution``, the central
            ``resolution`` square kept: ImageNet's resize 256, centre crop 224) or ``none`` (the
            stored square resized to ``resolution``).
        crop_scale: area range of the random-resized crop.
        pad: padding in pixels for ``crop: pad``.
        flip: random horizontal flip (before the policy).
        policy_crop: the policy half's crop: ``same`` (``crop`` and ``flip``, like the model
            half), or ``center`` / ``none`` as for ``crop``, without flip (the DRA authors:
            ``none`` on CIFAR, ``center`` on ImageNet).
        cutout: side in pixels of a Cutout applied after the policy on the model step (0: off).
        cutout_policy_step: apply that Cutout to the policy step's augmented batch too (the DRA
            authors' CIFAR search: Cutout sits inside the model, in both steps).
        model_args: keyword arguments of the model constructor (``{dropout: 0.3}`` for
            ``wrn-*``, as the DRA authors' CIFAR search).
        fill: grey level 0-255 of the pixels the geometric operators bring in from outside the
            image (the DRA authors fill 0); written into the searched policy.
        normalize: per-channel mean and std the model sees after augmentation.
        depth: augmentation layers.
        ops: candidate operators (catalog names).
        scale: magnitudes are clipped to ``[0, scale]``.
        apply_prob: per-layer apply probability range.
        temperature: Gumbel-softmax temperature.
        sampling: ``image`` (operator, magnitude, sign and apply coin drawn per image, as the
            DRA authors do; default) or ``batch`` (one operator per batch and layer).
        init_logit, init_mean, init_std: initial policy parameters.
        learn_w, learn_mean, learn_std, op_gradient, kl_weight: ablation switches
            (``kl_weight: 0`` turns the KL term off).
        epochs, batch_size: passes over the model half and its batch size.
        val_batch_size: batch size of the second half (DRA's policy half, DDAS's validation
            half; ``null``: ``batch_size``).
        lr, lr_reference_batch: model SGD learning rate ``lr * batch_size /
            lr_reference_batch`` (cosine decay).
        momentum, nesterov, weight_decay, grad_clip: model optimiser.
        policy_lr, policy_betas, policy_weight_decay: the policy's AdamW.
        seed: seed of every random draw (proxy sampling, model init, augmentation).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        threads: torch CPU threads (``null``: torch's default).
    """

    method: str = "dra"
    method_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data: str | None = None
    val_data: str | None = None
    skip_bad_files: bool = False
    model: str = "resnet-tiny"
    proxy_classes: int | None = None
    images_per_class: int | None = None
    val_images_per_class: int | None = None
    resolution: int = 32
    decode_size: int | None = None
    crop: str = "random_resized"
    crop_scale: tuple[float, float] = (0.05, 1.0)
    pad: int = 4
    flip: bool = True
    policy_crop: str = "same"
    cutout: int = 0
    cutout_policy_step: bool = False
    model_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fill: int = 0
    normalize: tuple[tuple[float, float, float], tuple[float, float, float]] = (
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    depth: int = 2
    ops: tuple[str, ...] = PAPER_OPS
    scale: float = 1.0
    apply_prob: tuple[float, float] = (0.2, 0.8)
    temperature: float = 0.5
    sampling: str = "image"
    init_logit: float = 1e-3
    init_mean: float = 0.5
    init_std: float = 0.1
    learn_w: bool = True
    learn_mean: bool = True
    learn_std: bool = True
    op_gradient: bool = True
    kl_weight: float = 1.0
    epochs: int = 20
    batch_size: int = 32
    val_batch_size: int | None = None
    lr: float = 0.1
    lr_reference_batch: int = 256
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    policy_lr: float = 5e-3
    policy_betas: tuple[float, float] = (0.5, 0.999)
    policy_weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None

    # ----- derived ---------------------------------------------------------------------------
    @property
    def effective_lr(self) -> float:
        """The model's peak learning rate, ``lr * batch_size / lr_reference_batch``."""
        return self.lr * self.batch_size / self.lr_reference_batch

    @property
    def stored_size(self) -> int:
        """Side of the decoded proxy images."""
        if self.decode_size is not None:
            return self.decode_size
        return self.resolution if self.crop == "pad" else round(self.resolution * 8 / 7)

    # ----- construction -----------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        """The top-level recipe keys (a method's own keys sit under its name)."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "method_options"]

    @property
    def options(self) -> Any:
        """The method's parsed ``Options`` (see :mod:`dra_dali.search.methods.base`)."""
        return self.__dict__["_options"]

    @classmethod
    def from_recipe(cls, recipe: str | Path | None = None,
                    overrides: Mapping[str, Any] | None = None,
                    settings: Mapping[str, Any] | None = None) -> "SearchConfig":
        """Load a recipe and apply overrides.

        Args:
            recipe: YAML file of ``key: value`` pairs, or the name of a shipped recipe
                (``demo``, ``imagenet-resnet50``, ``cifar10-wrn28-10``; ``None``: the defaults).
            overrides: values that replace the recipe's (CLI flags); ``None`` values are ignored.
            settings: ``key: value`` overrides applied last, where ``None`` sets the key to null
                (``--set key=value``; string values are parsed as YAML).

        Returns:
            The validated configuration.

        Raises:
            ConfigError: unknown recipe name, unreadable or non-mapping recipe, unknown keys
                (named), bad values.
        """
        values: dict[str, Any] = {}
        where = "defaults"
        if recipe is not None:
            found = find_recipe("search", recipe)
            if found is None:
                raise ConfigError(f"no search recipe {str(recipe)!r}: not a file, and not one of "
                                  f"the shipped recipes: {', '.join(recipe_names('search'))}")
            recipe = found
            where = str(recipe)
            loaded = load_yaml(Path(recipe), what="search recipe", error=ConfigError)
            if loaded is None:
                loaded = {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{recipe}: a recipe must be a mapping of key: value, got "
                                  f"{type(loaded).__name__}")
            values.update(renamed.translate(loaded, renamed.SEARCH, where))
        _refuse_unknown(values, where)
        extra = {k: v for k, v in (overrides or {}).items() if v is not None}
        _refuse_unknown(extra, "overrides")
        values.update(extra)
        for key, value in (settings or {}).items():
            if isinstance(value, str):
                value = load_yaml(value, what=str(key), error=ConfigError)
            section, dot, option = str(key).partition(".")
            if dot:  # a method option: --set ddas.lr=0.02
                _refuse_unknown({section: None}, "--set")
                nested = values.get(section)
                values[section] = {**(nested if isinstance(nested, dict) else {}), option: value}
            else:
                _refuse_unknown({key: value}, "--set")
                values[key] = value
        return cls.from_dict(values, where)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "config") -> "SearchConfig":
        """Build and validate from plain values (lists become tuples).

        Raises:
            ConfigError: unknown keys or invalid values, naming the key.
        """
        values = renamed.translate(values, renamed.SEARCH, where)
        _refuse_unknown(values, where)
        method = str(values.get("method", cls.method))
        sections = {k: v for k, v in values.items() if k in _method_names()}
        for name in sections:
            if name != method:
                raise ConfigError(f"{where}: {name}: options of method {name!r}, but method is "
                                  f"{method!r}")
        options = sections.get(method) or {}
        if not isinstance(options, Mapping):
            raise ConfigError(f"{where}: {method}: must be a mapping of the method's options, "
                              f"got {options!r}")
        converted: dict[str, Any] = {"method_options": dict(options)}
        for f in dataclasses.fields(cls):
            if f.name in values and f.name != "method_options":
                default = f.default if f.default_factory is dataclasses.MISSING \
                    else f.default_factory()
                converted[f.name] = _convert(f.name, values[f.name], default, where)
        cfg = cls(**converted)
        cfg._check(where)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), as written to ``config.yaml``."""
        def plain(v: Any) -> Any:
            if isinstance(v, Mapping):
                return {k: plain(i) for k, i in v.items()}
            return [plain(i) for i in v] if isinstance(v, (tuple, list)) else v
        values = {k: plain(getattr(self, k)) for k in self.keys()}
        if self.method_options:
            values[self.method] = plain(self.method_options)
        return values

    def replace(self, **changes: Any) -> "SearchConfig":
        """A validated copy with some fields changed."""
        return SearchConfig.from_dict({**self.to_dict(), **changes}, "replace")

    def _check(self, where: str) -> None:
        self._check_bounds(where)
        self._check_counts(where)
        self._check_choices_and_ranges(where)
        self._check_ops(where)
        self._parse_options(where)

    def _bad(self, where: str, key: str, why: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {why}, got {getattr(self, key)!r}")

    def _check_counts(self, where: str) -> None:
        for key in _AT_LEAST_ONE:
            if getattr(self, key) < 1:
                raise self._bad(where, key, "must be >= 1")
        for key in _OPTIONAL_AT_LEAST_ONE:
            value = getattr(self, key)
            if value is not None and value < 1:
                raise self._bad(where, key, "must be >= 1 or null")
        if self.images_per_class is not None and self.images_per_class < 2:
            raise self._bad(where, "images_per_class", "needs >= 2 (one image for each half)")
        for key in _POSITIVE:
            if not getattr(self, key) > 0:
                raise self._bad(where, key, "must be > 0")
        for key in _NON_NEGATIVE:
            if getattr(self, key) < 0:
                raise self._bad(where, key, "must be >= 0")

    def _check_choices_and_ranges(self, where: str) -> None:
        for key, (choices, why) in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise self._bad(where, key, why)
        if not 0 <= self.fill <= 255:
            raise self._bad(where, "fill", "must be a grey level in [0, 255]")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise self._bad(where, "crop_scale", "must satisfy 0 < lo <= hi <= 1")
        lo, hi = self.apply_prob
        if not 0 <= lo <= hi <= 1:
            raise self._bad(where, "apply_prob", "must satisfy 0 <= lo <= hi <= 1")
        if not 0 <= self.init_std <= 1 or not 0 <= self.init_mean <= self.scale:
            raise ConfigError(f"{where}: init_mean must lie in [0, scale] and init_std in [0, 1], "
                              f"got {self.init_mean}, {self.init_std}")
        if len(self.normalize) != 2 or any(len(v) != 3 for v in self.normalize) \
                or any(s <= 0 for s in self.normalize[1]):
            raise self._bad(where, "normalize",
                            "must be [[mean r, g, b], [std r, g, b]] with std > 0")
        if not valid_device(self.device):
            raise self._bad(where, "device", f"must be {DEVICE_WORDS}")

    def _check_ops(self, where: str) -> None:
        unknown = [o for o in self.ops if o not in OPS]
        if unknown or not self.ops:
            raise self._bad(where, "ops", f"unknown operator(s) {unknown}; the catalog has "
                            f"{', '.join(OP_NAMES)}" if unknown else "needs at least one operator")
        if len(set(self.ops)) != len(self.ops):
            raise self._bad(where, "ops", "operator names must be unique")

    def _check_bounds(self, where: str) -> None:
        """Every number finite (no NaN or inf), and below :data:`_UPPER` (before any work)."""
        for f in dataclasses.fields(self):
            for value in _numbers(getattr(self, f.name)):
                if not math.isfinite(value):
                    raise ConfigError(f"{where}: {f.name}: must be a finite number, got "
                                      f"{getattr(self, f.name)!r}")
        for key, upper in _UPPER.items():
            value = getattr(self, key)
            if value is not None and abs(value) > upper:
                raise ConfigError(f"{where}: {key}: {value!r} is out of range (at most {upper})")

    def _parse_options(self, where: str) -> None:
        from dra_dali.search.methods import OptionsError, get_method

        try:
            options = get_method(self.method).parse_options(self.method_options, self)
        except OptionsError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        self.__dict__["_options"] = options


_AT_LEAST_ONE = ("resolution", "depth", "epochs", "batch_size", "lr_reference_batch")
_OPTIONAL_AT_LEAST_ONE = ("proxy_classes", "images_per_class", "decode_size", "threads",
                          "val_batch_size", "val_images_per_class")
_POSITIVE = ("scale", "temperature", "lr", "policy_lr")
_NON_NEGATIVE = ("pad", "cutout", "weight_decay", "grad_clip", "kl_weight", "policy_weight_decay",
                 "momentum")
_CHOICES = {
    "crop": (("random_resized", "pad", "center", "none"),
             "must be one of random_resized, pad, center, none"),
    "policy_crop": (("same", "center", "none"), "must be one of same, center, none"),
    "sampling": (("image", "batch"), "must be 'image' (per image) or 'batch' (per batch)"),
}

#: Largest magnitude each recipe number may have: far beyond any sensible setting, so a value
#: past it is a typo or a crafted file (checked before any work, with the key named).
_UPPER = {"lr": 10.0, "policy_lr": 10.0, "scale": 10.0, "temperature": 100.0,
          "kl_weight": 1000.0, "weight_decay": 1.0, "policy_weight_decay": 1.0, "grad_clip": 1e6,
          "init_logit": 100.0, "init_mean": 10.0, "depth": 64, "epochs": 100_000,
          "batch_size": 1_000_000, "lr_reference_batch": 1_000_000, "resolution": 8192,
          "decode_size": 8192, "pad": 1024, "cutout": 8192, "proxy_classes": 1_000_000,
          "images_per_class": 10_000_000, "threads": 4096}


def _numbers(value: Any) -> list[float]:
    """The float values inside a field (tuples and nested tuples included)."""
    if isinstance(value, float):
        return [value]
    if isinstance(value, (tuple, list)):
        return [n for item in value for n in _numbers(item)]
    return []


def _method_names() -> list[str]:
    from dra_dali.search.methods import METHODS

    return list(METHODS)


def _refuse_unknown(values: Mapping[str, Any], where: str) -> None:
    known = set(SearchConfig.keys()) | set(_method_names())
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown recipe key(s) {unknown}; known keys: "
                          f"{', '.join(sorted(known))}")


def _convert(key: str, value: Any, default: Any, where: str) -> Any:
    """Coerce a YAML/CLI value to the type of the field's default."""
    if value is None:
        return None
    try:
        for kind, converter in _CONVERTERS:
            if isinstance(default, kind):
                return converter(key, value, default)
        if key in _OPTIONAL_AT_LEAST_ONE:
            return _to_int(key, value, default)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key}: cannot use {value!r} (expected a value like "
                          f"{default!r})") from None


def _to_mapping(key: str, value: Any, default: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = load_yaml(value, what=key, error=ConfigError)
    if not isinstance(value, Mapping):
        raise ValueError(value)
    return {str(k): v for k, v in value.items()}


def _to_bool(key: str, value: Any, default: Any) -> bool:
    if isinstance(value, str):
        if value.lower() in ("true", "yes", "1", "on"):
            return True
        if value.lower() in ("false", "no", "0", "off"):
            return False
    if not isinstance(value, bool):
        raise ValueError(value)
    return value


def _to_tuple(key: str, value: Any, default: tuple) -> tuple:
    if isinstance(value, str):
        value = load_yaml(value, what=key, error=ConfigError)
    if not isinstance(value, (list, tuple)):
        raise ValueError(value)
    if default and isinstance(default[0], tuple):
        return tuple(tuple(float(v) for v in row) for row in value)
    if default and isinstance(default[0], str):
        return tuple(str(v) for v in value)
    return tuple(float(v) for v in value)


def _to_float(key: str, value: Any, default: Any) -> float:
    return float(value)


def _to_int(key: str, value: Any, default: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


# Checked in this order: bool before int (a bool is an int in Python).
_CONVERTERS = ((dict, _to_mapping), (bool, _to_bool), (tuple, _to_tuple), (float, _to_float),
               (int, _to_int))
