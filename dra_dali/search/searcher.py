"""The search run: proxy data, model, loop, checkpoints, resume, SIGTERM, metrics and plots.

The run knows no method: each step it hands a batch of each proxy half to the configured
method (:mod:`dra_dali.search.methods`: ``dra``, ``ddas``, ...), which updates its parameters and
the model; the run then steps the model's cosine learning-rate schedule.

The run directory holds ``config.yaml`` (the resolved configuration), ``checkpoint.pt`` (written
atomically after every epoch), ``metrics.jsonl`` (one line per epoch: the method's metrics
averaged over the epoch and its parameter snapshot), the method's plots and, at the end,
``policy.yaml``.

Example:
    >>> from dra_dali.data import embedded_dataset
    >>> from dra_dali.search import SearchConfig, run_search
    >>> cfg = SearchConfig.from_recipe("search/demo.yaml",
    ...                                {"data": str(embedded_dataset().train), "epochs": 1})
    >>> policy = run_search(cfg, "runs/doc-search", progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from dra_dali import __version__
from dra_dali.data import EXCLUDED_FILE, excluded_text, read_excluded
from dra_dali.devices import resolve_device
from dra_dali.policy import Policy
from dra_dali.runtime import CHECKPOINT as CHECKPOINT_NAME
from dra_dali.runtime import RunDir, RunDirError, StopSignals, derive_seed
from dra_dali.runtime import load_checkpoint as _load_runtime_checkpoint
from dra_dali.search.config import ConfigError, SearchConfig
from dra_dali.search.data import ProxySet, crop_flip, load_proxy
from dra_dali.search.methods import Batch, SearchMethod, StepContext, get_method

__all__ = ["run_search", "SearchState", "load_checkpoint", "RunDirError"]

CHECKPOINT_FORMAT = "dra-search-checkpoint/2"
#: Settings that may change on resume: they do not change the result.
RESUME_IGNORES = ("device", "threads", "data", "val_data")


ModelFactory = Callable[..., nn.Module]  # (name, num_classes, **config.model_args)
EpochHook = Callable[[int, dict[str, Any]], None]


class _Cosine:
    """Cosine decay from 1 to 0 over ``total`` steps (an object: ``LambdaLR`` saves its fields)."""

    def __init__(self, total: int) -> None:
        self.total = total

    def __call__(self, step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, self.total))))


def _default_factory(name: str, num_classes: int, **model_args: Any) -> nn.Module:
    from dra_dali.models import create_model

    return create_model(name, num_classes, **model_args)


class SearchState:
    """Model, method, optimiser, schedule and history of one search (what a checkpoint holds)."""

    def __init__(self, config: SearchConfig, num_classes: int, steps_per_epoch: int,
                 model_factory: ModelFactory) -> None:
        self.config = config
        self.device = torch.device(resolve_device(config.device))
        torch.manual_seed(config.seed)
        self.model = model_factory(config.model, num_classes, **config.model_args).to(self.device)
        self.method: SearchMethod = get_method(config.method)(
            config, config.options, num_classes=num_classes, device=self.device)
        # Built once on the device: every step normalises several batches.
        self.norm_mean, self.norm_std = (torch.tensor(v, device=self.device).view(1, 3, 1, 1)
                                         for v in config.normalize)
        self.model_opt = torch.optim.SGD(self.model.parameters(), lr=config.effective_lr,
                                         momentum=config.momentum, nesterov=config.nesterov
                                         and config.momentum > 0,
                                         weight_decay=config.weight_decay)
        # Cosine decay to 0 over the whole search, no warmup.
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.model_opt, _Cosine(config.epochs * steps_per_epoch))
        self.epoch = 0  # completed epochs
        self.elapsed = 0.0
        self.history: list[dict[str, Any]] = [{"epoch": 0, **self.method.snapshot()}]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.norm_mean) / self.norm_std

    def context(self, generator: torch.Generator) -> StepContext:
        """What the method gets for a step."""
        return StepContext(self.config, self.model, self.model_opt, self.normalize, generator,
                           self.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
                "epoch": self.epoch, "elapsed": self.elapsed, "history": self.history,
                "model": self.model.state_dict(), "model_opt": self.model_opt.state_dict(),
                "schedule": self.schedule.state_dict(),
                "method": {"name": self.config.method, "state": self.method.state_dict()},
                "version": __version__}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.model_opt.load_state_dict(state["model_opt"])
        self.schedule.load_state_dict(state["schedule"])
        self.method.load_state_dict(state["method"]["state"])
        self.epoch = int(state["epoch"])
        self.elapsed = float(state["elapsed"])
        self.history = list(state["history"])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a search checkpoint (``run/checkpoint.pt``, ``weights_only=True``) as a dict.

    Raises:
        RunDirError: the file is missing, unreadable or not a search checkpoint.
    """
    from dra_dali.runtime import CheckpointError

    try:
        state = _load_runtime_checkpoint(path)
    except CheckpointError as exc:
        raise RunDirError(str(exc)) from None
    _check_format(state, path)
    return state


