"""Smoke tests of benchmarks/dali_throughput.py and benchmarks/gpu.sh at tiny sizes (CPU), and the
GPU graph of the benchmark's pipelines, built structurally (no CUDA needed)."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("dali_throughput",
                                                  ROOT / "benchmarks" / "dali_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_benchmark_runs_at_tiny_size(bench, tmp_path):
    """Every variant, the nearest and DALI-kernel twins, the training step (CPU fallback) and
    the PIL loader."""
    out = tmp_path / "result.json"
    result = bench.main(["--rounds", "1", "--batches", "1", "--batch-size", "4", "--threads", "1",
                         "--size", "32", "--jpegs", "8", "--skip-ops", "--nearest",
                         "--dali-kernels", "--train-model", "resnet-tiny", "--json", str(out)])
    rates = result["images_per_second_median"]
    for key in ("none", "dali-rand-augment", "ra-n2-m9", "dra-imagenet-resnet-50",
                "ra-n2-m9@nearest", "dali-rand-augment@nearest", "pil-rand-augment",
                "ra-n2-m9 + resnet-tiny", "none + resnet-tiny", "ra-n2-m9@dali-kernels"):
        assert rates[key] > 0, key
    ratios = result["throughput_ratios"]
    for key in ("ra-n2-m9 / dali-rand-augment", "dra-imagenet-resnet-50 / none",
                "dra-imagenet-resnet-50 / pil-rand-augment",
                "ra-n2-m9 + resnet-tiny / dali-rand-augment + resnet-tiny"):
        assert math.isfinite(ratios[key]["wall"]) and ratios[key]["cpu"] > 0, key
    assert out.exists()


def test_operator_cost_pipeline_runs(bench):
    import numpy as np

    pipe = bench.op_pipeline("Rotate", 2, 1)
    pipe.feed_input("images", [np.zeros((16, 16, 3), np.uint8)] * 2)
    assert np.array(pipe.run()[0][0]).shape == (16, 16, 3)


@pytest.mark.parametrize("variant", ["none", "dali-rand-augment", "ra-n2-m9",
                                     "dra-imagenet-resnet-50@nearest"])
def test_gpu_pipelines_decode_mixed_and_stay_on_the_gpu(bench, tmp_path, variant):
    """The GPU graph of each benchmark pipeline, built without CUDA: mixed decoder, no GPU data
    read on the CPU, the warp on the GPU."""
    from dra_dali.dali.export import graph_operators, placement_problems

    files = bench.make_jpegs(tmp_path, count=2)
    pipe = bench.dali_pipeline(files, variant, 4, 1, device="gpu", build=False)
    assert placement_problems(pipe, "gpu") == []
    devices = {(schema, dev) for _, schema, dev, _ in graph_operators(pipe)}
    assert ("decoders__Image", "mixed") in devices
    if variant != "none":
        assert ("WarpAffine", "gpu") in devices


def test_gpu_script_passes_its_arguments(tmp_path):
    """gpu.sh is valid bash and its argument list is accepted by the benchmark (--help)."""
    script = ROOT / "benchmarks" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ROOT))
    run = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "--train-model" in run.stdout and "--device" in run.stdout
    text = script.read_text()
    assert "--device gpu" in text and "resnet50" in text
