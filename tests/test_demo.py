"""The end-to-end demo: search -> compile -> four trainings, a table, plots, refusal to overwrite,
several seeds with mean and spread, and the same table for the same seed."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from dra_dali.cli import main
from dra_dali.data import EmbeddedDataset
from dra_dali.demo import DemoError, run_demo

# A quick budget: a 1-epoch search on 12 images per class, 2 training steps per epoch.
QUICK = dict(epochs=1, search_epochs=1, search_settings={"images_per_class": 12}, max_steps=2,
             progress=False)


@pytest.fixture(scope="module")
def small(embedded, tmp_path_factory) -> EmbeddedDataset:
    """The embedded dataset cut to 12 training and 10 validation images per class."""
    root = tmp_path_factory.mktemp("small")
    for split, count in (("train", 12), ("val", 10)):
        for name in embedded.classes:
            (root / split / name).mkdir(parents=True)
            for f in sorted((getattr(embedded, split) / name).iterdir())[:count]:
                shutil.copy(f, root / split / name / f.name)
    return EmbeddedDataset(root=root, train=root / "train", val=root / "val",
                           classes=embedded.classes)


def test_quick_demo_writes_everything_and_refuses_to_overwrite(small, tmp_path) -> None:
    out = tmp_path / "demo"
    lines: list[str] = []
    result = run_demo(out, log=lines.append, dataset=small, **QUICK)
    assert [r.name for r in result.runs] == ["no-aug", "randaugment", "rastar", "dra"]
    for run in result.runs:
        assert 0.0 <= run.val_top1 <= run.val_top5 <= 1.0
        assert run.images_per_s > 0 and len(run.curve) == 1
        assert (run.out / "summary.json").is_file()
        assert json.loads((run.out / "summary.json").read_text())["val_images"] == 100
    for name in ("search/policy.yaml", "compile/pipeline.dali", "compile/preview.png",
                 "policy.png", "accuracy.png", "results.md", "demo.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    # Four different policies: none, RandAugment and RA* at 32 px, the searched one.
    configs = [json.loads((r.out / "summary.json").read_text()) for r in result.runs]
    assert len({c["policy_sha256"] for c in configs}) == 4
    assert configs[0]["policy_sha256"] == "none"
    report = result.report()
    assert "| no-aug |" in report and "| rastar |" in report and "| dra |" in report
    assert str(out / "accuracy.png") in report
    assert "images/s" in report and "varies" in report
    assert any("searching" in line for line in lines)

    before = (out / "demo.json").read_text()
    with pytest.raises(DemoError, match="already holds a finished demo.*--force"):
        run_demo(out, dataset=small, **QUICK)
    assert (out / "demo.json").read_text() == before
    cli = CliRunner().invoke(main, ["demo", "--out", str(out)])
    assert cli.exit_code == 1 and "--force" in cli.output


def test_two_seeds_give_mean_and_spread(small, tmp_path) -> None:
    out = tmp_path / "demo"
    result = run_demo(out, seed=3, seeds=2, dataset=small, **QUICK)
    assert result.seeds == [3, 4] and len(result.runs) == 8
    assert (out / "search" / "policy.yaml").is_file()
    assert (out / "seed-4" / "search" / "policy.yaml").is_file()
    assert (out / "seed-4" / "train-dra" / "summary.json").is_file()
    rastar = result.by_name("rastar")
    assert [r.seed for r in rastar] == [3, 4]
    top1 = [100 * r.val_top1 for r in rastar]
    row = next(line for line in result.table().splitlines() if line.startswith("| rastar |"))
    mean, sd = sum(top1) / 2, abs(top1[0] - top1[1]) / 2 ** 0.5
    assert f"| {mean:.1f} ± {sd:.1f} % | {top1[0]:.1f} / {top1[1]:.1f} |" in row
    record = json.loads((out / "demo.json").read_text())
    assert record["seeds"] == [3, 4] and {r["seed"] for r in record["runs"]} == {3, 4}
    with pytest.raises(DemoError, match="seeds must be at least 1, got 0"):
        run_demo(tmp_path / "none", seeds=0, dataset=small, **QUICK)


@pytest.mark.slow
def test_same_seed_same_table(small, tmp_path) -> None:
    budget = {**QUICK, "epochs": 2, "max_steps": 3, "search_epochs": 2, "dataset": small}
    first = run_demo(tmp_path / "a", seed=5, **budget)
    second = run_demo(tmp_path / "b", seed=5, **budget)
    assert [(r.val_top1, r.val_top5, r.curve) for r in first.runs] == \
        [(r.val_top1, r.val_top5, r.curve) for r in second.runs]
    assert (tmp_path / "a" / "search" / "policy.yaml").read_text().split("provenance")[0] == \
        (tmp_path / "b" / "search" / "policy.yaml").read_text().split("provenance")[0]


@pytest.mark.slow
def test_full_demo_through_the_cli(embedded, tmp_path) -> None:
    """The README's first command at its real budget (several minutes on 2 CPU cores)."""
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert all(run["val_top1"] > 0.5 for run in record["runs"])     # chance is 0.1
