"""dra-dali compare: the table's statistics, a tiny comparison, resuming, the command line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dra_dali.cli import main
from dra_dali.compare import Budget, CompareError, CompareResult, MethodRun, run_compare

TINY = Budget(search_epochs=1, images_per_class=4, train_epochs=1, max_steps=2, batch_size=16)


def _run(method: str, seed: int, top1: float, seconds: float = 10.0) -> MethodRun:
    return MethodRun(method=method, seed=seed, policy="p", search_seconds=seconds,
                     images_per_s=100.0 + seed, val_top1=top1, val_top5=0.9)


def test_rows_give_mean_and_half_range_over_seeds(tmp_path):
    result = CompareResult(out=tmp_path, methods=["dra", "ra"], seeds=3, budget=Budget(),
                           runs=[_run("dra", 0, 0.5), _run("dra", 1, 0.7), _run("dra", 2, 0.9),
                                 _run("ra", 0, 0.4, seconds=0.0)])
    dra, ra = result.rows()
    assert dra["val_top1"] == pytest.approx((0.7, 0.2))
    assert dra["images_per_s"] == pytest.approx((101.0, 1.0)) and dra["seeds"] == 3
    assert ra["val_top1"] == pytest.approx((0.4, 0.0)) and ra["search_seconds"] == (0.0, 0.0)
    table = result.table().splitlines()
    assert table[2] == "| dra | 3 | 10 ± 0 | 101 ± 1 | 70.0 ± 20.0 | 90.0 ± 0.0 |"


def test_bad_methods_and_data_are_refused(tmp_path):
    with pytest.raises(CompareError, match=r"methods: unknown \['nas'\]; choose from"):
        run_compare(["dra", "nas"], out=tmp_path)
    with pytest.raises(CompareError, match="each method once"):
        run_compare(["ra", "ra"], out=tmp_path)
    with pytest.raises(CompareError, match="data and val_data go together"):
        run_compare(["ra"], out=tmp_path, data="somewhere")


def test_tiny_comparison_runs_and_resumes_keeping_finished_runs(embedded, tmp_path):
    out = tmp_path / "cmp"
    kwargs = dict(out=out, data=str(embedded.train), val_data=str(embedded.val), seeds=1,
                  budget=TINY, progress=False)
    first = run_compare(["dra", "ra"], **kwargs)
    assert first.finished and [(r.method, r.seed) for r in first.runs] == [("dra", 0), ("ra", 0)]
    dra, ra = first.runs
    assert dra.search_seconds > 0 and dra.policy.endswith("policy.yaml")
    assert ra.search_seconds == 0 and ra.policy == "ra-n2-m9"
    assert all(0 <= r.val_top1 <= r.val_top5 <= 1 and r.images_per_s > 0 for r in first.runs)
    assert (out / "compare.png").stat().st_size > 10_000
    assert "| dra | 1 |" in (out / "results.md").read_text()
    record = json.loads((out / "compare.json").read_text())
    assert len(record["runs"]) == 2 and record["budget"]["train_epochs"] == 1

    # Interrupted: dra's result record lost (its search and training finished), ra's training
    # lost entirely. The rerun reads dra back without searching or training again, retrains ra.
    finished = [out / "dra" / "seed-0" / "search" / "checkpoint.pt",
                out / "dra" / "seed-0" / "train" / "checkpoint.pt"]
    stamps = [p.stat().st_mtime_ns for p in finished]
    (out / "dra" / "seed-0" / "result.json").unlink()
    for path in sorted((out / "ra").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    second = run_compare(["dra", "ra"], **kwargs)
    assert [p.stat().st_mtime_ns for p in finished] == stamps
    assert second.runs[0] == dra
    # Same seed and policy: the retrained run repeats its accuracy.
    assert second.runs[1].val_top1 == ra.val_top1


def test_cli_compare(embedded, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(main, ["compare", "--methods", "ra,nas", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "unknown ['nas']" in bad.output
    out = tmp_path / "cli"
    # Faster AA and DAS: searched, compiled and trained from the command line.
    result = runner.invoke(main, ["compare", "--methods", "faster-aa,das", "--data",
                                  str(embedded.train), "--val-data", str(embedded.val),
                                  "--out", str(out), "--search-epochs", "1", "--proxy-images",
                                  "4", "--epochs", "1", "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    assert "| faster-aa | 1 |" in result.output and "| das | 1 |" in result.output
    assert (out / "faster-aa" / "seed-0" / "train" / "summary.json").is_file()
