"""Statistics of the compiled pipeline (trace mode) against the numpy reference sampler.

One skewed two-layer policy (a normal layer with clipped mass at 0 and at ``scale``, sigma = 0
operators and a uniform layer; an operator with logit -1e9 / -100 that must never run) is drawn
4,000 times through ``apply_policy(trace=True)`` and compared with ``Policy.sample``:
chi-square on operator frequencies, KS on magnitudes plus the clipped masses, sign balance,
applied fraction, exact sigma = 0. Seeds are fixed, so the tests are deterministic; the
significance level is 1e-3 and each test also shows it has the power to reject a wrong policy.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dra_dali.dali import apply_policy
from dra_dali.ops import OPS, PAPER_OPS
from dra_dali.policy import Layer, Policy, PolicyError

N_IMAGES = 4000
ALPHA = 1e-3
ROTATE = PAPER_OPS.index("Rotate")

_LOGITS = ([2.0, 1.0, 0.5, 0.0, -1e9, 1.5, -0.5, 0.3, 0.0, 1.0, -1.0, 0.8, 0.2, -0.3, 0.6, 0.1],
           [0.0, 0.5, -1.0, 1.0, -100.0, 0.2, 0.7, -0.4, 1.2, 0.0, 0.3, -0.2, 0.9, 0.4, -0.6, 0.0])
_MEAN = [0.0, 0.05, 0.5, 0.95, 0.5, 1.9, 0.3, 0.7, 0.1, 1.2, 0.5, 0.4, 0.5, 0.5, 0.5, 0.6]
_STD = [0.3, 0.2, 0.0, 0.2, 0.1, 0.5, 0.0, 0.1, 0.4, 0.6, 0.2, 0.25, 0.1, 0.1, 0.1, 0.15]


@pytest.fixture(scope="module")
def skewed() -> Policy:
    return Policy(PAPER_OPS, (Layer(_LOGITS[0], _MEAN, _STD),
                             Layer(_LOGITS[1], _MEAN, _STD, dist="uniform")),
                  scale=2.0, apply_prob=(0.2, 0.8))


@pytest.fixture(scope="module")
def drawn(skewed):
    """(DALI trace, reference sample) for the skewed policy; tiny images keep it fast."""
    images = np.random.default_rng(0).integers(0, 256, (N_IMAGES, 8, 8, 3), dtype=np.uint8)
    _, trace = apply_policy(skewed, images, seed=7, trace=True, batch_size=500)
    return trace, skewed.sample(200_000, seed=11)


def test_trace_shapes_and_types(drawn, skewed):
    trace, _ = drawn
    for field in ("op", "sign", "magnitude", "applied"):
        assert getattr(trace, field).shape == (N_IMAGES, skewed.depth), field
    assert trace.applied.dtype == bool


def test_operator_frequencies_chi_square(drawn, skewed):
    trace, ref = drawn
    for j in range(skewed.depth):
        p = skewed.layers[j].probabilities
        active = p > 1e-12
        counts = np.bincount(trace.op[:, j], minlength=len(PAPER_OPS))
        assert counts[ROTATE] == 0 and not active[ROTATE], "zero-probability operator drawn"
        fit = stats.chisquare(counts[active], N_IMAGES * p[active] / p[active].sum())
        assert fit.pvalue > ALPHA, f"layer {j}: p = {fit.pvalue:.2e}"
        ref_counts = np.bincount(ref.op[:, j], minlength=len(PAPER_OPS))[active]
        table = stats.chi2_contingency(np.stack([counts[active], ref_counts]))
        assert table.pvalue > ALPHA, f"layer {j} vs Policy.sample: p = {table.pvalue:.2e}"
        # power: the same counts clearly reject a uniform choice
        assert stats.chisquare(counts[active]).pvalue < 1e-10


def test_zero_probability_operator_has_no_branch(skewed):
    """Rotate (logit -1e9 / -100) has no branch: no rotation matrix exists in the graph (the
    affine operators share one warp_affine; Rotate's matrix is a transforms.rotation)."""
    from nvidia.dali import fn, pipeline_def, types

    from dra_dali.dali import augment

    def op_types(policy):
        @pipeline_def(enable_conditionals=True, batch_size=2, num_threads=1, device_id=None)
        def pipe():
            return augment(fn.external_source(name="x", layout="HWC", dtype=types.UINT8), policy)

        p = pipe()
        p._build_graph()
        return {type(op._op).__name__ for op in p._ops}

    assert "Rotation" not in op_types(skewed)
    assert "Rotation" in op_types(Policy.preset("ta"))           # the check can see it


def _clipped_parts(values: np.ndarray, scale: float):
    return (values == 0.0).mean(), (values == scale).mean(), values[(values > 0) & (values < scale)]


def test_normal_magnitudes_ks_and_clipped_mass(drawn, skewed):
    trace, ref = drawn
    scale = skewed.scale
    checked = 0
    for i, name in enumerate(PAPER_OPS):
        ours = trace.magnitude[trace.op[:, 0] == i, 0]
        theirs = ref.magnitude[ref.op[:, 0] == i, 0]
        if len(ours) < 100:
            continue
        if OPS[name].magnitude_free:
            assert np.all(ours == 0.0) and np.all(theirs == 0.0), name
            continue
        if _STD[i] == 0.0:                                  # sigma = 0: exactly the mean
            assert np.all(ours == np.float32(min(max(_MEAN[i], 0.0), scale))), name
            continue
        checked += 1
        low, high, inner = _clipped_parts(ours, scale)
        ref_low, ref_high, ref_inner = _clipped_parts(theirs, scale)
        n = len(ours)
        for got, want, where in ((low, ref_low, "at 0"), (high, ref_high, f"at {scale}")):
            sd = np.sqrt(max(want * (1 - want), 1.0 / n) / n)
            assert abs(got - want) < 4 * sd + 1e-9, f"{name}: mass {where} {got:.3f} vs {want:.3f}"
        if len(inner) > 20:
            ks = stats.ks_2samp(inner, ref_inner)
            assert ks.pvalue > ALPHA, f"{name}: KS p = {ks.pvalue:.2e}"
    assert checked >= 8
    # the clipped masses are really exercised: ShearX (mean 0) and Brightness (mean 1.9)
    assert _clipped_parts(trace.magnitude[trace.op[:, 0] == 0, 0], scale)[0] > 0.4
    assert _clipped_parts(trace.magnitude[trace.op[:, 0] == 5, 0], scale)[1] > 0.3
    # power: a shifted reference is rejected
    shear_y = trace.magnitude[trace.op[:, 0] == 1, 0]
    assert stats.ks_2samp(shear_y, np.clip(shear_y + 0.05, 0, scale)).pvalue < ALPHA


def test_uniform_layer_magnitudes(drawn, skewed):
    trace, _ = drawn
    free = np.array([OPS[n].magnitude_free for n in PAPER_OPS])[trace.op[:, 1]]
    assert np.all(trace.magnitude[free, 1] == 0.0)
    values = trace.magnitude[~free, 1]
    ks = stats.kstest(values, stats.uniform(0, skewed.scale).cdf)
    assert ks.pvalue > ALPHA, f"uniform layer: KS p = {ks.pvalue:.2e}"
    assert stats.kstest(values, stats.uniform(0, 1.0).cdf).pvalue < 1e-10   # power


def test_sign_balance(drawn):
    trace, _ = drawn
    signed = np.array([OPS[n].signed for n in PAPER_OPS])[trace.op]
    assert set(np.unique(trace.sign)) <= {-1, 1}
    assert np.all(trace.sign[~signed] == 1)
    negatives = int((trace.sign[signed] == -1).sum())
    test = stats.binomtest(negatives, int(signed.sum()), 0.5)
    assert test.pvalue > ALPHA, f"{negatives} / {signed.sum()} negative: p = {test.pvalue:.2e}"


def test_applied_fraction(drawn, skewed):
    trace, ref = drawn
    lo, hi = skewed.apply_prob
    for j in range(skewed.depth):
        hits = int(trace.applied[:, j].sum())
        test = stats.binomtest(hits, N_IMAGES, (lo + hi) / 2)
        assert test.pvalue > ALPHA, f"layer {j}: applied {hits / N_IMAGES:.3f}"
        assert abs(ref.applied[:, j].mean() - (lo + hi) / 2) < 0.01


def test_always_applied_and_determinism():
    policy = Policy.preset("ra-n2-m9")
    images = np.random.default_rng(1).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    out1, trace1 = apply_policy(policy, images, seed=3, trace=True)
    out2, trace2 = apply_policy(policy, images, seed=3, trace=True)
    out3, trace3 = apply_policy(policy, images, seed=4, trace=True)
    assert trace1.applied.all()                              # apply_prob [1, 1]
    np.testing.assert_array_equal(out1, out2)
    for field in ("op", "sign", "magnitude", "applied"):
        np.testing.assert_array_equal(getattr(trace1, field), getattr(trace2, field))
    assert not np.array_equal(trace1.op, trace3.op)
    assert not np.array_equal(out1, out3)
    # RandAugment M=9, mstd 0: every magnitude-bearing draw is exactly 0.9
    free = np.array([OPS[n].magnitude_free for n in policy.ops])[trace1.op]
    assert np.all(trace1.magnitude[~free] == np.float32(0.9))


def test_trace_matches_pixels():
    """The traced draws are the ones applied: Invert vs an identity (Posterize, 0 bits)."""
    policy = Policy(("Invert", "Posterize"),
                    tuple(Layer((0.0, 0.0), (0.0, 0.0), (0.0, 0.0)) for _ in range(3)),
                    apply_prob=(0.2, 0.8))
    images = np.random.default_rng(2).integers(0, 256, (300, 4, 4, 3), dtype=np.uint8)
    out, trace = apply_policy(policy, images, seed=5, trace=True, batch_size=128)
    inverted = ((trace.op == 0) & trace.applied).sum(axis=1) % 2 == 1
    expected = np.where(inverted[:, None, None, None], 255 - images, images)
    np.testing.assert_array_equal(out, expected)
    assert 0.2 < inverted.mean() < 0.8


def test_apply_policy_rejects_bad_input():
    policy = Policy.preset("ta")
    with pytest.raises(ValueError, match="uint8"):
        apply_policy(policy, np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\).*shape \(8, 8, 3\)"):
        apply_policy(policy, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="device"):
        apply_policy(policy, np.zeros((2, 8, 8, 3), np.uint8), device="tpu")
    with pytest.raises(ValueError, match="no images"):
        apply_policy(policy, [])
    from nvidia.dali.backend import GetCUDADeviceCount

    if GetCUDADeviceCount() == 0:
        with pytest.raises(RuntimeError, match="CUDA"):
            apply_policy(policy, np.zeros((2, 8, 8, 3), np.uint8), device="gpu")


@pytest.mark.parametrize("apply_prob", [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)])
def test_single_operator_and_fixed_apply_probabilities(apply_prob):
    """Edge cases: one operator left (the others at logit -1e9) and fixed apply probabilities."""
    logits = tuple(0.0 if name == "Invert" else -1e9 for name in PAPER_OPS)
    zeros = (0.0,) * len(PAPER_OPS)
    policy = Policy(PAPER_OPS, (Layer(logits, zeros, zeros),), apply_prob=apply_prob)
    images = np.random.default_rng(3).integers(0, 256, (400, 4, 4, 3), dtype=np.uint8)
    out, trace = apply_policy(policy, images, seed=2, trace=True)
    assert np.all(trace.op == PAPER_OPS.index("Invert"))
    assert np.all(trace.sign == 1) and np.all(trace.magnitude == 0.0)
    expected = np.where(trace.applied[:, 0, None, None, None], 255 - images, images)
    np.testing.assert_array_equal(out, expected)
    if apply_prob[1] == 0.0:
        assert not trace.applied.any()
    elif apply_prob[0] == 1.0:
        assert trace.applied.all()
    else:
        assert stats.binomtest(int(trace.applied.sum()), 400, 0.5).pvalue > ALPHA


