"""Policy model: validation messages, YAML round trip (fuzzed), presets, reference sampler."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dra_dali import Policy, PolicyError
from dra_dali.ops import OP_NAMES, OPS, PAPER_OPS
from dra_dali.policy import Layer

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dra_paper_policies.json"
PACKAGED = Path(__file__).resolve().parents[1] / "dra_dali" / "presets" / "dra_paper_policies.json"


def _valid() -> dict:
    return Policy.preset("dra-imagenet-resnet-50").to_dict()


# ----- round trip -----------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    policy = Policy.preset("dra-imagenet-resnet-200")
    path = policy.save(tmp_path / "p.yaml")
    loaded = Policy.load(path)
    assert loaded == policy
    assert loaded.to_yaml() == policy.to_yaml()
    assert not list(tmp_path.glob("*.tmp"))


_finite = st.floats(min_value=-50, max_value=50, allow_nan=False, allow_infinity=False)
_positive = st.floats(min_value=0, max_value=5, allow_nan=False, allow_infinity=False)


@st.composite
def policies(draw):
    ops = draw(st.lists(st.sampled_from(OP_NAMES), min_size=1, max_size=16, unique=True))
    n = len(ops)
    depth = draw(st.integers(1, 4))
    layers = [Layer(tuple(draw(st.lists(_finite, min_size=n, max_size=n))),
                    tuple(draw(st.lists(_positive, min_size=n, max_size=n))),
                    tuple(draw(st.lists(_positive, min_size=n, max_size=n))),
                    draw(st.sampled_from(["normal", "uniform"])))
              for _ in range(depth)]
    lo = draw(st.floats(0, 1))
    hi = draw(st.floats(lo, 1))
    return Policy(tuple(ops), tuple(layers), resolution=draw(st.integers(8, 1024)),
                  scale=draw(st.floats(0.01, 3.0)), apply_prob=(lo, hi),
                  provenance={"method": "fuzz", "seed": draw(st.integers(0, 10**6))})


@settings(max_examples=60, deadline=None)
@given(policies())
def test_round_trip_fuzzed(tmp_path_factory, policy):
    path = tmp_path_factory.mktemp("fuzz") / "p.yaml"
    policy.save(path)
    assert Policy.load(path) == policy
    assert Policy.from_dict(yaml.safe_load(policy.to_yaml())) == policy


# ----- validation: every error names its field -------------------------------------------------
def _set(data, path, value):
    """``data`` with the entry at ``path`` set to ``value`` (or deleted with ``_DELETE``)."""
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


def _mutate(path, value):
    return _set(_valid(), path, value)


_DELETE = object()
INVALID = [
    (("ops", 3), "Blur", r"ops\[3\]: unknown operator 'Blur'"),
    (("ops",), ["ShearX", "ShearX"], "ops: operator names must be unique"),
    (("ops",), [], "ops: expected a non-empty list"),
    (("layers", 0, "logits"), [0.0] * 15, r"layers\[0\].logits: expected 16 numbers"),
    (("layers", 1, "mean"), [0.5] * 17, r"layers\[1\].mean: expected 16 numbers"),
    (("layers", 1, "std", 3), -0.1, r"layers\[1\].std\[3\]: must lie in \[0, 100\], got -0.1"),
    (("layers", 0, "std", 2), 1e300, r"layers\[0\].std\[2\]: must lie in \[0, 100\]"),
    (("layers", 1, "mean", 0), -1e300, r"layers\[1\].mean\[0\]: must lie in \[-100, 100\]"),
    (("layers", 0, "logits", 5), 1e10, r"layers\[0\].logits\[5\]: must lie in \[-1e\+09, 1e\+09\]"),
    (("layers",), [{"logits": [0] * 16, "mean": [0] * 16, "std": [0] * 16}] * 33,
     "layers: at most 32 layers, got 33"),
    (("scale",), float("inf"), "scale: must be finite"),
    (("scale",), 11.0, "scale: must be > 0 and <= 10"),
    (("resolution",), 10**6,
     r"resolution: expected a positive integer \(pixels\) in \[1, 16384\], got 1000000"),
    (("layers", 0, "mean", 2), float("nan"), r"layers\[0\].mean\[2\]: must be finite"),
    (("layers", 0, "logits", 0), float("inf"), r"layers\[0\].logits\[0\]: must be finite"),
    (("layers", 0, "std", 0), "0.1", r"layers\[0\].std\[0\]: expected a number, got str"),
    (("layers", 0, "std", 1), True, r"layers\[0\].std\[1\]: expected a number, got bool"),
    (("layers", 0, "dist"), "cauchy", r"layers\[0\].dist: expected one of"),
    (("layers", 0, "extra"), 1, r"layers\[0\]: unknown field\(s\) \['extra'\]"),
    (("layers", 0, "std"), _DELETE, r"layers\[0\].std: missing"),
    (("layers",), [], "layers: expected a non-empty list"),
    (("apply_prob",), [0.9, 0.1], "apply_prob: lo must be <= hi"),
    (("apply_prob",), [-0.1, 0.5], r"apply_prob: both ends must lie in \[0, 1\]"),
    (("apply_prob",), [0.2, 1.5], r"apply_prob: both ends must lie in \[0, 1\]"),
    (("apply_prob",), [0.5], r"apply_prob: expected \[lo, hi\]"),
    (("scale",), 0.0, "scale: must be > 0"),
    (("scale",), -1, "scale: must be > 0"),
    (("scale",), "big", "scale: expected a number"),
    (("resolution",), 0, "resolution: expected a positive integer"),
    (("resolution",), 22.5, "resolution: expected a positive integer"),
    (("format",), "dra-policy/3", "format: expected 'dra-policy/1' or 'dra-policy/2', got 'dra-"),
    (("magnitude",), 9, r"unknown field\(s\) \['magnitude'\]"),
    (("provenance",), [1, 2], "provenance: expected a mapping"),
    (("fill",), 256, r"fill: expected an integer grey level in \[0, 255\], got 256"),
    (("fill",), -1, r"fill: expected an integer grey level in \[0, 255\], got -1"),
    (("fill",), 12.5, r"fill: expected an integer grey level"),
    (("fill",), True, r"fill: expected an integer grey level"),
]


@pytest.mark.parametrize("path,value,message", INVALID, ids=[m for _, _, m in INVALID])
def test_invalid_policies_name_the_field(path, value, message):
    with pytest.raises(PolicyError, match=message):
        Policy.from_dict(_mutate(path, value))


@pytest.mark.parametrize("path,value,message", INVALID[:6], ids=[m for _, _, m in INVALID[:6]])
def test_invalid_files_name_path_and_field(tmp_path, path, value, message):
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(_mutate(path, value)))
    with pytest.raises(PolicyError, match=message) as info:
        Policy.load(file)
    assert str(file) in str(info.value)


def test_yaml_tags_are_refused(tmp_path):
    file = tmp_path / "evil.yaml"
    file.write_text("format: dra-policy/1\nops: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(PolicyError, match="tags such as !!python/object are not allowed"):
        Policy.load(file)


def _alias_bomb() -> str:
    """The 'billion laughs' policy: 9 levels of 9 aliases in provenance (9**9 strings)."""
    lines = [Policy.preset("ra-n1-m9").to_yaml().split("provenance:")[0] + "provenance:",
             "  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"  {name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("content,message", [
    (_alias_bomb(), r"more than 1000000 values once its aliases .* are expanded"),
    ("a: " + "[" * 100 + "]" * 100, "nested deeper than 64 levels"),
    ("a: &x [1, *x]", r"alias \*x refers to an anchor that is not complete"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"binary data, not a YAML text file"),
    (b"ops: [\xff\xfe]", r"not UTF-8 text \(undecodable byte at offset 6\)"),
    ("ops: [ShearX\nlayers: 3",
     r"not valid YAML at line 2, column \d+: (did not find )?expected ','"),
])
def test_hostile_files_fail_fast_with_one_line(tmp_path, content, message):
    import time

    file = tmp_path / "hostile.yaml"
    file.write_bytes(content if isinstance(content, bytes) else content.encode())
    start = time.perf_counter()
    with pytest.raises(PolicyError, match=message) as info:
        Policy.load(file)
    assert time.perf_counter() - start < 0.5
    assert str(file) in str(info.value) and "\n" not in str(info.value)


def test_alias_bomb_is_refused_before_expansion():
    """Plain yaml.safe_load accepts the bomb (it would only blow up when walked)."""
    assert len(_alias_bomb()) < 1500
    assert yaml.safe_load(_alias_bomb())["provenance"]["i"][0][0][0][0][0][0][0][0] == ["lol"] * 9


def test_harmless_aliases_still_load(tmp_path):
    data = Policy.preset("ra-n2-m9").to_yaml().replace(
        "provenance:", "provenance:\n  a: &a [1, 2]\n  b: *a", 1)
    file = tmp_path / "aliases.yaml"
    file.write_text(data)
    assert Policy.load(file).provenance["b"] == [1, 2]


def test_oversized_file_is_refused_before_reading(tmp_path):
    file = tmp_path / "huge.yaml"
    with open(file, "wb") as handle:
        handle.truncate(9 * 1024 * 1024)
    with pytest.raises(PolicyError, match=r"too large \(9437184 bytes; the limit is 8388608\)"):
        Policy.load(file)


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(PolicyError, match="must be a mapping"):
        Policy.load(tmp_path / "list.yaml")


def test_policy_is_frozen_and_validated_on_construction():
    policy = Policy.preset("ra-n1-m5")
    with pytest.raises(AttributeError):
        policy.scale = 2.0  # type: ignore[misc]
    with pytest.raises(PolicyError, match=r"layers\[0\].std\[0\]"):
        Policy(("Rotate",), (Layer((0.0,), (0.5,), (-1.0,)),))


# ----- presets ---------------------------------------------------------------------------------
def test_randaugment_preset():
    policy = Policy.preset("ra-n2-m9")
    assert policy.ops == PAPER_OPS and policy.depth == 2
    assert np.allclose(policy.probabilities, 1 / 16)
    assert np.allclose(policy.mean, 0.9) and np.allclose(policy.std, 0.0)
    assert policy.apply_prob == (1.0, 1.0) and policy.scale == 1.0
    mstd = Policy.preset("ra-n3-m15-mstd5")
    assert mstd.depth == 3 and np.allclose(mstd.mean, 1.5) and np.allclose(mstd.std, 0.5)
    assert mstd.scale == 1.5


def test_timm_strings_map_to_the_same_policy():
    policy = Policy.preset("rand-m9-n2-mstd0.5")
    assert "Cutout" not in policy.ops and len(policy.ops) == 15
    assert policy.depth == 2 and np.allclose(policy.mean, 0.9) and np.allclose(policy.std, 0.05)
    assert policy.apply_prob == (0.5, 0.5)
    explicit = Policy.preset("rand-m9-n2-mstd0.5-mmax10-p0.5-inc1")
    assert explicit.layers == policy.layers and explicit.scale == policy.scale == 1.0
    uniform = Policy.preset("rand-m9-n1-mstd101")
    assert uniform.layers[0].dist == "uniform"
    with pytest.raises(PolicyError, match="unknown timm RandAugment key 'x3'"):
        Policy.preset("rand-m9-x3")


def test_trivial_augment_preset():
    policy = Policy.preset("ta")
    assert policy.depth == 1 and policy.layers[0].dist == "uniform"
    assert np.allclose(policy.probabilities, 1 / 16) and policy.apply_prob == (1.0, 1.0)


def test_paper_presets_equal_the_reference_numbers():
    reference = json.loads((REFERENCE if REFERENCE.exists() else PACKAGED).read_text())
    assert json.loads(PACKAGED.read_text()) == reference
    for key, entry in reference["policies"].items():
        policy = Policy.preset(f"dra-{key}")
        assert policy.ops == tuple(reference["ops"])
        assert [list(layer.logits) for layer in policy.layers] == entry["W"]
        assert [list(layer.mean) for layer in policy.layers] == entry["MEAN"]
        assert [list(layer.std) for layer in policy.layers] == entry["STD"]
        assert policy.scale == entry["scale"] and policy.resolution == entry["resolution"]
        assert policy.apply_prob == tuple(reference["apply_prob_range"])
        assert policy.provenance["method"] == "dra" and "Xiao" in policy.provenance["source"]


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(PolicyError, match="dra-imagenet-resnet-50"):
        Policy.preset("dra-imagenet-vgg")
    with pytest.raises(PolicyError, match="known: ra-n"):
        Policy.preset("autoaugment")


#: The 16 operators every RA/RA*/TA preset and paper policy uses (the paper's order).
PAPER_16 = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
            "Sharpness", "Contrast", "Cutout", "Solarize", "Posterize", "Equalize", "AutoContrast",
            "Invert", "SolarizeAdd")
#: Pinned preset hashes: a catalog change (a new operator such as Identity) must change none.
PINNED_SHA256 = {
    "ra-n2-m9": "6ee0b632788c2dd1b9fd01c218c2c31edca8e18cd9cbb3878ab86af2d2068f37",
    "rastar-n2-m10": "0ce74062cd2573617d0420abb762ebcc91cfe65102f2232bea0403801711b0ee",
    "ta": "b05473e03dc1159dda45b90d82e363c5986841a5cca1653a8566521c2a94ef62",
    "rand-m9-n2-mstd0.5": "22738e608b4ddea2248b46e65ed8d86dd01b21d94f23134f202f4faa33462c63",
    "dra-imagenet-resnet-50": "1b24b264cff56425050d00d9ae1f238fe0d360186c3f07324df57bf67d9cc899",
    "dra-cifar10-wrn-28-10": "284c91bb37cdee252475738a6bc88dcb54c50f1dbbfded7faed15eb519894abf",
}


@pytest.mark.parametrize("name", sorted(PINNED_SHA256))
def test_presets_pin_their_operators_and_hashes(name):
    policy = Policy.preset(name)
    expected_ops = PAPER_16 if not name.startswith("rand-") else tuple(
        op for op in PAPER_16 if op != "Cutout")
    assert policy.ops == expected_ops
    assert policy.sha256() == PINNED_SHA256[name]


def test_preset_fill_values():
    for key in json.loads(PACKAGED.read_text())["policies"]:
        assert Policy.preset(f"dra-{key}").fill == 0, key          # the authors fill 0
    for name in ("ra-n2-m9", "rastar-n2-m10", "ta", "rand-m9-n2-mstd0.5"):
        assert Policy.preset(name).fill == 128, name               # TF-models RA and DALI: 128


def test_rastar_preset_is_the_papers_ra_baseline():
    policy = Policy.preset("rastar-n2-m10")
    assert policy.ops == PAPER_16 and policy.depth == 2
    assert np.allclose(policy.probabilities, 1 / 16)
    assert np.allclose(policy.mean, 1.0) and np.allclose(policy.std, 0.0)
    assert policy.apply_prob == (0.2, 0.8) and policy.scale == 1.0
    assert Policy.preset("rastar-n3-m15").scale == 1.5
    assert "rastar-n{N}-m{M}" in " ".join(__import__("dra_dali.policy").policy.preset_names())
    with pytest.raises(PolicyError, match=r"'rastar-n0-m10': the number of layers N must lie in "
                                          r"\[1, 32\], got 0"):
        Policy.preset("rastar-n0-m10")
    with pytest.raises(PolicyError, match=r"'ra-n200-m9': the number of layers N must lie in"):
        Policy.preset("ra-n200-m9")                   # was a 108 s recursion error in DALI
    with pytest.raises(PolicyError, match=r"'ra-n2-m999': the magnitude M must be at most 100"):
        Policy.preset("ra-n2-m999")


def test_preset_command_writes_a_resolution(tmp_path):
    from click.testing import CliRunner

    from dra_dali.cli import main

    out = tmp_path / "p.yaml"
    args = ["preset", "dra-imagenet-resnet-50", "-o", str(out), "--resolution", "32"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert Policy.load(out) == Policy.preset("dra-imagenet-resnet-50", resolution=32)
    bad = CliRunner().invoke(main, ["preset", "ta", "-o", str(out), "--resolution", "0"])
    assert bad.exit_code == 1 and "resolution: expected a positive integer" in bad.output


def test_fill_is_optional_in_v1_files_and_part_of_the_hash(tmp_path):
    data = Policy.preset("ra-n2-m9").to_dict()
    assert data["fill"] == 128
    del data["fill"]
    file = tmp_path / "old.yaml"
    file.write_text(yaml.safe_dump(data))
    assert Policy.load(file).fill == 128                           # absent: the historical 128
    zero = Policy.from_dict({**data, "fill": 0})
    assert zero.fill == 0 and zero.sha256() != Policy.load(file).sha256()
    assert Policy.load(zero.save(tmp_path / "zero.yaml")) == zero


def test_sha256_ignores_provenance():
    policy = Policy.preset("ra-n2-m9")
    assert policy.sha256() == policy.with_provenance(note="x").sha256()
    assert policy.sha256() != Policy.preset("ra-n2-m10").sha256()


# ----- reference sampler -----------------------------------------------------------------------
N = 40_000


def _skewed() -> Policy:
    logits = np.zeros(16)
    logits[4] = 2.5      # Rotate dominant
    logits[9] = -1e4     # Cutout: probability 0
    logits[12] = -1.0
    mean = np.full(16, 0.5)
    mean[4] = 0.95       # Rotate mean near the top: clipped mass at scale
    std = np.full(16, 0.2)
    std[5] = 0.0         # Brightness: deterministic magnitude
    mean[6], std[6] = 0.05, 0.3   # Color: mass clipped at 0
    layer = Layer(tuple(logits), tuple(mean), tuple(std))
    return Policy(PAPER_OPS, (layer, layer), apply_prob=(0.2, 0.8))


def test_sampler_operator_frequencies_chi_square():
    policy = _skewed()
    draws = policy.sample(N, seed=1)
    for j in range(policy.depth):
        counts = np.bincount(draws.op[:, j], minlength=16)
        expected = policy.probabilities[j] * N
        assert counts[9] == 0
        keep = expected > 0.5
        expected = expected[keep] * counts[keep].sum() / expected[keep].sum()
        _, p = stats.chisquare(counts[keep], expected)
        assert p > 1e-3


def _interior(mean, std, scale):
    """The normal truncated to (0, scale): the law of the draws that were not clipped."""
    return stats.truncnorm((0 - mean) / std, (scale - mean) / std, loc=mean, scale=std)


def test_sampler_magnitudes_ks_with_clipped_mass():
    policy = _skewed()
    draws = policy.sample(N, seed=2)
    op, mag = draws.op.ravel(), draws.magnitude.ravel()
    for index in (4, 6, 0):
        sample = mag[op == index]
        mean, std = policy.layers[0].mean[index], policy.layers[0].std[index]
        # KS on the continuous part; the atoms at 0 and at scale are checked as masses.
        inside = sample[(sample > 0) & (sample < policy.scale)]
        _, p = stats.kstest(inside, _interior(mean, std, policy.scale).cdf)
        assert p > 1e-3
        assert np.mean(sample == 0.0) == pytest.approx(stats.norm.cdf(0, mean, std), abs=0.02)
        assert np.mean(sample == 1.0) == pytest.approx(stats.norm.sf(1, mean, std), abs=0.02)
    assert np.all(mag[op == 5] == 0.5)                    # std 0: exactly the mean
    for free in ("Equalize", "AutoContrast", "Invert"):
        assert np.all(mag[op == PAPER_OPS.index(free)] == 0.0)


def test_sampler_signs_and_applied_fraction():
    policy = _skewed()
    draws = policy.sample(N, seed=3)
    signed = np.array([OPS[name].signed for name in PAPER_OPS])
    sign = draws.sign.ravel()
    mask = signed[draws.op.ravel()]
    assert set(np.unique(sign[~mask])) == {1}
    assert abs(np.mean(sign[mask] == -1) - 0.5) < 4 * np.sqrt(0.25 / mask.sum())
    # P(applied) = E[p] with p ~ U(0.2, 0.8) = 0.5
    assert abs(draws.applied.mean() - 0.5) < 4 * np.sqrt(0.25 / draws.applied.size)
    always = Policy.preset("ra-n2-m9").sample(1000, seed=0)
    assert always.applied.all()


def test_sampler_uniform_layers_and_determinism():
    ta = Policy.preset("ta")
    first, second = ta.sample(20_000, seed=5), ta.sample(20_000, seed=5)
    assert np.array_equal(first.magnitude, second.magnitude)
    free_ops = [PAPER_OPS.index(n) for n in ("Equalize", "AutoContrast", "Invert")]
    free = np.isin(first.op[:, 0], free_ops)
    _, p = stats.kstest(first.magnitude[~free, 0], stats.uniform(0, 1).cdf)
    assert p > 1e-3
    assert not np.array_equal(first.op, ta.sample(20_000, seed=6).op)


def test_sampler_respects_op_subsets():
    policy = Policy(("Rotate", "Invert"), (Layer((0.0, 0.0), (2.0, 0.0), (0.0, 0.0)),), scale=1.5)
    draws = policy.sample(2000, seed=0)
    assert set(np.unique(draws.op)) == {0, 1}
    assert np.all(draws.magnitude[draws.op == 0] == 1.5)  # clipped at scale


# ----- presets at any resolution ---------------------------------------------------------------
def test_preset_at_a_resolution_moves_only_the_translate_range():
    from dra_dali.ops import parameter

    base = Policy.preset("dra-imagenet-resnet-50")
    small = Policy.preset("dra-imagenet-resnet-50", resolution=32)
    assert small.resolution == 32 and base.resolution == 224
    assert small.layers == base.layers and small.fill == base.fill == 0
    assert small.sha256() != base.sha256()
    assert parameter("TranslateX", 1.0, resolution=small.resolution) == 10.0      # not 100 px
    assert base.with_resolution(32) == small
    with pytest.raises(PolicyError, match=r"resolution: expected a positive integer"):
        Policy.preset("ta", resolution=0)


# ----- format 2 --------------------------------------------------------------------------------
OPS4 = ["Rotate", "Brightness", "Invert", "Identity"]


def _layer2(**changes) -> dict:
    layer = {"logits": [1.0, 0.5, 0.0, -0.5],
             "op_apply_prob": [0.9, 0.5, 0.3, 1.0],
             "magnitude": [{"dist": "categorical", "levels": [0.1, 0.5, 0.9],
                            "probs": [0.2, 0.3, 0.5]},
                           {"dist": "normal", "mean": 0.4, "std": 0.1},
                           {"dist": "uniform"},
                           {"dist": "normal", "mean": 0.0, "std": 0.0}]}
    return {**layer, **changes}


def _format2(**changes) -> dict:
    return {"format": "dra-policy/2", "ops": OPS4, "resolution": 32, "scale": 1.0, "fill": 0,
            "gate": 0.35, "layers": [_layer2(), _layer2(op_apply_prob=None)], **changes}


def _schedule() -> dict:
    first = {k: v for k, v in _format2().items() if k != "format"}
    second = {**first, "gate": 0.8, "layers": [_layer2(logits=[0.0, 0.0, 3.0, 0.0])]}
    mixture = {**first, "layers": None}
    del mixture["layers"]
    mixture["subpolicies"] = [{"weight": 0.25, "layers": [_layer2()]},
                              {"weight": 0.75, "layers": [_layer2(logits=[0, 0, 0, 9.0])]}]
    return {"format": "dra-policy/2", "provenance": {"method": "ddas"},
            "schedule": [{"start_epoch": 0, "policy": first}, {"start_epoch": 3, "policy": second},
                         {"start_epoch": 7, "policy": mixture}]}


def test_format2_example_loads_and_round_trips(tmp_path):
    policy = Policy.from_dict(_format2())
    assert policy.format == "dra-policy/2" and policy.gate == 0.35 and policy.fill == 0
    first = policy.layers[0]
    assert first.op_apply_prob == (0.9, 0.5, 0.3, 1.0) and policy.layers[1].op_apply_prob is None
    assert first.magnitudes[0].levels == (0.1, 0.5, 0.9) and first.magnitudes[2].dist == "uniform"
    assert Policy.load(policy.save(tmp_path / "p.yaml")) == policy
    text = policy.to_yaml()
    assert "- {dist: categorical, levels: [0.1, 0.5, 0.9], probs: [0.2, 0.3, 0.5]}" in text
    with pytest.raises(PolicyError, match="policy.mean / policy.std"):
        _ = policy.mean


def test_v1_policies_are_still_written_as_v1():
    data = Policy.preset("dra-cifar10-wrn-28-10").to_dict()
    assert data["format"] == "dra-policy/1" and "gate" not in data
    assert Policy.from_dict({**data, "format": "dra-policy/2"}).sha256() == \
        Policy.from_dict(data).sha256()


def test_schedule_at_epoch_and_boundaries(tmp_path):
    policy = Policy.from_dict(_schedule())
    assert policy.kind == "schedule" and policy.schedule_boundaries == (3, 7)
    assert [policy.at_epoch(e).gate for e in (0, 2, 3, 6)] == [0.35, 0.35, 0.8, 0.8]
    assert policy.at_epoch(7).kind == "subpolicies" and policy.at_epoch(500).kind == "subpolicies"
    assert policy.at_epoch(3).provenance == {"method": "ddas", "schedule_start_epoch": 3}
    assert policy.at_epoch(0).depth == 2 and policy.at_epoch(3).depth == 1
    assert Policy.load(policy.save(tmp_path / "s.yaml")) == policy
    assert Policy.preset("ta").at_epoch(5) == Policy.preset("ta")
    assert Policy.preset("ta").schedule_boundaries == ()
    assert policy.with_resolution(64).at_epoch(8).resolution == 64
    with pytest.raises(PolicyError, match=r"depth: this policy has a schedule .*at_epoch"):
        _ = policy.depth
    with pytest.raises(PolicyError, match="epoch: expected an integer >= 0, got -1"):
        policy.at_epoch(-1)


INVALID2 = [
    (("gate",), 1.5, r"gate: must lie in \[0, 1\], got 1.5"),
    (("gate",), "half", "gate: expected a number, got str"),
    (("layers", 0, "op_apply_prob"), [0.5] * 3, r"layers\[0\].op_apply_prob: expected 4 numbers"),
    (("layers", 1, "op_apply_prob"), [0.5, 2, 0, 0],
     r"layers\[1\].op_apply_prob\[1\]: must lie in \[0, 1\], got 2"),
    (("layers", 0, "mean"), [0.5] * 4, r"layers\[0\].magnitude: replaces \['mean'\]"),
    (("layers", 0, "magnitude"), [{"dist": "normal", "mean": 0.5, "std": 0.1}] * 3,
     r"layers\[0\].magnitude: expected 4 magnitude distributions"),
    (("layers", 0, "magnitude", 1, "dist"), "beta",
     r"layers\[0\].magnitude\[1\].dist: expected one of \('normal', 'uniform', 'categorical'\)"),
    (("layers", 0, "magnitude", 1, "std"), _DELETE, r"layers\[0\].magnitude\[1\].std: missing"),
    (("layers", 0, "magnitude", 1, "std"), 1e300,
     r"layers\[0\].magnitude\[1\].std: must lie in \[0, 100\]"),
    (("layers", 0, "magnitude", 2, "mean"), 0.5,
     r"layers\[0\].magnitude\[2\]: unknown field\(s\) \['mean'\]"),
    (("layers", 0, "magnitude", 0, "probs"), [0.2, 0.3, 0.4],
     r"layers\[0\].magnitude\[0\].probs: must sum to 1, got 0.9"),
    (("layers", 0, "magnitude", 0, "probs"), [0.5, 0.5],
     r"layers\[0\].magnitude\[0\].probs: expected 3 probabilities \(one per level\), got 2"),
    (("layers", 0, "magnitude", 0, "levels"), [0.1, 0.5, 1.5],
     r"layers\[0\].magnitude\[0\].levels\[2\]: must lie in \[0, 1\], got 1.5"),
    (("layers", 0, "magnitude", 0, "levels"), [],
     r"layers\[0\].magnitude\[0\].levels: expected 1 to 64 magnitudes, got 0"),
    (("layers", 0, "magnitude", 3, "random_sign"), "no",
     r"layers\[0\].magnitude\[3\].random_sign: expected true or false, got 'no'"),
    (("subpolicies",), [], "subpolicies: give either layers or subpolicies, not both"),
    (("format",), "dra-policy/1",
     r"unknown field\(s\) \['gate'\].*\(format-2 keys: write format: dra-policy/2\)"),
]


@pytest.mark.parametrize("path,value,message", INVALID2, ids=[m for _, _, m in INVALID2])
def test_invalid_format2_fields_are_named(path, value, message):
    with pytest.raises(PolicyError, match=message):
        Policy.from_dict(_set(_format2(), path, value))


def _mixture(**changes) -> dict:
    data = _format2()
    del data["layers"]
    data["subpolicies"] = [{"weight": 1.0, "layers": [_layer2()]},
                           {"weight": 3.0, "layers": [_layer2(logits=[0, 0, 0, 5.0])]}]
    return {**data, **changes}


INVALID_MIXTURE = [
    (("subpolicies", 1, "weight"), -1, r"subpolicies\[1\].weight: must lie in \[0, 1e\+09\]"),
    (("subpolicies", 1, "layers"), [_layer2(), _layer2()],
     r"subpolicies\[1\].layers: expected 1 layers like subpolicies\[0\] .*pad with Identity"),
    (("subpolicies", 0, "prob"), 1, r"subpolicies\[0\]: unknown field\(s\) \['prob'\]"),
    (("subpolicies", 0, "layers", 0, "logits"), [1, 2],
     r"subpolicies\[0\].layers\[0\].logits: expected 4 numbers"),
    (("subpolicies",), [{"weight": 0, "layers": [_layer2()]}],
     "subpolicies: the weights must not all be 0"),
]


@pytest.mark.parametrize("path,value,message", INVALID_MIXTURE,
                         ids=[m for _, _, m in INVALID_MIXTURE])
def test_invalid_subpolicies_are_named(path, value, message):
    with pytest.raises(PolicyError, match=message):
        Policy.from_dict(_set(_mixture(), path, value))


INVALID_SCHEDULE = [
    (("schedule", 0, "start_epoch"), 1,
     r"schedule\[0\].start_epoch: the first entry must start at epoch 0, got 1"),
    (("schedule", 2, "start_epoch"), 3,
     r"schedule\[2\].start_epoch: must be greater than schedule\[1\].start_epoch \(3\), got 3"),
    (("schedule", 1, "start_epoch"), -2, r"schedule\[1\].start_epoch: expected an epoch"),
    (("schedule", 1, "policy", "schedule"), [],
     r"schedule\[1\].policy: unknown field\(s\) \['schedule'\]"),
    (("schedule", 1, "policy", "gate"), 2, r"schedule\[1\].policy.gate: must lie in \[0, 1\]"),
    (("schedule", 2, "policy", "subpolicies", 0, "layers", 0, "magnitude", 0, "probs"), [1, 1, 1],
     r"schedule\[2\].policy.subpolicies\[0\].layers\[0\].magnitude\[0\].probs: must sum to 1"),
    (("layers",), [], r"layers: not allowed beside 'schedule'"),
    (("schedule",), [], "schedule: expected a non-empty list"),
]


@pytest.mark.parametrize("path,value,message", INVALID_SCHEDULE,
                         ids=[m for _, _, m in INVALID_SCHEDULE])
def test_invalid_schedules_are_named(path, value, message):
    with pytest.raises(PolicyError, match=message):
        Policy.from_dict(_set(_schedule(), path, value))


# ----- format 2 round trip (fuzzed) -------------------------------------------------------------
@st.composite
def magnitudes(draw, scale):
    from dra_dali.policy import Magnitude

    kind = draw(st.sampled_from(["normal", "uniform", "categorical"]))
    sign = draw(st.booleans())
    if kind == "normal":
        return Magnitude("normal", draw(_positive), draw(_positive), random_sign=sign)
    if kind == "uniform":
        return Magnitude("uniform", random_sign=sign)
    levels = draw(st.lists(st.floats(0, scale), min_size=1, max_size=5))
    weights = np.array(draw(st.lists(st.floats(0.01, 1), min_size=len(levels),
                                     max_size=len(levels))))
    probs = [float(p) for p in weights / weights.sum()]
    return Magnitude("categorical", levels=tuple(levels), probs=tuple(probs), random_sign=sign)


@st.composite
def layers2(draw, n, scale):
    logits = tuple(draw(st.lists(_finite, min_size=n, max_size=n)))
    op_apply = draw(st.none() | st.lists(st.floats(0, 1), min_size=n, max_size=n).map(tuple))
    if draw(st.booleans()):
        return Layer(logits, op_apply_prob=op_apply,
                     magnitude=tuple(draw(magnitudes(scale)) for _ in range(n)))
    return Layer(logits, tuple(draw(st.lists(_positive, min_size=n, max_size=n))),
                 tuple(draw(st.lists(_positive, min_size=n, max_size=n))),
                 draw(st.sampled_from(["normal", "uniform"])), op_apply_prob=op_apply)


@st.composite
def flat_policies2(draw):
    from dra_dali.policy import SubPolicy

    ops = tuple(draw(st.lists(st.sampled_from(OP_NAMES), min_size=1, max_size=6, unique=True)))
    scale = draw(st.floats(0.01, 3.0))
    depth = draw(st.integers(1, 3))
    chains = [tuple(draw(layers2(len(ops), scale)) for _ in range(depth))
              for _ in range(draw(st.integers(1, 3)))]
    gate = draw(st.none() | st.floats(0, 1))
    common = dict(scale=scale, gate=gate, fill=draw(st.integers(0, 255)),
                  resolution=draw(st.integers(8, 1024)))
    if len(chains) == 1:
        return Policy(ops, chains[0], **common)
    weights = draw(st.lists(st.floats(0.1, 10), min_size=len(chains), max_size=len(chains)))
    return Policy(ops, subpolicies=tuple(SubPolicy(w, c) for w, c in zip(weights, chains)),
                  **common)


@st.composite
def policies2(draw):
    from dra_dali.policy import ScheduleEntry

    if draw(st.booleans()):
        return draw(flat_policies2())
    starts = sorted(draw(st.sets(st.integers(1, 50), max_size=3)))
    entries = [ScheduleEntry(s, draw(flat_policies2())) for s in [0, *starts]]
    return Policy(schedule=tuple(entries), provenance={"method": "fuzz"})


@settings(max_examples=60, deadline=None)
@given(policies2())
def test_format2_round_trip_fuzzed(tmp_path_factory, policy):
    path = tmp_path_factory.mktemp("fuzz2") / "p.yaml"
    policy.save(path)
    loaded = Policy.load(path)
    assert loaded == policy and loaded.sha256() == policy.sha256()
    assert Policy.from_dict(yaml.safe_load(policy.to_yaml())) == policy


# ----- format 2: the reference sampler ---------------------------------------------------------
N2 = 30_000


def _joint_expected(policy: Policy, j: int, n: int) -> dict:
    """Expected counts of (operator, level) cells in layer j (level -1: not categorical)."""
    cells = {}
    for i, (p, m) in enumerate(zip(policy.layers[j].probabilities, policy.layers[j].magnitudes)):
        if m.dist == "categorical" and not OPS[policy.ops[i]].magnitude_free:
            for level, q in enumerate(np.asarray(m.probs) / sum(m.probs)):
                cells[(i, level)] = n * p * q
        else:
            cells[(i, -1)] = n * p
    return cells


def _cell_counts(draws, j: int, cells) -> np.ndarray:
    return np.array([np.sum((draws.op[:, j] == i) & (draws.level[:, j] == lv)) for i, lv in cells])


def test_sampler_operator_by_level_chi_square():
    policy = Policy.from_dict(_format2())
    draws = policy.sample(N2, seed=21)
    cells = _joint_expected(policy, 0, N2)
    counts = _cell_counts(draws, 0, cells)
    assert stats.chisquare(counts, list(cells.values())).pvalue > 1e-3
    levels = np.array([0.1, 0.5, 0.9])
    chosen = (draws.op[:, 0] == 0)
    assert np.allclose(draws.magnitude[chosen, 0], levels[draws.level[chosen, 0]])
    # power: the same counts reject the levels' probabilities reversed
    wrong = Policy.from_dict(_set(_format2(), ("layers", 0, "magnitude", 0, "probs"),
                                  [0.5, 0.3, 0.2]))
    assert stats.chisquare(counts, list(_joint_expected(wrong, 0, N2).values())).pvalue < 1e-6


def test_sampler_gate_and_per_operator_apply_rates():
    policy = Policy.from_dict(_format2())
    draws = policy.sample(N2, seed=22)
    assert stats.binomtest(int(draws.gate.sum()), N2, 0.35).pvalue > 1e-3
    assert not draws.applied[~draws.gate].any()                     # gate closed: untouched
    for i, q in enumerate(policy.layers[0].op_apply_prob):
        rows = draws.op[:, 0] == i
        hits = int(draws.applied[rows, 0].sum())
        assert stats.binomtest(hits, int(rows.sum()), 0.35 * q).pvalue > 1e-3, OPS4[i]
        assert stats.binomtest(hits, int(rows.sum()), q).pvalue < 1e-6    # power: no gate
    lo, hi = policy.apply_prob                                      # layer 1: the U(lo, hi) coin
    rate = draws.applied[draws.gate, 1].mean()
    assert abs(rate - (lo + hi) / 2) < 4 * np.sqrt(0.25 / draws.gate.sum())


def test_sampler_random_sign_false_and_free_operators():
    data = _set(_format2(), ("layers", 0, "magnitude", 0, "random_sign"), False)
    draws = Policy.from_dict(data).sample(N2, seed=23)
    assert np.all(draws.sign[draws.op[:, 0] == 0, 0] == 1)         # Rotate, fixed sign
    rotate_1 = draws.sign[draws.op[:, 1] == 0, 1]                   # layer 1: still random
    assert stats.binomtest(int((rotate_1 == -1).sum()), len(rotate_1), 0.5).pvalue > 1e-3
    for free in ("Invert", "Identity"):
        rows = draws.op == OPS4.index(free)
        assert np.all(draws.magnitude[rows] == 0) and np.all(draws.level[rows] == -1)


def test_sampler_subpolicy_frequencies_and_conditional_choice():
    policy = Policy.from_dict(_mixture(gate=None))
    draws = policy.sample(N2, seed=24)
    counts = np.bincount(draws.subpolicy, minlength=2)
    assert stats.chisquare(counts, [N2 / 4, 3 * N2 / 4]).pvalue > 1e-3
    assert stats.chisquare(counts, [N2 / 2, N2 / 2]).pvalue < 1e-6          # power
    for k, sub in enumerate(policy.subpolicies):
        ops = np.bincount(draws.op[draws.subpolicy == k, 0], minlength=4)
        expected = sub.layers[0].probabilities * counts[k]
        keep = expected > 5
        fit = stats.chisquare(ops[keep], expected[keep] * ops[keep].sum() / expected[keep].sum())
        assert fit.pvalue > 1e-3, k
    assert draws.gate.all()
    assert np.allclose(policy.probabilities[0], 0.25 * policy.subpolicies[0].layers[0].probabilities
                       + 0.75 * policy.subpolicies[1].layers[0].probabilities)


def test_sampler_refuses_a_schedule():
    with pytest.raises(PolicyError, match=r"this policy has a schedule"):
        Policy.from_dict(_schedule()).sample(10)
    assert Policy.from_dict(_schedule()).at_epoch(8).sample(10).subpolicy.shape == (10,)


def test_show_prints_and_plots_every_format2_feature(tmp_path):
    from click.testing import CliRunner

    from dra_dali.cli import main

    for name, data in (("flat", _format2()), ("mixture", _mixture()), ("schedule", _schedule())):
        file = Policy.from_dict(data).save(tmp_path / f"{name}.yaml")
        plot = tmp_path / f"{name}.png"
        result = CliRunner().invoke(main, ["show", str(file), "--plot", str(plot)])
        assert result.exit_code == 0, result.output
        assert "dra-policy/2" in result.output and "gate 0.35" in result.output
        assert "levels 0.1:0.20 0.5:0.30 0.9:0.50" in result.output
        assert plot.stat().st_size > 10_000
    assert "sub-policy 2 (probability 0.750)" in result.output
    assert "the active policy changes at epochs [3, 7]" in result.output
    assert "epochs 3-6: 1 layer" in result.output
    flat = CliRunner().invoke(main, ["show", str(tmp_path / "flat.yaml")]).output
    assert "Rotate           0.455       0.900  levels" in flat             # apply probability


def test_readme_format2_example_is_valid():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b.split("```")[0] for b in readme.split("```yaml\n")[1:]]
    example = next(b for b in blocks if b.startswith("format: dra-policy/2\nops:"))
    policy = Policy.from_dict(yaml.safe_load(example))
    assert policy.gate == 0.35 and policy.depth == 2 and policy.fill == 0
    assert policy.layers[0].magnitudes[0].random_sign is False
    assert policy.layers[1].is_format1 and policy.format == "dra-policy/2"
