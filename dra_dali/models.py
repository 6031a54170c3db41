"""Model registry: built-in CIFAR-style networks, torchvision and timm models, one name space.

Names:

* built-ins (nothing extra to install): ``resnet-tiny`` (a ResNet-8 with 16/32/64 channels, for
  CPU runs and the demo), ``resnet-20`` (He et al.'s CIFAR ResNet-20), ``wrn-28-10`` and
  ``wrn-40-2`` (Wide ResNets as used in the DRA paper's CIFAR experiments); any ``wrn-D-K`` with
  ``(D - 4) % 6 == 0`` works too;
* torchvision classification models by their torchvision name (``resnet18``, ``resnet50``,
  ``resnet101``, ``efficientnet_b0``, ...) when torchvision is installed;
* timm models as ``timm:NAME`` (``timm:resnet200``, ``timm:deit_tiny_patch16_224``) when timm is
  installed; a bare name that torchvision does not know but timm does (``resnet200``) also
  resolves to timm.

Both extras come with ``pip install 'dra-dali[models]'``.

Example:
    >>> from dra_dali.models import create_model
    >>> model = create_model("resnet-tiny", num_classes=10)
    >>> sum(p.numel() for p in model.parameters()) < 100_000
    True
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any, Callable

import click
import torch
from torch import nn

from dra_dali.errors import DraDaliError

__all__ = ["UnknownModelError", "create_model", "available_models", "BUILTIN_MODELS"]

_EXTRA = "pip install 'dra-dali[models]'"


class UnknownModelError(click.ClickException, DraDaliError):
    """A model name the registry cannot resolve; the message lists the known names and the extra
    to install. A ``ValueError`` for library callers and a ``click.ClickException`` so a CLI
    command that lets it propagate prints the message without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


# ----- built-in networks ------------------------------------------------------------------------
class _BasicBlock(nn.Module):
    """Post-activation ResNet basic block (He et al. 2016), projection shortcut when needed."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, three stages (stride 1, 2, 2), global average pooling.

    Works at any input size (the pooling is adaptive); designed for 32-64 px images.

    Args:
        num_classes: output logits.
        blocks: basic blocks per stage (1 -> ResNet-8, 3 -> ResNet-20).
        widths: channels of the three stages.
    """

    def __init__(self, num_classes: int, blocks: int = 1,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        c_in = widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks):
                layers.append(_BasicBlock(c_in, width, 2 if (stage > 0 and i == 0) else 1))
                c_in = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _WideBlock(nn.Module):
    """Pre-activation wide basic block (Zagoruyko & Komodakis 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.equal = c_in == c_out and stride == 1
        self.shortcut: nn.Module = (nn.Identity() if self.equal else
                                    nn.Conv2d(c_in, c_out, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + (x if self.equal else self.shortcut(pre))


class WideResNet(nn.Module):
    """Wide ResNet WRN-depth-widen for 32 px images (the DRA paper's CIFAR models).

    Args:
        num_classes: output logits.
        depth: total depth; ``(depth - 4) % 6 == 0`` (28, 40, ...).
        widen: width multiplier k (channels 16k, 32k, 64k).
        dropout: dropout between the two convolutions of a block.

    Raises:
        ValueError: for a depth that does not fit the WRN layout.
    """

    def __init__(self, num_classes: int, depth: int = 28, widen: int = 10,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 28, 40, ...), "
                             f"got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for stage, width in enumerate(widths[1:]):
            for i in range(n):
                blocks.append(_WideBlock(c_in, width, 2 if (stage > 0 and i == 0) else 1, dropout))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c_in)
        self.fc = nn.Linear(c_in, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


#: Built-in model names and their constructors ``(num_classes, **kwargs) -> nn.Module``.
BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet-tiny": lambda num_classes, **kw: CifarResNet(num_classes, blocks=1, **kw),
    "resnet-20": lambda num_classes, **kw: CifarResNet(num_classes, blocks=3, **kw),
    "wrn-28-10": lambda num_classes, **kw: WideResNet(num_classes, depth=28, widen=10, **kw),
    "wrn-40-2": lambda num_classes, **kw: WideResNet(num_classes, depth=40, widen=2, **kw),
}
_WRN = re.compile(r"^wrn-(\d+)-(\d+)$")


# ----- optional registries ----------------------------------------------------------------------
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _torchvision_names() -> list[str]:
    if not _installed("torchvision"):
        return []
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _timm_known(name: str) -> bool:
    if not _installed("timm"):
        return False
    import timm

    return bool(timm.is_model(name))


def available_models() -> list[str]:
    """Names :func:`create_model` accepts right now.

    Returns:
        The built-in names, then the torchvision classification models (if torchvision is
        installed), then ``"timm:*"`` as a placeholder for any timm model name (if timm is
        installed; ``timm.list_models()`` lists them).

    Example:
        >>> "resnet-tiny" in available_models()
        True
    """
    names = list(BUILTIN_MODELS) + _torchvision_names()
    if _installed("timm"):
        names.append("timm:*")
    return names


def _unknown(name: str, why: str = "") -> UnknownModelError:
    builtins = ", ".join(BUILTIN_MODELS) + ", wrn-D-K"
    missing = [m for m in ("torchvision", "timm") if not _installed(m)]
    hint = (f" {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
            f"for torchvision names (resnet18, resnet50, resnet101, ...) and timm:NAME "
            f"(timm:resnet200, ...) run {_EXTRA}." if missing else
            " torchvision names (resnet18, resnet50, ...) and timm:NAME (timm.list_models() "
            "lists them) are available.")
    return UnknownModelError(f"unknown model {name!r}{why}. Built-in models: {builtins}.{hint}")


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build an untrained classification model by name.

    Args:
        name: a built-in name (``resnet-tiny``, ``resnet-20``, ``wrn-28-10``, ``wrn-40-2``,
            ``wrn-D-K``), a torchvision model name (``resnet50``), or ``timm:NAME``.
        num_classes: number of output logits.
        **kwargs: passed to the constructor (built-in ResNet: ``widths``; WRN: ``dropout``;
            torchvision: e.g. ``weights``; timm: e.g. ``pretrained``, ``drop_rate``).

    Returns:
        The model (a ``torch.nn.Module``) with ``num_classes`` outputs.

    Raises:
        UnknownModelError: the name is not known (or needs an extra that is not installed); the
            message lists the built-ins and names ``pip install 'dra-dali[models]'``.
        ValueError: ``num_classes`` < 1.

    Example:
        >>> create_model("wrn-40-2", num_classes=100).fc.out_features
        100
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    key = name.strip()
    if key.lower() in BUILTIN_MODELS:
        return BUILTIN_MODELS[key.lower()](num_classes, **kwargs)
    wrn = _WRN.match(key.lower())
    if wrn:
        try:
            return WideResNet(num_classes, depth=int(wrn.group(1)), widen=int(wrn.group(2)),
                              **kwargs)
        except ValueError as exc:
            raise _unknown(name, f" ({exc})") from None
    if key.startswith("timm:"):
        timm_name = key[len("timm:"):]
        if not _installed("timm"):
            raise _unknown(name, " (timm is not installed)")
        if not _timm_known(timm_name):
            raise _unknown(name, f" (timm has no model {timm_name!r})")
        import timm

        return timm.create_model(timm_name, num_classes=num_classes, **kwargs)
    if key in _torchvision_names():
        import torchvision

        return torchvision.models.get_model(key, num_classes=num_classes, **kwargs)
    if _timm_known(key):
        import timm

        return timm.create_model(key, num_classes=num_classes, **kwargs)
    raise _unknown(name)
