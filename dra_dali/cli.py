"""The ``dra-dali`` command line: a thin click layer over the library."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from dra_dali import __version__
from dra_dali.policy import Policy, PolicyError, preset_names
from dra_dali.recipes import recipe_names

#: The search methods, as registered in :mod:`dra_dali.search.methods` (a test keeps the two
#: in step; importing the registry here would load torch for every command).
SEARCH_METHODS = ("dra", "ddas", "faster-aa", "das")

_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


class _Device(click.ParamType):
    """The one device vocabulary of every command (:mod:`dra_dali.devices`); DALI's ``gpu`` is
    accepted as ``cuda``."""

    name = "auto|cpu|cuda[:N]"

    def convert(self, value, param, ctx):
        from dra_dali.devices import DEVICE_WORDS, valid_device

        text = "cuda" if value == "gpu" else str(value)
        if not valid_device(text):
            self.fail(f"expected {DEVICE_WORDS}, got {value!r}", param, ctx)
        return text


DEVICE = _Device()


def _old_workers_flag(command):
    """``--workers``, the name of ``--threads`` before one name per concept: still accepted,
    hidden from the help, with a warning saying what to write instead."""
    def warn(ctx, param, value):
        if value is not None:
            click.echo("Warning: --workers is now --threads; please update the command", err=True)
        return value

    return click.option("--workers", "old_workers", type=click.IntRange(min=1), default=None,
                        hidden=True, callback=warn, expose_value=True)(command)
_DEVICE_HELP = "auto (CUDA when available), cpu, cuda (the local rank's GPU) or cuda:N"


def _load_policy(path: Path) -> Policy:
    try:
        return Policy.load(path)
    except PolicyError as exc:
        raise click.ClickException(f"invalid policy: {exc}") from None


class _Main(click.Group):
    """The command group: a library error (:class:`~dra_dali.errors.DraDaliError`) of any
    command becomes one line and exit status 1; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context):
        from dra_dali.errors import DraDaliError

        try:
            return super().invoke(ctx)
        except DraDaliError as exc:
            raise click.ClickException(" ".join(str(exc).split())) from None


@click.group(cls=_Main,
             context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="dra-dali")
def main() -> None:
    """Search an augmentation policy with Differentiable RandAugment and train with NVIDIA DALI."""


@main.command()
@click.argument("policy", type=_EXISTING_FILE)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save a picture of the policy (PNG/PDF/SVG): operator and apply "
                   "probabilities, magnitude distributions; for a schedule, over the epochs.")
def show(policy: Path, plot: Path | None) -> None:
    """Print a policy file: per layer (sub-policy, schedule entry) the operator probability,
    apply probability and magnitude distribution."""
    from dra_dali.viz import describe, plot_policy

    loaded = _load_policy(policy)
    click.echo(f"{policy}: {loaded.format}")
    if loaded.provenance:
        click.echo("provenance: " + ", ".join(f"{k}={v}" for k, v in loaded.provenance.items()))
    click.echo(describe(loaded))
    if plot is not None:
        click.echo(f"plot written to {plot_policy(loaded, plot)}")


@main.command()
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Policy file to write (YAML).")
@click.option("--resolution", type=int, default=None,
              help="Adapt the preset to this training resolution (the translate range follows "
                   "it); default: the preset's own (224, or the paper's for dra-*).")
def preset(name: str, output: Path, resolution: int | None) -> None:
    """Write a ready policy: ra-n2-m9[-mstd0.5], rastar-n2-m10 (the DRA paper's RA*), timm
    strings (rand-m9-n2-mstd0.5), ta, or one of the paper's searched policies
    (dra-imagenet-resnet-50, ...)."""
    try:
        policy = Policy.preset(name, resolution=resolution)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name} written to {policy.save(output)}")


_SKIP_HELP = ("Exclude unusable image files (with a warning; listed in OUT/excluded_files.txt) "
              "instead of stopping; a resumed run excludes the same files.")


@main.command()
@click.option("--data", type=click.Path(exists=True, path_type=Path), required=True,
              help="Image folder (one sub-folder per class) or file list the proxy is sampled "
                   "from; without --val-data it is split into the model and policy halves.")
@click.option("--val-data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Image folder / file list for the policy-update half (same classes).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory: policy.yaml, config.yaml, metrics.jsonl, checkpoint, plots.")
@click.option("--recipe", default=None,
              help="Search recipe: a YAML file or a shipped name ("
                   + ", ".join(recipe_names("search")) + "); flags override its values.")
