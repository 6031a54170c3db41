"""The operator catalog contract, checked over every operator."""

import math

import numpy as np
import pytest

from dra_dali.ops import (
    OP_NAMES,
    OPS,
    PAPER_OPS,
    parameter,
    parameter_array,
    translate_range_px,
)
from tests.pil_reference import REFERENCE_OPS

PAPER_ORDER = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
               "Sharpness", "Contrast", "Cutout", "Solarize", "Posterize", "Equalize",
               "AutoContrast", "Invert", "SolarizeAdd")

# (op, m, sign, resolution) -> expected parameter, straight from DESIGN §2.
EXPECTED = {
    "ShearX": {0: 0.0, 0.5: 0.15, 1: 0.3, 3: 0.9},
    "ShearY": {0: 0.0, 0.5: 0.15, 1: 0.3, 3: 0.9},
    "TranslateX": {0: 0.0, 0.5: 50.0, 1: 100.0, 3: 224.0},  # 300 px clamps at the image side
    "TranslateY": {0: 0.0, 0.5: 50.0, 1: 100.0, 3: 224.0},
    "Rotate": {0: 0.0, 0.5: 15.0, 1: 30.0, 3: 90.0},
    "Brightness": {0: 1.0, 0.5: 1.45, 1: 1.9, 3: 3.7},
    "Color": {0: 1.0, 0.5: 1.45, 1: 1.9, 3: 3.7},
    "Sharpness": {0: 1.0, 0.5: 1.45, 1: 1.9, 3: 3.7},
    "Contrast": {0: 1.0, 0.5: 1.45, 1: 1.9, 3: 3.7},
    "Cutout": {0: 0.0, 0.5: 0.1, 1: 0.2, 3: 0.6},
    "Solarize": {0: 256.0, 0.5: 128.0, 1: 0.0, 3: 0.0},
    "Posterize": {0: 0.0, 0.5: 2.0, 1: 4.0, 3: 7.0},  # floor(12) clamps at 7 (keeps 1 bit)
    "Equalize": {0: 0.0, 0.5: 0.0, 1: 0.0, 3: 0.0},
    "AutoContrast": {0: 0.0, 0.5: 0.0, 1: 0.0, 3: 0.0},
    "Invert": {0: 0.0, 0.5: 0.0, 1: 0.0, 3: 0.0},
    "SolarizeAdd": {0: 0.0, 0.5: 55.0, 1: 110.0, 3: 255.0},
    "Identity": {0: 0.0, 0.5: 0.0, 1: 0.0, 3: 0.0},
}
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
          "Sharpness", "Contrast"}
MAGNITUDE_FREE = {"Equalize", "AutoContrast", "Invert", "Identity"}


def test_catalog_names_and_order():
    assert PAPER_OPS == PAPER_ORDER
    assert OP_NAMES == PAPER_ORDER + ("Identity",)
    assert set(OPS) == set(EXPECTED) == REFERENCE_OPS


@pytest.mark.parametrize("name", OP_NAMES)
def test_flags(name):
    spec = OPS[name]
    assert spec.signed == (name in SIGNED)
    assert spec.magnitude_free == (name in MAGNITUDE_FREE)
    assert spec.kind == ("geometric" if name in {"ShearX", "ShearY", "TranslateX", "TranslateY",
                                                   "Rotate"} else "color")
    assert spec.lower <= spec.identity <= spec.upper


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("m", [0, 0.5, 1, 3])
def test_mapping(name, m):
    assert parameter(name, m) == pytest.approx(EXPECTED[name][m])


@pytest.mark.parametrize("name", sorted(SIGNED))
def test_signed_operators_mirror_about_identity(name):
    spec = OPS[name]
    for m in (0.3, 1.0):
        up, down = parameter(name, m, +1), parameter(name, m, -1)
        assert up - spec.identity == pytest.approx(spec.identity - down)


def test_extended_scale_clamps_at_valid_bounds():
    assert parameter("Rotate", 10.0, sign=-1) == -180.0
    assert parameter("TranslateX", 3.0, sign=-1, resolution=32) == -30.0
    assert parameter("TranslateX", 5.0, resolution=32) == 32.0
    assert parameter("Solarize", 2.0) == 0.0


@pytest.mark.parametrize("name", ["Brightness", "Color", "Sharpness", "Contrast"])
def test_blend_factors_extrapolate_below_zero(name):
    """Issue 9 item 7: as in the DRA authors' code, no clamp at 0 (the image is clipped)."""
    assert parameter(name, 3.0, sign=-1) == pytest.approx(1 - 2.7)
    assert parameter(name, 1.5, sign=-1) == pytest.approx(1 - 1.35)
    assert OPS[name].lower == -math.inf


def test_unsigned_operators_ignore_sign():
    for name in set(OP_NAMES) - SIGNED:
        assert parameter(name, 0.7, sign=-1) == parameter(name, 0.7, sign=+1)


def test_translate_ranges():
    assert translate_range_px(224) == 100.0
    assert translate_range_px(32) == 10.0
    assert translate_range_px(64) == pytest.approx(20.0)
    assert translate_range_px(448) == pytest.approx(200.0)
    assert parameter("TranslateY", 1.0, resolution=32) == 10.0
    with pytest.raises(ValueError, match="resolution"):
        translate_range_px(0)


def test_posterize_floors():
    assert parameter("Posterize", 0.249) == 0.0
    assert parameter("Posterize", 0.25) == 1.0
    assert parameter("Posterize", 0.99) == 3.0


def test_vectorised_matches_scalar():
    m = np.linspace(0, 3, 13)
    signs = np.where(np.arange(13) % 2, 1, -1)
    for name in OP_NAMES:
        vector = parameter_array(name, m, signs, resolution=32)
        scalar = [parameter(name, a, s, resolution=32) for a, s in zip(m, signs)]
        assert np.allclose(vector, scalar)
        assert np.all(np.isfinite(vector))


def test_unknown_operator_lists_catalog():
    with pytest.raises(KeyError, match="ShearX"):
        parameter("Blur", 0.5)


def test_magnitude_slopes_are_finite():
    for spec in OPS.values():
        assert math.isfinite(spec.slope_at(224)) and math.isfinite(spec.identity)
