"""The searcher end to end at toy scale: run directory, resume, interruption, bad input, CLI."""

from __future__ import annotations

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
from search_helpers import interrupt_after_epoch

from dra_dali.cli import main
from dra_dali.data import DataError
from dra_dali.policy import Policy
from dra_dali.search import ConfigError, RunDirError, SearchConfig, load_checkpoint, run_search

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model": "resnet-tiny", "proxy_classes": 3, "images_per_class": 8, "resolution": 16,
        "batch_size": 4, "epochs": 2, "depth": 2, "crop_scale": [0.5, 1.0], "threads": 1}


def tiny(data, **changes) -> SearchConfig:
    return SearchConfig.from_dict({**TINY, "data": str(data), **changes})


def test_recipes_load_and_cover_the_paper_settings():
    cfgs = {name: SearchConfig.from_recipe(ROOT / "search" / f"{name}.yaml")
            for name in ("imagenet-resnet50", "cifar10-wrn28-10", "demo")}
    imagenet, cifar = cfgs["imagenet-resnet50"], cfgs["cifar10-wrn28-10"]
    assert (imagenet.proxy_classes, imagenet.images_per_class, imagenet.epochs) == (120, 50, 20)
    assert imagenet.effective_lr == pytest.approx(0.1 * 32 / 256)
    assert imagenet.crop_scale == (0.05, 1.0) and imagenet.resolution == 224
    assert cifar.proxy_classes * cifar.images_per_class == 4000
    assert (cifar.model, cifar.batch_size, cifar.cutout, cifar.weight_decay) == \
        ("wrn-28-10", 128, 16, 5e-4)
    assert cfgs["demo"].model == "resnet-tiny"


def test_pad_crop_takes_a_window_of_the_zero_padded_image():
    from dra_dali.search.data import crop_flip

    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    cfg = SearchConfig(crop="pad", resolution=20, pad=4, flip=False)
    out = crop_flip(images, cfg, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(images.float() / 255.0, (4, 4, 4, 4))
    windows = [padded[i, :, y:y + 20, x:x + 20] for i in range(6)
               for y in range(9) for x in range(9)]
    for i in range(6):
        assert any(torch.equal(out[i], w) for w in windows[i * 81:(i + 1) * 81]), i
    assert not torch.equal(out, images.float() / 255.0)  # shifted, not just copied


def test_search_writes_the_run_directory(embedded, tmp_path):
    out = tmp_path / "run"
    policy = run_search(tiny(embedded.train), out, progress=False)
    for name in ("policy.yaml", "config.yaml", "metrics.jsonl", "checkpoint.pt",
                 "trajectories.png", "policy.png"):
        assert (out / name).is_file(), name
    loaded = Policy.load(out / "policy.yaml")
    assert loaded.sha256() == policy.sha256() and loaded.depth == 2 and loaded.resolution == 16
    prov = loaded.provenance
    for key in ("data", "model", "epochs", "seed", "search_seconds", "device", "version"):
        assert key in prov, key
    lines = [json.loads(row) for row in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in lines] == [0, 1, 2]
    assert all(k in lines[-1] for k in ("policy_ce", "policy_kl", "model_ce", "probabilities"))
    # Cosine decay per step: half the peak after epoch 1 of 2, zero at the end.
    peak = tiny(embedded.train).effective_lr
    assert lines[1]["lr"] == pytest.approx(0.5 * peak) and lines[2]["lr"] == pytest.approx(0.0)
    # The policy moved away from its initial values.
    assert not torch.allclose(torch.tensor(lines[-1]["mean"]), torch.tensor(lines[0]["mean"]))
    assert yaml.safe_load((out / "config.yaml").read_text())["images_per_class"] == 8


def test_learn_w_off_keeps_w_and_fixed_mean_keeps_mean(embedded, tmp_path):
    policy = run_search(tiny(embedded.train, learn_w=False, learn_mean=False, epochs=1),
                        tmp_path / "run", progress=False)
    assert set(policy.layers[0].logits) == {1e-3}
    assert set(policy.layers[1].mean) == {0.5}
    assert set(policy.layers[0].std) != {0.1}  # std still learned


@pytest.mark.parametrize("method", ["dra", "ddas"])
def test_interrupted_then_resumed_equals_uninterrupted(embedded, tmp_path, method):
    cfg = tiny(embedded.train, epochs=3, method=method)
    full = run_search(cfg, tmp_path / "full", progress=False)

    interrupt_after_epoch(cfg, tmp_path / "cut")
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert state["epoch"] == 1 and not (tmp_path / "cut" / "policy.yaml").exists()
    resumed = run_search(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed.to_yaml().split("provenance")[0] == full.to_yaml().split("provenance")[0]
    metrics = [(tmp_path / run / "metrics.jsonl").read_text().splitlines() for run in
               ("full", "cut")]
    strip = [[{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]
             for lines in metrics]
    assert strip[0] == strip[1] and len(strip[0]) == 4
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_is_not_overwritten_and_resume_checks_config(embedded, tmp_path):
    out = tmp_path / "run"
    run_search(tiny(embedded.train, epochs=1), out, progress=False)
    before = (out / "policy.yaml").read_text()
    with pytest.raises(RunDirError, match="already holds a finished run"):
        run_search(tiny(embedded.train, epochs=1), out, progress=False)
    with pytest.raises(RunDirError, match="holds a finished run"):
        run_search(tiny(embedded.train, epochs=1), out, resume=True, progress=False)
    cut = tmp_path / "cut"

    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(tiny(embedded.train), cut, progress=False, on_epoch_end=stop)
    with pytest.raises(RunDirError, match="batch_size: 4 -> 8"):
        run_search(tiny(embedded.train, batch_size=8), cut, resume=True, progress=False)
    with pytest.raises(RunDirError, match=r"method: 'dra' -> 'ddas'"):
        run_search(tiny(embedded.train, method="ddas"), cut, resume=True, progress=False)
    with pytest.raises(RunDirError, match="nothing to resume"):
        run_search(tiny(embedded.train), tmp_path / "fresh", resume=True, progress=False)
    assert (out / "policy.yaml").read_text() == before


def test_checkpoint_loads_weights_only_and_garbage_is_named(embedded, tmp_path):
    out = tmp_path / "run"
    cfg = tiny(embedded.train, epochs=1)

    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, out, progress=False, on_epoch_end=stop)

    class Payload:  # a pickle that would run code when loaded without weights_only
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"format": "dra-search-checkpoint/2", "epoch": 1, "x": Payload()},
               out / "checkpoint.pt")
    with pytest.raises(RunDirError, match="checkpoint.pt"):
        run_search(cfg, out, resume=True, progress=False)
    assert not (tmp_path / "pwned").exists()


