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
def _mutate(path, value):
    data = _valid()
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()
INVALID = [
    (("ops", 3), "Blur", r"ops\[3\]: unknown operator 'Blur'"),
    (("ops",), ["ShearX", "ShearX"], "ops: operator names must be unique"),
    (("ops",), [], "ops: expected a non-empty list"),
    (("layers", 0, "logits"), [0.0] * 15, r"layers\[0\].logits: expected 16 numbers"),
    (("layers", 1, "mean"), [0.5] * 17, r"layers\[1\].mean: expected 16 numbers"),
    (("layers", 1, "std", 3), -0.1, r"layers\[1\].std\[3\]: must be >= 0"),
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
    (("format",), "dra-policy/2", "format: expected 'dra-policy/1'"),
    (("magnitude",), 9, r"unknown field\(s\) \['magnitude'\]"),
    (("provenance",), [1, 2], "provenance: expected a mapping"),
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
    with pytest.raises(PolicyError, match="no tags"):
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
        assert [list(l.logits) for l in policy.layers] == entry["W"]
        assert [list(l.mean) for l in policy.layers] == entry["MEAN"]
        assert [list(l.std) for l in policy.layers] == entry["STD"]
        assert policy.scale == entry["scale"] and policy.resolution == entry["resolution"]
        assert policy.apply_prob == tuple(reference["apply_prob_range"])
        assert policy.provenance["method"] == "dra" and "Xiao" in policy.provenance["source"]


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(PolicyError, match="dra-imagenet-resnet-50"):
        Policy.preset("dra-imagenet-vgg")
    with pytest.raises(PolicyError, match="known: ra-n"):
        Policy.preset("autoaugment")


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
        _, p = stats.chisquare(counts[keep], expected[keep] * counts[keep].sum() / expected[keep].sum())
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
    free = np.isin(first.op[:, 0], [PAPER_OPS.index(n) for n in ("Equalize", "AutoContrast", "Invert")])
    _, p = stats.kstest(first.magnitude[~free, 0], stats.uniform(0, 1).cdf)
    assert p > 1e-3
    assert not np.array_equal(first.op, ta.sample(20_000, seed=6).op)


def test_sampler_respects_op_subsets():
    policy = Policy(("Rotate", "Invert"), (Layer((0.0, 0.0), (2.0, 0.0), (0.0, 0.0)),), scale=1.5)
    draws = policy.sample(2000, seed=0)
    assert set(np.unique(draws.op)) == {0, 1}
    assert np.all(draws.magnitude[draws.op == 0] == 1.5)  # clipped at scale