# ----- format 2 -------------------------------------------------------------------------------
N2 = 4000
OPS4 = ("Rotate", "Brightness", "Invert", "Identity")


def _layer2(logits=(1.0, 0.5, 0.0, -0.5), op_apply_prob=(0.9, 0.5, 0.3, 1.0), rotate_sign=True):
    from dra_dali.policy import Magnitude

    return Layer(logits, op_apply_prob=op_apply_prob, magnitude=(
        Magnitude("categorical", levels=(0.1, 0.5, 0.9), probs=(0.2, 0.3, 0.5),
                  random_sign=rotate_sign),
        Magnitude("normal", 0.4, 0.1), Magnitude("uniform"), Magnitude("normal", 0.0, 0.0)))


@pytest.fixture(scope="module")
def format2():
    """Gate 0.35; layer 0: per-operator apply probabilities, categorical Rotate without random
    sign; layer 1: the U(lo, hi) coin."""
    return Policy(OPS4, (_layer2(rotate_sign=False), _layer2(op_apply_prob=None)),
                  resolution=32, gate=0.35, fill=0)


@pytest.fixture(scope="module")
def mixture():
    from dra_dali.policy import SubPolicy

    return Policy(OPS4, subpolicies=(SubPolicy(1.0, (_layer2(),)),
                                     SubPolicy(3.0, (_layer2((0.0, 0.0, 0.0, 2.0), None),))),
                  resolution=32)


