"""Throughput of the compiled DRA pipeline, measured side by side with its baselines.

Everything runs in this one script, interleaved in rounds, on the same JPEG files:

(a) the compiled DRA policy ÷ DALI's own ``nvidia.dali.auto_aug.rand_augment`` (n=2, m=9),
(b) ÷ the same DALI pipeline without augmentation,
(c) ÷ a PIL RandAugment (n=2, m=9) torch DataLoader with as many workers as DALI has threads
    (torchvision/timm do not import next to torch 2.13 here, so the PIL baseline applies the PIL
    reference operators of ``tests/pil_reference.py`` with torchvision's RandomResizedCrop rule),
(d) the compiled ``ra-n2-m9`` ÷ DALI's ``rand_augment(n=2, m=9)``, both bilinear, and both with
    nearest-neighbour geometric operators (variants ``...@nearest``),
(e) the cost per operator: one operator on pre-decoded images minus a plain copy,
(f) with ``--dali-kernels``: the compiled policies and the operators also with DALI's own CPU
    operators (``cpu_kernels="dali"``, the graph GPU images get) instead of the fused CPU
    kernels (variants ``...@dali-kernels``), to show what the fused kernels buy.

Every DALI pipeline is: file reader (shuffled) -> JPEG decode -> random-resized-crop ->
[augmentation] -> flip + normalise to NCHW float (``crop_mirror_normalize``). On ``--device gpu``
the decoder is ``mixed`` and every image operator runs on the GPU; ``--train-model resnet50`` also
times each pipeline feeding a training step (forward, backward, SGD; AMP and channels-last on
the GPU), which is what ``benchmarks/gpu.sh`` runs on a GPU node.

The JPEGs are ImageNet-like (500 x 375 or 375 x 500, quality 90), cut from the photos that
scikit-image and scikit-learn ship, written to a temporary folder.

Run:
    python benchmarks/dali_throughput.py                 # about 4 minutes on 2 cores
    python benchmarks/dali_throughput.py --quick         # about 1 minute, fewer rounds
    python benchmarks/dali_throughput.py --json out.json
    bash benchmarks/gpu.sh                               # a GPU node: the table with ResNet-50
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]
_SOURCES = [("skimage", "data/astronaut.png"), ("skimage", "data/chelsea.png"),
            ("skimage", "data/coffee.png"), ("skimage", "data/rocket.jpg"),
            ("skimage", "data/motorcycle_left.png"), ("skimage", "data/hubble_deep_field.jpg"),
            ("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg")]


# ----- data ---------------------------------------------------------------------------------------
def make_jpegs(folder: Path, count: int = 64, seed: int = 0) -> list[str]:
    """Write ``count`` ImageNet-like JPEGs (500x375 / 375x500) cut from the bundled photos."""
    import importlib.util

    rng = np.random.default_rng(seed)
    photos = []
    for package, relative in _SOURCES:
        location = Path(list(importlib.util.find_spec(package).submodule_search_locations)[0])
        with Image.open(location / relative) as im:
            photos.append(im.convert("RGB"))
    files = []
    for i in range(count):
        im = photos[i % len(photos)]
        w, h = (500, 375) if rng.random() < 0.75 else (375, 500)
        scale = max(w / im.width, h / im.height) * rng.uniform(1.0, 1.6)
        big = im.resize((math.ceil(im.width * scale), math.ceil(im.height * scale)),
                        Image.BILINEAR)
        x0 = int(rng.integers(0, big.width - w + 1))
        y0 = int(rng.integers(0, big.height - h + 1))
        tile = big.crop((x0, y0, x0 + w, y0 + h))
        if rng.random() < 0.5:
            tile = tile.transpose(Image.FLIP_LEFT_RIGHT)
        path = folder / f"img_{i:03d}.jpg"
        tile.save(path, quality=90)
        files.append(str(path))
    return files


# ----- DALI pipelines -----------------------------------------------------------------------------
def variant_parts(variant: str) -> tuple[str, str, str]:
    """``"ra-n2-m9@nearest@dali-kernels"`` -> ``("ra-n2-m9", "nearest", "dali")``; by default
    bilinear and the fused CPU kernels."""
    name, *options = variant.split("@")
    unknown = set(options) - {"nearest", "dali-kernels"}
    if unknown:
        raise ValueError(f"unknown variant options {sorted(unknown)} in {variant!r}")
    return (name, "nearest" if "nearest" in options else "linear",
            "dali" if "dali-kernels" in options else "fused")


def dali_pipeline(files: list[str], variant: str, batch_size: int, threads: int, seed: int = 0,
                  device: str = "cpu", size: int = 224, build: bool = True):
    """Reader -> decode -> RRC ``size`` -> augmentation ``variant`` -> flip + normalise.

    ``variant``: ``none``, ``dali-rand-augment`` or a preset name, optionally ``@nearest`` and
    (presets) ``@dali-kernels``.
    On ``device="gpu"`` the decoder is mixed and the image operators run on the GPU.
    """
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.auto_aug import rand_augment

    from dra_dali import Policy
    from dra_dali.dali import augment

    name, interpolation, cpu_kernels = variant_parts(variant)
    policy = Policy.preset(name) if name not in ("none", "dali-rand-augment") else None
    interp = {"linear": types.INTERP_LINEAR, "nearest": types.INTERP_NN}[interpolation]

    @pipeline_def(enable_conditionals=name != "none", batch_size=batch_size,
                  num_threads=threads, device_id=0 if device == "gpu" else None, seed=seed)
    def pipe():
        jpegs, labels = fn.readers.file(files=files, labels=[0] * len(files),
                                        random_shuffle=True, seed=seed, name="reader")
        images = fn.decoders.image(jpegs, device="mixed" if device == "gpu" else "cpu",
                                   output_type=types.RGB)
        images = fn.random_resized_crop(images, size=[size, size], random_area=[0.08, 1.0])
        if name == "dali-rand-augment":
            images = rand_augment.rand_augment(images, n=2, m=9, interp_type=interp)
        elif policy is not None:
            images = augment(images, policy, interpolation=interpolation,
                             cpu_kernels=cpu_kernels)
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                          mean=MEAN, std=STD, mirror=fn.random.coin_flip())
        return images, labels

    p = pipe()
    if build:
        p.build()
    return p


def op_pipeline(name: str | None, batch_size: int, threads: int, cpu_kernels: str = "fused"):
    """One catalog operator (m = 0.5, sign +1) on fed 224 px images; ``None`` = plain copy."""
    from nvidia.dali import fn, pipeline_def, types

    from dra_dali.dali.operators import DALI_OPS

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=None,
                  prefetch_queue_depth=1)
    def pipe():
        images = fn.external_source(name="images", layout="HWC", dtype=types.UINT8)
        if name is None:
            return fn.copy(images)
        m = fn.random.uniform(range=[0.5, 0.500001])            # a per-sample DataNode
        return DALI_OPS[name](images, m, 1.0, cpu_kernels=cpu_kernels)

    p = pipe()
    p.build()
    return p


class TrainStep:
    """One training step of ``model`` on a pipeline's batch: forward, cross-entropy, backward,
    SGD; AMP (bfloat16) and channels-last on the GPU. The batch goes to torch without a copy
    through the host on the GPU (``feed_ndarray``)."""

    def __init__(self, model: str, device: str, num_classes: int = 1000):
        import torch

        from dra_dali.models import create_model

        self.gpu = device == "gpu"
        self.device = torch.device("cuda" if self.gpu else "cpu")
        net = create_model(model, num_classes=num_classes).to(self.device)
        self.model = net.to(memory_format=torch.channels_last) if self.gpu else net
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def _to_torch(self, outputs):
        import torch

        images, labels = outputs[0].as_tensor(), outputs[1]
        if not self.gpu:
            return (torch.from_numpy(np.array(images)),
                    torch.from_numpy(np.array(labels.as_tensor())).long().view(-1))
        from nvidia.dali.plugin.pytorch import feed_ndarray

        x = torch.empty(images.shape(), dtype=torch.float32, device=self.device)
        feed_ndarray(images, x, cuda_stream=torch.cuda.current_stream())
        y = torch.from_numpy(np.array(labels.as_cpu().as_tensor())).long().view(-1)
        return x.contiguous(memory_format=torch.channels_last), y.to(self.device)

    def __call__(self, outputs) -> None:
        import torch

        x, y = self._to_torch(outputs)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.gpu):
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def synchronize(self) -> None:
        if self.gpu:
            import torch

            torch.cuda.synchronize()


# Batches a source holds ready before the clock starts: DALI's default prefetch queue (2) and a
# DataLoader's workers x prefetch_factor (2 x 2). Timing starts after draining them (on top of
# 2 warm-up batches), so no row is timed on batches made while another row was being timed.
_DALI_QUEUE = 2
_PIL_PREFETCH = 2


def time_dali(pipe, batches: int, warmup: int = 2 + _DALI_QUEUE,
              step=None) -> tuple[float, float]:
    """(images per wall-clock second, CPU milliseconds per image) over ``batches`` runs, each
    followed by ``step(outputs)`` when given.

    The CPU time is this process's (DALI's worker threads included): unlike the wall clock it
    hardly changes when other programs compete for the cores.
    """
    def run():
        outputs = pipe.run()
        if step is not None:
            step(outputs)

    for _ in range(warmup):
        run()
    if step is not None:
        step.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        run()
    if step is not None:
        step.synchronize()
    images = batches * pipe.max_batch_size
    return (images / (time.perf_counter() - start),
            1000 * (time.process_time() - cpu) / images)


# ----- PIL baseline -------------------------------------------------------------------------------
class PilRandAugment:
    """torch Dataset: PIL decode -> RandomResizedCrop 224 -> flip -> RandAugment(n=2, m=9) with
    the PIL reference operators (uniform choice, magnitude 0.9, random sign) -> normalise."""

    def __init__(self, files: list[str], length: int, n: int = 2, m: float = 0.9):
        self.files, self.length, self.n, self.m = files, length, n, m

    def __len__(self) -> int:
        return self.length

    @staticmethod
    def _rrc_box(w: int, h: int, rng) -> tuple[int, int, int, int]:
        area = w * h
        for _ in range(10):                                   # torchvision's rule
            target = area * rng.uniform(0.08, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                return x0, y0, x0 + cw, y0 + ch
        side = min(w, h)
        return (w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2

    def __getitem__(self, index: int):
        import torch

        from dra_dali.ops import OPS, PAPER_OPS
        from tests.pil_reference import apply_reference

        rng = np.random.default_rng(index)
        with Image.open(self.files[index % len(self.files)]) as im:
            im = im.convert("RGB")
            im = im.resize((224, 224), Image.BILINEAR, box=self._rrc_box(*im.size, rng))
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        x = np.asarray(im, dtype=np.uint8)
        for _ in range(self.n):
            name = PAPER_OPS[int(rng.integers(len(PAPER_OPS)))]
            sign = -1 if OPS[name].signed and rng.random() < 0.5 else 1
            x = apply_reference(name, x, self.m, sign, resolution=224, rng=rng)
        t = torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))
        t = (t - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        return t, 0


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of processes (Linux /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])          # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def time_pil(files: list[str], batch_size: int, workers: int,
             batches: int) -> tuple[float, float]:
    """(images per wall-clock second, CPU ms per image in the main process and the workers)."""
    import torch

    loader = torch.utils.data.DataLoader(PilRandAugment(files, 10**6), batch_size=batch_size,
                                         num_workers=workers, shuffle=True,
                                         prefetch_factor=_PIL_PREFETCH)
    it = iter(loader)
    for _ in range(2 + workers * _PIL_PREFETCH):
        next(it)
    pids = [w.pid for w in it._workers]
    start, cpu = time.perf_counter(), time.process_time() + _cpu_seconds(pids)
    for _ in range(batches):
        next(it)
    images = batches * batch_size
    rate = images / (time.perf_counter() - start)
    cpu_ms = 1000 * (time.process_time() + _cpu_seconds(pids) - cpu) / images
    del it
    return rate, cpu_ms


# ----- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="DALI threads = PIL workers")
    parser.add_argument("--policy", default="dra-imagenet-resnet-50", help="compiled preset")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--size", type=int, default=224, help="crop side in pixels")
    parser.add_argument("--jpegs", type=int, default=64, help="JPEG files to read")
    parser.add_argument("--train-model", help="also time a training step of this model "
                        "(dra_dali.models name: resnet50, resnet-tiny, ...)")
    parser.add_argument("--nearest", action="store_true",
                        help="also the variants with nearest-neighbour geometric operators")
    parser.add_argument("--dali-kernels", action="store_true",
                        help="also the compiled policies and operators with DALI's own CPU "
                        "operators instead of the fused CPU kernels")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 4 batches")
    parser.add_argument("--skip-pil", action="store_true")
    parser.add_argument("--skip-ops", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batches = 2, 4
    return args


def variants(args) -> list[str]:
    names = ["none", "dali-rand-augment", "ra-n2-m9", args.policy]
    if args.nearest:
        names += [f"{n}@nearest" for n in names[1:]]
    if args.dali_kernels:
        names += [f"{n}@dali-kernels" for n in ("ra-n2-m9", args.policy)]
    return names


def measure(args, files: list[str]) -> tuple[dict, dict]:
    """Interleaved rounds over every variant (and its training-step twin): images/s and CPU ms."""
    step = TrainStep(args.train_model, args.device) if args.train_model else None
    pipes = {v: dali_pipeline(files, v, args.batch_size, args.threads, device=args.device,
                              size=args.size) for v in variants(args)}
    keys = list(pipes) + ([f"{v} + {args.train_model}" for v in pipes] if step else [])
    keys += [] if args.skip_pil else ["pil-rand-augment"]
    rates: dict[str, list[float]] = {k: [] for k in keys}
    cpu_ms: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(args.rounds):
        order = list(pipes)[r % len(pipes):] + list(pipes)[:r % len(pipes)]
        for v in order:
            for key, with_step in [(v, None)] + ([(f"{v} + {args.train_model}", step)]
                                                  if step else []):
                rate, cost = time_dali(pipes[v], args.batches, step=with_step)
                rates[key].append(rate)
                cpu_ms[key].append(cost)
        if not args.skip_pil:
            rate, cost = time_pil(files, args.batch_size, args.threads, args.batches)
            rates["pil-rand-augment"].append(rate)
            cpu_ms["pil-rand-augment"].append(cost)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{k} {v[-1]:.0f}/s" for k, v in rates.items() if v), flush=True)
    return rates, cpu_ms


def operator_costs(args, files: list[str]) -> dict[str, float]:
    """CPU ms per image of each operator on top of a plain copy (median over rounds); with
    ``--dali-kernels`` also with DALI's own CPU operators (keys ``"<name> (dali)"``)."""
    from dra_dali.ops import OP_NAMES

    with Image.open(files[0]) as im:                # a real photo, repeated
        photo = np.asarray(im.convert("RGB").resize((args.size, args.size)), dtype=np.uint8)
    batch = [photo.copy() for _ in range(args.batch_size)]
    kernel_sets = {"": "fused", " (dali)": "dali"} if args.dali_kernels else {"": "fused"}
    pipes = {"copy": op_pipeline(None, args.batch_size, args.threads)}
    pipes.update({f"{name}{suffix}": op_pipeline(name, args.batch_size, args.threads, kernels)
                  for name in OP_NAMES for suffix, kernels in kernel_sets.items()})

    def run(p) -> float:
        p.feed_input("images", batch)
        start = time.process_time()
        p.run()
        return time.process_time() - start

    costs: dict[str, list[float]] = {}
    for _ in range(max(3, args.rounds)):
        base = statistics.median(run(pipes["copy"]) for _ in range(3))
        for key, pipe in pipes.items():
            if key != "copy":
                t = statistics.median(run(pipe) for _ in range(3))
                costs.setdefault(key, []).append(1000 * (t - base) / args.batch_size)
    return {k: statistics.median(v) for k, v in costs.items()}