def _check_format(state: Any, path: str | Path) -> None:
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path}: not a dra-dali search checkpoint of this version "
                          f"({CHECKPOINT_FORMAT})")


def _validate_model(config: SearchConfig, num_classes: int, factory: ModelFactory) -> None:
    try:
        factory(config.model, num_classes, **config.model_args)
    except ValueError as exc:  # UnknownModelError is a ValueError
        raise ConfigError(f"model: {exc}") from None
    except TypeError as exc:  # a keyword argument the constructor does not take
        raise ConfigError(f"model_args: {dict(config.model_args)} do not fit model "
                          f"{config.model!r} ({exc})") from None


def run_search(config: SearchConfig, out_dir: str | Path, *, resume: bool = False,
               force: bool = False, overrides: Iterable[str] = (), progress: bool = True,
               model_factory: ModelFactory | None = None,
               val_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
               on_epoch_end: EpochHook | None = None, recipe: str | None = None) -> Policy:
    """Search a policy with the configured method and write the run directory.

    Every check (configuration, model name, data, image decoding) happens before the run
    directory is touched, and the run directory's rules (:class:`dra_dali.runtime.RunDir`:
    lock, refuse / resume / force, unchanged settings on resume) before the first step. A
    checkpoint is written atomically after every epoch; SIGTERM or Ctrl-C stops the run between
    two steps (:class:`dra_dali.runtime.Stopped`, exit status 143 / 130 from the CLI) with the
    last completed epoch's checkpoint in place, and ``resume=True`` continues from it to the same
    result as an uninterrupted run (on CPU, same seed).

    Args:
        config: the search configuration (``config.data`` is required).
        out_dir: run directory (created).
        resume: continue the search whose checkpoint is in ``out_dir``.
        force: start over in a folder that holds a search (or, with ``resume``, continue a
            finished one).
        overrides: settings allowed to differ from the saved ``config.yaml`` on resume
            (recorded in ``overrides.jsonl``).
        progress: show a tqdm progress bar with the running metrics.
        model_factory: ``(name, num_classes) -> nn.Module``; default
            :func:`dra_dali.models.create_model`.
        val_transform: applied to the cropped batches of the second half (DRA's policy half,
            DDAS's validation half; float [0, 1]) before the method sees them; the sanity
            protocol transforms them with one operator (``benchmarks/sanity.py``).
        on_epoch_end: called as ``hook(epoch, record)`` after each epoch's checkpoint.
        recipe: recipe path, recorded in the provenance.

    Returns:
        The searched :class:`dra_dali.policy.Policy` (also saved as ``out_dir/policy.yaml``).

    Raises:
        ConfigError: invalid configuration or unknown model name.
        dra_dali.data.DataError: missing/unreadable data, too few classes or images,
            ``val_data`` classes that differ, an image that cannot be decoded (path named).
        RunDirError: ``out_dir`` holds another search (without ``resume`` or ``force``), is in
            use, or its checkpoint was made with other settings.
        dra_dali.runtime.Stopped: SIGTERM or Ctrl-C, after the last completed epoch's checkpoint.
    """
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        factory = model_factory or _default_factory
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' requested but torch sees no GPU; use device: cpu")
        _validate_model(config, config.proxy_classes or 2, factory)
        # a resumed search excludes the files it excluded when it started (the same proxy)
        proxy = load_proxy(config, read_excluded(out_dir) if resume else None)
        if len(proxy.model_half) < 1 or len(proxy.policy_half) < 1:
            raise ConfigError("the proxy set has an empty half; raise images_per_class")
        with RunDir(out_dir, "search", config.to_dict(), resume=resume, force=force,
                    overrides=overrides, ignore=RESUME_IGNORES,
                    defaults=SearchConfig().to_dict()) as run:
            if config.skip_bad_files and not run.resumed:
                run.write(EXCLUDED_FILE, excluded_text(proxy.excluded))
            return _run(config, run, proxy, progress, factory, val_transform, on_epoch_end,
                        recipe)
    finally:
        torch.set_num_threads(threads)


