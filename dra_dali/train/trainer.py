"""The training run: a :class:`Trainer` with ``setup``, ``resume``, ``run_epoch``, ``evaluate`` and
``save``, fed by the DALI loaders, single process or DDP under ``torchrun``, on the runtime layer
(:class:`~dra_dali.runtime.RunDir`, :class:`~dra_dali.runtime.StopSignals`)."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from dra_dali.data import EXCLUDED_FILE, FileGuard, Problem, excluded_text, read_excluded
from dra_dali.errors import DraDaliError
from dra_dali.policy import Policy
from dra_dali.runtime import RunDir, StopSignals, load_checkpoint, rng_state, set_rng_state
from dra_dali.runtime import save_checkpoint as save_weights
from dra_dali.runtime.signals import SIGTERM_EXIT
from dra_dali.train.config import TrainConfig, TrainError
from dra_dali.train.distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    init_distributed,
)
from dra_dali.train.optim import build_optimizer, build_scheduler

__all__ = ["Trainer", "TrainResult", "train", "RUN_FILES", "INTERRUPTED_EXIT"]

#: Files a run directory holds (written by rank 0).
RUN_FILES = {"config": "config.yaml", "policy": "policy.yaml", "metrics": "metrics.jsonl",
             "checkpoint": "checkpoint.pt", "best": "best.pt", "model": "model.pt",
             "summary": "summary.json"}
#: Exit status of ``dra-dali train`` after SIGTERM (checkpoint saved), 130 after Ctrl-C.
INTERRUPTED_EXIT = SIGTERM_EXIT
#: Settings that may change on resume without changing results.
_NO_EFFECT = ("threads", "device", "out")
#: Steps between progress-bar updates and, with several processes, between stop agreements.
_SYNC_EVERY = 10
_FORMAT = "dra-dali-checkpoint/2"


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        out: the run directory.
        finished: False when the run stopped on SIGTERM / Ctrl-C (a checkpoint was saved).
        epoch: epochs completed.
        metrics: the per-epoch records (also in ``metrics.jsonl``), earlier sessions' included.
        wall_seconds: time spent in this call.
        exit_code: 143 (SIGTERM) or 130 (Ctrl-C) when not finished, else 0.
    """

    out: Path
    finished: bool
    epoch: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0
    exit_code: int = 0

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's metrics (empty if no epoch completed)."""
        return self.metrics[-1] if self.metrics else {}


def _policy_hash(policy: Policy | None) -> str:
    return policy.sha256() if policy is not None else "none"


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    top = logits.topk(max(ks), dim=1).indices
    hits = top == labels[:, None]
    return torch.stack([hits[:, :k].any(dim=1).sum() for k in ks])


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


def evaluate(model: nn.Module, batches: Iterable, info: DistInfo, amp_dtype: torch.dtype | None,
             channels_last: bool, num_classes: int) -> dict[str, float]:
    """Validation loss, top-1 and top-5 over all processes' batches."""
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
        raise TrainError("val_data: the validation set produced no batches")
    return {"val_loss": loss_sum / count, "val_top1": top1 / count, "val_top5": top5 / count,
            "val_images": int(count)}