def _trace(policy, seed):
    images = np.random.default_rng(seed).integers(0, 256, (N2, 4, 4, 3), dtype=np.uint8)
    return apply_policy(policy, images, seed=seed, trace=True, batch_size=1000)[1]


@pytest.fixture(scope="module")
def drawn2(format2):
    return _trace(format2, 31)


def _cells(policy: Policy, layer: Layer, n: int, weight: float = 1.0) -> dict:
    """Expected counts of (operator, level) cells (level -1: not categorical)."""
    cells = {}
    for i, (p, m) in enumerate(zip(layer.probabilities, layer.magnitudes)):
        if m.dist == "categorical" and not OPS[policy.ops[i]].magnitude_free:
            for level, q in enumerate(m.probs):
                cells[(i, level)] = n * weight * p * q
        else:
            cells[(i, -1)] = n * weight * p
    return cells


def _counts(trace, j, cells, rows=slice(None)):
    op, level = trace.op[rows, j], trace.level[rows, j]
    return np.array([np.sum((op == i) & (level == lv)) for i, lv in cells])


def test_format2_operator_by_level_chi_square(drawn2, format2):
    for j, layer in enumerate(format2.layers):
        cells = _cells(format2, layer, N2)
        counts = _counts(drawn2, j, cells)
        fit = stats.chisquare(counts, list(cells.values()))
        assert fit.pvalue > ALPHA, f"layer {j}: p = {fit.pvalue:.2e}"
    levels = np.array([0.1, 0.5, 0.9], np.float32)
    rotate = drawn2.op[:, 0] == 0
    np.testing.assert_array_equal(drawn2.magnitude[rotate, 0], levels[drawn2.level[rotate, 0]])
    # power: the same counts reject the level probabilities reversed
    wrong = {cell: n for cell, n in cells.items()}
    for level, q in enumerate((0.5, 0.3, 0.2)):
        wrong[(0, level)] = N2 * format2.layers[1].probabilities[0] * q
    assert stats.chisquare(counts, list(wrong.values())).pvalue < 1e-6


