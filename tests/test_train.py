"""Training: optimiser/schedule, checkpoints, CLI run beating chance, exact resume, SIGTERM, and
bad input refused with nothing lost."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from dra_dali.cli import main
from dra_dali.errors import DraDaliError
from dra_dali.policy import Policy
from dra_dali.runtime import load_checkpoint
from dra_dali.train import TrainConfig, TrainError, train
from dra_dali.train.optim import build_optimizer, build_scheduler, warmup_cosine

CLASSES = 4
PER_CLASS = 12


@pytest.fixture(scope="module")
def tiny(embedded, tmp_path_factory) -> tuple[Path, Path]:
    """4 classes x 12 train and 4 classes x 6 val images copied from the embedded dataset."""
    root = tmp_path_factory.mktemp("tiny")
    for split, count in (("train", PER_CLASS), ("val", 6)):
        source = getattr(embedded, split)
        for name in embedded.classes[:CLASSES]:
            (root / split / name).mkdir(parents=True)
            for f in sorted((source / name).iterdir())[:count]:
                shutil.copy(f, root / split / name / f.name)
    return root / "train", root / "val"


def _config(tiny, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(tiny[0]), val_data=str(tiny[1]), out=str(out), policy="none",
                pipeline="demo", epochs=3, batch_size=8, seed=3, threads=2, lr=0.05)
    return TrainConfig(**{**base, **kw})


def _cli(*args: str):
    return CliRunner().invoke(main, ["train", *args], catch_exceptions=False)


def _args(tiny, out: Path, *extra: str) -> list[str]:
    return ["--data", str(tiny[0]), "--val-data", str(tiny[1]), "--out", str(out),
            "--pipeline", "demo", "--epochs", "1", "--batch-size", "16", "--no-progress",
            *extra]


# ----- units -------------------------------------------------------------------------------------
def test_no_weight_decay_on_norms_and_biases() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    opt = build_optimizer(model, 0.1, 0.9, 5e-4)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {2, 4}
    assert {p.ndim for p in no_decay["params"]} == {1}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert opt.defaults["nesterov"] is True


def test_warmup_then_cosine_schedule() -> None:
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, 0.4, 0.9, 0.0)
    sched = build_scheduler(opt, total_steps=20, warmup_steps=5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.004)
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:6]))          # warmup rises to the peak
    assert lrs[5] == pytest.approx(0.4)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))          # then decays monotonically
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(12, 20, 4) == pytest.approx(0.5)


def test_evaluate_sums_loss_and_top_k_over_batches() -> None:
    from dra_dali.train.distributed import DistInfo
    from dra_dali.train.trainer import evaluate as _evaluate

    torch.manual_seed(0)
    model = nn.Linear(4, 7)
    batches = [(torch.randn(5, 4), torch.randint(0, 7, (5,))) for _ in range(3)]
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        logits = model(images)
    top5 = logits.topk(5, dim=1).indices
    got = _evaluate(model, batches, DistInfo(0, 1, 0, torch.device("cpu")), None, False, 7)
    assert got["val_images"] == 15
    assert got["val_loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, labels)))
    assert got["val_top1"] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    assert got["val_top5"] == pytest.approx(float((top5 == labels[:, None]).any(1).float().mean()))


# ----- a real run through the CLI -----------------------------------------------------------------
def test_cli_training_beats_chance_on_the_embedded_dataset(embedded, tmp_path) -> None:
    out = tmp_path / "run"
    result = _cli("--data", str(embedded.train), "--val-data", str(embedded.val), "--out",
                  str(out), "--policy", "none", "--pipeline", "demo", "--epochs", "1",
                  "--max-steps", "15", "--batch-size", "32", "--lr", "0.2", "--warmup-epochs",
                  "0", "--no-progress")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1
    final = records[0]
    assert final["train_images"] == 15 * 32 and final["val_images"] == 500
    assert final["val_top1"] > 0.25, final                    # chance is 0.10
    assert final["val_top5"] >= final["val_top1"]
    assert final["images_per_s"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["val_top1"] == final["val_top1"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["policy"] == "none" and config["batch_size"] == 32 and config["lr"] == 0.2
    assert "val top-1" in result.output
    for name in ("best.pt", "model.pt"):                         # weights only, loadable so
        weights = load_checkpoint(out / name)
        assert weights["model_name"] == "resnet-tiny" and "fc.weight" in weights["model"]
    assert load_checkpoint(out / "checkpoint.pt")["classes"] == list(embedded.classes)


def test_policy_is_copied_and_presets_follow_the_pipeline_size(tiny, tmp_path) -> None:
    policy_file = tmp_path / "p.yaml"
    dataclasses.replace(Policy.preset("ta"), resolution=32).save(policy_file)
    out = tmp_path / "run"
    result = train(_config(tiny, out, policy=str(policy_file), epochs=1), progress=False)
    assert result.finished
    assert Policy.load(out / "policy.yaml") == Policy.load(policy_file)
    assert load_checkpoint(out / "checkpoint.pt")["policy_sha256"] == \
        Policy.load(policy_file).sha256()
    out2 = tmp_path / "run2"
    train(_config(tiny, out2, policy="ra-n2-m9", epochs=1), progress=False)
    assert Policy.load(out2 / "policy.yaml").resolution == 32    # demo pipeline: 32 px


# ----- resume -------------------------------------------------------------------------------------
def _sigterm_at(epoch: int, step: int):
    def hook(e: int, s: int, labels: torch.Tensor) -> None:
        if (e, s) == (epoch, step):
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


def test_interrupted_and_resumed_run_matches_uninterrupted(tiny, tmp_path) -> None:
    whole = train(_config(tiny, tmp_path / "whole", policy="ra-n2-m9", epochs=2), progress=False)
    assert whole.finished and whole.epoch == 2

    out = tmp_path / "split"
    first = train(_config(tiny, out, policy="ra-n2-m9", epochs=2), progress=False,
                  batch_hook=_sigterm_at(1, 2))
    assert not first.finished
    state = load_checkpoint(out / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 3)    # stopped after step 2 of epoch 2
    assert not (out / "summary.json").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL    # handler restored

    second = train(_config(tiny, out, policy="ra-n2-m9", epochs=2), resume=True, progress=False)
    assert second.finished and second.epoch == 2
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["model"]
    b = load_checkpoint(out / "checkpoint.pt")["model"]
    # CPU, fixed seeds, data replayed from the per-epoch DALI seed: bit-identical weights.
    assert all(torch.equal(a[k], b[k]) for k in a)
    skip = {"images_per_s", "train_seconds", "epoch_seconds"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r, w in zip(records, whole.metrics):
        assert {k: v for k, v in r.items() if k not in skip} == \
            {k: v for k, v in w.items() if k not in skip}


def test_resume_refuses_another_policy_or_model(tiny, tmp_path) -> None:
    out = tmp_path / "run"
    train(_config(tiny, out, policy="ra-n2-m9", epochs=2), progress=False,
          batch_hook=_sigterm_at(0, 1))
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(DraDaliError, match="policy: 'ra-n2-m9' -> 'ta'"):
        train(_config(tiny, out, policy="ta", epochs=2), resume=True, progress=False)
    with pytest.raises(DraDaliError, match="model: 'resnet-tiny' -> 'resnet-20'"):
        train(_config(tiny, out, policy="ra-n2-m9", epochs=2, model="resnet-20"), resume=True,
              progress=False)
    assert (out / "checkpoint.pt").read_bytes() == before


def test_sigterm_through_the_cli_saves_and_exits_cleanly(tiny, tmp_path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "dra_dali.cli", "train", *_args(tiny, out, "--policy", "none",
                                                                     "--batch-size", "4",
                                                                     "--epochs", "40")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    metrics = out / "metrics.jsonl"                               # one epoch recorded
    while not (metrics.exists() and metrics.stat().st_size) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    state = load_checkpoint(out / "checkpoint.pt")
    assert 1 <= state["epoch"] < 40
    assert not (out / "summary.json").exists()
    until = str(state["epoch"] + 1)   # finish the interrupted epoch (and no more) from the CLI
    resumed = _cli(*_args(tiny, out, "--policy", "none", "--batch-size", "4", "--epochs", until,
                          "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output
    assert json.loads((out / "summary.json").read_text())["epoch"] == int(until)


# ----- bad input ----------------------------------------------------------------------------------
def test_missing_or_empty_val_data(tiny, tmp_path) -> None:
    out = tmp_path / "run"
    args = _args(tiny, out, "--policy", "none")
    i = args.index("--val-data")
    result = _cli(*args[:i + 1], str(tmp_path / "nope"), *args[i + 2:])
    assert result.exit_code == 1 and "val_data" in result.output and "nope" in result.output
    (tmp_path / "empty").mkdir()
    result = _cli(*args[:i + 1], str(tmp_path / "empty"), *args[i + 2:])
    assert result.exit_code == 1 and "no class sub-folders" in result.output
    (tmp_path / "empty" / "cat").mkdir()
    result = _cli(*args[:i + 1], str(tmp_path / "empty"), *args[i + 2:])
    assert result.exit_code == 1 and "holds no image files" in result.output
    assert not out.exists()


def test_different_class_sets(tiny, tmp_path) -> None:
    val = tmp_path / "val"
    shutil.copytree(tiny[1], val)
    shutil.rmtree(next(p for p in sorted(val.iterdir())))
    args = _args(tiny, tmp_path / "run", "--policy", "none")
    args[args.index("--val-data") + 1] = str(val)
    result = _cli(*args)
    assert result.exit_code == 1
    assert "different classes" in result.output and "only in data: ['astronaut']" in result.output


def test_invalid_policy_and_unknown_model(tiny, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Policy.preset("ta").to_yaml().replace("std: [0.0", "std: [-0.1", 1))
    result = _cli(*_args(tiny, tmp_path / "a", "--policy", str(bad)))
    assert result.exit_code == 1 and "std" in result.output and str(bad) in result.output
    result = _cli(*_args(tiny, tmp_path / "b", "--policy", "no-such-preset"))
    assert result.exit_code == 1 and "not a file and not a preset" in result.output
    result = _cli(*_args(tiny, tmp_path / "c", "--policy", "none", "--model", "resnet5O"))
    assert result.exit_code == 1 and "unknown model 'resnet5O'" in result.output
    assert "dra-dali[models]" in result.output
    assert not any((tmp_path / d).exists() for d in "abc")


def test_resume_without_checkpoint(tiny, tmp_path) -> None:
    result = _cli(*_args(tiny, tmp_path / "run", "--policy", "none", "--resume"))
    assert result.exit_code == 1 and "nothing to resume" in result.output


def test_finished_run_is_not_overwritten_without_force(tiny, tmp_path) -> None:
    out = tmp_path / "run"
    assert _cli(*_args(tiny, out, "--policy", "none", "--max-steps", "2")).exit_code == 0
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    again = _cli(*_args(tiny, out, "--policy", "none", "--max-steps", "2"))
    assert again.exit_code == 1 and "already holds a finished run" in again.output
    assert "force" in again.output
    # --force with a bad model is refused before anything is deleted.
    bad = _cli(*_args(tiny, out, "--policy", "none", "--force", "--model", "nope"))
    assert bad.exit_code == 1
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    assert kept == files
    forced = _cli(*_args(tiny, out, "--policy", "none", "--max-steps", "2", "--force"))
    assert forced.exit_code == 0, forced.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


# ----- the configuration file and the device vocabulary ------------------------------------------
def test_run_repeated_from_its_config_yaml(tiny, tmp_path) -> None:
    first = tmp_path / "first"
    result = _cli(*_args(tiny, first, "--policy", "ra-n2-m9", "--max-steps", "3", "--seed", "5"))
    assert result.exit_code == 0, result.output
    again = _cli("--config", str(first / "config.yaml"), "--out", str(tmp_path / "again"),
                 "--no-progress")
    assert again.exit_code == 0, again.output
    skip = {"images_per_s", "train_seconds", "epoch_seconds"}
    a, b = (load_checkpoint(tmp_path / d / "model.pt")["model"] for d in ("first", "again"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = [[{k: v for k, v in json.loads(line).items() if k not in skip}
                for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
               for d in ("first", "again")]
    assert records[0] == records[1]
    saved = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    assert saved["out"] == str(tmp_path / "again") and saved["seed"] == 5


def test_config_file_errors_name_the_file_and_key(tmp_path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("data: a\nval_data: b\nout: c\nepochz: 3\n")
    result = _cli("--config", str(bad))
    assert result.exit_code == 1
    assert str(bad) in result.output and "epochz" in result.output
    assert result.output.count("\n") == 1                     # one line
    with pytest.raises(TrainError, match="train.device: must be auto, cpu, cuda or cuda:N"):
        TrainConfig(data="a", val_data="b", out="c", device="gpu")
    assert TrainConfig(data="a", val_data="b", out="c", device="cuda:1").device == "cuda:1"


def test_dali_placement_follows_the_torch_device() -> None:
    from dra_dali.dali.loader import dali_placement

    assert dali_placement("cpu") == ("cpu", None)
    assert dali_placement("cuda") == ("gpu", None) and dali_placement("cuda:3") == ("gpu", 3)
    with pytest.raises(DraDaliError, match="device: expected cpu, cuda or cuda:N"):
        dali_placement("tpu")


def test_warmup_from_zero() -> None:
    assert warmup_cosine(0, 10, 5, start=0.0) == 0.0
    assert warmup_cosine(5, 10, 5, start=0.0) == pytest.approx(1.0)


@pytest.mark.parametrize("name, pipeline, lr", [("imagenet-resnet50-dra", "imagenet-dra", 0.1),
                                                ("cifar10-wrn28-10-dra", "cifar-dra", 0.1)])
def test_dra_retraining_configs(name, pipeline, lr) -> None:
    path = Path(__file__).parents[1] / "pipelines" / "train" / f"{name}.yaml"
    config = TrainConfig.from_yaml(path, data="d", val_data="v", out="o")
    assert (config.pipeline, config.label_smoothing, config.warmup_start) == (pipeline, 0.0, 0.0)
    assert config.warmup_epochs == 5 and config.peak_lr(1) == pytest.approx(lr)
    assert config.peak_lr(4) == pytest.approx(4 * lr)            # linear in the global batch
