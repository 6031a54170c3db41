"""DALILoader in timm's training loop, with Mixup and CutMix.

timm's ``train.py`` (``train_one_epoch``, ``validate``) is a script of its repository, in neither
its wheel nor its sdist, so it cannot be imported. This test runs the same per-epoch contract with
the timm library parts that script uses, in its order: ``dataset.set_epoch(epoch)`` before each
epoch; ``len(loader)`` for the updates per epoch and the last batch; ``mixup_fn(input, target)``
(timm's ``Mixup`` with Mixup and CutMix, which asserts an even batch: hence ``drop_last``); the
loss through ``timm.task.ClassificationTask`` with ``SoftTargetCrossEntropy``; the optimiser and
scheduler from ``create_optimizer_v2`` / ``create_scheduler_v2`` (``step_update`` per step,
``step`` per epoch); ``validate`` with ``timm.utils.accuracy`` and ``AverageMeter``.

timm needs torchvision, and PyPI's torchvision does not load beside this project's CPU build of
torch, so the default environment skips this file; ``.ci/timm`` runs it in an environment of its
own (a matching torch/torchvision pair).

Opt-in: with ``DRA_DALI_TIMM_TRAIN_PY`` set to a checkout's ``train.py``, a second test runs that
script's own ``main()`` (its ``train_one_epoch``, ``validate``, ``_set_loader_epoch``, Mixup and
CutMix, scheduler and checkpoint saver) with ``DALILoader`` returned where it calls
``create_loader``; nothing of the script is copied here.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections import defaultdict

import pytest
import torch
from integration_common import BATCH, assert_each_sample_once, indexed_train, small_policy

from dra_dali.dali import DALILoader
from dra_dali.data import ImageList, scan_images

timm = pytest.importorskip("timm", exc_type=ImportError)
from timm.data import Mixup  # noqa: E402
from timm.loss import SoftTargetCrossEntropy  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402
from timm.scheduler import create_scheduler_v2  # noqa: E402
from timm.task import ClassificationTask  # noqa: E402
from timm.utils import AverageMeter, accuracy  # noqa: E402

EPOCHS = 4


def train_one_epoch(epoch, task, loader, optimizer, mixup_fn, lr_scheduler, class_of, seen):
    task.train()
    updates_per_epoch = len(loader)
    num_updates = epoch * updates_per_epoch
    last_batch_idx = len(loader) - 1
    losses = AverageMeter()
    ended_on_last_batch = False
    for batch_idx, (input, target) in enumerate(loader):
        ended_on_last_batch = batch_idx == last_batch_idx
        seen[epoch] += target.tolist()
        target = class_of[target]                    # index -> class (test bookkeeping)
        input, target = mixup_fn(input, target)
        loss = task(input, target)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        num_updates += 1
        lr_scheduler.step_update(num_updates=num_updates)
        losses.update(loss.item(), input.size(0))
    return {"loss": losses.avg, "ended_on_last_batch": ended_on_last_batch,
            "updates": num_updates}


@torch.no_grad()
def validate(model, loader):
    model.eval()
    top1 = AverageMeter()
    for input, target in loader:
        acc1, = accuracy(model(input), target, topk=(1,))
        top1.update(acc1.item(), input.size(0))
    return {"top1": top1.avg, "count": top1.count}


def test_timm_loop_with_mixup_cutmix_learns_and_covers_each_sample_once(embedded):
    train, class_of = indexed_train(embedded)
    loader_train = DALILoader(train, small_policy(), recipe="demo", batch_size=BATCH,
                              drop_last=True, num_threads=2, seed=0)
    loader_eval = DALILoader(embedded.val, recipe="demo", batch_size=250, train=False,
                             num_threads=2)
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=10)
    mixup_fn = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    task = ClassificationTask(model, SoftTargetCrossEntropy(), verbose=False)
    optimizer = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=5e-5, momentum=0.9)
    lr_scheduler, num_epochs = create_scheduler_v2(optimizer, "cosine", num_epochs=EPOCHS,
                                                   warmup_epochs=0, step_on_epochs=False,
                                                   updates_per_epoch=len(loader_train))
    seen = defaultdict(list)
    for epoch in range(num_epochs):
        loader_train.dataset.set_epoch(epoch)        # what timm's train.py calls per epoch
        stats = train_one_epoch(epoch, task, loader_train, optimizer, mixup_fn, lr_scheduler,
                                class_of, seen)
        assert stats["ended_on_last_batch"]
        lr_scheduler.step(epoch + 1)
    assert stats["updates"] == EPOCHS * 12
    assert_each_sample_once(seen, len(train), EPOCHS, drop_last=True)
    metrics = validate(model, loader_eval)
    assert metrics["count"] == 500 and metrics["top1"] > 20.0          # percent; chance: 10


TRAIN_PY = os.environ.get("DRA_DALI_TIMM_TRAIN_PY")


def _timm_script(path: str):
    spec = importlib.util.spec_from_file_location("timm_train_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.skipif(not TRAIN_PY, reason="timm's train.py is a script of its repository, in "
                    "neither its wheel nor its sdist: set DRA_DALI_TIMM_TRAIN_PY to a checkout's "
                    "train.py to run its main() with the loader")
def test_timms_own_train_py_runs_with_the_loader(embedded, tmp_path, monkeypatch):
    """timm's main(), unchanged, for 2 epochs: DALILoader is what its create_loader returns.
    The training labels are sample indices (to see each epoch's samples); the loader subclass
    maps them to classes, the one concession to the bookkeeping (the script's loss is its own)."""
    full = scan_images(embedded.train)
    train = ImageList(root=full.root, files=full.files, labels=tuple(range(len(full.files))),
                      classes=tuple(str(i) for i in range(len(full.files))), source=full.source)
    class_of, seen = torch.tensor(full.labels), defaultdict(list)

    class Recording(DALILoader):
        def __iter__(self):
            for images, labels in super().__iter__():
                seen[self._running["epoch"]] += labels.tolist()
                yield images, class_of[labels]

    def create_loader(dataset, input_size, batch_size, is_training=False, **kwargs):
        if is_training:
            return Recording(train, small_policy(), recipe="demo", batch_size=batch_size,
                             drop_last=True, num_threads=2, seed=0)
        return DALILoader(embedded.val, recipe="demo", batch_size=batch_size, train=False,
                          num_threads=2)

    script = _timm_script(TRAIN_PY)
    monkeypatch.setattr(script, "create_loader", create_loader)
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--data-dir", str(embedded.train.parent), "--train-split", "train",
        "--val-split", "val", "--model", "resnet10t", "--num-classes", "10", "--input-size",
        "3", "32", "32", "-b", str(BATCH), "--epochs", "2", "--opt", "sgd", "--lr", "0.1",
        "--sched", "cosine", "--warmup-epochs", "0", "--mixup", "0.8", "--cutmix", "1.0",
        "--smoothing", "0.1", "--no-prefetcher", "--device", "cpu", "--workers", "0",
        "--seed", "0", "--output", str(tmp_path), "--experiment", "dali"])
    script.main()
    rows = (tmp_path / "dali" / "summary.csv").read_text().strip().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    assert len(rows) == 3 and float(last[header.index("eval_top1")]) > 20.0   # chance: 10
    assert_each_sample_once(seen, len(train), 2, drop_last=True)