def _guarded(batches: Iterable, guard: FileGuard) -> Iterator:
    """``batches``, with a decoder failure raised as the guard's error naming the files."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except RuntimeError as exc:
            error = guard.failure(exc)
            break
        yield batch
    raise error  # outside the handler: no __context__ keeping the failed pipeline alive


class Trainer:
    """One training run. :meth:`fit` is the whole run; the steps are public for trainers that
    subclass it (a custom ``run_epoch``, another ``evaluate``).

    Args:
        config: the run's configuration.
        loaders: the data side (default :class:`dra_dali.train.data.DaliLoaders`): ``train(epoch)``
            returns the epoch's batches, ``val()`` the validation batches, ``classes`` and
            ``num_classes``; ``state_dict()`` / ``load_state_dict()`` of the training loader's
            position (for an exact mid-epoch resume).
        progress: a tqdm bar (rank 0) with loss and images/s.
        log: receives one line per epoch and notices, on rank 0 only.
        batch_hook: ``hook(epoch, step, labels)`` before every training step, on every process.
    """

    def __init__(self, config: TrainConfig, *, loaders: Any = None, progress: bool = True,
                 log: Callable[[str], None] | None = None,
                 batch_hook: Callable[[int, int, torch.Tensor], None] | None = None) -> None:
        self.config, self.loaders, self.progress = config, loaders, progress
        self.batch_hook = batch_hook
        self._log = log
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.start_step = 0, 0
        self.best_top1 = float("-inf")
        self._resumed_sums = [0.0, 0.0, 0.0]
        self._excluded_before: tuple[Problem, ...] | None = None

    def say(self, line: str) -> None:
        if self._log is not None and self.info.is_main:
            self._log(line)

    # ----- setup --------------------------------------------------------------------------------
    def setup(self) -> None:
        """Process group, policy, loaders, model, optimiser, schedule, loss."""
        from dra_dali.dali.loader import dali_placement
        from dra_dali.dali.pipelines import load_recipe, resolve_policy
        from dra_dali.models import create_model

        config = self.config
        self.info = info = init_distributed(config.device)
        dali_placement(str(info.device))  # one vocabulary: the loaders follow the torch device
        recipe = load_recipe(config.pipeline)
        self.policy = resolve_policy(config.policy, recipe.resolution)
        if self.loaders is None:
            from dra_dali.train.data import DaliLoaders

            self.loaders = DaliLoaders(config, self.policy, info, recipe,
                                       excluded_before=self._excluded_before)
        self.files, self.val_files = self._guard("train_images"), self._guard("val_images")
        torch.manual_seed(config.seed)  # same initial weights on every process
        self.model = create_model(config.model, num_classes=self.loaders.num_classes)
        self.model = self.model.to(info.device)
        self.on_cuda = info.device.type == "cuda"
        if self.on_cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) \
            if (self.on_cuda and config.amp) else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.net: nn.Module = self.model
        if info.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[info.local_rank] if self.on_cuda else None)
        self.steps_per_epoch = self._steps()
        self.peak_lr = config.peak_lr(info.world)
        self.optimizer = build_optimizer(self.model, self.peak_lr, config.momentum,
                                         config.weight_decay)
        self.scheduler = build_scheduler(
            self.optimizer, self.steps_per_epoch * config.epochs,
            int(round(config.warmup_epochs * self.steps_per_epoch)), config.warmup_start)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def _guard(self, files: str) -> FileGuard | None:
        """The guard of the loaders' ``files`` (``train_images``, ``val_images``; ``None`` for
        loaders that do not list their files)."""
        images = getattr(self.loaders, files, None)
        return None if images is None else FileGuard(
            images, f"the last checkpoint in {self.config.out} is kept; fix or remove the "
                    "file(s), then continue with resume")

    def _steps(self) -> int:
        try:
            mine = len(self.loaders.train(0))
        except TypeError:
            raise TrainError("data: the training loader has no len(); it must know its batches "
                             "per epoch") from None
        steps = int(all_reduce_max([float(mine)], self.info.device)[0])
        if steps == 0:
            raise TrainError(f"data: {self.config.data}: the training set produced no batches")
        return min(steps, self.config.max_steps) if self.config.max_steps else steps

    # ----- resume -------------------------------------------------------------------------------
    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint of this run: weights, optimiser, schedule, scaler, RNG and
        the training loader's position (DALI's checkpoint: the exact next batch)."""
        self._check_resumable(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.lr_lambdas[0].total_steps = self.steps_per_epoch * self.config.epochs
        self.scaler.load_state_dict(state["scaler"])
        mine = state["per_rank"][min(self.info.rank, len(state["per_rank"]) - 1)]
        set_rng_state(mine["rng"])
        self.loaders.load_state_dict(mine["loader"])
        self.start_epoch, self.start_step = int(state["epoch"]), int(state["step_in_epoch"])
        self._resumed_sums = [float(v) for v in mine["sums"]]
        self.best_top1 = float(state.get("best_val_top1", float("-inf")))
        self.say(f"resuming {self.config.out} at epoch {self.start_epoch + 1}, step "
                 f"{self.start_step}")

    def _check_resumable(self, state: dict[str, Any]) -> None:
        path = Path(self.config.out) / RUN_FILES["checkpoint"]
        if state.get("format") != _FORMAT:
            raise TrainError(f"{path}: not a training checkpoint of this version ({_FORMAT})")
        if state["policy_sha256"] != _policy_hash(self.policy):
            raise TrainError(f"{path} was made with another policy (sha256 "
                             f"{state['policy_sha256'][:12]}…, this run's: "
                             f"{_policy_hash(self.policy)[:12]}…, {self.config.policy}); resume "
                             "with the same policy, or start a new run in another folder")
        if list(state["classes"]) != list(self.loaders.classes):
            raise TrainError(f"{path} was made with classes {state['classes']}, the data now has "
                             f"{list(self.loaders.classes)}")
        if int(state["epoch"]) >= self.config.epochs:
            raise TrainError(f"{path} has already trained {state['epoch']} epochs; raise epochs "
                             "beyond that to train further")

    # ----- one epoch ----------------------------------------------------------------------
    def _batches(self, epoch: int) -> Iterator[tuple[int, Any, float]]:
        """The epoch's training batches from ``start_step`` on: ``(step, batch, weight)``. The one
        place where the loop fetches data. A process whose shard ran out before the others gets
        its previous batch again with weight 0, so every process takes the same steps (DDP)."""
        if self.files is not None:
            self.files.check_epoch_start()  # a replaced, broken file is named before DALI reads it
        iterator = iter(self.loaders.train(epoch))
        last = None
        for step in range(self.start_step, self.steps_per_epoch):
            batch, weight = self._next(iterator, epoch, step), 1.0
            if batch is None:
                batch, weight = last, 0.0
            last = batch
            yield step, batch, weight

    def _next(self, iterator: Iterator[Any], epoch: int, step: int) -> Any:
        try:
            return next(iterator, None)
        except RuntimeError as exc:  # a DALI decoder failure names no file: name it
            if self.files is None:
                raise
            error = self.files.failure(exc, self._keep_position(epoch, step))
        raise error  # outside the handler: no __context__ keeping the failed pipeline alive

    def _keep_position(self, epoch: int, step: int) -> str | None:
        """After a decoder failure while fetching ``step``: save the checkpoint of the steps
        done (DALI's checkpoint counts only the batches returned, not the prefetched, failed
        ones), so resuming repeats nothing; one process only (the others would wait).
        Returns what to do next, or ``None`` when the last checkpoint stays the one to use."""
        if self.info.world > 1 or step == self.start_step:
            return None
        try:
            self.save(epoch, step, self._sums.tolist())
        except (RuntimeError, ValueError):  # the failed pipeline gave no checkpoint
            return None
        return (f"a checkpoint at epoch {epoch + 1}, step {step} of {self.steps_per_epoch} is "
                f"saved in {self.run.checkpoint_path}; fix or remove the file(s), then continue "
                "with resume")

    def _step(self, images: torch.Tensor, labels: torch.Tensor, weight: float,
              sums: torch.Tensor) -> torch.Tensor:
        with _autocast(self.info.device, self.amp_dtype):
            logits = self.net(images)
            loss = self.criterion(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * weight).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if weight:
            n = labels.numel()
            sums[0] += loss.detach().double() * n
            sums[1] += (logits.detach().argmax(dim=1) == labels).sum()
            sums[2] += n
        return loss

    def run_epoch(self, epoch: int, stop: StopSignals) -> dict[str, Any] | None:
        """Train one epoch (from ``start_step`` when resumed). Returns its training metrics, or
        ``None`` when a stop signal arrived (a checkpoint inside the epoch has been saved)."""
        self.net.train()
        bar = self._progress_bar(epoch)
        # loss sum, top-1 hits, images (restored mid-epoch), kept on the device
        sums = torch.tensor(self._resumed_sums, dtype=torch.float64, device=self.info.device)
        self._sums, self._resumed_sums = sums, [0.0, 0.0, 0.0]   # _sums: for _keep_position
        fresh, t0 = 0, time.perf_counter()
        for step, batch, weight in self._batches(epoch):
            images, labels = _to_device(*batch, self.info.device, self.on_cuda)
            if self.batch_hook is not None and weight:
                self.batch_hook(epoch, step, labels)
            loss = self._step(images, labels, weight, sums)
            fresh += labels.numel() if weight else 0
            boundary = (step + 1) % _SYNC_EVERY == 0 or step + 1 == self.steps_per_epoch
            if bar is not None:
                if boundary:
                    rate = fresh * self.info.world / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}", img_s=f"{rate:.0f}")
                bar.update(1)
            if self._stopping(stop, boundary):
                if bar is not None:
                    bar.close()
                self.save(epoch, step + 1, sums.tolist())
                return None
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        loss_sum, top1, seen = all_reduce_sum(sums.tolist(), self.info.device)
        return {"epoch": epoch + 1, "step": (epoch + 1) * self.steps_per_epoch,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": loss_sum / max(seen, 1), "train_top1": top1 / max(seen, 1),
                "train_images": int(seen),
                "images_per_s": (seen / max(seconds, 1e-9)) if self.start_step == 0 else None,
                "train_seconds": seconds}

    def _stopping(self, stop: StopSignals, boundary: bool) -> bool:
        # One process checks its own flag every step; several agree every _SYNC_EVERY steps.
        if self.info.world == 1:
            return stop.requested
        return boundary and all_reduce_max([float(stop.requested)], self.info.device)[0] > 0

    def _progress_bar(self, epoch: int):
        if not (self.progress and self.info.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.steps_per_epoch, initial=self.start_step,
                    desc=f"epoch {epoch + 1}/{self.config.epochs}", unit="step", leave=False,
                    dynamic_ncols=True)

    def evaluate(self) -> dict[str, float]:
        """Validation loss, top-1 and top-5 on the whole validation set (all processes)."""
        batches = self.loaders.val()
        if self.val_files is not None:
            self.val_files.check_epoch_start()
            batches = _guarded(batches, self.val_files)
        return evaluate(self.net, batches, self.info, self.amp_dtype, self.on_cuda,
                        self.loaders.num_classes)

    # ----- save ---------------------------------------------------------------------------
    def save(self, epoch: int, step_in_epoch: int, sums: list[float]) -> None:
        """``checkpoint.pt``: everything to continue exactly (every process's RNG states, running
        sums and loader position are gathered to rank 0)."""
        mine = {"rng": rng_state(), "sums": list(sums), "loader": self.loaders.state_dict()}
        per_rank = [mine]
        if self.info.world > 1:
            per_rank = [None] * self.info.world
            torch.distributed.all_gather_object(per_rank, mine)
        if self.info.is_main:
            self.run.save_checkpoint({
                "format": _FORMAT, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": epoch, "step_in_epoch": step_in_epoch,
                "global_step": epoch * self.steps_per_epoch + step_in_epoch,
                "per_rank": per_rank, "best_val_top1": self.best_top1,
                "config": self.config.to_dict(), "classes": list(self.loaders.classes),
                "policy_sha256": _policy_hash(self.policy)})
        barrier()

    def _save_weights(self, name: str, record: dict[str, Any]) -> None:
        if self.info.is_main:
            save_weights(self.run.file(RUN_FILES[name]), {
                "model": self.model.state_dict(), "model_name": self.config.model,
                "classes": list(self.loaders.classes), "epoch": record["epoch"],
                "val_top1": record["val_top1"]})

    def _end_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        record.update(self.evaluate())
        record["epoch_seconds"] = time.perf_counter() - self._epoch_t0
        self.history.append(record)
        if self.info.is_main:
            self.run.metrics.append(record)      # the record first, then the checkpoint
        if record["val_top1"] > self.best_top1:
            self.best_top1 = record["val_top1"]
            self._save_weights("best", record)
        self.start_step = 0
        self.save(epoch + 1, 0, [0.0, 0.0, 0.0])
        rate = (f", {record['images_per_s']:.0f} images/s"
                if record["images_per_s"] is not None else "")
        self.say(f"epoch {epoch + 1}/{self.config.epochs}: train loss "
                 f"{record['train_loss']:.3f}, val top-1 {100 * record['val_top1']:.1f} %, "
                 f"top-5 {100 * record['val_top5']:.1f} %, val loss "
                 f"{record['val_loss']:.3f}{rate}")

    # ----- the run -------------------------------------------------------------------------------
    def fit(self, resume: bool = False, force: bool = False,
            overrides: Iterable[str] = ()) -> TrainResult:
        """Set up, open the run directory, resume if asked, train the remaining epochs."""
        started = time.perf_counter()
        try:
            if resume:  # the files excluded when the run started stay excluded
                self._excluded_before = read_excluded(self.config.out)
            self.setup()
            self.run = self._open_run(resume, force, overrides)
            try:
                if self.run.state is not None:
                    self.resume(self.run.state)
                    self.history = self.run.metrics.read()
                if self.info.is_main and self.policy is not None:
                    self.run.write(RUN_FILES["policy"], self.policy.to_yaml())
                self._list_excluded()
                return self._epochs(started)
            finally:
                self.run.__exit__(None, None, None)
        finally:
            if getattr(self, "info", None) is not None and self.info.initialized_here:
                torch.distributed.destroy_process_group()

    def _list_excluded(self) -> None:
        """A fresh run with ``skip_bad_files`` lists the files it left out in the run directory
        (a resumed run keeps the list it started with)."""
        excluded = getattr(self.loaders, "excluded", ())
        if self.info.is_main and self.config.skip_bad_files and self.run.state is None:
            self.run.write(EXCLUDED_FILE, excluded_text(excluded))
        if excluded:
            self.say(f"{len(excluded)} unusable file(s) excluded (skip_bad_files), listed in "
                     f"{Path(self.config.out) / EXCLUDED_FILE}")

    def _open_run(self, resume: bool, force: bool, overrides: Iterable[str]) -> Any:
        """Rank 0 opens the run directory (lock, refuse / resume / force rules, config.yaml);
        every process learns whether it refused, so none waits for a run that never starts."""
        error: DraDaliError | None = None
        run: Any = None
        if self.info.is_main:
            try:
                run = RunDir(self.config.out, "train", self.config.to_dict(), resume=resume,
                             force=force, overrides=[*overrides, *(["epochs"] if resume else [])],
                             ignore=_NO_EFFECT, defaults=TrainConfig.defaults()).__enter__()
            except DraDaliError as exc:
                error = exc
        refused = all_reduce_max([float(error is not None)], self.info.device)[0] > 0
        if error is not None:
            raise error
        if refused:
            raise TrainError(f"out: {self.config.out}: rank 0 refused the run directory")
        return run if run is not None else _FollowerRun(Path(self.config.out), resume)

    def _epochs(self, started: float) -> TrainResult:
        with StopSignals() as stop:
            for epoch in range(self.start_epoch, self.config.epochs):
                self._epoch_t0 = time.perf_counter()
                record = self.run_epoch(epoch, stop)
                if record is None:
                    self.say(f"stopped: checkpoint saved at epoch {epoch + 1} in "
                             f"{self.run.checkpoint_path}; continue with resume")
                    return TrainResult(Path(self.config.out), False, epoch, self.history,
                                       time.perf_counter() - started, stop.exit_code or 0)
                self._end_epoch(epoch, record)
        self._finish(started)
        return TrainResult(Path(self.config.out), True, self.config.epochs, self.history,
                           time.perf_counter() - started)

    def _finish(self, started: float) -> None:
        if self.info.is_main:
            self._save_weights("model", self.history[-1] if self.history else {
                "epoch": self.config.epochs, "val_top1": None})
            summary = {"finished": True, "epochs": self.config.epochs,
                       "world_size": self.info.world, "steps_per_epoch": self.steps_per_epoch,
                       "global_batch_size": self.config.batch_size * self.info.world,
                       "lr": self.peak_lr, "device": str(self.info.device),
                       "classes": list(self.loaders.classes),
                       "policy_sha256": _policy_hash(self.policy),
                       "best_val_top1": self.best_top1, **(self.history[-1] if self.history
                                                           else {}),
                       "wall_seconds_last_session": time.perf_counter() - started}
            self.run.write(RUN_FILES["summary"], json.dumps(summary, indent=2) + "\n")
        barrier()


