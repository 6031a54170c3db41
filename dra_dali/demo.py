"""The end-to-end demo: search -> compile -> train on the embedded dataset, three policies compared.

``dra-dali demo`` runs :func:`run_demo`: a short DRA search (``search/demo.yaml``) on the
embedded 10-class dataset, compiles the searched policy into a DALI pipeline (with a preview
image rendered by that pipeline), then trains the same small model (``resnet-tiny``, 32 px,
``pipelines/demo.yaml``) three times under the same budget and seed: without augmentation
(crop and flip only), with RandAugment (``ra-n2-m9``) and with the searched policy. It prints a
table of validation accuracy and training throughput and saves plots.

Example:
    >>> from dra_dali.demo import run_demo
    >>> result = run_demo("runs/demo")          # doctest: +SKIP
    >>> print(result.report())                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dra_dali.errors import DraDaliError

__all__ = ["DemoError", "DemoResult", "DemoRun", "run_demo", "DEMO_EPOCHS", "SEARCH_RECIPE"]

#: The demo's search recipe: the shipped ``search/demo.yaml`` (see :mod:`dra_dali.recipes`).
SEARCH_RECIPE = "demo"
#: Training epochs per run in the demo's default budget.
DEMO_EPOCHS = 6
_MODEL = "resnet-tiny"
_PIPELINE = "demo"
_BATCH = 64
_RUNS = (("no-aug", "none", "none (crop + flip only)"),
         ("randaugment", "ra-n2-m9", "RandAugment ra-n2-m9"),
         ("dra", None, "DRA, searched here"))


class DemoError(DraDaliError):
    """The demo cannot run (output folder in use, missing extra, failed phase); the message says
    what to do."""


@dataclass
class DemoRun:
    """One training run of the demo.

    Attributes:
        name: ``no-aug``, ``randaugment`` or ``dra``.
        policy: a description of the policy.
        out: its run directory.
        val_top1, val_top5: final validation accuracy (fractions).
        images_per_s: mean training throughput over the epochs.
        train_seconds: wall time of the run.
        curve: validation top-1 per epoch.
    """

    name: str
    policy: str
    out: Path
    val_top1: float
    val_top5: float
    images_per_s: float
    train_seconds: float
    curve: list[float] = field(default_factory=list)


@dataclass
class DemoResult:
    """Everything the demo produced.

    Attributes:
        out: the demo folder.
        runs: the three training runs.
        search_seconds: wall time of the search.
        wall_seconds: wall time of the whole demo.
        files: what was written where (label -> path).
        epochs: training epochs per run.
        seed: the seed.
    """

    out: Path
    runs: list[DemoRun]
    search_seconds: float
    wall_seconds: float
    files: dict[str, Path]
    epochs: int
    seed: int

    def table(self) -> str:
        """The comparison table (Markdown)."""
        lines = ["| run | policy | val top-1 | val top-5 | train images/s | train time |",
                 "|---|---|---:|---:|---:|---:|"]
        for r in self.runs:
            lines.append(f"| {r.name} | {r.policy} | {100 * r.val_top1:.1f} % | "
                         f"{100 * r.val_top5:.1f} % | {r.images_per_s:.0f} | "
                         f"{r.train_seconds:.0f} s |")
        return "\n".join(lines)

    def report(self) -> str:
        """The table, the budget, and where everything was written."""
        where = "\n".join(f"  {label:<22} {path}" for label, path in self.files.items())
        return (f"{self.table()}\n\n"
                f"{_MODEL}, {self.epochs} epochs per run, 32 px, seed {self.seed}; search "
                f"{self.search_seconds:.0f} s; whole demo {self.wall_seconds:.0f} s.\n"
                "Accuracies repeat exactly with the same seed on the same machine; images/s is "
                "a wall-clock measurement and varies with the machine's load.\n\n"
                f"Written:\n{where}")


def _training_config(ds: Any, out: Path, policy: str, epochs: int, seed: int,
                     max_steps: int | None) -> Any:
    from dra_dali.train import TrainConfig

    return TrainConfig(data=str(ds.train), val_data=str(ds.val), out=str(out), policy=policy,
                       model=_MODEL, pipeline=_PIPELINE, epochs=epochs, batch_size=_BATCH,
                       seed=seed, device="cpu", workers=2, max_steps=max_steps)


def _prepare(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            done = (out / "demo.json").is_file()
            raise DemoError(f"{out} already holds {'a finished' if done else 'an unfinished'} "
                            "demo; pass --force to run it again there (its files are replaced), "
                            "or choose another --out")
        for name in ("search", "compile", *(f"train-{r[0]}" for r in _RUNS)):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("demo.json", "results.md", "accuracy.png", "policy.png"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _plot_curves(runs: list[DemoRun], path: Path) -> Path:
    import matplotlib

    from dra_dali.viz import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        ax.plot(range(1, len(run.curve) + 1), [100 * v for v in run.curve], marker="o",
                label=f"{run.name} ({run.policy})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(f"{_MODEL} on the embedded dataset, 32 px")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def run_demo(out: str | Path = "runs/demo", *, epochs: int | None = None, seed: int = 0,
             force: bool = False, search_epochs: int | None = None,
             search_settings: dict[str, Any] | None = None, max_steps: int | None = None,
             dataset: Any = None, progress: bool = True, log: Callable[[str], None] | None = None) -> DemoResult:
    """Search a policy on the embedded dataset, compile it, and compare three training runs.

    Args:
        out: demo folder; gets ``search/`` (search run, ``policy.yaml``), ``compile/``
            (``pipeline.dali``, ``summary.txt``, ``preview.png``), ``train-no-aug/``,
            ``train-randaugment/``, ``train-dra/`` (training runs), ``accuracy.png``,
            ``policy.png``, ``results.md`` and ``demo.json``.
        epochs: training epochs per run (default :data:`DEMO_EPOCHS`).
        seed: seeds the search and the three trainings; the same seed gives the same accuracies.
        force: replace an earlier demo in ``out``.
        search_epochs: override the search recipe's epochs (default: the recipe's).
        search_settings: further search recipe keys to override (e.g. ``images_per_class``),
            for quick checks.
        max_steps: cap the training steps per epoch (quick checks; default: full epochs).
        dataset: an object with ``train`` and ``val`` image folders and ``classes`` (default:
            :func:`dra_dali.data.embedded_dataset`); for quick checks on a smaller set.
        progress: progress bars.
        log: receives progress lines (default: silent).

    Returns:
        A :class:`DemoResult`; ``result.report()`` is what ``dra-dali demo`` prints.

    Raises:
        DemoError: ``out`` holds a demo (without ``force``), the demo extra is missing, or a
            phase failed; the message names it.
    """
    from dra_dali.data import embedded_dataset
    from dra_dali.train import TrainError, train
    from dra_dali.viz import plot_policy

    say = log if log is not None else (lambda line: None)
    out = Path(out)
    epochs = epochs or DEMO_EPOCHS
    _prepare(out, force)
    started = time.perf_counter()
    try:
        ds = dataset if dataset is not None else embedded_dataset()
    except RuntimeError as exc:
        raise DemoError(str(exc)) from None
    say(f"dataset: {ds.train.parent} ({len(ds.classes)} classes)")

    # 1. search
    from dra_dali.search import ConfigError, RunDirError, SearchConfig, run_search

    say(f"[1/3] searching a DRA policy (search recipe {SEARCH_RECIPE!r}) ...")
    overrides: dict[str, Any] = {"data": str(ds.train), "seed": seed, "epochs": search_epochs}
    t0 = time.perf_counter()
    try:
        config = SearchConfig.from_recipe(SEARCH_RECIPE, overrides, search_settings)
        policy = run_search(config, out / "search", progress=progress, recipe=SEARCH_RECIPE)
    except (ConfigError, RunDirError, ValueError) as exc:
        raise DemoError(f"search failed: {exc}") from None
    search_seconds = time.perf_counter() - t0
    say(f"      policy written to {out / 'search' / 'policy.yaml'} ({search_seconds:.0f} s)")

    # 2. compile
    from dra_dali.dali.export import compile_policy

    say("[2/3] compiling it into a DALI pipeline ...")
    compiled = compile_policy(policy, out / "compile", device="cpu", data=ds.train,
                              recipe=_PIPELINE, seed=seed,
                              policy_source=str(out / "search" / "policy.yaml"))
    plot_policy(policy, out / "policy.png", title="DRA policy searched on the embedded dataset")

    # 3. train three times
    runs: list[DemoRun] = []
    searched = str(out / "search" / "policy.yaml")
    for i, (name, spec, description) in enumerate(_RUNS, start=1):
        say(f"[3/3] training {i}/3: {name} ({description}), {epochs} epochs ...")
        run_out = out / f"train-{name}"
        try:
            result = train(_training_config(ds, run_out, spec or searched, epochs, seed, max_steps),
                           progress=progress, log=lambda line: say(f"      {line}"))
        except TrainError as exc:
            raise DemoError(f"training {name} failed: {exc}") from None
        rates = [m["images_per_s"] for m in result.metrics if m.get("images_per_s")]
        runs.append(DemoRun(name=name, policy=description, out=run_out,
                            val_top1=result.final["val_top1"], val_top5=result.final["val_top5"],
                            images_per_s=sum(rates) / max(len(rates), 1),
                            train_seconds=result.wall_seconds,
                            curve=[m["val_top1"] for m in result.metrics]))

    files = {"searched policy": out / "search" / "policy.yaml",
             "search plots": out / "search",
             "compiled pipeline": compiled.pipeline_path or compiled.summary_path,
             "pipeline preview": compiled.preview_path or compiled.summary_path,
             "policy plot": out / "policy.png",
             "accuracy plot": _plot_curves(runs, out / "accuracy.png"),
             **{f"run {r.name}": r.out for r in runs},
             "this table": out / "results.md"}
    demo = DemoResult(out=out, runs=runs, search_seconds=search_seconds,
                      wall_seconds=time.perf_counter() - started, files=files, epochs=epochs,
                      seed=seed)
    (out / "results.md").write_text(demo.report() + "\n")
    record = {"epochs": epochs, "seed": seed, "search_seconds": search_seconds,
              "wall_seconds": demo.wall_seconds,
              "runs": [{"name": r.name, "policy": r.policy, "val_top1": r.val_top1,
                        "val_top5": r.val_top5, "images_per_s": r.images_per_s,
                        "train_seconds": r.train_seconds, "curve": r.curve, "out": str(r.out)}
                       for r in runs]}
    (out / "demo.json").write_text(json.dumps(record, indent=2) + "\n")
    return demo
