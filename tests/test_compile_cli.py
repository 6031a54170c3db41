"""`dra-dali compile`: serialised pipeline loadable with DALI alone, summary, preview, bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from dra_dali import Policy
from dra_dali.cli import main


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, embedded):
    """One CPU compile of a 32 px paper policy over the embedded val set (demo recipe)."""
    out = tmp_path_factory.mktemp("compiled")
    policy = Policy.preset("dra-cifar10-wrn-28-10")
    policy_path = policy.save(out / "in" / "policy.yaml")
    result = CliRunner().invoke(
        main, ["compile", str(policy_path), "--out", str(out / "c"), "--device", "cpu",
               "--data", str(embedded.val), "--pipeline", "demo", "--batch-size", "16"])
    return out / "c", result, policy


def test_compile_writes_every_file(compiled):
    out, result, policy = compiled
    assert result.exit_code == 0, result.output + result.stderr
    for name in ("pipeline.dali", "summary.txt", "preview.png", "config.yaml", "policy.yaml"):
        assert (out / name).is_file(), name
    assert Policy.load(out / "policy.yaml") == policy
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["recipe"]["name"] == "demo" and config["batch_size"] == 16
    assert config["policy_sha256"] == policy.sha256() and config["device"] == "cpu"
    assert not result.stderr.strip()                              # 32 px policy, 32 px crop


def test_summary_lists_operators_devices_and_probabilities(compiled):
    out, _, policy = compiled
    summary = (out / "summary.txt").read_text()
    assert "device placement for cpu: ok" in summary
    assert "decoders__ImageRandomCrop" in summary and "CropMirrorNormalize" in summary
    top = int(np.argmax(policy.layers[0].probabilities))
    p = policy.layers[0].probabilities[top]
    assert f"{policy.ops[top]:<14} {p:7.4f} {p * 0.5:8.4f}" in summary      # apply U(0.2, 0.8)
    assert "expected operators applied per image: 1.00 of 2 layers" in summary
    assert "layer 1" in summary


def test_preview_is_rendered_by_the_pipeline(compiled):
    out, _, _ = compiled
    grid = np.asarray(Image.open(out / "preview.png"))
    cell = 96
    assert grid.shape == (6 * cell, 8 * cell + 8, 3)
    originals = grid[:, :cell]
    augmented = grid[:, cell + 8:]
    assert originals.std() > 20                                    # real photos, not blank
    tiles = augmented.reshape(6, cell, 7, cell, 3).transpose(0, 2, 1, 3, 4)
    changed = [not np.array_equal(tiles[r, k], originals[r * cell:(r + 1) * cell])
               for r in range(6) for k in range(7)]
    assert 0.5 < np.mean(changed) < 1.0          # apply prob U(0.2, 0.8) per layer, 2 layers


def test_serialised_pipeline_runs_with_dali_alone(compiled):
    out, _, _ = compiled
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from nvidia.dali import Pipeline
        pipe = Pipeline.deserialize(filename={str(out / 'pipeline.dali')!r})
        pipe.build()
        images, labels = pipe.run()
        images = np.array(images.as_tensor()); labels = np.array(labels.as_tensor())
        assert images.shape == (16, 3, 32, 32) and images.dtype == np.float32, images.shape
        assert labels.shape == (16, 1) and 0 <= labels.min() and labels.max() < 10
        assert np.isfinite(images).all()
        leaked = [m for m in ("dra_dali", "torch") if m in sys.modules]
        assert not leaked, leaked
        print("ok", images.shape)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=out)
    assert run.returncode == 0, run.stderr
    assert "ok (16, 3, 32, 32)" in run.stdout


def test_gpu_without_cuda_checks_the_graph_and_says_serialisation_needs_cuda(tmp_path, embedded):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the no-CUDA path is not reachable")
    result = CliRunner().invoke(
        main, ["compile", "dra-cifar10-wrn-28-10", "--out", str(tmp_path), "--device", "gpu",
               "--data", str(embedded.val), "--pipeline", "cifar"])
    assert result.exit_code == 0, result.output + result.stderr
    assert result.exception is None
    assert "serialising a GPU pipeline needs CUDA" in result.stderr
    assert not (tmp_path / "pipeline.dali").exists()
    summary = (tmp_path / "summary.txt").read_text()
    assert "device placement for gpu: ok (decoder mixed, images stay on the GPU)" in summary
    assert "decoders__Image" in summary and "mixed" in summary
    assert (tmp_path / "preview.png").is_file() and (tmp_path / "config.yaml").is_file()


def test_invalid_policy_is_refused_with_the_validation_message(tmp_path):
    policy = Policy.preset("ta").to_dict()
    policy["layers"][0]["std"][3] = -0.5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(policy))
    result = CliRunner().invoke(main, ["compile", str(path), "--out",
                                                       str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "invalid policy" in result.stderr and "layers[0].std[3]" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_policy_name_and_missing_data_are_named(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["compile", "ra-n2-m99x", "--out", str(tmp_path / "a")])
    assert result.exit_code == 1 and "ra-n2-m99x" in result.stderr
    result = runner.invoke(main, ["compile", "ta", "--out", str(tmp_path / "b"), "--data",
                                  str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "nowhere" in result.stderr


def test_preset_is_made_for_the_pipeline_size(tmp_path, embedded):
    result = CliRunner().invoke(
        main, ["compile", "dra-imagenet-resnet-50", "--out", str(tmp_path), "--data",
               str(embedded.train), "--batch-size", "8"])            # the embedded set: demo, 32 px
    assert result.exit_code == 0, result.stderr
    assert "Warning" not in result.stderr
    assert Policy.load(tmp_path / "policy.yaml").resolution == 32
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["recipe"]["resolution"] == 32


def test_a_policy_file_is_adapted_to_the_pipeline_size_with_a_note(tmp_path, embedded):
    policy_file = Policy.preset("ra-n2-m9").save(tmp_path / "ra.yaml")   # a file made for 224 px
    result = CliRunner().invoke(
        main, ["compile", str(policy_file), "--out", str(tmp_path / "c"), "--data",
               str(embedded.val), "--pipeline", "cifar", "--batch-size", "8"])
    assert result.exit_code == 0, result.stderr
    assert "Note: the policy was made for 224 px images and is adapted to the pipeline's 32 px " \
           "(recipe 'cifar'): TranslateX/TranslateY move by up to 10 px at m = 1" in result.stderr
    assert "Warning" not in result.stderr
    assert Policy.load(tmp_path / "c" / "policy.yaml").resolution == 32
    assert "WARNING" not in (tmp_path / "c" / "summary.txt").read_text()


def test_data_with_an_unreadable_file_is_refused_naming_it(tmp_path, embedded):
    import shutil

    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    for src in sorted((embedded.val / "cat").glob("*.jpg"))[:4]:
        shutil.copy(src, data / "cat" / src.name)
    (data / "cat" / "zero.jpg").write_bytes(b"")
    result = CliRunner().invoke(main, ["compile", "ta", "--out", str(tmp_path / "out"),
                                       "--data", str(data)])
    assert result.exit_code == 1
    assert f"{data / 'cat' / 'zero.jpg'}: empty" in result.stderr
    assert not (tmp_path / "out" / "pipeline.dali").exists()


def _scheduled_policy() -> Policy:
    bodies = []
    for name in ("ra-n1-m9", "rastar-n2-m10"):
        body = Policy.preset(name, resolution=32).to_dict()
        body.pop("format"), body.pop("provenance", None)
        bodies.append(body)
    return Policy.from_dict({"format": "dra-policy/2", "schedule": [
        {"start_epoch": 0, "policy": bodies[0]}, {"start_epoch": 3, "policy": bodies[1]}]})


def test_a_schedule_compiles_into_one_pipeline_per_entry(tmp_path, embedded):
    policy = _scheduled_policy()
    path = policy.save(tmp_path / "schedule.yaml")
    result = CliRunner().invoke(
        main, ["compile", str(path), "--out", str(tmp_path / "c"), "--device", "cpu",
               "--data", str(embedded.val), "--pipeline", "demo", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "c"
    for start, entry in zip((0, 3), policy.schedule):
        folder = out / f"epoch-{start:03d}"
        assert (folder / "pipeline.dali").is_file() and (folder / "preview.png").is_file()
        assert Policy.load(folder / "policy.yaml") == entry.policy
    summary = (out / "summary.txt").read_text()
    assert "changes at epochs [3]" in summary
    assert "epochs 0-2: epoch-000/" in summary and "epochs 3-on: epoch-003/" in summary
    assert Policy.load(out / "policy.yaml") == policy


def test_a_format2_summary_shows_gate_and_levels(tmp_path, embedded):
    body = Policy.preset("ra-n1-m9", resolution=32).to_dict()
    body.pop("provenance", None)
    body.update(format="dra-policy/2", gate=0.4)
    levels = {"dist": "categorical", "levels": [0.2, 0.6], "probs": [0.25, 0.75]}
    body["layers"][0] = {"logits": body["layers"][0]["logits"],
                         "magnitude": [levels] * len(body["ops"])}
    path = Policy.from_dict(body).save(tmp_path / "p.yaml")
    result = CliRunner().invoke(
        main, ["compile", str(path), "--out", str(tmp_path / "c"), "--device", "cpu",
               "--data", str(embedded.val), "--pipeline", "demo", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    summary = (tmp_path / "c" / "summary.txt").read_text()
    assert "gate 0.4" in summary and "levels 0.2:0.25 0.6:0.75" in summary