def ratio_pairs(args, med: dict) -> list[tuple[str, str]]:
    """The issue's ratios: compiled RA / DALI RA, paper policy / none, paper policy / PIL."""
    dra = args.policy
    pairs = [("ra-n2-m9", "dali-rand-augment"), (dra, "none"), (dra, "dali-rand-augment")]
    if args.nearest:
        pairs += [("ra-n2-m9@nearest", "dali-rand-augment"),
                  ("ra-n2-m9@nearest", "dali-rand-augment@nearest"),
                  (f"{dra}@nearest", "none")]
    if args.dali_kernels:
        pairs += [("ra-n2-m9@dali-kernels", "dali-rand-augment"), (f"{dra}@dali-kernels", "none"),
                  ("ra-n2-m9", "ra-n2-m9@dali-kernels"), (dra, f"{dra}@dali-kernels")]
    pairs += [(a, "pil-rand-augment") for a in (dra, f"{dra}@nearest")]
    if args.train_model:
        pairs += [(f"{a} + {args.train_model}", f"{b} + {args.train_model}")
                  for a, b in pairs if "pil" not in b]
    return [(a, b) for a, b in pairs if a in med and b in med]


def summarise(args, rates: dict, cpu_ms: dict, op_costs: dict) -> dict:
    import nvidia.dali

    med = {k: statistics.median(v) for k, v in rates.items() if v}
    cpu = {k: statistics.median(v) for k, v in cpu_ms.items() if v}
    # throughput ratio: wall clock (noisy on a shared machine) and CPU time (cost ratio inverted)
    ratios = {f"{a} / {b}": {"wall": med[a] / med[b], "cpu": cpu[b] / cpu[a],
                             "wall_per_round": [x / y for x, y in zip(rates[a], rates[b])]}
              for a, b in ratio_pairs(args, med)}
    return {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "dali": nvidia.dali.__version__,
                    "load_average": os.getloadavg()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "images_per_second_median": med,
        "images_per_second_min_max": {k: (min(v), max(v)) for k, v in rates.items() if v},
        "cpu_ms_per_image_median": cpu,
        "throughput_ratios": ratios,
        "op_cost_cpu_ms_per_image_median": op_costs,
    }


