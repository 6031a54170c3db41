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
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from integration_common import BATCH, assert_each_sample_once, indexed_train, small_policy

from dra_dali.dali import DALILoader

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
