"""DALILoader in a Hugging Face Accelerate loop: ``accelerator.prepare()`` takes the loaders
unchanged; the model learns and each epoch covers every sample once."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from integration_common import (
    BATCH,
    assert_each_sample_once,
    indexed_train,
    small_cnn,
    small_policy,
)
from torch import nn

from dra_dali.dali import DALILoader

accelerate = pytest.importorskip("accelerate")


def test_accelerate_prepare_loop_learns_and_covers_each_sample_once(embedded):
    train, class_of = indexed_train(embedded)
    accelerator = accelerate.Accelerator(cpu=True)
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_loader = DALILoader(train, small_policy(), recipe="demo", batch_size=BATCH,
                              drop_last=True, num_threads=2, seed=0)
    val_loader = DALILoader(embedded.val, recipe="demo", batch_size=250, train=False,
                            num_threads=2)
    model, optimizer, train_loader, val_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader)
    assert isinstance(train_loader, DALILoader)                 # passed through as it is
    seen = defaultdict(list)
    for epoch in range(3):
        model.train()
        for images, index in train_loader:
            seen[epoch] += index.tolist()
            loss = nn.functional.cross_entropy(model(images), class_of[index])
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
    assert_each_sample_once(seen, len(train), 3, drop_last=True)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in val_loader:
            predictions = accelerator.gather_for_metrics(model(images).argmax(1))
            correct += int((predictions == labels).sum())
            total += len(labels)
    assert total == 500 and correct / total > 0.2                # chance: 0.1
