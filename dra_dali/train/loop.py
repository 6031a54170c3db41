"""The training loop: DALI-fed, single process or DDP under ``torchrun``, resumable."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn

from dra_dali.policy import Policy, PolicyError
from dra_dali.train.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dra_dali.train.config import TrainConfig, TrainError
from dra_dali.train.distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    init_distributed,
)
from dra_dali.train.optim import build_optimizer, build_scheduler

__all__ = ["TrainResult", "Loaders", "train", "resolve_policy", "RUN_FILES", "INTERRUPTED_EXIT"]

#: Files a run directory holds (written by rank 0).
RUN_FILES = {"config": "config.json", "policy": "policy.yaml", "metrics": "metrics.jsonl",
             "checkpoint": CHECKPOINT_NAME, "summary": "summary.json"}
#: Exit status of ``dra-dali train`` after SIGTERM (checkpoint saved): 128 + SIGTERM, as a shell
#: reports a process ended by that signal, so job schedulers still see the run as unfinished.
INTERRUPTED_EXIT = 128 + signal.SIGTERM
#: Steps between progress-bar updates and, with several processes, between SIGTERM agreements.
_SYNC_EVERY = 10


class Loaders(Protocol):
    """What the loop needs from the data side (the DALI loaders implement it).

    ``train(epoch)`` returns an iterable of ``(images NCHW float, labels int64)`` for that epoch
    (this process's shard, deterministic given the seed and the epoch, with ``len()``);
    ``val()`` the validation batches (this process's shard); ``classes`` the class names by
    label and ``num_classes`` their count.
    """

    num_classes: int
    classes: tuple[str, ...]

    def train(self, epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...

    def val(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        out: the run directory.
        finished: False when the run stopped on SIGTERM (a checkpoint was saved).
        epoch: epochs completed.
        metrics: the per-epoch metric records (also in ``metrics.jsonl``), this session's and
            earlier ones kept from before a resume.
        wall_seconds: time spent in this call.
    """

    out: Path
    finished: bool
    epoch: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's metrics (empty if no epoch completed)."""
        return self.metrics[-1] if self.metrics else {}


def resolve_policy(spec: str | Path | Policy | None,
                   resolution: int | None = None) -> Policy | None:
    """Turn ``--policy`` into a policy: a :class:`Policy`, a YAML file, a preset name, or
    ``"none"`` / ``None`` for no augmentation.

    Args:
        spec: the policy, a file path, a preset name or ``"none"``.
        resolution: for a preset name, the training image side: the preset's ``resolution``
            (which sets the translate range) is set to it, so ``ra-n2-m9`` at 32 px translates by
            up to 10 px as RandAugment does on CIFAR, not by the 100 px of 224 px images. Files
            and :class:`Policy` objects are used as they are.

    Raises:
        TrainError: the file is invalid or the name is neither a file nor a preset.

    Example:
        >>> resolve_policy("ra-n2-m9", resolution=32).resolution, resolve_policy("none")
        (32, None)
    """
    if spec is None or isinstance(spec, Policy):
        return spec
    text = str(spec)
    if text.lower() == "none":
        return None
    path = Path(text)
    if path.exists():
        try:
            return Policy.load(path)
        except PolicyError as exc:
            raise TrainError(f"invalid policy: {exc}") from None
    try:
        policy = Policy.preset(text)
    except PolicyError as exc:
        raise TrainError(f"--policy {text!r} is not a file and not a preset ({exc}); pass a "
                         "policy YAML file, a preset name, or 'none'") from None
    if resolution is not None and resolution != policy.resolution:
        policy = dataclasses.replace(policy, resolution=resolution)
    return policy


def _policy_hash(policy: Policy | None) -> str:
    return policy.sha256() if policy is not None else "none"


def _check_run_dir(out: Path, resume: bool, force: bool) -> bool:
    """Refuse to overwrite a run silently. Returns whether the previous run's files must be
    cleared (``force`` without ``resume``); the caller clears them only once every other check
    has passed, so a refused command loses nothing."""
    summary, checkpoint = out / RUN_FILES["summary"], out / RUN_FILES["checkpoint"]
    if resume:
        if not checkpoint.is_file():
            raise TrainError(f"--resume: no checkpoint {checkpoint}; start a new run without "
                             "--resume (or point --out at the run to continue)")
        if summary.is_file() and not force:
            raise TrainError(f"{out} holds a finished run ({summary}); nothing to resume. Raise "
                             "--epochs and pass --force with --resume to train further")
        return False
    if summary.is_file() or checkpoint.is_file():
        if not force:
            found = summary if summary.is_file() else checkpoint
            what = "a finished run" if summary.is_file() else "an unfinished run"
            raise TrainError(f"{out} already holds {what} ({found}); pass --resume to continue "
                             "it, --force to overwrite it, or choose another --out (nothing was "
                             "changed)")
        return True
    return False


def _clear_run_dir(out: Path) -> None:
    for name in ("summary", "checkpoint", "metrics", "policy"):
        (out / RUN_FILES[name]).unlink(missing_ok=True)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)


class _StopFlag:
    """Set by SIGTERM; the loop checks it between steps (signals are handled in the main thread)."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> "_StopFlag":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    top = logits.topk(max(ks), dim=1).indices
    hits = top == labels[:, None]
    return torch.stack([hits[:, :k].any(dim=1).sum() for k in ks])


def _evaluate(model: nn.Module, batches: Iterable, info: DistInfo, amp_dtype: torch.dtype | None,
              channels_last: bool, num_classes: int) -> dict[str, float]:
    model.eval()
    k5 = min(5, num_classes)
    # loss sum, top-1, top-5, count; kept on the device so that batches do not wait for it
    totals = torch.zeros(4, dtype=torch.float64, device=info.device)
    with torch.no_grad():
        for images, labels in batches:
            images, labels = _to_device(images, labels, info.device, channels_last)
            with _autocast(info.device, amp_dtype):
                logits = model(images)
            loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            totals[0] += loss.double()
            totals[1:3] += _topk_correct(logits, labels, (1, k5))
            totals[3] += labels.numel()
    loss_sum, top1, top5, count = all_reduce_sum(totals.tolist(), info.device)
    if count == 0:
        raise TrainError("the validation set produced no batches")
    return {"val_loss": loss_sum / count, "val_top1": top1 / count, "val_top5": top5 / count,
            "val_images": int(count)}


def _to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True).long().view(-1)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Writer:
    """metrics.jsonl (append, one JSON object per line) and TensorBoard when installed."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.path = out / RUN_FILES["metrics"]
        self.enabled = enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # TensorBoard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(out / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.tb.add_scalar(key, value, record["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _read_metrics(path: Path, before_epoch: int) -> list[dict[str, Any]]:
    """Earlier records of a resumed run; records past the checkpoint (written after it, before
    an interruption) are dropped because those epochs run again."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("epoch", 0) <= before_epoch]


def train(config: TrainConfig, *, resume: bool = False, force: bool = False,
          loaders: Loaders | None = None, progress: bool = True,
          log: Callable[[str], None] | None = None,
          batch_hook: Callable[[int, int, torch.Tensor], None] | None = None) -> TrainResult:
    """Train ``config.model`` on ``config.data`` with ``config.policy``; evaluate on
    ``config.val_data`` after every epoch.

    Under ``torchrun`` each process joins the group (gloo on CPU, NCCL on CUDA), reads its
    shard, runs the same number of steps as the others (a process whose shard ran out takes a
    zero-weighted step so DDP stays in step), and rank 0 writes the run directory: the resolved
    ``config.json``, ``policy.yaml``, ``metrics.jsonl`` (one JSON object per epoch, metrics
    reduced over all processes), ``checkpoint.pt`` after every epoch, and ``summary.json`` once
    the run has finished. SIGTERM stops at the next step boundary, saves a checkpoint holding
    the position inside the epoch, and returns ``finished=False``.

    Args:
        config: the run's configuration.
        resume: continue from ``out/checkpoint.pt``; refuses a checkpoint made with another
            policy, model or class list.
        force: start over in a directory that holds a run (deletes its checkpoint, metrics and
            summary), or, with ``resume``, continue a finished run for more epochs.
        loaders: the data source; default: DALI loaders built from the config
            (:class:`dra_dali.train.data.DaliLoaders`).
        progress: show a tqdm progress bar (rank 0) with loss and images/s.
        log: receives one line per epoch and notices, on rank 0 only; default: silent.
        batch_hook: called as ``hook(epoch, step, labels)`` with every training batch's labels
            before the step, on every process (for checks and custom logging).

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainError: bad input (data, policy, model, run directory, checkpoint), named.

    Example:
        >>> from dra_dali.data import embedded_dataset
        >>> ds = embedded_dataset()
        >>> result = train(TrainConfig(data=str(ds.train), val_data=str(ds.val), out="runs/x",
        ...                            epochs=1), force=True)  # doctest: +SKIP
        >>> result.final["val_top1"]  # doctest: +SKIP
        0.61
    """
    from dra_dali.models import UnknownModelError, create_model

    started = time.perf_counter()
    info = init_distributed(config.device)
    say = log if (log is not None and info.is_main) else (lambda message: None)
    try:
        policy = resolve_policy(config.policy, _recipe_size(config.pipeline))
        out = Path(config.out)
        clear = _check_run_dir(out, resume, force)

        if loaders is None:
            from dra_dali.train.data import DaliLoaders

            loaders = DaliLoaders(config, policy, info)
        # Same initial weights on every process (DDP also broadcasts rank 0's at wrap time).
        torch.manual_seed(config.seed)
        try:
            model = create_model(config.model, num_classes=loaders.num_classes).to(info.device)
        except UnknownModelError as exc:
            raise TrainError(str(exc)) from None
        on_cuda = info.device.type == "cuda"
        if on_cuda:
            model = model.to(memory_format=torch.channels_last)
        amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) \
            if (on_cuda and config.amp) else None
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        net: nn.Module = model
        if info.world > 1:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[info.local_rank] if on_cuda else None)

        steps_per_epoch = _steps_in(loaders.train(0), config, info)
        total_steps = steps_per_epoch * config.epochs
        peak_lr = config.peak_lr(info.world)
        optimizer = build_optimizer(model, peak_lr, config.momentum, config.weight_decay)
        scheduler = build_scheduler(optimizer, total_steps,
                                    int(round(config.warmup_epochs * steps_per_epoch)))
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

        start_epoch, start_step, history = 0, 0, []
        resumed_sums = [0.0, 0.0, 0.0]
        if resume:
            state = _load_for_resume(out, config, policy, loaders, info)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scheduler.lr_lambdas[0].total_steps = total_steps  # --epochs may have grown
            scaler.load_state_dict(state["scaler"])
            mine = state["per_rank"][min(info.rank, len(state["per_rank"]) - 1)]
            set_rng_state(mine["rng"])
            start_epoch, start_step = int(state["epoch"]), int(state["step_in_epoch"])
            resumed_sums = [float(v) for v in mine["sums"]] if start_step else [0.0, 0.0, 0.0]
            history = _read_metrics(out / RUN_FILES["metrics"], start_epoch)
            say(f"resuming {out} at epoch {start_epoch + 1}, step {start_step}")

        if info.is_main:
            if clear:
                _clear_run_dir(out)
            out.mkdir(parents=True, exist_ok=True)
        barrier()
        writer = _Writer(out, info.is_main)
        if info.is_main:
            if resume:  # rewrite the kept records: drops those of epochs that run again
                (out / RUN_FILES["metrics"]).write_text(
                    "".join(json.dumps(r) + "\n" for r in history))
            resolved = {**config.to_dict(), "lr": peak_lr, "world_size": info.world,
                        "global_batch_size": config.batch_size * info.world,
                        "steps_per_epoch": steps_per_epoch, "classes": list(loaders.classes),
                        "policy_sha256": _policy_hash(policy), "device": str(info.device),
                        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off"}
            (out / RUN_FILES["config"]).write_text(json.dumps(resolved, indent=2) + "\n")
            if policy is not None:
                policy.save(out / RUN_FILES["policy"])

        def checkpoint(epoch: int, step_in_epoch: int, sums: list[float]) -> None:
            # Per process: RNG states and the running sums of an unfinished epoch.
            mine = {"rng": rng_state(), "sums": list(sums)}
            per_rank = [mine]
            if info.world > 1:
                per_rank = [None] * info.world
                torch.distributed.all_gather_object(per_rank, mine)
            if info.is_main:
                save_checkpoint(out / RUN_FILES["checkpoint"], {
                    "format": "dra-dali-checkpoint/1", "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch,
                    "global_step": epoch * steps_per_epoch + step_in_epoch,
                    "per_rank": per_rank,
                    "config": config.to_dict(), "model_name": config.model,
                    "classes": list(loaders.classes), "policy_sha256": _policy_hash(policy)})
            barrier()

        with _StopFlag() as stop:
            for epoch in range(start_epoch, config.epochs):
                net.train()
                batches = loaders.train(epoch)
                steps = _steps_in(batches, config, info)
                iterator = iter(batches)
                for _ in range(start_step):  # mid-epoch resume: replay the data stream
                    next(iterator)
                bar = _progress_bar(progress and info.is_main, steps, start_step, epoch, config)
                # loss sum, top-1 hits, images (restored mid-epoch), kept on the device so that
                # steps do not wait for the accelerator
                sums = torch.tensor(resumed_sums, dtype=torch.float64, device=info.device)
                resumed_sums = [0.0, 0.0, 0.0]
                fresh = 0  # images trained in this call (for the throughput)
                last: tuple[torch.Tensor, torch.Tensor] | None = None
                t0 = time.perf_counter()
                for step in range(start_step, steps):
                    batch = next(iterator, None)
                    weight = 1.0
                    if batch is None:
                        # This shard ran out before the others: take a zero-weighted step on the
                        # previous batch so every process runs the same steps (DDP stays in step).
                        batch, weight = last, 0.0
                    last = batch
                    images, labels = _to_device(*batch, info.device, on_cuda)
                    if batch_hook is not None and weight:
                        batch_hook(epoch, step, labels)
                    with _autocast(info.device, amp_dtype):
                        logits = net(images)
                        loss = criterion(logits.float(), labels)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss * weight).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    if weight:
                        n = labels.numel()
                        sums[0] += loss.detach().double() * n
                        sums[1] += (logits.detach().argmax(dim=1) == labels).sum()
                        sums[2] += n
                        fresh += n
                    boundary = (step + 1) % _SYNC_EVERY == 0 or step + 1 == steps
                    if bar is not None:
                        if boundary:
                            elapsed = time.perf_counter() - t0
                            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", img_s=
                                            f"{fresh * info.world / max(elapsed, 1e-9):.0f}")
                        bar.update(1)
                    # One process checks its own flag every step; several agree on it every
                    # _SYNC_EVERY steps (and at the end of the epoch), all at the same step.
                    if info.world == 1:
                        stopping = stop.raised
                    else:
                        stopping = boundary and all_reduce_max([float(stop.raised)],
                                                               info.device)[0] > 0
                    if stopping:
                        if bar is not None:
                            bar.close()
                        checkpoint(epoch, step + 1, sums.tolist())
                        say(f"SIGTERM: checkpoint saved at epoch {epoch + 1}, step {step + 1} "
                            f"in {out / RUN_FILES['checkpoint']}; continue with --resume")
                        writer.close()
                        return TrainResult(out, False, epoch, history,
                                           time.perf_counter() - started)
                if bar is not None:
                    bar.close()
                train_seconds = time.perf_counter() - t0
                loss_sum, top1, seen = all_reduce_sum(sums.tolist(), info.device)
                record: dict[str, Any] = {
                    "epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch,
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": loss_sum / max(seen, 1), "train_top1": top1 / max(seen, 1),
                    "train_images": int(seen),
                    "images_per_s": (seen / max(train_seconds, 1e-9)) if start_step == 0 else None,
                    "train_seconds": train_seconds}
                record.update(_evaluate(net, loaders.val(), info, amp_dtype, on_cuda,
                                        loaders.num_classes))
                record["epoch_seconds"] = time.perf_counter() - t0
                start_step = 0
                history.append(record)
                writer.write(record)
                checkpoint(epoch + 1, 0, [0.0, 0.0, 0.0])
                rate = (f", {record['images_per_s']:.0f} images/s"
                        if record["images_per_s"] is not None else "")
                say(f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.3f}, "
                    f"val top-1 {100 * record['val_top1']:.1f} %, top-5 "
                    f"{100 * record['val_top5']:.1f} %, val loss {record['val_loss']:.3f}{rate}")
        writer.close()
        if info.is_main:
            summary = {"finished": True, "epochs": config.epochs, **(history[-1] if history else {}),
                       "wall_seconds_last_session": time.perf_counter() - started}
            (out / RUN_FILES["summary"]).write_text(json.dumps(summary, indent=2) + "\n")
        barrier()
        return TrainResult(out, True, config.epochs, history, time.perf_counter() - started)
    finally:
        if info.initialized_here:
            torch.distributed.destroy_process_group()


def _steps_in(batches: Any, config: TrainConfig, info: DistInfo) -> int:
    try:
        mine = len(batches)
    except TypeError:
        raise TrainError("the training loader has no len(); it must know its batches per epoch") \
            from None
    steps = int(all_reduce_max([float(mine)], info.device)[0])
    if steps == 0:
        raise TrainError(f"{config.data}: the training set produced no batches")
    return min(steps, config.max_steps) if config.max_steps else steps


def _progress_bar(enabled: bool, steps: int, initial: int, epoch: int, config: TrainConfig):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=initial, desc=f"epoch {epoch + 1}/{config.epochs}",
                unit="step", leave=False, dynamic_ncols=True)


def _load_for_resume(out: Path, config: TrainConfig, policy: Policy | None, loaders: Loaders,
                     info: DistInfo) -> dict[str, Any]:
    path = out / RUN_FILES["checkpoint"]
    try:
        # On the CPU: RNG states must be CPU tensors; load_state_dict moves the rest.
        state = load_checkpoint(path, map_location="cpu")
    except (FileNotFoundError, RuntimeError) as exc:
        raise TrainError(str(exc)) from None
    if state.get("format") != "dra-dali-checkpoint/1":
        raise TrainError(f"{path}: not a dra-dali training checkpoint")
    if state["policy_sha256"] != _policy_hash(policy):
        raise TrainError(f"{path} was made with another policy (sha256 "
                         f"{state['policy_sha256'][:12]}…, this run's: "
                         f"{_policy_hash(policy)[:12]}…, {config.policy}); resume with the same "
                         "--policy, or start a new run with another --out")
    if state["model_name"] != config.model:
        raise TrainError(f"{path} was made with model {state['model_name']!r}, not "
                         f"{config.model!r}; resume with --model {state['model_name']}")
    if list(state["classes"]) != list(loaders.classes):
        raise TrainError(f"{path} was made with classes {state['classes']}, the data now has "
                         f"{list(loaders.classes)}")
    if int(state["epoch"]) >= config.epochs:
        raise TrainError(f"{path} has already trained {state['epoch']} epochs; raise --epochs "
                         "beyond that to train further")
    saved = state["config"]
    for key in ("batch_size", "seed"):
        if saved.get(key) != getattr(config, key):
            raise TrainError(f"{path} was made with {key}={saved.get(key)}, this run asks for "
                             f"{getattr(config, key)}; resume with the same value")
    return state



def _recipe_size(pipeline: str) -> int:
    from dra_dali.dali.pipelines import RecipeError, load_recipe

    try:
        return load_recipe(pipeline).size
    except RecipeError as exc:
        raise TrainError(f"--pipeline: {exc}") from None
