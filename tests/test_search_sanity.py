"""DRA's sanity check: the published trend at reduced scale (issue 9), ``benchmarks/dra_trend.py``.

DRA's objective (CE + KL on the augmented policy half) is minimised by near-identity
augmentations, so DDAS's sanity protocol (transform the validation half, expect the matching
operator to win) does not apply to it; that protocol is the DDAS method's (``benchmarks/
sanity.py``). What every published DRA search shows is this: the mean magnitude of the four
colour-blend operators falls, and the selecting weights stay close to uniform.

A 12-epoch demo search on the untransformed embedded photos, seeds 0-2: the blend mean ends
below 0.35 (from 0.5) in 3 of 3 seeds, no operator is top-1 in every layer of every seed, and
every operator probability stays within a factor 2 of uniform. Measured: blend mean 0.202 /
0.214 / 0.189, most frequent top-1 Invert in 2 of 6 layers, probabilities 0.047-0.080 (uniform
0.0625). Before issue 9: blend mean 0.50, SolarizeAdd top-1 in 6 of 6 layers. One thread per
search (the numbers do not depend on the core count); about 2 minutes on an idle core.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "dra_trend.py"


@pytest.mark.slow
def test_dra_search_reproduces_the_published_trend(embedded, tmp_path):
    spec = importlib.util.spec_from_file_location("dra_trend", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    summary = bench.main(["--seeds", "0", "1", "2", "--epochs", "12", "--threads", "1",
                          "--out", str(tmp_path)])
    print(json.dumps(summary))
    assert summary["blend_below_threshold"] == 3, summary["blend_mean_final"]
    assert not summary["one_operator_top1_everywhere"], summary["top1_counts"]
    runs = json.loads((tmp_path / "trend.json").read_text())["runs"]
    for run in runs:
        low, high = run["probability_range"]
        assert 1 / 32 < low and high < 1 / 8, run["probability_range"]
