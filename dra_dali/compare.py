"""Every method on the same data: search each on the same proxy, retrain each with the same budget.

``dra-dali compare`` runs :func:`run_compare`. For each method and seed:

* a **searched** method (``dra``, ``ddas``, ``faster-aa``, ``das``) is searched with the same
  search recipe (``search/demo.yaml`` by default: the same proxy set, model, resolution, crop and
  epochs; only ``method`` and the method's own small-budget options of :data:`METHOD_SETTINGS`
  differ) by :func:`dra_dali.search.run_search`;
* a **preset** (``ra`` = ``ra-n2-m9``, ``ta`` = TrivialAugment, ``none`` = crop and flip only)
  is not searched;
* the policy then trains the same model with the same pipeline, epochs, batch and seed through
  :func:`dra_dali.train.train`.

The output folder holds one folder per run (``<method>/seed-<n>/search``, ``.../train``) and, per
finished run, ``.../result.json``; ``results.md`` (the table), ``compare.json`` and
``compare.png``. An interrupted comparison continues where it stopped: finished runs are kept
and read back, an interrupted search or training resumes from its checkpoint.

Example:
    >>> from dra_dali.compare import run_compare
    >>> result = run_compare(["dra", "ra"], out="runs/compare", seeds=1)   # doctest: +SKIP
    >>> print(result.table())                                               # doctest: +SKIP
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from dra_dali.errors import DraDaliError

__all__ = ["Budget", "CompareError", "CompareResult", "MethodRun", "PRESETS", "run_compare"]

#: Methods that are presets, not searches: the policy each trains with.
PRESETS = {"ra": "ra-n2-m9", "ta": "ta", "none": "none"}
#: Each searched method's own options in a comparison (recipe ``--set`` keys): the small budgets
#: that keep the default comparison within minutes on a CPU.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "faster-aa": {"faster-aa.chunks": 2},
    "das": {"das.perturb_per_step": 4},
}


class CompareError(DraDaliError):
    """A comparison cannot run (unknown method, data, a failed phase); the message names it."""


@dataclass(frozen=True)
class Budget:
    """What every method gets (the same for all).

    Attributes:
        search_recipe: the search recipe every searched method uses (the proxy set and model).
        search_epochs: search epochs (``None``: the recipe's).
        images_per_class: proxy images per class, split into the two halves (``None``: the
            recipe's).
        train_epochs: training epochs of every retraining.
        model: the retrained model.
        pipeline: the training pipeline recipe (crop, flip, image size).
        batch_size: training batch.
        max_steps: cap on training steps per epoch (``None``: full epochs).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, for search and training.
    """

    search_recipe: str = "demo"
    search_epochs: int | None = 4
    images_per_class: int | None = 40
    train_epochs: int = 6
    model: str = "resnet-tiny"
    pipeline: str = "demo"
    batch_size: int = 64
    max_steps: int | None = None
    device: str = "auto"


@dataclass
class MethodRun:
    """One method at one seed: ``search_seconds`` (0 for presets), mean training
    ``images_per_s``, final validation ``val_top1`` / ``val_top5`` (fractions)."""

    method: str
    seed: int
    policy: str
    search_seconds: float
    images_per_s: float
    val_top1: float
    val_top5: float


@dataclass
class CompareResult:
    """All runs of a comparison and where they were written."""

    out: Path
    methods: list[str]
    seeds: int
    budget: Budget
    runs: list[MethodRun] = field(default_factory=list)
    finished: bool = True

    def rows(self) -> list[dict[str, Any]]:
        """Per method: mean and spread (half the max - min range) over the seeds."""
        rows = []
        for method in self.methods:
            runs = [r for r in self.runs if r.method == method]
            if not runs:
                continue
            row: dict[str, Any] = {"method": method, "seeds": len(runs)}
            for key in ("search_seconds", "images_per_s", "val_top1", "val_top5"):
                values = [getattr(r, key) for r in runs]
                row[key] = (statistics.fmean(values), (max(values) - min(values)) / 2)
            rows.append(row)
        return rows

    def table(self) -> str:
        """The Markdown table: mean ± spread over the seeds."""
        lines = ["| method | seeds | search s | train images/s | val top-1 % | val top-5 % |",
                 "|---|---:|---:|---:|---:|---:|"]
        for row in self.rows():
            s, i = row["search_seconds"], row["images_per_s"]
            t1, t5 = row["val_top1"], row["val_top5"]
            lines.append(f"| {row['method']} | {row['seeds']} | {s[0]:.0f} ± {s[1]:.0f} | "
                         f"{i[0]:.0f} ± {i[1]:.0f} | {100 * t1[0]:.1f} ± {100 * t1[1]:.1f} | "
                         f"{100 * t5[0]:.1f} ± {100 * t5[1]:.1f} |")
        return "\n".join(lines)


def _check_methods(methods: Sequence[str]) -> list[str]:
    from dra_dali.search.methods import METHODS

    known = [*METHODS, *PRESETS]
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise CompareError(f"methods: unknown {unknown}; choose from {', '.join(known)}"
                           if unknown else "methods: give at least one method")
    if len(set(methods)) != len(methods):
        raise CompareError(f"methods: each method once, got {list(methods)}")
    return list(methods)


def _search(method: str, seed: int, data: str, folder: Path, budget: Budget,
            progress: bool) -> tuple[str, float]:
    """Search (or resume the search) in ``folder``; returns the policy file and its seconds."""
    from dra_dali.policy import Policy
    from dra_dali.search import SearchConfig, run_search

    policy_file = folder / "policy.yaml"
    if not policy_file.is_file():
        overrides = {"data": data, "seed": seed, "method": method, "epochs": budget.search_epochs,
                     "images_per_class": budget.images_per_class, "device": budget.device}
        config = SearchConfig.from_recipe(budget.search_recipe, overrides,
                                          METHOD_SETTINGS.get(method))
        # A search stopped before its first checkpoint starts over (force), a later one resumes.
        resume = (folder / "checkpoint.pt").is_file()
        run_search(config, folder, resume=resume, force=folder.exists() and not resume,
                   progress=progress, recipe=budget.search_recipe)
    seconds = float(Policy.load(policy_file).provenance.get("search_seconds", 0.0))
    return str(policy_file), seconds


def _train(policy: str, seed: int, data: str, val_data: str, folder: Path, budget: Budget,
           progress: bool) -> list[dict[str, Any]] | None:
    """Train (or resume, or read back a finished training in ``folder``); its per-epoch
    metrics, ``None`` when SIGTERM stopped it."""
    from dra_dali.runtime import MetricsLog
    from dra_dali.train import RUN_FILES, TrainConfig, train

    if (folder / RUN_FILES["summary"]).is_file():
        return MetricsLog(folder / RUN_FILES["metrics"]).read()
    config = TrainConfig(data=data, val_data=val_data, out=str(folder), policy=policy,
                         model=budget.model, pipeline=budget.pipeline, epochs=budget.train_epochs,
                         batch_size=budget.batch_size, seed=seed, device=budget.device,
                         max_steps=budget.max_steps)
    result = train(config, resume=(folder / RUN_FILES["checkpoint"]).is_file(),
                   progress=progress)
    return result.metrics if result.finished else None


def _one_run(method: str, seed: int, data: str, val_data: str, folder: Path, budget: Budget,
             progress: bool) -> MethodRun | None:
    """Search and train one method at one seed; ``None`` when training was stopped (SIGTERM)."""
    if method in PRESETS:
        policy, seconds = PRESETS[method], 0.0
    else:
        policy, seconds = _search(method, seed, data, folder / "search", budget, progress)
    metrics = _train(policy, seed, data, val_data, folder / "train", budget, progress)
    if metrics is None:
        return None
    rates = [m["images_per_s"] for m in metrics if m.get("images_per_s")]
    return MethodRun(method=method, seed=seed, policy=policy, search_seconds=seconds,
                     images_per_s=statistics.fmean(rates) if rates else 0.0,
                     val_top1=float(metrics[-1]["val_top1"]),
                     val_top5=float(metrics[-1]["val_top5"]))


def _default_data(data: str | None, val_data: str | None) -> tuple[str, str]:
    if data is not None and val_data is not None:
        return str(data), str(val_data)
    if data is not None or val_data is not None:
        raise CompareError("data and val_data go together: give both image folders, or neither "
                           "for the embedded demo dataset")
    from dra_dali.data import embedded_dataset

    ds = embedded_dataset()
    return str(ds.train), str(ds.val)


def run_compare(methods: Sequence[str], *, out: str | Path, data: str | None = None,
                val_data: str | None = None, seeds: int = 1, budget: Budget | None = None,
                progress: bool = True, log: Callable[[str], None] | None = None
                ) -> CompareResult:
    """Search and retrain every method with the same budget; write the table and the plot.

    Args:
        methods: searched methods (:data:`dra_dali.search.methods.METHODS`) and presets
            (:data:`PRESETS`), each once.
        out: the comparison folder (created; an earlier comparison there is continued).
        data, val_data: training and validation image folders (same classes); both ``None``:
            the embedded demo dataset.
        seeds: seeds 0 .. seeds - 1 for every method (search and training).
        budget: the shared :class:`Budget`.
        progress: progress bars of the searches and trainings.
        log: receives one line per run.

    Returns:
        The :class:`CompareResult`; ``finished`` is False when a training was stopped by SIGTERM
        (its checkpoint is kept: run again to continue).

    Raises:
        CompareError: unknown methods, ``seeds < 1``, only one of ``data`` / ``val_data``.
        dra_dali.runtime.Stopped: SIGTERM or Ctrl-C during a search (its last epoch is kept).
    """
    say = log or (lambda line: None)
    methods = _check_methods(methods)
    if seeds < 1:
        raise CompareError(f"seeds: must be >= 1, got {seeds}")
    budget = budget or Budget()
    data, val_data = _default_data(data, val_data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = CompareResult(out=out, methods=methods, seeds=seeds, budget=budget)
    for seed in range(seeds):
        for method in methods:
            folder = out / method / f"seed-{seed}"
            run = _read_run(folder) or _one_run(method, seed, data, val_data, folder, budget,
                                               progress)
            if run is None:
                result.finished = False
                return result
            _write_json(folder / "result.json", asdict(run))
            result.runs.append(run)
            say(f"{method} seed {seed}: val top-1 {100 * run.val_top1:.1f} %, "
                f"search {run.search_seconds:.0f} s, {run.images_per_s:.0f} images/s")
    _write_outputs(result)
    return result


def _read_run(folder: Path) -> MethodRun | None:
    path = folder / "result.json"
    if not path.is_file():
        return None
    try:
        return MethodRun(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise CompareError(f"{path}: not a comparison result ({exc}); delete it to rerun this "
                           "run") from None


def _write_json(path: Path, record: Any) -> None:
    from dra_dali.runtime import atomic_write

    atomic_write(path, json.dumps(record, indent=2) + "\n")


def _write_outputs(result: CompareResult) -> None:
    from dra_dali.runtime import atomic_write

    budget = asdict(result.budget)
    steps = f" (at most {budget['max_steps']} steps each)" if budget["max_steps"] else ""
    note = (f"Budget: search recipe {budget['search_recipe']!r}, {budget['images_per_class']} "
            f"proxy images per class, {budget['search_epochs']} search epochs; {budget['model']}, "
            f"{budget['train_epochs']} training epochs{steps}, batch {budget['batch_size']}, "
            f"pipeline {budget['pipeline']!r}; seeds 0-{result.seeds - 1}; mean ± half the range "
            "over the seeds.")
    atomic_write(result.out / "results.md", f"{result.table()}\n\n{note}\n")
    _write_json(result.out / "compare.json",
                {"budget": budget, "seeds": result.seeds, "methods": result.methods,
                 "runs": [asdict(r) for r in result.runs], "rows": result.rows()})
    plot_compare(result, result.out / "compare.png")


def plot_compare(result: CompareResult, path: Path) -> Path:
    """Bars with spread over the seeds: val top-1, val top-5, search seconds, train images/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dra_dali.viz import save_figure

    rows = result.rows()
    names = [r["method"] for r in rows]
    panels = (("val_top1", "val top-1 (%)", 100), ("val_top5", "val top-5 (%)", 100),
              ("search_seconds", "search (s)", 1), ("images_per_s", "train images/s", 1))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, (key, label, factor) in zip(axes, panels):
        means = [factor * r[key][0] for r in rows]
        spreads = [factor * r[key][1] for r in rows]
        ax.bar(names, means, yerr=spreads, capsize=4, color="tab:blue", alpha=0.8)
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=45)
        if factor == 100:
            low = min(m - s for m, s in zip(means, spreads))
            ax.set_ylim(max(0.0, low - 10), 100)
    fig.suptitle(f"Methods compared: {result.budget.model}, {result.seeds} seed(s), "
                 "mean ± half range")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
