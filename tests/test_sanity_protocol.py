"""The sanity protocol script (benchmarks/sanity.py): a smoke run at tiny size and, behind
``slow``, DDAS finding the photometric T (Invert) that the validation half is transformed by."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sanity.py"


@pytest.fixture(scope="module")
def sanity():
    spec = importlib.util.spec_from_file_location("sanity_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_rank_counts_strictly_higher_probabilities(sanity):
    probs = np.array([0.1, 0.4, 0.4, 0.1])
    assert [sanity.rank(probs, i) for i in range(4)] == [3, 1, 1, 3]


def test_transforms_apply_the_pinned_candidate(sanity):
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(sanity.transform("Rotate90", 8)(x), torch.rot90(x, 1, dims=(2, 3)),
                          atol=1e-4)
    assert torch.allclose(sanity.transform("Invert", 8)(x), 1 - x, atol=1e-6)
    assert sanity.transform(sanity.CONTROL) is None


def test_sanity_script_smoke(sanity, embedded, tmp_path, capsys):
    rows = sanity.main(["--out", str(tmp_path), "--data", str(embedded.train),
                        "--methods", "ddas,dra", "--transforms", "Invert,Rotate90",
                        "--seeds", "1", "--epochs", "1", "--images-per-class", "4"])
    table = capsys.readouterr().out
    assert (tmp_path / "sanity.png").is_file()
    assert json.loads((tmp_path / "sanity.json").read_text()) == rows
    # ddas: one row per (run, T); dra: one per layer; control runs check both Ts.
    runs = {(r["method"], r["run"], r["T"]) for r in rows}
    assert runs == {(m, run, t) for m in ("ddas", "dra")
                    for run, t in (("Invert", "Invert"), ("Rotate90", "Rotate90"),
                                   ("none", "Invert"), ("none", "Rotate90"))}
    assert sum(r["method"] == "dra" for r in rows) == 2 * sum(r["method"] == "ddas" for r in rows)
    for r in rows:
        assert 1 <= r["rank"] <= 16 and 0 < r["probability"] < 1
        assert len(r["trajectory"]) == 2 and r["trajectory"][-1] == r["probability"]
    assert "| ddas | Invert | Invert |" in table and "| dra | none (control) | Rotate90 |" in table
    # DDAS's candidates are the same in every run: Rotate pinned at 90 degrees, sign +1.
    config = (tmp_path / "ddas-none-seed0" / "config.yaml").read_text()
    assert "Rotate:\n    - 3.0" in config and "fixed_sign:\n  - Invert\n  - Rotate" in config


@pytest.mark.slow
def test_ddas_ranks_invert_first_and_the_control_does_not(sanity, embedded, tmp_path):
    rows = sanity.main(["--out", str(tmp_path), "--data", str(embedded.train),
                        "--methods", "ddas", "--transforms", "Invert", "--seeds", "2",
                        "--epochs", "4", "--images-per-class", "40"])
    ranks = {(r["run"], r["seed"]): r["rank"] for r in rows}
    assert ranks[("Invert", 0)] == 1 and ranks[("Invert", 1)] == 1, rows
    assert ranks[("none", 0)] > 1 and ranks[("none", 1)] > 1, rows


@pytest.mark.slow
def test_ddas_ranks_rotate90_first_on_digits_and_the_control_does_not(sanity, tmp_path):
    """The geometric row of the protocol at the README's setting (digits, 20 epochs), seed 0."""
    rows = sanity.main(["--out", str(tmp_path), "--data", "digits", "--methods", "ddas",
                        "--transforms", "Rotate90", "--seeds", "1", "--epochs", "20",
                        "--jobs", "1"])
    ranks = {r["run"]: r["rank"] for r in rows}
    assert ranks == {"Rotate90": 1, "none": ranks["none"]} and ranks["none"] > 1, rows