@click.option("--method", default=None,
              help="Search method: " + ", ".join(SEARCH_METHODS) + " (overrides the recipe's "
                   "`method:`; default dra). Method options: --set ddas.policies_per_step=2.")
@click.option("--model", default=None, help="Model name (overrides the recipe).")
@click.option("--epochs", type=int, default=None, help="Epochs (overrides the recipe).")
@click.option("--batch-size", type=int, default=None, help="Batch size (overrides the recipe).")
@click.option("--seed", type=int, default=None, help="Seed (overrides the recipe).")
@click.option("--device", type=DEVICE, default=None, help=_DEVICE_HELP + " (overrides the "
              "recipe).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override any recipe key, e.g. --set images_per_class=20 --set "
                   "sampling=batch --set ops='[Rotate, Invert]'. Repeatable.")
@click.option("--resume", is_flag=True, help="Continue the search whose checkpoint is in --out.")
@click.option("--force", is_flag=True, help="Start over in an --out that holds a search (or, "
                                            "with --resume, continue a finished one).")
@click.option("--allow-change", "allowed", multiple=True, metavar="KEY",
              help="With --resume: accept a new value of this recipe key (recorded in "
                   "overrides.jsonl). Repeatable.")
@click.option("--skip-bad-files/--no-skip-bad-files", default=None,
              help=_SKIP_HELP + "  [default: the recipe's skip_bad_files, off]")
def search(data: Path, val_data: Path | None, out: Path, recipe: str | None, method: str | None,
           model: str | None, epochs: int | None, batch_size: int | None, seed: int | None,
           device: str | None, settings: tuple[str, ...], resume: bool, force: bool,
           allowed: tuple[str, ...], skip_bad_files: bool | None) -> None:
    """Search an augmentation policy (DRA, DDAS, ...) on a proxy task; writes OUT/policy.yaml."""
    from dra_dali.errors import DraDaliError
    from dra_dali.runtime import Stopped
    from dra_dali.search import SearchConfig, run_search

    sets: dict = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.ClickException(f"--set {item!r}: expected KEY=VALUE")
        sets[key.strip()] = value.strip()
    overrides = dict(data=str(data), val_data=str(val_data) if val_data else None,
                     method=method, model=model,
                     epochs=epochs, batch_size=batch_size, seed=seed, device=device,
                     skip_bad_files=skip_bad_files)
    try:
        config = SearchConfig.from_recipe(recipe, overrides, sets)
        policy = run_search(config, out, resume=resume, force=force, overrides=allowed,
                            recipe=str(recipe) if recipe else None)
    except DraDaliError as exc:  # one line, as every command's library errors
        raise click.ClickException(" ".join(str(exc).split())) from None
    except (Stopped, KeyboardInterrupt) as exc:
        click.echo(f"\ninterrupted; the last completed epoch is saved in {out}/checkpoint.pt — "
                   f"continue with the same command and --resume", err=True)
        # 128 + signal number, as a shell reports it (and as `train` does): 143 SIGTERM, 130 Ctrl-C
        raise SystemExit(getattr(exc, "exit_code", 128 + signal.SIGINT)) from None
    click.echo(f"policy written to {out / 'policy.yaml'} "
               f"({policy.provenance.get('search_seconds')} s); plots in {out}")


@main.command("presets")
def list_presets() -> None:
    """List the preset names that `dra-dali preset` accepts."""
    for name in preset_names():
        click.echo(name)



@main.command("train")
@click.option("--config", "config_file", type=_EXISTING_FILE, default=None,
              help="A training configuration (YAML; a run's config.yaml runs it again); the "
                   "options given on the command line override its values.")
@click.option("--data", default=None, help="Training images: image folder (root/<class>/*.jpg) "
              "or a file list of 'relative/path label' lines.")
@click.option("--val-data", default=None, help="Validation images, same classes as --data.")
@click.option("--policy", default=None, help="Policy YAML file, a preset name (ra-n2-m9, ta, "
              "dra-imagenet-resnet-50, ...) or 'none'  [default: none]")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory: config.yaml, policy.yaml, metrics.jsonl, checkpoint.pt, "
                   "best.pt, model.pt, summary.json.")
