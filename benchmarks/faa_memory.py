"""Peak memory of a Faster AutoAugment search step against a plain training step.

Faster AutoAugment runs **all** candidate operators of every stage on every image during search
(the stage's output is the weighted sum of all of them), so its activation memory grows with the
number of operators. Reported per resolution, each variant in a fresh process so that the peak
belongs to that variant alone:

* ``plain``: one training step of the model (forward, backward, SGD) on a batch;
* ``faa-policy``: the FAA policy alone, forward and backward, on the same batch;
* ``faa-step``: one whole FAA step (critic step with the gradient penalty, then policy step).

On CPU the peak is the process's peak resident set (``ru_maxrss``) minus its resident set just
before the step; on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before it.
The ratio ``faa-step / plain`` is the number to read; absolute values depend on the allocator.

Usage:
    python benchmarks/faa_memory.py                                  # 32 px and 224 px, batch 32
    python benchmarks/faa_memory.py --resolutions 32 --batch-size 128 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from types import SimpleNamespace

import torch

VARIANTS = ("plain", "faa-policy", "faa-step")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _config(args: argparse.Namespace):
    from dra_dali.ops import PAPER_OPS
    from dra_dali.search.config import SearchConfig

    return SearchConfig.from_dict({
        "method": "faster-aa", "model": args.model, "resolution": args.resolution,
        "batch_size": args.batch_size, "ops": list(PAPER_OPS), "device": args.device,
        "epochs": 1, "faster-aa": {"chunks": args.chunks}})


def _setup(args: argparse.Namespace):
    from dra_dali.models import create_model
    from dra_dali.search.methods import Batch, StepContext, get_method

    torch.manual_seed(0)
    cfg = _config(args)
    device = torch.device(args.device)
    model = create_model(args.model, args.classes).to(device)
    method = get_method("faster-aa")(cfg, cfg.options, num_classes=args.classes, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mean = torch.tensor([0.5, 0.5, 0.5], device=device).view(1, 3, 1, 1)
    ctx = StepContext(cfg, model, optimizer, lambda x: (x - mean) / 0.5,
                      torch.Generator().manual_seed(0))
    shape = (args.batch_size, 3, args.resolution, args.resolution)
    labels = torch.randint(args.classes, (args.batch_size,), device=device)
    batches = [Batch(torch.rand(shape, device=device), labels) for _ in range(2)]
    return SimpleNamespace(ctx=ctx, method=method, train=batches[0], val=batches[1])


def _run(variant: str, s: SimpleNamespace) -> None:
    if variant == "plain":
        ce, _ = s.ctx.train_ce(s.train.images, s.train.labels)
        s.ctx.model_step(ce)
    elif variant == "faa-policy":
        s.method.policy(s.train.images, s.ctx.generator).sum().backward()
    else:
        s.method.step(s.ctx, s.train, s.val)


def child(args: argparse.Namespace) -> dict[str, float]:
    """Measure one variant in this process; returns ``{"peak_mib": ..., "before_mib": ...}``."""
    torch.set_num_threads(args.threads)
    s = _setup(args)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _rss_mib()
    _run(args.variant, s)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mib": peak - before, "before_mib": before}


def _measure(args: argparse.Namespace, resolution: int, variant: str) -> float:
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--resolutions",
           str(resolution), "--batch-size", str(args.batch_size), "--model", args.model,
           "--device", args.device, "--threads", str(args.threads), "--chunks", str(args.chunks),
           "--classes", str(args.classes)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolutions", type=int, nargs="+", default=[32, 224])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--model", default="resnet-tiny")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--chunks", type=int, default=8, help="FAA's sub-policy chunks per batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    args = _parser().parse_args(argv)
    if args.child:
        args.resolution = args.resolutions[0]
        print(json.dumps(child(args)))
        return {}
    results = {}
    print(f"{args.model}, batch {args.batch_size}, {args.device}, 16 operators x 2 stages, "
          f"chunks {args.chunks}; peak MiB above the pre-step level")
    print("| resolution | plain step | FAA policy fwd+bwd | FAA step | FAA step / plain |")
    print("|---:|---:|---:|---:|---:|")
    for r in args.resolutions:
        row = {v: _measure(args, r, v) for v in VARIANTS}
        results[r] = row
        ratio = row["faa-step"] / max(row["plain"], 1e-9)
        print(f"| {r} px | {row['plain']:.0f} | {row['faa-policy']:.0f} | {row['faa-step']:.0f} "
              f"| {ratio:.1f}x |")
    return results


if __name__ == "__main__":
    main()
