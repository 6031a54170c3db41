"""Smoke test of the search-step cost benchmark at tiny size (it once broke unnoticed)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "search_step.py"


def test_search_step_benchmark_runs_every_variant(capsys):
    spec = importlib.util.spec_from_file_location("search_step_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--rounds", "1", "--batch-size", "4", "--resolution", "16", "--threads", "1"])
    out = capsys.readouterr().out
    for label in module.RATIOS:
        line = next(row for row in out.splitlines() if label in row)
        median, minimum = (float(v) for v in re.findall(r"\d+\.\d+", line[len(label) + 2:]))
        assert median > 0 and minimum > 0, line
    assert "ddas-exact" in out and "ddas-split" in out and "dra-16-batch" in out