class _FollowerRun:
    """What ranks other than 0 see of the run directory: the checkpoint to resume from (after
    rank 0 has checked the rules) and nothing to write."""

    def __init__(self, out: Path, resume: bool) -> None:
        self.path = out
        self.state: dict[str, Any] | None = None
        if resume:
            self.state = load_checkpoint(self.checkpoint_path)

    def __exit__(self, *exc: Any) -> None:
        return None

    @property
    def checkpoint_path(self) -> Path:
        return self.path / RUN_FILES["checkpoint"]

    @property
    def metrics(self) -> Any:
        from dra_dali.runtime import MetricsLog

        return MetricsLog(self.path / RUN_FILES["metrics"])


def train(config: TrainConfig, *, resume: bool = False, force: bool = False,
          overrides: Iterable[str] = (), loaders: Any = None, progress: bool = True,
          log: Callable[[str], None] | None = None,
          batch_hook: Callable[[int, int, torch.Tensor], None] | None = None) -> TrainResult:
    """Train ``config.model`` on ``config.data`` with ``config.policy``; evaluate on
    ``config.val_data`` after every epoch (see :class:`Trainer`).

    The run directory ``config.out`` gets ``config.yaml`` (the configuration: ``dra-dali train
    --config RUN/config.yaml`` runs it again), ``policy.yaml``, ``metrics.jsonl``,
    ``checkpoint.pt`` (the last epoch, or the step where a stop signal arrived), ``best.pt`` (the
    weights of the best validation top-1), ``model.pt`` (the final weights) and ``summary.json``.

    Args:
        config: the run's configuration.
        resume: continue from ``checkpoint.pt``, exactly (DALI's checkpoint of the loader).
        force: start over in a folder holding a run, or with ``resume`` train a finished run for
            more epochs.
        overrides: settings allowed to differ from the saved ``config.yaml`` on resume.
        loaders, progress, log, batch_hook: see :class:`Trainer`.

    Raises:
        DraDaliError: bad input (data, policy, model, run directory, checkpoint), named.

    Example:
        >>> from dra_dali.data import embedded_dataset
        >>> ds = embedded_dataset()
        >>> result = train(TrainConfig(data=str(ds.train), val_data=str(ds.val), out="runs/x",
        ...                            epochs=1), force=True)  # doctest: +SKIP
        >>> result.final["val_top1"]  # doctest: +SKIP
        0.61
    """
    trainer = Trainer(config, loaders=loaders, progress=progress, log=log, batch_hook=batch_hook)
    return trainer.fit(resume=resume, force=force, overrides=overrides)
