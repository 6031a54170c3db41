"""The end-to-end demo: search -> compile -> train on the embedded dataset, four policies compared.

``dra-dali demo`` runs :func:`run_demo`: a short DRA search (``search/demo.yaml``) on the
embedded 10-class dataset, compiles the searched policy into a DALI pipeline (with a preview
image rendered by that pipeline), then trains the same small model (``resnet-tiny``, 32 px,
``pipelines/demo.yaml``) four times under the same budget and seed: without augmentation
(crop and flip only), with RandAugment (``ra-n2-m9``), with the DRA paper's RA* baseline
(``rastar-n2-m10``) and with the searched policy. With ``seeds > 1`` the search and the four
trainings repeat for each seed and the table shows the mean and spread over the seeds. It
prints a table of validation accuracy and training throughput and saves plots.

Example:
    >>> from dra_dali.demo import run_demo
    >>> result = run_demo("runs/demo")          # doctest: +SKIP
    >>> print(result.report())                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import statistics
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
         ("rastar", "rastar-n2-m10", "RA* rastar-n2-m10 (the DRA paper's baseline)"),
         ("dra", None, "DRA, searched here"))


class DemoError(DraDaliError):
    """The demo cannot run (output folder in use, missing extra, failed phase); the message says
    what to do."""


@dataclass
class DemoRun:
    """One training run of the demo.

    Attributes:
        name: ``no-aug``, ``randaugment``, ``rastar`` or ``dra``.
        policy: a description of the policy.
        out: its run directory.
        val_top1, val_top5: final validation accuracy (fractions).
        images_per_s: mean training throughput over the epochs.
        train_seconds: wall time of the run.
        curve: validation top-1 per epoch.
        seed: the seed of the run (and of the search whose policy it trained with).
    """

    name: str
    policy: str
    out: Path
    val_top1: float
    val_top5: float
    images_per_s: float
    train_seconds: float
    curve: list[float] = field(default_factory=list)
    seed: int = 0


@dataclass
class DemoResult:
    """Everything the demo produced.

    Attributes:
        out: the demo folder.
        runs: the training runs, four per seed (seed by seed, in :data:`_RUNS` order).
        search_seconds: wall time of the searches (all seeds).
        wall_seconds: wall time of the whole demo.
        files: what was written where (label -> path).
        epochs: training epochs per run.
        seeds: the seeds, one search and four trainings each.
    """

    out: Path
    runs: list[DemoRun]
    search_seconds: float
    wall_seconds: float
    files: dict[str, Path]
    epochs: int
    seeds: list[int]

    def by_name(self, name: str) -> list[DemoRun]:
        """The runs of one policy, one per seed."""
        return [r for r in self.runs if r.name == name]

    def table(self) -> str:
        """The comparison table (Markdown): mean over the seeds, their spread and values."""
        lines = ["| run | policy | val top-1, mean ± sd | per seed | val top-5 | train images/s "
                 "| train time |", "|---|---|---:|---:|---:|---:|---:|"]
        for name, _, description in _RUNS:
            runs = self.by_name(name)
            top1 = [100 * r.val_top1 for r in runs]
            spread = f" ± {statistics.stdev(top1):.1f}" if len(top1) > 1 else ""
            lines.append(f"| {name} | {description} | {statistics.mean(top1):.1f}{spread} % | "
                         f"{' / '.join(f'{v:.1f}' for v in top1)} | "
                         f"{100 * statistics.mean(r.val_top5 for r in runs):.1f} % | "
                         f"{statistics.mean(r.images_per_s for r in runs):.0f} | "
                         f"{statistics.mean(r.train_seconds for r in runs):.0f} s |")
        return "\n".join(lines)

    def report(self) -> str:
        """The table, the budget, and where everything was written."""
        where = "\n".join(f"  {label:<22} {path}" for label, path in self.files.items())
        seeds = ", ".join(str(s) for s in self.seeds)
        return (f"{self.table()}\n\n"
                f"{_MODEL}, {self.epochs} epochs per run, 32 px, seed{'s' * (len(self.seeds) > 1)}"
                f" {seeds} (sd: sample standard deviation over the seeds); searches "
                f"{self.search_seconds:.0f} s; whole demo {self.wall_seconds:.0f} s.\n"
                "Accuracies repeat exactly with the same seed on the same machine; images/s is "
                "a wall-clock measurement and varies with the machine's load.\n\n"
                f"Written:\n{where}")


def _training_config(ds: Any, out: Path, policy: str, epochs: int, seed: int,
                     max_steps: int | None) -> Any:
    from dra_dali.train import TrainConfig

    return TrainConfig(data=str(ds.train), val_data=str(ds.val), out=str(out), policy=policy,
                       model=_MODEL, pipeline=_PIPELINE, epochs=epochs, batch_size=_BATCH,
                       seed=seed, device="cpu", threads=2, max_steps=max_steps)


def _prepare(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            done = (out / "demo.json").is_file()
            raise DemoError(f"{out} already holds {'a finished' if done else 'an unfinished'} "
                            "demo; pass --force to run it again there (its files are replaced), "
                            "or choose another --out")
        for name in ("search", "compile", *(f"train-{r[0]}" for r in _RUNS)):
            shutil.rmtree(out / name, ignore_errors=True)
        for folder in out.glob("seed-*"):
            shutil.rmtree(folder, ignore_errors=True)
        for name in ("demo.json", "results.md", "accuracy.png", "policy.png"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _plot_curves(result: DemoResult, path: Path) -> Path:
    import matplotlib

    from dra_dali.viz import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, _, description in _RUNS:
        curves = [[100 * v for v in r.curve] for r in result.by_name(name)]
        epochs = range(1, len(curves[0]) + 1)
        mean = [statistics.mean(values) for values in zip(*curves)]
        line = ax.plot(epochs, mean, marker="o", label=f"{name} ({description})")[0]
        if len(curves) > 1:  # the range over the seeds
            ax.fill_between(epochs, [min(v) for v in zip(*curves)],
                            [max(v) for v in zip(*curves)], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    seeds = len(result.seeds)
    ax.set_title(f"{_MODEL} on the embedded dataset, 32 px"
                 + (f"\nmean and range over {seeds} seeds" if seeds > 1 else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def run_demo(out: str | Path = "runs/demo", *, epochs: int | None = None, seed: int = 0,
             seeds: int = 1, force: bool = False, search_epochs: int | None = None,
             search_settings: dict[str, Any] | None = None, max_steps: int | None = None,
             dataset: Any = None, progress: bool = True,
             log: Callable[[str], None] | None = None) -> DemoResult:
    """Search a policy on the embedded dataset, compile it, and compare four training runs.

    Args:
        out: demo folder; gets ``search/`` (search run, ``policy.yaml``), ``compile/``
            (``pipeline.dali``, ``summary.txt``, ``preview.png``), ``train-no-aug/``,
            ``train-randaugment/``, ``train-rastar/``, ``train-dra/`` (training runs),
            ``accuracy.png``, ``policy.png``, ``results.md`` and ``demo.json``; the searches
            and trainings of further seeds go to ``seed-N/`` (``search/``, ``train-*/``).
        epochs: training epochs per run (default :data:`DEMO_EPOCHS`).
        seed: the first seed; it seeds the search and the four trainings, and the same seed
            gives the same accuracies.
        seeds: how many seeds (``seed``, ``seed + 1``, ...): one search and four trainings each.
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
        DemoError: ``out`` holds a demo (without ``force``), ``seeds`` < 1, the demo extra is
            missing, or a phase failed; the message names it.
    """
    from dra_dali.data import embedded_dataset

    if seeds < 1:
        raise DemoError(f"seeds must be at least 1, got {seeds}")
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
    budget = _Budget(ds, epochs, search_epochs, search_settings, max_steps, progress, say)
    runs: list[DemoRun] = []
    search_seconds = 0.0
    compiled = None
    for number, current in enumerate(range(seed, seed + seeds), start=1):
        folder = out if number == 1 else out / f"seed-{current}"
        say(f"seed {current} ({number} of {seeds})")
        policy, seconds = _search(budget, folder, current)
        search_seconds += seconds
        if compiled is None:
            compiled = _compile(budget, policy, folder, current)
        runs += _train_all(budget, folder, current)
    demo = DemoResult(out=out, runs=runs, search_seconds=search_seconds, wall_seconds=0.0,
                      files={}, epochs=epochs, seeds=list(range(seed, seed + seeds)))
    demo.files = _files(demo, compiled)
    demo.wall_seconds = time.perf_counter() - started
    _write_results(demo)
    return demo


@dataclass(frozen=True)
class _Budget:
    """The settings every seed's search and trainings share."""

    ds: Any
    epochs: int
    search_epochs: int | None
    search_settings: dict[str, Any] | None
    max_steps: int | None
    progress: bool
    say: Callable[[str], None]


