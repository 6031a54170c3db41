"""The sanity protocol of DDAS (§4.1) at toy scale: does a search find the transformation that
the validation data needs?

For each transformation T, the second proxy half (DDAS's clean validation half, DRA's policy
half) is transformed by T, and T is a candidate with one magnitude and no random sign (DDAS:
every operator at one level, ``op_levels``/``fixed_sign`` pin T; DRA: T's operator is one of its
16, with learned magnitude and, for signed operators, its random sign). A method whose objective
rewards training on T should give T the highest probability. A control run (no transformation)
shows what the method prefers without that pressure. Per method, T, seed and layer the script
reports T's final probability and its rank among the operators (1 = highest), writes a JSON file
and a plot of T's probability over the epochs, and prints a Markdown table.

Defaults: the embedded demo data (10 classes), resnet-tiny at 32 px, 40 images per class (20 per
half), 6 epochs, batch 32 (DDAS's validation batch 128), one CPU thread per run; one to three
minutes per run on an idle core.

Usage:
    python benchmarks/sanity.py --out runs/sanity                    # ddas and dra, 3 seeds
    python benchmarks/sanity.py --methods ddas --seeds 1 --epochs 2 --out /tmp/s   # quick look
    python benchmarks/sanity.py --jobs 8 --out runs/sanity           # runs in parallel
    python benchmarks/sanity.py --data digits --out runs/sanity-digits   # orientation-sensitive
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dra_dali.ops import PAPER_OPS
from dra_dali.search import SearchConfig, apply_op, run_search

#: Transformations of the validation half: name -> (operator, magnitude, kind). Sign +1.
TRANSFORMS = {
    "Rotate90": ("Rotate", 3.0, "geometric"),       # the paper's T: 90 degrees (30 * m)
    "TranslateX15": ("TranslateX", 1.5, "geometric"),  # 15 px at 32 px, grey fill
    "Invert": ("Invert", 0.0, "photometric"),
    "Solarize": ("Solarize", 0.5, "photometric"),   # threshold 128
}
CONTROL = "none"
#: Magnitude of every other DDAS candidate (one level per operator, as in the paper's check).
OTHER_LEVEL = 0.5


@dataclass(frozen=True)
class Job:
    method: str
    transform: str          # a TRANSFORMS key or CONTROL
    seed: int
    args: dict[str, Any]


def _config(job: Job) -> SearchConfig:
    a = job.args
    values: dict[str, Any] = {
        "method": job.method, "data": a["data"], "model": a["model"], "proxy_classes": 10,
        "images_per_class": a["images_per_class"], "resolution": 32, "batch_size": 32,
        "epochs": a["epochs"], "crop_scale": [0.35, 1.0], "lr_reference_batch": 128,
        "weight_decay": 5e-4, "seed": job.seed, "threads": 1, "scale": 3.0,
        "ops": list(PAPER_OPS)}
    if job.method == "ddas":
        # The same candidates in every run (control included): each checked T at its magnitude
        # with sign +1, every other operator at OTHER_LEVEL.
        pinned = {TRANSFORMS[t][0]: TRANSFORMS[t][1] for t in a["transforms"]}
        values["val_batch_size"] = a["ddas_val_batch_size"]
        values["ddas"] = {"levels": [OTHER_LEVEL],
                          "op_levels": {op: [level] for op, level in pinned.items()},
                          "fixed_sign": list(pinned), "lr": a["ddas_lr"],
                          "policy_batches": a["ddas_policy_batches"]}
    return SearchConfig.from_dict(values)


def transform(name: str, resolution: int = 32,
              fill: int = 0) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The validation-half transformation ``name`` (``None`` for the control); geometric
    operators fill with ``fill`` as the search's own operators do."""
    if name == CONTROL:
        return None
    op, level, _ = TRANSFORMS[name]

    def apply(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return apply_op(op, x, torch.full((n,), level), torch.ones(n), resolution, fill=fill)

    return apply


def operator_probabilities(record: dict[str, Any], n_ops: int) -> np.ndarray | None:
    """``(layers, ops)`` operator probabilities of a history record (DDAS: one row, its
    candidates are the operators in the sanity setup; DRA: one row per layer)."""
    if "p_o" in record:
        p = np.asarray(record["p_o"], dtype=float)
        return p[None] if p.shape[0] == n_ops else None
    if "probabilities" in record:
        return np.asarray(record["probabilities"], dtype=float)
    return None


def rank(probabilities: np.ndarray, index: int) -> int:
    """1 + the number of operators with a strictly higher probability."""
    return int((probabilities > probabilities[index]).sum()) + 1


def run_job(job: Job) -> list[dict[str, Any]]:
    """One search; rows (one per T checked and layer) with T's final probability and rank."""
    torch.manual_seed(job.seed)
    out = Path(job.args["out"]) / f"{job.method}-{job.transform}-seed{job.seed}"
    config = _config(job)
    run_search(config, out, progress=False, force=True,
               val_transform=transform(job.transform, config.resolution, config.fill))
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    checked = list(TRANSFORMS) if job.transform == CONTROL else [job.transform]
    ops = list(config.ops)
    rows = []
    for name in checked:
        if name not in job.args["transforms"]:
            continue
        index = ops.index(TRANSFORMS[name][0])
        traj = [operator_probabilities(h, len(ops)) for h in history]
        if traj[-1] is None:
            continue
        for layer, probs in enumerate(traj[-1]):
            rows.append({"method": job.method, "run": job.transform, "T": name,
                         "seed": job.seed, "layer": layer, "probability": float(probs[index]),
                         "rank": rank(probs, index), "top": ops[int(np.argmax(probs))],
                         "uniform": 1.0 / len(ops),
                         "trajectory": [float(t[layer, index]) for t in traj]})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per method, run and T; probabilities and ranks per seed and layer."""
    lines = ["| method | validation half | T checked | T probability per seed (layers) | "
             "T rank per seed (layers) | ranked first |",
             "|---|---|---|---|---|---|"]
    keys = sorted({(r["method"], r["run"], r["T"]) for r in rows},
                  key=lambda k: (k[0], k[1] == CONTROL, k[1], k[2]))
    for method, run, name in keys:
        sel = [r for r in rows if (r["method"], r["run"], r["T"]) == (method, run, name)]
        seeds = sorted({r["seed"] for r in sel})
        probs, ranks, firsts = [], [], 0
        for seed in seeds:
            per = [r for r in sel if r["seed"] == seed]
            probs.append("/".join(f"{r['probability']:.3f}" for r in per))
            ranks.append("/".join(str(r["rank"]) for r in per))
            firsts += any(r["rank"] == 1 for r in per)
        shown = "none (control)" if run == CONTROL else run
        lines.append(f"| {method} | {shown} | {name} | {', '.join(probs)} | {', '.join(ranks)} "
                     f"| {firsts} of {len(seeds)} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """T's probability over the epochs: one panel per method and validation half."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dra_dali.viz import save_figure

    methods = sorted({r["method"] for r in rows})
    runs = sorted({r["run"] for r in rows}, key=lambda k: (k == CONTROL, k))
    fig, axes = plt.subplots(len(methods), len(runs), figsize=(3.6 * len(runs),
                                                               2.8 * len(methods)),
                             squeeze=False, sharey=True)
    colours = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(TRANSFORMS)}
    for i, method in enumerate(methods):
        for j, run in enumerate(runs):
            ax = axes[i, j]
            labelled: set[str] = set()
            for r in (r for r in rows if r["method"] == method and r["run"] == run):
                ax.plot(r["trajectory"], color=colours[r["T"]],
                        ls=["-", "--", ":"][r["layer"] % 3], lw=1.2,
                        label=None if r["T"] in labelled else r["T"])
                labelled.add(r["T"])
                ax.axhline(r["uniform"], color="grey", lw=0.8, ls=":")
            ax.set_title(f"{method}: val half {'clean (control)' if run == CONTROL else run}",
                         fontsize=9)
            ax.set_xlabel("epoch")
            if j == 0:
                ax.set_ylabel("probability of T")
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Sanity protocol (DDAS 4.1): probability of the validation transformation T "
                 "(lines: seeds; dashed: DRA layer 2; dotted grey: uniform)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs and results")
    parser.add_argument("--data", default=None,
                        help="image folder, or 'digits' (scikit-learn's digits at 32 px, "
                        "orientation-sensitive); default: the embedded data")
    parser.add_argument("--methods", default="ddas,dra")
    parser.add_argument("--transforms", default="Rotate90,Invert",
                        help=f"comma-separated, of {', '.join(TRANSFORMS)}")
    parser.add_argument("--no-control", action="store_true", help="skip the control runs")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, +1, ...")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--images-per-class", type=int, default=40)
    parser.add_argument("--model", default="resnet-tiny")
    parser.add_argument("--ddas-lr", type=float, default=0.05)
    parser.add_argument("--ddas-val-batch-size", type=int, default=128,
                        help="DDAS's validation batch (the paper: 8x the training batch)")
    parser.add_argument("--ddas-policy-batches", choices=("full", "split"), default="full",
                        help="DDAS's policy_batches: 'full' (the paper) or 'split'")
    parser.add_argument("--jobs", type=int, default=1, help="searches run in parallel")
    args = parser.parse_args(argv)
    if args.data in (None, "digits"):
        from dra_dali.data import digits_dataset, embedded_dataset

        args.data = str((digits_dataset() if args.data else embedded_dataset()).train)
    transforms = args.transforms.split(",")
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown:
        parser.error(f"unknown transform(s) {unknown}; choose from {', '.join(TRANSFORMS)}")
    shared = {"out": str(args.out), "data": args.data, "epochs": args.epochs,
              "images_per_class": args.images_per_class, "model": args.model,
              "ddas_lr": args.ddas_lr, "ddas_val_batch_size": args.ddas_val_batch_size,
              "ddas_policy_batches": args.ddas_policy_batches,
              "transforms": transforms}
    runs = transforms + ([] if args.no_control else [CONTROL])
    jobs = [Job(m, t, s, shared) for m in args.methods.split(",") for t in runs
            for s in range(args.first_seed, args.first_seed + args.seeds)]
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.map(run_job, jobs)
    else:
        results = [run_job(job) for job in jobs]
    rows = [row for result in results for row in result]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sanity.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "sanity.png")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