@click.option("--model", default=None, help="Model name: resnet-tiny, resnet-20, wrn-28-10, "
              "wrn-40-2, torchvision names (resnet50), timm:NAME  [default: resnet-tiny]")
@click.option("--pipeline", default=None, help="Pipeline recipe (crop, flip, size, "
              "normalisation): imagenet, cifar, demo, or a YAML file  [default: imagenet]")
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="[default: 10]")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Images per step per process (global batch = this x processes)  [default: 64]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate  [default: 0.1 x global batch / 128]")
@click.option("--weight-decay", default=None, type=click.FloatRange(min=0),
              help="Weight decay, never on norm layers and biases  [default: 5e-4]")
@click.option("--warmup-epochs", default=None, type=click.FloatRange(min=0), help="[default: 1]")
@click.option("--label-smoothing", default=None, type=click.FloatRange(0, 1, max_open=True),
              help="[default: 0.1]")
@click.option("--seed", default=None, type=int, help="Seeds weights, data order and "
              "augmentation  [default: 0]")
@click.option("--device", type=DEVICE, default=None, help=_DEVICE_HELP + "  [default: auto]")
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA  [default: on]")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="DALI CPU threads "
              "per process  [default: 2]")
@_old_workers_flag
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Cap the steps per epoch (smoke tests).")
@click.option("--skip-bad-files/--no-skip-bad-files", default=None,
              help=_SKIP_HELP + "  [default: off]")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--force", is_flag=True, help="Overwrite a run in --out (or, with --resume, "
              "train a finished run for more epochs).")
@click.option("--allow-change", "allowed", multiple=True, metavar="KEY",
              help="With --resume: accept a new value of this setting (recorded in "
                   "overrides.jsonl). Repeatable.")
@click.option("--progress/--no-progress", default=True, help="Progress bar with images/s.")
def train_command(config_file: Path | None, resume: bool, force: bool, allowed: tuple[str, ...],
                  progress: bool, old_workers: int | None, **options) -> None:
    """Train a model with a policy, fed by the DALI pipeline; DDP when launched by torchrun
    (torchrun --nproc_per_node N -m dra_dali.cli train ...). SIGTERM or Ctrl-C saves a
    checkpoint and exits with status 143 or 130; --resume continues."""
    import os

    from dra_dali.train import TrainConfig, train

    options["threads"] = options["threads"] or old_workers
    given = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()
             if v is not None}
    if config_file is not None:
        config = TrainConfig.from_yaml(config_file, **given)
    else:
        config = TrainConfig.from_dict(given)
    result = train(config, resume=resume, force=force, overrides=allowed, progress=progress,
                   log=lambda line: click.echo(line, err=True))
    if not result.finished:
        if os.environ.get("RANK", "0") == "0":
            click.echo(f"interrupted; checkpoint in {config.out}; continue with the same command "
                       "plus --resume", err=True)
        raise SystemExit(result.exit_code)
    if os.environ.get("RANK", "0") != "0":
        return
    top1, top5 = (100 * result.final.get(k, 0) for k in ("val_top1", "val_top5"))
    click.echo(f"finished {result.epoch} epochs in {result.wall_seconds:.0f} s: val top-1 "
               f"{top1:.2f} %, top-5 {top5:.2f} %; run directory {config.out}")


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"),
              help="Where the demo writes its runs, policy, preview and plots.")
@click.option("--epochs", default=None, type=click.IntRange(min=1),
              help="Training epochs per run  [default: the demo's budget]")
@click.option("--seed", default=0, type=int, help="First seed  [default: 0]")
@click.option("--seeds", default=1, type=click.IntRange(min=1), show_default=True,
              help="Repeat the search and the trainings for this many seeds (--seed, --seed+1, "
              "...); the table shows the mean and spread.")
@click.option("--force", is_flag=True, help="Overwrite an earlier demo in --out.")
def demo(out: Path, epochs: int | None, seed: int, seeds: int, force: bool) -> None:
    """Search -> compile -> train on the embedded dataset: no augmentation vs RandAugment
    (ra-n2-m9) vs RA* (rastar-n2-m10) vs the searched policy under the same budget; prints a
    table."""
    from dra_dali.demo import DemoError, run_demo

    try:
        result = run_demo(out, epochs=epochs, seed=seed, seeds=seeds, force=force,
                          log=lambda line: click.echo(line, err=True))
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(result.report())


