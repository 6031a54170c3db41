"""The bi-level DRA searcher and its run directory.

Each step (first-order bi-level, as in the paper):

1. **policy step** on a batch of the policy half: loss ``CE(f(aug(x)), y) + kl_weight *
   KL(softmax(f(x)) || softmax(f(aug(x))))`` (the clean prediction is a target: no gradient),
   gradient taken with respect to the policy parameters only, AdamW step, then ``mean`` clipped
   to ``[0, scale]`` and ``std`` to ``[0, 1]``;
2. **model step** on a batch of the model half augmented by the current policy (no gradient to
   the policy): cross-entropy, SGD with Nesterov momentum, cosine learning rate per step,
   gradient-norm clipping.

The run directory holds ``config.yaml`` (the resolved configuration), ``checkpoint.pt`` (written
atomically after every epoch), ``metrics.jsonl`` (one line per epoch: losses, accuracy,
probabilities, means, stds), ``trajectories.png`` (the paper's Fig. 2), ``policy.png`` (Fig. 3)
and, at the end, ``policy.yaml``.

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
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from dra_dali import __version__
from dra_dali.errors import DraDaliError
from dra_dali.ops import OPS
from dra_dali.policy import Policy
from dra_dali.search.config import ConfigError, SearchConfig
from dra_dali.search.data import ProxySet, crop_flip, load_proxy
from dra_dali.search.layer import DRAPolicy
from dra_dali.search.ops import apply_op
from dra_dali.train.checkpoint import save_checkpoint
from dra_dali.train.optim import build_scheduler

__all__ = ["run_search", "search_step", "SearchState", "load_checkpoint", "RunDirError", "build_policy_module"]

CHECKPOINT = "checkpoint.pt"


class RunDirError(DraDaliError):
    """The run directory cannot be used (holds another search, or a checkpoint that does not
    match the configuration); the message says what to do."""


ModelFactory = Callable[..., nn.Module]  # (name, num_classes, **config.model_args)
EpochHook = Callable[[int, dict[str, Any]], None]


def build_policy_module(config: SearchConfig) -> DRAPolicy:
    """The :class:`DRAPolicy` a configuration describes."""
    return DRAPolicy(config.ops, depth=config.depth, resolution=config.resolution,
                     scale=config.scale, apply_prob=config.apply_prob,
                     temperature=config.temperature, sampling=config.sampling,  # type: ignore
                     init_logit=config.init_logit, init_mean=config.init_mean,
                     init_std=config.init_std, learn_w=config.learn_w,
                     learn_mean=config.learn_mean, learn_std=config.learn_std,
                     op_gradient=config.op_gradient, fill=config.fill)


def _default_factory(name: str, num_classes: int, **model_args: Any) -> nn.Module:
    from dra_dali.models import create_model

    return create_model(name, num_classes, **model_args)


class SearchState:
    """Model, policy, optimisers and history of one search (what a checkpoint holds)."""

    def __init__(self, config: SearchConfig, num_classes: int, steps_per_epoch: int,
                 model_factory: ModelFactory) -> None:
        self.config = config
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.model = model_factory(config.model, num_classes, **config.model_args).to(self.device)
        self.policy = build_policy_module(config).to(self.device)
        # Built once on the device: search_step normalises three batches per step.
        self.norm_mean, self.norm_std = (torch.tensor(v, device=self.device).view(1, 3, 1, 1)
                                         for v in config.normalize)
        self.model_opt = torch.optim.SGD(self.model.parameters(), lr=config.effective_lr,
                                         momentum=config.momentum, nesterov=config.nesterov
                                         and config.momentum > 0,
                                         weight_decay=config.weight_decay)
        # Cosine decay to 0 over the whole search, no warmup.
        self.schedule = build_scheduler(self.model_opt, config.epochs * steps_per_epoch, 0)
        self.policy_params = [p for p in self.policy.parameters() if p.requires_grad]
        self.policy_opt = (torch.optim.AdamW(self.policy_params, lr=config.policy_lr,
                                             betas=config.policy_betas,
                                             weight_decay=config.policy_weight_decay)
                           if self.policy_params else None)
        self.epoch = 0  # completed epochs
        self.elapsed = 0.0
        self.history: list[dict[str, Any]] = [self._snapshot(0, {})]

    def _snapshot(self, epoch: int, losses: dict[str, float]) -> dict[str, Any]:
        return {"epoch": epoch, **losses,
                "probabilities": self.policy.probabilities().cpu().tolist(),
                "mean": self.policy.mean.detach().cpu().tolist(),
                "std": self.policy.std.detach().cpu().tolist()}

    def state_dict(self) -> dict[str, Any]:
        return {"format": "dra-search-checkpoint/1", "config": self.config.to_dict(),
                "epoch": self.epoch, "elapsed": self.elapsed, "history": self.history,
                "model": self.model.state_dict(), "policy": self.policy.state_dict(),
                "model_opt": self.model_opt.state_dict(), "schedule": self.schedule.state_dict(),
                "policy_opt": self.policy_opt.state_dict() if self.policy_opt else None,
                "version": __version__}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.policy.load_state_dict(state["policy"])
        self.model_opt.load_state_dict(state["model_opt"])
        self.schedule.load_state_dict(state["schedule"])
        if self.policy_opt is not None and state["policy_opt"] is not None:
            self.policy_opt.load_state_dict(state["policy_opt"])
        self.epoch = int(state["epoch"])
        self.elapsed = float(state["elapsed"])
        self.history = list(state["history"])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a search checkpoint (``run/checkpoint.pt``) as a dict.

    Raises:
        RunDirError: the file is missing or not a search checkpoint.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise RunDirError(f"{path}: cannot read the search checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != "dra-search-checkpoint/1":
        raise RunDirError(f"{path}: not a dra-dali search checkpoint")
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


def _normalize(x: torch.Tensor, state: SearchState) -> torch.Tensor:
    return (x - state.norm_mean) / state.norm_std


def _cutout(x: torch.Tensor, side: int, generator: torch.Generator) -> torch.Tensor:
    """Cutout of ``side`` pixels at a random centre (the catalog operator at that magnitude)."""
    magnitude = torch.full((x.shape[0],), side / (x.shape[2] * OPS["Cutout"].slope))
    return apply_op("Cutout", x, magnitude, generator=generator)


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
        diff = sorted(k for k in SearchConfig.keys() if k not in ignore
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
               policy_half_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
               on_epoch_end: EpochHook | None = None, recipe: str | None = None) -> Policy:
    """Search a DRA policy and write the run directory.

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
        policy_half_transform: applied to the cropped policy-half batches (float [0, 1]) before
            the policy; for sanity checks (e.g. rotate them by 30 degrees).
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
                    policy_half_transform, on_epoch_end, recipe)
    finally:
        torch.set_num_threads(threads)


