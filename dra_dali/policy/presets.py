"""Ready policies by name: RandAugment, RA* (the DRA paper's baseline), timm strings, TrivialAugment
and the DRA paper's searched policies.

Presets pin their operator lists (``PAPER_OPS``, the paper's 16, never the whole catalog), so a new
catalog operator changes no preset and no preset hash.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any, Sequence

from dra_dali.ops import PAPER_OPS
from dra_dali.policy.model import Layer, Policy, PolicyError
from dra_dali.policy.parse import MAX_LAYERS, MAX_SCALE

__all__ = ["preset", "preset_names"]

# ----- presets ------------------------------------------------------------------------------
# Presets pin their operator lists: a new catalog operator changes no preset and no preset hash.
# PAPER_OPS is the DRA paper's 16 (RandAugment's 14, Cutout, SolarizeAdd), never the catalog.
# timm's RandAugment op set: the paper's 16 without Cutout (timm applies erasing separately).
_TIMM_OPS = tuple(name for name in PAPER_OPS if name != "Cutout")
#: Fill of the RandAugment / TrivialAugment / timm presets: TF-models RandAugment and DALI use 128.
_RA_FILL = 128
#: Fill of the paper's searched policies: the DRA authors fill 0 in search and retraining.
_PAPER_FILL = 0


def _paper_policies() -> dict[str, Any]:
    text = resources.files("dra_dali.presets").joinpath("dra_paper_policies.json").read_text()
    return json.loads(text)


def preset_names() -> list[str]:
    """Names accepted by :meth:`Policy.preset` (patterns shown for the parametrised families)."""
    paper = [f"dra-{key}" for key in _paper_policies()["policies"]]
    return ["ra-n{N}-m{M}[-mstd{S}]", "rastar-n{N}-m{M}",
            "rand-m{M}-n{N}[-mstd{S}][-mmax{X}][-p{P}]", "ta"] + paper


def _uniform_layers(depth: int, n_ops: int, mean: float, std: float,
                    dist: str = "normal") -> tuple[Layer, ...]:
    zeros = (0.0,) * n_ops
    return tuple(Layer(zeros, (mean,) * n_ops, (std,) * n_ops, dist) for _ in range(depth))


def _randaugment(n: int, m: float, mstd: float, scale: float, p: tuple[float, float],
                 ops: Sequence[str], name: str) -> Policy:
    if not 1 <= n <= MAX_LAYERS:
        raise PolicyError(f"preset {name!r}: the number of layers N must lie in "
                          f"[1, {MAX_LAYERS}], got {n}")
    if not scale <= MAX_SCALE:
        raise PolicyError(f"preset {name!r}: the magnitude M must be at most "
                          f"{10 * MAX_SCALE:g} (scale {MAX_SCALE:g}), got {10 * scale:g}")
    if mstd > 100:  # timm: mstd > 100 means uniform magnitude in [0, m]; uniform over [0, scale]
        layers = _uniform_layers(n, len(ops), 0.0, 0.0, "uniform")
    else:
        layers = _uniform_layers(n, len(ops), m / 10.0, mstd / 10.0)
    return Policy(tuple(ops), layers, scale=scale, apply_prob=p, fill=_RA_FILL,
                  provenance={"method": "preset", "preset": name})


_RA = re.compile(r"^ra-n(\d+)-m(\d+(?:\.\d+)?)(?:-mstd(\d+(?:\.\d+)?))?$")
_RASTAR = re.compile(r"^rastar-n(\d+)-m(\d+(?:\.\d+)?)$")
#: RA*, the DRA paper's RandAugment baseline: each layer applies its operator with p ~ U(0.2, 0.8).
_RASTAR_APPLY_PROB = (0.2, 0.8)


def preset(name: str) -> Policy:
    """The preset ``name`` (see :meth:`Policy.preset`)."""
    if not isinstance(name, str):
        raise PolicyError(f"preset name must be a string, got {name!r}")
    if name == "ta":
        # TrivialAugment: one layer, uniform choice, magnitude uniform over the whole range.
        return Policy(PAPER_OPS, _uniform_layers(1, len(PAPER_OPS), 0.0, 0.0, "uniform"),
                      apply_prob=(1.0, 1.0), fill=_RA_FILL,
                      provenance={"method": "preset", "preset": "ta"})
    match = _RA.match(name)
    if match:
        n, m, mstd = int(match[1]), float(match[2]), float(match[3] or 0.0)
        return _randaugment(n, m, mstd, max(1.0, m / 10.0), (1.0, 1.0), PAPER_OPS, name)
    match = _RASTAR.match(name)
    if match:
        n, m = int(match[1]), float(match[2])
        return _randaugment(n, m, 0.0, max(1.0, m / 10.0), _RASTAR_APPLY_PROB, PAPER_OPS, name)
    if name.startswith("rand-"):
        return _timm_preset(name)
    if name.startswith("dra-"):
        return _paper_preset(name)
    raise PolicyError(f"unknown preset {name!r}; known: {', '.join(preset_names())}")


def _paper_preset(name: str) -> Policy:
    data = _paper_policies()
    key = name[len("dra-"):]
    if key not in data["policies"]:
        raise PolicyError(f"unknown preset {name!r}; the paper's policies are: "
                          + ", ".join(f"dra-{k}" for k in data["policies"]))
    entry = data["policies"][key]
    layers = tuple(Layer(tuple(w), tuple(mu), tuple(sd))
                   for w, mu, sd in zip(entry["W"], entry["MEAN"], entry["STD"]))
    return Policy(tuple(data["ops"]), layers, resolution=int(entry["resolution"]),
                  scale=float(entry["scale"]), apply_prob=tuple(data["apply_prob_range"]),
                  fill=_PAPER_FILL,
                  provenance={"method": "dra", "preset": name,
                              "source": "Xiao et al., Differentiable RandAugment, IEEE TIP "
                                        "2023 (authors' released policy)",
                              "dataset_model": key})


def _timm_preset(name: str) -> Policy:
    """timm ``rand-`` config strings: m, n, mstd, mmax, p are mapped; inc is accepted.

    The mapping is approximate in two places: the operators follow this catalog's TF/PIL semantics
    (timm's ``inc1`` increasing variants; ``inc0`` is not reproduced) and translations use the
    catalog's range (100 px at 224, about timm's 0.45 of the image size).
    """
    values = {"m": 9.0, "n": 2, "mstd": 0.0, "mmax": 10.0, "p": 0.5}
    for part in name.split("-")[1:]:
        key = re.match(r"^[a-z]+", part)
        key = key[0] if key else ""
        raw = part[len(key):]
        if key not in {"m", "n", "mstd", "mmax", "p", "inc"}:
            raise PolicyError(f"preset {name!r}: unknown timm RandAugment key {part!r}; "
                              "supported: m, n, mstd, mmax, p, inc")
        try:
            values[key] = int(raw) if key == "n" else float(raw)
        except ValueError:
            raise PolicyError(f"preset {name!r}: {key} needs a number, got {raw!r}") from None
    if not 0 <= values["p"] <= 1:
        raise PolicyError(f"preset {name!r}: p must lie in [0, 1], got {values['p']}")
    return _randaugment(int(values["n"]), values["m"], values["mstd"],
                        max(values["mmax"], 1e-6) / 10.0, (values["p"], values["p"]), _TIMM_OPS,
                        name)
