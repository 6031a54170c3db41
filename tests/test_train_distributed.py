"""DDP under ``torchrun --nproc_per_node 2`` on CPU (gloo): within an epoch every training image
is seen exactly once across the ranks, both ranks run the same number of steps, and the metrics
are reduced over the ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

IMAGES = 37          # odd: the shards differ by one image (19 / 18)
BATCH = 4            # 19 -> 5 batches, 18 -> 5 batches (the last ones partial)
EPOCHS = 2

WORKER = textwrap.dedent("""
    import json, os, sys
    from dra_dali.train import TrainConfig, train

    data, out, logs = sys.argv[1:4]
    seen = []
    result = train(TrainConfig(data=data, val_data=data, out=out, policy="ra-n2-m9",
                               pipeline="demo", epochs=%d, batch_size=%d, seed=1, lr=0.05,
                               threads=1),
                   progress=False,
                   batch_hook=lambda e, s, labels: seen.append([e, s, labels.tolist()]))
    with open(os.path.join(logs, "rank%%s.json" %% os.environ["RANK"]), "w") as handle:
        json.dump({"seen": seen, "finished": result.finished, "world": os.environ["WORLD_SIZE"]},
                  handle)
""" % (EPOCHS, BATCH))


@pytest.fixture(scope="module")
def one_image_per_class(embedded, tmp_path_factory) -> Path:
    """37 classes of one image each, so a label identifies its image."""
    root = tmp_path_factory.mktemp("ddp") / "data"
    files = sorted(embedded.train.rglob("*.jpg"))[::50][:IMAGES]
    assert len(files) == IMAGES
    for i, f in enumerate(files):
        (root / f"c{i:02d}").mkdir(parents=True)
        shutil.copy(f, root / f"c{i:02d}" / f.name)
    return root


def test_torchrun_two_ranks_partition_every_epoch(one_image_per_class, tmp_path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(one_image_per_class), str(out), str(logs)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]

    ranks = [json.loads((logs / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["finished"] and r["world"] == "2" for r in ranks)
    for epoch in range(EPOCHS):
        per_rank = [[label for e, _, labels in r["seen"] if e == epoch for label in labels]
                    for r in ranks]
        assert sorted(per_rank[0] + per_rank[1]) == list(range(IMAGES)), epoch   # exactly once
        assert sorted(len(p) for p in per_rank) == [18, 19]
        assert not set(per_rank[0]) & set(per_rank[1])
    # The two epochs use different orders (the per-epoch seed), same partition property.
    assert [r["seen"][0][2] for r in ranks] != [
        next(s[2] for s in r["seen"] if s[0] == 1) for r in ranks]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 2 * BATCH
    assert summary["steps_per_epoch"] == 5
    steps = [sorted({s for e, s, _ in r["seen"] if e == 0}) for r in ranks]
    assert steps == [list(range(5)), list(range(5))]          # same number of steps per rank
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["train_images"] == IMAGES and r["val_images"] == IMAGES for r in records)
    assert (out / "summary.json").is_file() and (out / "checkpoint.pt").is_file()


def test_cli_under_torchrun(one_image_per_class, tmp_path) -> None:
    """The README's launch line: ``torchrun ... -m dra_dali.cli train``; rank 0 alone reports."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "dra_dali.cli", "train", "--data", str(one_image_per_class), "--val-data",
         str(one_image_per_class), "--out", str(out), "--policy", "none", "--pipeline", "demo",
         "--epochs", "1", "--batch-size", "4", "--max-steps", "2", "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("finished 1 epochs") == 1
    assert proc.stderr.count("epoch 1/1:") == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps_per_epoch"] == 2
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["train_images"] == 2 * 2 * 4 and record["val_images"] == IMAGES