def test_format2_gate_and_per_operator_apply_rates(drawn2, format2):
    assert stats.binomtest(int(drawn2.gate.sum()), N2, 0.35).pvalue > ALPHA
    assert stats.binomtest(int(drawn2.gate.sum()), N2, 0.5).pvalue < 1e-6          # power
    assert not drawn2.applied[~drawn2.gate].any()
    for i, q in enumerate(format2.layers[0].op_apply_prob):
        rows = drawn2.op[:, 0] == i
        hits, n = int(drawn2.applied[rows, 0].sum()), int(rows.sum())
        assert stats.binomtest(hits, n, 0.35 * q).pvalue > ALPHA, OPS4[i]
        if q < 1:
            assert stats.binomtest(hits, n, 0.35).pvalue < ALPHA, OPS4[i]         # power
    gated = int(drawn2.gate.sum())
    lo, hi = format2.apply_prob                                                   # layer 1
    assert stats.binomtest(int(drawn2.applied[drawn2.gate, 1].sum()), gated,
                           (lo + hi) / 2).pvalue > ALPHA


def test_format2_signs_and_magnitudes(drawn2, format2):
    assert np.all(drawn2.sign[drawn2.op[:, 0] == 0, 0] == 1)        # random_sign: false
    rotate = drawn2.sign[drawn2.op[:, 1] == 0, 1]
    assert stats.binomtest(int((rotate == -1).sum()), len(rotate), 0.5).pvalue > ALPHA
    ref = format2.sample(100_000, seed=5)
    ours = drawn2.magnitude[drawn2.op[:, 0] == 1, 0]                 # Brightness N(0.4, 0.1)
    assert stats.ks_2samp(ours, ref.magnitude[ref.op[:, 0] == 1, 0]).pvalue > ALPHA
    assert stats.ks_2samp(ours, np.clip(ours + 0.03, 0, 1)).pvalue < ALPHA        # power
    free = np.isin(drawn2.op, [2, 3])
    assert np.all(drawn2.magnitude[free] == 0) and np.all(drawn2.level[free] == -1)