@main.command()
@click.option("--methods", default="dra,ddas,faster-aa,das,ra,ta",
              help="Comma-separated: searched methods (dra, ddas, faster-aa, das) and presets "
              "(ra = ra-n2-m9, ta = TrivialAugment, none).")
@click.option("--data", default=None, help="Training image folder  [default: the embedded demo "
              "dataset]")
@click.option("--val-data", default=None, help="Validation image folder, same classes as --data.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Comparison folder; run again with the same --out to continue it.")
@click.option("--seeds", default=1, type=click.IntRange(min=1), help="Seeds 0..N-1 per method.")
@click.option("--search-epochs", default=4, type=click.IntRange(min=1), help="Search epochs of "
              "every searched method.")
@click.option("--epochs", default=6, type=click.IntRange(min=1), help="Training epochs of every "
              "method.")
@click.option("--recipe", default="demo", help="Search recipe every method shares (proxy set, "
              "model, resolution).")
@click.option("--proxy-images", type=click.IntRange(min=2), default=40,
              help="Proxy images per class of every search (split into the two halves).")
@click.option("--model", default="resnet-tiny", help="Model every policy trains.")
@click.option("--pipeline", default="demo", help="Training pipeline recipe.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Cap training steps per epoch (quick checks).")
@click.option("--device", type=DEVICE, default="auto", help=_DEVICE_HELP + ", for every "
              "search and training.")
def compare(methods: str, data: str | None, val_data: str | None, out: Path, seeds: int,
            search_epochs: int, epochs: int, recipe: str, proxy_images: int | None, model: str,
            pipeline: str, max_steps: int | None, device: str) -> None:
    """Search every method on the same proxy and retrain each with the same budget and seeds;
    writes OUT/results.md (search seconds, train images/s, val top-1/top-5 mean ± spread),
    OUT/compare.png and one folder per run. Rerun to continue an interrupted comparison."""
    from dra_dali.compare import Budget, run_compare
    from dra_dali.errors import DraDaliError
    from dra_dali.runtime import Stopped

    budget = Budget(search_recipe=recipe, search_epochs=search_epochs,
                    images_per_class=proxy_images, train_epochs=epochs, model=model,
                    pipeline=pipeline, max_steps=max_steps, device=device)
    names = [m.strip() for m in methods.split(",") if m.strip()]
    try:
        result = run_compare(names, out=out, data=data, val_data=val_data, seeds=seeds,
                             budget=budget, log=lambda line: click.echo(line, err=True))
    except DraDaliError as exc:
        raise click.ClickException(str(exc)) from None
    except (Stopped, KeyboardInterrupt) as exc:
        click.echo(f"\ninterrupted; finished runs are kept in {out}; run the same command "
                   "again to continue", err=True)
        raise SystemExit(getattr(exc, "exit_code", 128 + signal.SIGINT)) from None
    if not result.finished:
        click.echo(f"stopped; finished runs are kept in {out}; run the same command again to "
                   "continue", err=True)
        raise SystemExit(128 + signal.SIGTERM)
    click.echo(f"{result.table()}\n\ntable: {out / 'results.md'}, plot: {out / 'compare.png'}")


def _default_recipe(data: str | None) -> str:
    """``demo`` (32 px) for the embedded data set (the default data), ``imagenet`` otherwise."""
    if data is None:
        return "demo"
    # the embedded set lives in <cache>/embedded-v<N>/{train,val}
    inside = any(p.name.startswith("embedded-v") for p in Path(data).resolve().parents)
    return "demo" if inside else "imagenet"


@main.command("compile")
@click.argument("policy")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for pipeline.dali, summary.txt, preview.png, config.yaml, policy.yaml.")
@click.option("--device", type=DEVICE, default="cpu", help="Where the pipeline decodes and "
              "augments: " + _DEVICE_HELP + " (mixed decode, GPU operators).")
@click.option("--data", default=None, help="Images the pipeline reads and the preview shows "
              "(image folder or file list)  [default: the embedded demo dataset]")
@click.option("--pipeline", "recipe", default=None, help="Pipeline recipe: imagenet, cifar, demo "
              "or a YAML file  [default: demo for the embedded data set, imagenet otherwise]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Batch size of the serialised pipeline  [default: the recipe's]")