def _run(config: SearchConfig, out: Path, resume: bool, progress: bool, factory: ModelFactory,
         policy_half_transform: Callable[[torch.Tensor], torch.Tensor] | None,
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
                metrics = _epoch(state, proxy, steps, bar, policy_half_transform)
                state.epoch += 1
                state.elapsed += time.perf_counter() - started
                metrics["seconds"] = state.elapsed
                state.history.append(state._snapshot(state.epoch, metrics))
                save_checkpoint(out / CHECKPOINT, state.state_dict())
                _write_history(out, state.history)
                if on_epoch_end is not None:
                    on_epoch_end(state.epoch, state.history[-1])
    finally:
        bar.close()

    policy = state.policy.to_policy(provenance={
        "method": "dra", "data": str(config.data), "val_data": config.val_data,
        "classes": len(proxy.classes), "model_half": len(proxy.model_half),
        "policy_half": len(proxy.policy_half), "model": config.model, "recipe": recipe,
        "epochs": config.epochs, "seed": config.seed, "sampling": config.sampling,
        "search_seconds": round(state.elapsed, 2), "device": config.device,
        "version": __version__})
    policy.save(out / "policy.yaml")
    _write_plots(out, state.history, policy)
    return policy


def _epoch(state: SearchState, proxy: ProxySet, steps: int, bar: Any,
           policy_half_transform: Callable[[torch.Tensor], torch.Tensor] | None
           ) -> dict[str, float]:
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
    sums = {"policy_ce": 0.0, "policy_kl": 0.0, "model_ce": 0.0, "model_acc": 0.0}
    state.model.train()
    for step in range(steps):
        idx_a = order_a[step * bs:(step + 1) * bs]
        idx_b = order_b[step * bs:(step + 1) * bs]
        xb = crop_flip(proxy.policy_half.images[idx_b], config, gen, policy_half=True)
        if policy_half_transform is not None:
            xb = policy_half_transform(xb)
        xa = crop_flip(proxy.model_half.images[idx_a], config, gen)
        ce_b, kl_b, ce_a, acc = search_step(state, xa, proxy.model_half.labels[idx_a], xb,
                                            proxy.policy_half.labels[idx_b], gen)
        for key, value in (("policy_ce", ce_b), ("policy_kl", kl_b),
                           ("model_ce", ce_a), ("model_acc", acc)):
            sums[key] += value
        bar.update(1)
        bar.set_postfix(epoch=state.epoch + 1, policy_ce=f"{ce_b:.3f}", kl=f"{kl_b:.3f}",
                        model_ce=f"{ce_a:.3f}", refresh=False)
    metrics = {k: v / steps for k, v in sums.items()}
    metrics["lr"] = state.model_opt.param_groups[0]["lr"]
    return metrics


def search_step(state: SearchState, xa: torch.Tensor, ya: torch.Tensor, xb: torch.Tensor,
                yb: torch.Tensor, generator: torch.Generator) -> tuple[float, float, float, float]:
    """One bi-level step: a policy step on ``(xb, yb)``, then a model step on ``(xa, ya)``.

    Args:
        state: the search state (model, policy, optimisers, configuration).
        xa, ya: model-half batch (float [0, 1] images after crop/flip) and labels.
        xb, yb: policy-half batch and labels.
        generator: random generator of the augmentation draws.

    Returns:
        ``(policy CE, policy KL, model CE, model accuracy)`` of the batch.
    """
    config, device = state.config, state.device
    xb, yb = xb.to(device), yb.to(device)
    ce_b = kl_b = 0.0
    if state.policy_opt is not None:
        with torch.no_grad():
            clean = state.model(_normalize(xb, state))
        augmented = state.policy(xb, generator)
        if config.cutout > 0 and config.cutout_policy_step:
            augmented = _cutout(augmented, config.cutout, generator)
        logits = state.model(_normalize(augmented, state))
        ce = F.cross_entropy(logits, yb)
        kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(clean, dim=1),
                      reduction="batchmean", log_target=True)
        loss = ce + config.kl_weight * kl if config.kl_weight > 0 else ce
        # Gradient with respect to the policy only: the model's weight gradients are not needed.
        grads = torch.autograd.grad(loss, state.policy_params, allow_unused=True)
        for p, g in zip(state.policy_params, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        state.policy_opt.step()
        state.policy.clip_()
        ce_b, kl_b = float(ce.detach()), float(kl.detach())
    with torch.no_grad():
        xa = state.policy(xa.to(device), generator)
    if config.cutout > 0:
        xa = _cutout(xa, config.cutout, generator)
    ya = ya.to(device)
    logits = state.model(_normalize(xa, state))
    ce_a = F.cross_entropy(logits, ya)
    state.model_opt.zero_grad(set_to_none=True)
    ce_a.backward()
    if config.grad_clip > 0:
        nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
    state.model_opt.step()
    state.schedule.step()
    acc = float((logits.argmax(1) == ya).float().mean())
    return ce_b, kl_b, float(ce_a.detach()), acc


def _write_history(out: Path, history: list[dict[str, Any]]) -> None:
    _atomic_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))


def _write_plots(out: Path, history: list[dict[str, Any]], policy: Policy) -> None:
    from dra_dali.search.plots import plot_trajectories
    from dra_dali.viz import plot_policy

    plot_trajectories(history, policy.ops, out / "trajectories.png")
    plot_policy(policy, out / "policy.png", title="searched DRA policy")
