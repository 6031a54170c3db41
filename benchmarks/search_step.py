"""Cost of a search step (DRA, DDAS), as ratios measured side by side in one process.

Ratios reported:

* **DRA step / plain training step**, same model, batch and device. A DRA step is a policy
  step (clean forward without gradient, augmented forward + backward to the policy) plus a model
  step on a policy-augmented batch; the floor is about two forward/backward passes plus one
  forward, i.e. roughly 2.3-2.7x a plain step depending on the backward/forward cost ratio.
* **DDAS step / plain training step**: ``L^ + 1`` forward/backward passes (the clean batch and
  ``L^ = 3`` augmented ones, each for its own gradient), the unrolled step and one
  forward/backward of the validation batch at the unrolled weights; the validation batch has
  the training batch's size here (the paper's CIFAR search uses 256 against 32); with
  ``policy_batches: split`` (an option, not the paper's Algorithm 1) each sampled policy
  augments one of ``L^`` groups of the batch, so the training passes cover the batch twice
  (clean and augmented) instead of ``L^ + 1`` times.
* **16 candidate operators / 4 operators** (DRA): only the sampled operator is computed, so this
  should stay near 1.

All variants alternate step by step (one step of each per round), so machine load affects them
alike; ratios are given from the median and from the minimum step time of each variant (the
minimum is the least disturbed by other processes on a shared machine).

Usage:
    python benchmarks/search_step.py --threads 1            # resnet-tiny, batch 64, 32 px, CPU
    python benchmarks/search_step.py --threads 1 --clock cpu --batch-size 32   # shared CPU machine
    python benchmarks/search_step.py --model resnet50 --resolution 224 --batch-size 32 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dra_dali.models import create_model
from dra_dali.search.config import SearchConfig
from dra_dali.search.methods import Batch
from dra_dali.search.searcher import SearchState

FOUR_OPS = ("Rotate", "Color", "Posterize", "Equalize")
#: ``wall``: elapsed time; ``cpu``: this process's CPU time (with one thread on a shared CPU
#: machine, the time other processes take the core is not counted; not for CUDA).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _state(args: argparse.Namespace, **changes) -> SearchState:
    cfg = SearchConfig.from_dict({"model": args.model, "resolution": args.resolution,
                                  "batch_size": args.batch_size, "device": args.device,
                                  "epochs": 1, **changes})
    return SearchState(cfg, args.classes, 1000, lambda name, n: create_model(name, n))


def _batch(state: SearchState, args, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(args.batch_size, 3, args.resolution, args.resolution, generator=g)
    y = torch.randint(0, args.classes, (args.batch_size,), generator=g)
    return Batch(x.to(state.device), y.to(state.device))


def _time_search(state: SearchState, args, steps: int, seed: int) -> list[float]:
    ctx = state.context(torch.Generator().manual_seed(seed))
    train, val = _batch(state, args, seed), _batch(state, args, seed + 1)
    out = []
    for _ in range(steps):
        _sync(state.device)
        t = CLOCKS[args.clock]()
        state.method.step(ctx, train, val)
        _sync(state.device)
        out.append(CLOCKS[args.clock]() - t)
    return out


def _time_plain(state: SearchState, args, steps: int, seed: int) -> list[float]:
    ctx = state.context(torch.Generator().manual_seed(seed))
    batch = _batch(state, args, seed)
    out = []
    for _ in range(steps):
        _sync(state.device)
        t = CLOCKS[args.clock]()
        loss, _ = ctx.train_ce(batch.images, batch.labels)
        ctx.model_step(loss)
        _sync(state.device)
        out.append(CLOCKS[args.clock]() - t)
    return out


def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median and minimum seconds per step of every variant, interleaved round by round."""
    torch.manual_seed(0)
    variants = {
        "plain": (_state(args), _time_plain),
        "dra-16-image": (_state(args, sampling="image"), _time_search),
        "dra-4-image": (_state(args, sampling="image", ops=list(FOUR_OPS)), _time_search),
        "dra-16-batch": (_state(args, sampling="batch"), _time_search),
        "ddas-paper": (_state(args, method="ddas"), _time_search),
        "ddas-exact": (_state(args, method="ddas", ddas={"hypergradient": "exact"}),
                       _time_search),
        "ddas-split": (_state(args, method="ddas", ddas={"policy_batches": "split"}),
                       _time_search),
    }
    for state, fn in variants.values():  # warm-up
        fn(state, args, 2, 0)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, (state, fn) in variants.items():
            times[name] += fn(state, args, args.steps, 100 + r)
    return {"median": {k: statistics.median(v) for k, v in times.items()},
            "min": {k: min(v) for k, v in times.items()}}


RATIOS = {
    "DRA step / plain step (image sampling, 16 ops)": ("dra-16-image", "plain"),
    "DRA step / plain step (batch sampling, 16 ops)": ("dra-16-batch", "plain"),
    "DRA 16 ops / 4 ops (image sampling)": ("dra-16-image", "dra-4-image"),
    "DDAS step / plain step (Eq. 16-17, L^=3)": ("ddas-paper", "plain"),
    "DDAS step / plain step (exact hypergradient)": ("ddas-exact", "plain"),
    "DDAS step / plain step (split batch, Eq. 16-17)": ("ddas-split", "plain"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet-tiny")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=1, help="steps per variant and round")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="'cpu': process CPU time (steadier on a shared CPU machine)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; 1 gives stable ratios on a shared machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stats = measure(args)
    print(f"model {args.model}, batch {args.batch_size}, {args.resolution} px, device "
          f"{args.device}, threads {torch.get_num_threads()}, {args.clock} clock, "
          f"{args.rounds} rounds x {args.steps} steps")
    print(f"  {'variant':<17} {'median ms':>10} {'min ms':>10}")
    for k in stats["median"]:
        print(f"  {k:<17} {stats['median'][k] * 1000:10.1f} {stats['min'][k] * 1000:10.1f}")
    print(f"  {'ratio':<52} {'median':>7} {'min':>7}")
    for label, (num, den) in RATIOS.items():
        print(f"  {label:<52} " + " ".join(f"{stats[s][num] / stats[s][den]:7.2f}"
                                           for s in stats))


if __name__ == "__main__":
    main()
