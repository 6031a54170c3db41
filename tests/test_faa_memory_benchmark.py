"""Smoke test of the Faster AutoAugment peak-memory benchmark at tiny size."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "faa_memory.py"


def test_faa_memory_benchmark_measures_every_variant(capsys):
    spec = importlib.util.spec_from_file_location("faa_memory_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--resolutions", "16", "--batch-size", "4", "--chunks", "2"])
    row = results[16]
    assert set(row) == set(module.VARIANTS)
    assert all(value >= 0 for value in row.values())
    assert "| 16 px |" in capsys.readouterr().out
