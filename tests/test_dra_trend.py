"""``benchmarks/dra_trend.py`` at tiny size (its full run is the slow DRA sanity test in
``tests/test_search_sanity.py``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "dra_trend.py"


def _bench():
    spec = importlib.util.spec_from_file_location("dra_trend", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blend_mean_and_summary_arithmetic():
    bench = _bench()
    ops = ("Brightness", "Color", "Sharpness", "Contrast", "Rotate")
    assert bench.blend_mean([[0.1, 0.2, 0.3, 0.4, 9.0], [0.5, 0.6, 0.7, 0.8, 9.0]], ops) == \
        pytest.approx(0.45)
    runs = [{"blend_mean": [0.5, 0.3], "top1": ["Rotate", "Color"]},
            {"blend_mean": [0.5, 0.4], "top1": ["Rotate", "Rotate"]}]
    summary = bench.summarise(runs)
    assert summary["blend_below_threshold"] == 1
    assert summary["most_frequent_top1"] == ["Rotate", 3, 4]
    assert not summary["one_operator_top1_everywhere"]


def test_smoke_run_writes_its_results(embedded, tmp_path):
    summary = _bench().main(["--seeds", "0", "--epochs", "1", "--images-per-class", "6",
                             "--threads", "1", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "trend.json").read_text())
    assert record["summary"] == summary and summary["seeds"] == 1
    run = record["runs"][0]
    assert len(run["blend_mean"]) == 2 and run["blend_mean"][0] == pytest.approx(0.5)
    assert len(run["top1"]) == 2
    assert (tmp_path / "trend.png").stat().st_size > 0
    assert "| 0 | 0.500 |" in (tmp_path / "trend.md").read_text()