@click.option("--seed", default=0, type=int, help="Pipeline seed (shuffle and augmentation).")
def compile_command(policy: str, out: Path, device: str, data: str | None, recipe: str | None,
                    batch_size: int | None, seed: int) -> None:
    """Compile POLICY (a policy file or a preset name, adapted to the recipe's image size) into a
    DALI training pipeline: writes the serialised pipeline, a graph summary and a preview grid
    rendered by the pipeline."""
    from dra_dali.dali.export import compile_policy
    from dra_dali.dali.loader import dali_placement
    from dra_dali.dali.pipelines import adapt_policy, load_recipe, resolve_policy
    from dra_dali.devices import resolve_device

    dali_device, _ = dali_placement(resolve_device(device))
    recipe = recipe or _default_recipe(data)
    if Path(policy).exists() or Path(policy).suffix in (".yaml", ".yml"):
        pipeline = load_recipe(recipe)
        loaded, note = adapt_policy(_load_policy(Path(policy)), pipeline.resolution,
                                   pipeline.name)
        if note:
            click.echo(f"Note: {note}", err=True)
    else:
        try:
            loaded = resolve_policy(policy, load_recipe(recipe).resolution)
        except PolicyError as exc:
            raise click.ClickException(f"{policy!r} is neither a policy file nor a preset: "
                                       f"{exc}") from None
        if loaded is None:
            raise click.ClickException("compile needs a policy, not 'none'")
    result = compile_policy(loaded, out, device=dali_device, data=data, recipe=recipe,
                            batch_size=batch_size, seed=seed, policy_source=policy)
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    for note in result.notes:
        click.echo(f"Note: {note}", err=True)
    click.echo(result.summary_path.read_text())
    written = [p for p in (result.pipeline_path, result.summary_path, result.preview_path,
                           result.config_path, result.policy_path) if p is not None]
    click.echo("written: " + ", ".join(str(p) for p in written))


@main.command("check-data")
@click.argument("data")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Decoding threads  [default: 2 per CPU core]")
@_old_workers_flag
@click.option("--decode/--headers-only", default=True,
              help="Decode every image (JPEGs in libjpeg's strict mode, which also catches "
                   "corrupt data decoders accept with a warning), or only the fast header check "
                   "that train and search run before starting.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None,
              help="For a file list: the class count; labels must be below it.")
@click.option("--allow-absolute-paths", is_flag=True,
              help="For a file list: accept absolute paths and paths leaving the list's folder.")
@click.option("--strict", is_flag=True, help="Exit non-zero on warnings too (CMYK, 16-bit, "
              "files the pipeline ignores).")
@click.option("--skip-bad-files", is_flag=True,
              help="Preview a run with skip_bad_files: say how many files it would leave out, and "
                   "exit 0 when every class keeps an image.")
def check_data_command(data: str, threads: int | None, old_workers: int | None, decode: bool,
                       num_classes: int | None, allow_absolute_paths: bool, strict: bool,
                       skip_bad_files: bool) -> None:
    """Decode every image of DATA (image folder or file list) in parallel and report, by path,
    files that are empty, truncated, corrupt (also corrupt data a decoder would accept with only
    a warning), not images, in a format DALI cannot decode (GIF, 12-bit JPEG), misnamed (PNG/GIF
    renamed to .jpg) or that DALI handles with a caveat (CMYK, 16-bit, huge).
    Exit status 1 if any file has an error."""
    from tqdm import tqdm

    from dra_dali.data import DataError, check_data, scan_images

    try:
        images = scan_images(data, num_classes=num_classes, allow_absolute=allow_absolute_paths)
        with tqdm(total=len(images), unit="img", disable=None, leave=False) as bar:
            report = check_data(images, threads=threads or old_workers, progress=bar.update,
                                decode=decode)
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.summary())
    failed = not report.ok
    if skip_bad_files:
        failed = False
        _preview_skipping(images, report)
    if failed or (strict and report.problems):
        raise SystemExit(1)


def _preview_skipping(images, report) -> None:
    """What a run with skip_bad_files does with the files of ``report``: leaves out the ones
    DALI cannot decode, or refuses when a class would be left with none (a one-line error)."""
    from dra_dali.data import exclude
    from dra_dali.data.checks import BLOCKING

    unusable = [p for p in report.problems if p.kind in BLOCKING]
    kept = exclude(images, unusable)
    click.echo(f"with skip_bad_files, a run leaves out {len(unusable)} unusable file(s) and uses "
               f"{len(kept)} of {len(images)}")


if __name__ == "__main__":
    main()