def _search(budget: _Budget, folder: Path, seed: int) -> tuple[Any, float]:
    from dra_dali.search import ConfigError, RunDirError, SearchConfig, run_search

    budget.say(f"[1/3] searching a DRA policy (search recipe {SEARCH_RECIPE!r}) ...")
    overrides: dict[str, Any] = {"data": str(budget.ds.train), "seed": seed,
                                 "epochs": budget.search_epochs}
    t0 = time.perf_counter()
    try:
        config = SearchConfig.from_recipe(SEARCH_RECIPE, overrides, budget.search_settings)
        policy = run_search(config, folder / "search", progress=budget.progress,
                            recipe=SEARCH_RECIPE)
    except (ConfigError, RunDirError, ValueError) as exc:
        raise DemoError(f"search failed: {exc}") from None
    seconds = time.perf_counter() - t0
    budget.say(f"      policy written to {folder / 'search' / 'policy.yaml'} ({seconds:.0f} s)")
    return policy, seconds


def _compile(budget: _Budget, policy: Any, folder: Path, seed: int) -> Any:
    from dra_dali.dali.export import compile_policy
    from dra_dali.viz import plot_policy

    budget.say("[2/3] compiling it into a DALI pipeline ...")
    compiled = compile_policy(policy, folder / "compile", device="cpu", data=budget.ds.train,
                              recipe=_PIPELINE, seed=seed,
                              policy_source=str(folder / "search" / "policy.yaml"))
    plot_policy(policy, folder / "policy.png", title="DRA policy searched on the embedded dataset")
    return compiled