def test_subpolicy_frequencies_and_conditional_choice(mixture):
    trace = _trace(mixture, 32)
    counts = np.bincount(trace.subpolicy, minlength=2)
    assert stats.chisquare(counts, [N2 / 4, 3 * N2 / 4]).pvalue > ALPHA
    assert stats.chisquare(counts, [N2 / 2, N2 / 2]).pvalue < 1e-6                 # power
    assert trace.gate.all()
    for k, sub in enumerate(mixture.subpolicies):
        rows = trace.subpolicy == k
        cells = _cells(mixture, sub.layers[0], int(rows.sum()))
        fit = stats.chisquare(_counts(trace, 0, cells, rows), list(cells.values()))
        assert fit.pvalue > ALPHA, f"sub-policy {k}: p = {fit.pvalue:.2e}"
    # sub-policy 0 applies with op_apply_prob, sub-policy 1 with U(0.2, 0.8) (mean 0.5)
    rows = (trace.subpolicy == 1) & (trace.op[:, 0] == 0)
    assert stats.binomtest(int(trace.applied[rows, 0].sum()), int(rows.sum()), 0.5).pvalue > ALPHA


def test_format1_graph_is_unchanged_by_an_always_open_gate():
    """gate: 1 adds no draw: the same seed gives the same trace as without a gate."""
    base = Policy.preset("rastar-n2-m10")
    gated = Policy.from_dict({**base.to_dict(), "format": "dra-policy/2", "gate": 1.0})
    images = np.random.default_rng(4).integers(0, 256, (64, 4, 4, 3), dtype=np.uint8)
    first, second = (apply_policy(p, images, seed=9, trace=True)[1] for p in (base, gated))
    np.testing.assert_array_equal(first.op, second.op)
    np.testing.assert_array_equal(first.applied, second.applied)