def _run(config: SearchConfig, run: RunDir, proxy: ProxySet, progress: bool,
         factory: ModelFactory, val_transform: Callable[[torch.Tensor], torch.Tensor] | None,
         on_epoch_end: EpochHook | None, recipe: str | None) -> Policy:
    from tqdm.auto import tqdm

    steps = max(1, len(proxy.model_half) // config.batch_size)
    state = SearchState(config, len(proxy.classes), steps, factory)
    if run.state is not None:
        _check_format(run.state, run.checkpoint_path)
        state.load_state_dict(run.state)
    else:
        run.metrics.append(state.history[0])
    bar = tqdm(total=config.epochs * steps, initial=state.epoch * steps, disable=not progress,
               desc=f"search ({config.method})", unit="step", dynamic_ncols=True)
    try:
        with StopSignals() as stop:
            while state.epoch < config.epochs:
                started = time.perf_counter()
                metrics = _epoch(state, proxy, steps, bar, val_transform, stop)
                state.epoch += 1
                state.elapsed += time.perf_counter() - started
                metrics["seconds"] = state.elapsed
                state.history.append({"epoch": state.epoch, **metrics,
                                      **state.method.snapshot()})
                run.metrics.append(state.history[-1])
                run.save_checkpoint(state.state_dict())
                if on_epoch_end is not None:
                    on_epoch_end(state.epoch, state.history[-1])
    finally:
        bar.close()
    return _finish(config, run, state, proxy, recipe)


def _finish(config: SearchConfig, run: RunDir, state: SearchState, proxy: ProxySet,
            recipe: str | None) -> Policy:
    provenance = {
        "method": config.method, "data": str(config.data), "val_data": config.val_data,
        "classes": len(proxy.classes), "model_half": len(proxy.model_half),
        "policy_half": len(proxy.policy_half), "model": config.model, "recipe": recipe,
        "epochs": config.epochs, "seed": config.seed,
        "search_seconds": round(state.elapsed, 2), "device": config.device,
        "version": __version__}
    policy = state.method.to_policy(state.history, provenance)
    state.method.plots(state.history, policy, run.path)
    run.write("policy.yaml", policy.to_yaml())
    return policy


def _epoch(state: SearchState, proxy: ProxySet, steps: int, bar: Any,
           val_transform: Callable[[torch.Tensor], torch.Tensor] | None,
           stop: StopSignals) -> dict[str, float]:
    config = state.config
    # One generator per epoch, seeded by (seed, epoch): a resumed run draws exactly what an
    # uninterrupted run draws from the next epoch on.
    seed = derive_seed(config.seed, "search", "epoch", state.epoch)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout and other global draws inside the model
    bs, vbs = config.batch_size, config.val_batch_size or config.batch_size
    order_a = torch.randperm(len(proxy.model_half), generator=gen)
    n_b = len(proxy.policy_half)
    order_b = torch.cat([torch.randperm(n_b, generator=gen)
                         for _ in range(math.ceil(steps * vbs / n_b) + 1)])
    ctx = state.context(gen)
    sums: dict[str, float] = {}
    state.model.train()
    for step in range(steps):
        idx_a = order_a[step * bs:(step + 1) * bs]
        idx_b = order_b[step * vbs:(step + 1) * vbs]
        xb = crop_flip(proxy.policy_half.images[idx_b], config, gen, policy_half=True)
        if val_transform is not None:
            xb = val_transform(xb)
        xa = crop_flip(proxy.model_half.images[idx_a], config, gen)
        train = Batch(xa.to(state.device), proxy.model_half.labels[idx_a].to(state.device))
        val = Batch(xb.to(state.device), proxy.policy_half.labels[idx_b].to(state.device))
        metrics = state.method.step(ctx, train, val)
        state.schedule.step()
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.update(1)
        bar.set_postfix(epoch=state.epoch + 1, refresh=False,
                        **{k: f"{v:.3f}" for k, v in list(metrics.items())[:4]})
        stop.raise_if_requested(f"stopped by a signal; the last completed epoch ({state.epoch}) "
                                f"is saved in {CHECKPOINT_NAME}")
    averaged = {k: v / steps for k, v in sums.items()}
    averaged["lr"] = state.model_opt.param_groups[0]["lr"]
    return averaged
