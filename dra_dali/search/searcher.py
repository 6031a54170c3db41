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

import json
import math
import os
import pickle
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import yaml
from torch import nn

from dra_dali import __version__
from dra_dali.errors import DraDaliError
from dra_dali.policy import Policy
from dra_dali.search.config import ConfigError, SearchConfig
from dra_dali.search.data import ProxySet, crop_flip, load_proxy
from dra_dali.search.methods import Batch, SearchMethod, StepContext, get_method
from dra_dali.train.checkpoint import save_checkpoint
from dra_dali.train.optim import build_scheduler

__all__ = ["run_search", "SearchState", "load_checkpoint", "RunDirError"]

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "dra-search-checkpoint/2"


class RunDirError(DraDaliError):
    """The run directory cannot be used (holds another search, or a checkpoint that does not
    match the configuration); the message says what to do."""


ModelFactory = Callable[..., nn.Module]  # (name, num_classes, **config.model_args)
EpochHook = Callable[[int, dict[str, Any]], None]


def _default_factory(name: str, num_classes: int, **model_args: Any) -> nn.Module:
    from dra_dali.models import create_model

    return create_model(name, num_classes, **model_args)


class SearchState:
    """Model, method, optimiser, schedule and history of one search (what a checkpoint holds)."""

    def __init__(self, config: SearchConfig, num_classes: int, steps_per_epoch: int,
                 model_factory: ModelFactory) -> None:
        self.config = config
        self.device = torch.device(config.device)
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
        self.schedule = build_scheduler(self.model_opt, config.epochs * steps_per_epoch, 0)
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
    """Read a search checkpoint (``run/checkpoint.pt``) as a dict.

    Raises:
        RunDirError: the file is missing or not a search checkpoint.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise RunDirError(f"{path}: cannot read the search checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path}: not a dra-dali search checkpoint of this version "
                          f"({CHECKPOINT_FORMAT})")
    return state


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class SearchTerminated(KeyboardInterrupt):
    """SIGTERM during a search: unwinds like Ctrl-C (the last epoch's checkpoint is kept)."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`SearchTerminated` so that a killed search unwinds like Ctrl-C."""
    def handler(signum, frame):  # noqa: ARG001
        raise SearchTerminated(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _validate_model(config: SearchConfig, num_classes: int, factory: ModelFactory) -> None:
    try:
        factory(config.model, num_classes, **config.model_args)
    except ValueError as exc:  # UnknownModelError is a ValueError
        raise ConfigError(f"model: {exc}") from None
    except TypeError as exc:  # a keyword argument the constructor does not take
        raise ConfigError(f"model_args: {dict(config.model_args)} do not fit model "
                          f"{config.model!r} ({exc})") from None


def _prepare_run_dir(out: Path, config: SearchConfig, resume: bool) -> dict[str, Any] | None:
    ckpt = out / CHECKPOINT
    if resume:
        if not ckpt.is_file():
            raise RunDirError(f"{out}: nothing to resume (no {CHECKPOINT}); run without --resume "
                              "to start a new search")
        state = load_checkpoint(ckpt)
        saved = SearchConfig.from_dict(state["config"], f"{ckpt} config")
        # These keys do not change the result; the rest must match to continue the same search.
        ignore = {"device", "threads", "data", "val_data"}
        diff = sorted(k for k in [*SearchConfig.keys(), "method_options"] if k not in ignore
                      and getattr(saved, k) != getattr(config, k))
        if diff:
            raise RunDirError(
                f"{out}: the checkpoint was written with a different configuration ("
                + ", ".join(f"{k}: {getattr(saved, k)!r} -> {getattr(config, k)!r}" for k in diff)
                + "); resume with the same recipe and flags, or start a new --out")
        return state
    if ckpt.is_file() or (out / "policy.yaml").is_file():
        raise RunDirError(f"{out}: already holds a search ({CHECKPOINT} or policy.yaml); pass "
                          "--resume to continue it, or choose another --out (nothing was "
                          "overwritten)")
    return None


def run_search(config: SearchConfig, out_dir: str | Path, *, resume: bool = False,
               progress: bool = True, model_factory: ModelFactory | None = None,
               val_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
               on_epoch_end: EpochHook | None = None, recipe: str | None = None) -> Policy:
    """Search a policy with the configured method and write the run directory.

    Every check (configuration, model name, data, image decoding, run directory) happens before
    the first step. A checkpoint is written atomically after every epoch; Ctrl-C or SIGTERM
    leaves the last one loadable and ``resume=True`` continues from it to the same result as an
    uninterrupted run (on CPU, same seed).

    Args:
        config: the search configuration (``config.data`` is required).
        out_dir: run directory (created).
        resume: continue the search whose checkpoint is in ``out_dir``.
        progress: show a tqdm progress bar with the running losses.
        model_factory: ``(name, num_classes) -> nn.Module``; default
            :func:`dra_dali.models.create_model`.
        val_transform: applied to the cropped batches of the second half (DRA's policy half,
            DDAS's validation half; float [0, 1]) before the method sees them; the sanity
            protocol transforms them with one operator (``benchmarks/sanity.py``).
        on_epoch_end: called as ``hook(epoch, metrics)`` after each epoch's checkpoint.
        recipe: recipe path, recorded in the provenance.

    Returns:
        The searched :class:`dra_dali.policy.Policy` (also saved as ``out_dir/policy.yaml``).

    Raises:
        ConfigError: invalid configuration or unknown model name.
        dra_dali.data.DataError: missing/unreadable data, too few classes or images,
            ``val_data`` classes that differ, an image that cannot be decoded (path named).
        RunDirError: ``out_dir`` holds another search (without ``resume``) or a checkpoint with
            a different configuration.
        KeyboardInterrupt: on Ctrl-C / SIGTERM, after the last completed epoch's checkpoint.
    """
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, Path(out_dir), resume, progress, model_factory or _default_factory,
                    val_transform, on_epoch_end, recipe)
    finally:
        torch.set_num_threads(threads)


def _run(config: SearchConfig, out: Path, resume: bool, progress: bool, factory: ModelFactory,
         val_transform: Callable[[torch.Tensor], torch.Tensor] | None,
         on_epoch_end: EpochHook | None, recipe: str | None) -> Policy:
    from tqdm.auto import tqdm

    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch sees no GPU; use --device cpu")
    state_dict = _prepare_run_dir(out, config, resume) if out.exists() else None
    if resume and state_dict is None:
        raise RunDirError(f"{out}: nothing to resume (the folder does not exist)")
    _validate_model(config, config.proxy_classes or 2, factory)
    proxy = load_proxy(config)
    if len(proxy.model_half) < 1 or len(proxy.policy_half) < 1:
        raise ConfigError("the proxy set has an empty half; raise images_per_class")

    out.mkdir(parents=True, exist_ok=True)
    _atomic_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    bs = config.batch_size
    steps = max(1, len(proxy.model_half) // bs)
    state = SearchState(config, len(proxy.classes), steps, factory)
    if state_dict is not None:
        state.load_state_dict(state_dict)

    total_steps = config.epochs * steps
    bar = tqdm(total=total_steps, initial=state.epoch * steps, disable=not progress,
               desc="search", unit="step", dynamic_ncols=True)
    try:
        with _sigterm_as_interrupt():
            while state.epoch < config.epochs:
                started = time.perf_counter()
                metrics = _epoch(state, proxy, steps, bar, val_transform)
                state.epoch += 1
                state.elapsed += time.perf_counter() - started
                metrics["seconds"] = state.elapsed
                state.history.append({"epoch": state.epoch, **metrics,
                                      **state.method.snapshot()})
                save_checkpoint(out / CHECKPOINT, state.state_dict())
                _write_history(out, state.history)
                if on_epoch_end is not None:
                    on_epoch_end(state.epoch, state.history[-1])
    finally:
        bar.close()

    provenance = {
        "method": config.method, "data": str(config.data), "val_data": config.val_data,
        "classes": len(proxy.classes), "model_half": len(proxy.model_half),
        "policy_half": len(proxy.policy_half), "model": config.model, "recipe": recipe,
        "epochs": config.epochs, "seed": config.seed,
        "search_seconds": round(state.elapsed, 2), "device": config.device,
        "version": __version__}
    policy = state.method.to_policy(state.history, provenance)
    policy.save(out / "policy.yaml")
    state.method.plots(state.history, policy, out)
    return policy


def _epoch(state: SearchState, proxy: ProxySet, steps: int, bar: Any,
           val_transform: Callable[[torch.Tensor], torch.Tensor] | None) -> dict[str, float]:
    config = state.config
    # One generator per epoch, seeded by (seed, epoch): a resumed run draws exactly what an
    # uninterrupted run draws from the next epoch on.
    seed = config.seed * 1_000_003 + state.epoch
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout and other global draws inside the model
    bs = config.batch_size
    order_a = torch.randperm(len(proxy.model_half), generator=gen)
    n_b = len(proxy.policy_half)
    order_b = torch.cat([torch.randperm(n_b, generator=gen)
                         for _ in range(math.ceil(steps * bs / n_b) + 1)])
    ctx = state.context(gen)
    sums: dict[str, float] = {}
    state.model.train()
    for step in range(steps):
        idx_a = order_a[step * bs:(step + 1) * bs]
        idx_b = order_b[step * bs:(step + 1) * bs]
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
    averaged = {k: v / steps for k, v in sums.items()}
    averaged["lr"] = state.model_opt.param_groups[0]["lr"]
    return averaged


def _write_history(out: Path, history: list[dict[str, Any]]) -> None:
    _atomic_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