def test_schedule_switches_at_the_boundaries():
    from dra_dali.dali import augment
    from dra_dali.policy import ScheduleEntry

    invert_only = tuple(0.0 if name == "Invert" else -1e9 for name in OPS4)
    rotate_only = tuple(0.0 if name == "Rotate" else -1e9 for name in OPS4)
    flat = [Policy(OPS4, (_layer2(logits, None),), apply_prob=(1.0, 1.0))
            for logits in (invert_only, rotate_only, invert_only)]
    policy = Policy(schedule=tuple(ScheduleEntry(s, p) for s, p in zip((0, 2, 5), flat)))
    assert policy.schedule_boundaries == (2, 5)
    images = np.random.default_rng(5).integers(0, 256, (8, 4, 4, 3), dtype=np.uint8)
    expected = {0: 2, 1: 2, 2: 0, 4: 0, 5: 2, 9: 2}                   # epoch -> operator index
    for epoch, op in expected.items():
        trace = apply_policy(policy.at_epoch(epoch), images, seed=epoch, trace=True)[1]
        assert np.all(trace.op == op), epoch
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(enable_conditionals=True, batch_size=2, num_threads=1, device_id=None)
    def pipe():
        return augment(fn.external_source(name="x", layout="HWC", dtype=types.UINT8), policy)

    # DALI's conditionals (autograph) re-raise it wrapped; the message is kept
    with pytest.raises(Exception, match=r"schedule \(boundaries \[2, 5\]\).*at_epoch\(epoch\)"):
        pipe()
    from dra_dali.dali.draws import policy_draws

    with pytest.raises(PolicyError, match="one DALI graph holds one policy"):
        policy_draws(policy)


def test_ddas_shaped_policy_operator_by_level_and_gate():
    """The shape DDAS exports: every catalog operator with categorical levels, Rotate without
    random sign, always-applied layers behind a gate; chi-square over the 17 x 3 cells."""
    from dra_dali.ops import OP_NAMES

    rng = np.random.default_rng(12)
    p_o = rng.dirichlet(np.full(len(OP_NAMES) * 3, 2.0)).reshape(len(OP_NAMES), 3)
    totals = p_o.sum(axis=1)
    magnitude = [{"dist": "categorical", "levels": [0.3, 0.6, 0.9],
                  "probs": list(p_o[i] / totals[i]),
                  **({"random_sign": False} if name == "Rotate" else {})}
                 for i, name in enumerate(OP_NAMES)]
    layer = {"logits": list(np.log(totals)), "magnitude": magnitude}
    policy = Policy.from_dict({"format": "dra-policy/2", "ops": list(OP_NAMES), "resolution": 32,
                               "apply_prob": [1.0, 1.0], "gate": 0.6, "layers": [layer, layer]})
    trace = _trace(policy, 33)
    assert stats.binomtest(int(trace.gate.sum()), N2, 0.6).pvalue > ALPHA
    assert np.array_equal(trace.applied, np.repeat(trace.gate[:, None], 2, axis=1))
    assert np.all(trace.sign[trace.op == OP_NAMES.index("Rotate")] == 1)
    for j in range(2):
        cells = _cells(policy, policy.layers[j], N2)
        counts = _counts(trace, j, cells)
        fit = stats.chisquare(counts, list(cells.values()))
        assert fit.pvalue > ALPHA, f"layer {j}: p = {fit.pvalue:.2e}"
        uniform_levels = {c: N2 * policy.layers[j].probabilities[c[0]] / (3 if c[1] >= 0 else 1)
                          for c in cells}
        assert stats.chisquare(counts, list(uniform_levels.values())).pvalue < 1e-6   # power