def report(result: dict) -> None:
    med, spread = result["images_per_second_median"], result["images_per_second_min_max"]
    cpu = result["cpu_ms_per_image_median"]
    print("\nimages/s wall (median, min-max) | CPU ms per image (median):")
    for k in med:
        print(f"  {k:40s} {med[k]:8.1f}  ({spread[k][0]:.1f}-{spread[k][1]:.1f}) | {cpu[k]:6.2f}")
    print("throughput ratios (wall clock | from CPU time | wall per round):")
    for k, v in result["throughput_ratios"].items():
        rounds = ", ".join(f"{x:.2f}" for x in v["wall_per_round"])
        print(f"  {k:60s} {v['wall']:.2f}x | {v['cpu']:.2f}x | {rounds}")
    if result["op_cost_cpu_ms_per_image_median"]:
        print("operator cost, CPU ms per image on top of a copy (median):")
        for k, v in result["op_cost_cpu_ms_per_image_median"].items():
            print(f"  {k:20s} {v:6.2f}")
    print(f"load average during the run: {os.getloadavg()}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = make_jpegs(Path(tmp), count=args.jpegs)
        rates, cpu_ms = measure(args, files)
        op_costs = {} if args.skip_ops else operator_costs(args, files)
    result = summarise(args, rates, cpu_ms, op_costs)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