def test_bad_recipe_and_model_are_named(embedded, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: resnet-tiny\nlearning_rate: 0.1\nepoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown recipe key\(s\) \['epoch', 'learning_rate'\]"):
        SearchConfig.from_recipe(recipe)
    with pytest.raises(ConfigError, match="sampling"):
        tiny(embedded.train, sampling="per-op")
    with pytest.raises(ConfigError, match="resnet-9000"):
        run_search(tiny(embedded.train, model="resnet-9000"), tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()


def test_too_few_classes_or_images(embedded, tmp_path):
    with pytest.raises(DataError, match="asks for 11 classes"):
        run_search(tiny(embedded.train, proxy_classes=11), tmp_path / "a", progress=False)
    with pytest.raises(DataError, match="has 200 images, the proxy asks for 500"):
        run_search(tiny(embedded.train, images_per_class=500), tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _small_copy(src: Path, dst: Path, classes: list[str], per_class: int = 6) -> Path:
    for name in classes:
        (dst / name).mkdir(parents=True)
        for f in sorted((src / name).iterdir())[:per_class]:
            shutil.copy(f, dst / name / f.name)
    return dst


def test_val_data_classes_must_match(embedded, tmp_path):
    train = _small_copy(embedded.train, tmp_path / "train", ["cat", "coffee", "galaxy"])
    val = _small_copy(embedded.val, tmp_path / "val", ["cat", "coffee", "rocket"])
    cfg = tiny(train, val_data=str(val), images_per_class=4)
    with pytest.raises(DataError, match=r"only in data: \['galaxy'\].*only in val_data: "
                                        r"\['rocket'\]"):
        run_search(cfg, tmp_path / "run", progress=False)
    # With matching classes the val folder feeds the policy half.
    shutil.rmtree(val / "rocket")
    _small_copy(embedded.val, tmp_path / "val2", ["galaxy"])
    shutil.move(str(tmp_path / "val2" / "galaxy"), str(val / "galaxy"))
    policy = run_search(tiny(train, val_data=str(val), images_per_class=4, epochs=1),
                        tmp_path / "ok", progress=False)
    assert policy.provenance["val_data"] == str(val) and policy.provenance["policy_half"] == 6


def test_unreadable_image_is_named_before_any_work(embedded, tmp_path):
    train = _small_copy(embedded.train, tmp_path / "train", ["cat", "coffee", "galaxy"])
    bad = train / "coffee" / "broken.jpg"
    bad.write_bytes((train / "cat" / sorted(os.listdir(train / "cat"))[0]).read_bytes()[:200])
    cfg = tiny(train, images_per_class=None)
    with pytest.raises(DataError, match="broken.jpg: truncated"):
        run_search(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_search_and_errors(embedded, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["search", "--data", str(embedded.train), "--out", str(out), "--model", "resnet-tiny",
            "--epochs", "1", "--batch-size", "4"]
    sets = [f"--set={k}={v}" for k, v in TINY.items() if k not in ("model", "epochs",
                                                                 "batch_size")]
    result = runner.invoke(main, args + sets)
    assert result.exit_code == 0, result.output
    assert "policy written to" in result.output and (out / "policy.yaml").is_file()
    bad = runner.invoke(main, args + ["--set", "lr_rate=3"])
    assert bad.exit_code == 1 and "unknown recipe key(s) ['lr_rate']" in bad.output
    again = runner.invoke(main, args + sets)
    assert again.exit_code == 1 and "already holds a finished run" in again.output
    forced = runner.invoke(main, args + sets + ["--force", "--method", "dra"])
    assert forced.exit_code == 0, forced.output


@pytest.mark.parametrize("method", ["dra", "ddas"])
def test_sigterm_leaves_a_loadable_checkpoint(embedded, tmp_path, method):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dra_dali.cli", "search", "--data", str(embedded.train),
           "--out", str(out), "--epochs", "200", "--method", method]
    cmd += [f"--set={k}={v}" for k, v in TINY.items() if k != "epochs"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300  # the first epoch; slow on a loaded 2-core machine
        while not (out / "checkpoint.pt").exists() and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert (out / "checkpoint.pt").exists()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err          # 128 + SIGTERM, as `train`
    assert "--resume" in err
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] >= 1 and not (out / "policy.yaml").exists()


def test_ddas_search_exports_a_smoothed_upsampled_schedule(embedded, tmp_path):
    out = tmp_path / "ddas"
    cfg = tiny(embedded.train, method="ddas", epochs=3,
               ops=["Rotate", "Invert", "Brightness", "Identity"],
               ddas={"levels": [0.3, 0.9], "schedule_epochs": 7, "gate_smoothing": 3})
    policy = run_search(cfg, out, progress=False)
    for name in ("policy.yaml", "config.yaml", "metrics.jsonl", "checkpoint.pt",
                 "trajectories.png"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert all(len(r["p_o"]) == 6 for r in records)      # Rotate, Brightness x 2 levels + 2
    gates = [r["p_tp"] for r in records[1:]]
    smoothed = [sum(gates[:2]) / 2, sum(gates) / 3, sum(gates[1:]) / 2]
    # 3 search epochs over 7 training epochs: 0-2 -> epoch 1, 3-4 -> epoch 2, 5-6 -> epoch 3.
    loaded = Policy.load(out / "policy.yaml")
    assert loaded.schedule_boundaries == (3, 5) == policy.schedule_boundaries
    for train_epoch, source in ((0, 0), (2, 0), (3, 1), (4, 1), (6, 2)):
        flat = loaded.at_epoch(train_epoch)
        assert flat.gate == pytest.approx(smoothed[source])
        p_o = records[source + 1]["p_o"]
        # Rotate's two levels and Brightness's two levels sum to their operator probability.
        probs = flat.layers[0].probabilities
        assert probs[0] == pytest.approx(p_o[0] + p_o[1], rel=1e-6)
        assert probs[2] == pytest.approx(p_o[3] + p_o[4], rel=1e-6)
        assert len(flat.layers) == 2 and flat.layers[1] == flat.layers[0]
    assert loaded.provenance["method"] == "ddas"