def _train_all(budget: _Budget, folder: Path, seed: int) -> list[DemoRun]:
    from dra_dali.train import TrainError, train

    runs: list[DemoRun] = []
    searched = str(folder / "search" / "policy.yaml")
    for i, (name, spec, description) in enumerate(_RUNS, start=1):
        budget.say(f"[3/3] training {i}/{len(_RUNS)}: {name} ({description}), "
                   f"{budget.epochs} epochs ...")
        run_out = folder / f"train-{name}"
        config = _training_config(budget.ds, run_out, spec or searched, budget.epochs, seed,
                                  budget.max_steps)
        try:
            result = train(config, progress=budget.progress,
                           log=lambda line: budget.say(f"      {line}"))
        except TrainError as exc:
            raise DemoError(f"training {name} failed: {exc}") from None
        rates = [m["images_per_s"] for m in result.metrics if m.get("images_per_s")]
        runs.append(DemoRun(name=name, policy=description, out=run_out,
                            val_top1=result.final["val_top1"], val_top5=result.final["val_top5"],
                            images_per_s=sum(rates) / max(len(rates), 1),
                            train_seconds=result.wall_seconds,
                            curve=[m["val_top1"] for m in result.metrics], seed=seed))
    return runs


def _files(demo: DemoResult, compiled: Any) -> dict[str, Path]:
    out = demo.out
    return {"searched policy": out / "search" / "policy.yaml",
            "search plots": out / "search",
            "compiled pipeline": compiled.pipeline_path or compiled.summary_path,
            "pipeline preview": compiled.preview_path or compiled.summary_path,
            "policy plot": out / "policy.png",
            "accuracy plot": _plot_curves(demo, out / "accuracy.png"),
            **{f"run {r.name}": r.out for r in demo.runs if r.seed == demo.seeds[0]},
            **{f"seed {seed} runs": out / f"seed-{seed}" for seed in demo.seeds[1:]},
            "this table": out / "results.md"}


def _write_results(demo: DemoResult) -> None:
    (demo.out / "results.md").write_text(demo.report() + "\n")
    record = {"epochs": demo.epochs, "seeds": demo.seeds, "search_seconds": demo.search_seconds,
              "wall_seconds": demo.wall_seconds,
              "runs": [{"name": r.name, "seed": r.seed, "policy": r.policy,
                        "val_top1": r.val_top1, "val_top5": r.val_top5,
                        "images_per_s": r.images_per_s, "train_seconds": r.train_seconds,
                        "curve": r.curve, "out": str(r.out)} for r in demo.runs]}
    (demo.out / "demo.json").write_text(json.dumps(record, indent=2) + "\n")
