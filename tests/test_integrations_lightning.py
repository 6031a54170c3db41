"""DALILoader inside PyTorch Lightning: ``Trainer.fit`` with a ``LightningDataModule`` returning
the loaders, unchanged; the model learns and each epoch covers every sample once."""

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

L = pytest.importorskip("lightning")


class DALIData(L.LightningDataModule):
    def __init__(self, train, val, drop_last: bool) -> None:
        super().__init__()
        self.train, self.val, self.drop_last = train, val, drop_last

    def train_dataloader(self):
        return DALILoader(self.train, small_policy(), recipe="demo", batch_size=BATCH,
                          drop_last=self.drop_last, num_threads=2, seed=0)

    def val_dataloader(self):
        return DALILoader(self.val, recipe="demo", batch_size=250, train=False, num_threads=2)


class Classifier(L.LightningModule):
    def __init__(self, class_of: torch.Tensor) -> None:
        super().__init__()
        self.net, self.class_of = small_cnn(), class_of
        self.seen: dict[int, list[int]] = defaultdict(list)
        self.correct = self.total = 0

    def training_step(self, batch, batch_idx):
        images, index = batch
        self.seen[self.current_epoch] += index.tolist()
        return nn.functional.cross_entropy(self.net(images), self.class_of[index])

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        if not self.trainer.sanity_checking:
            self.correct += int((self.net(images).argmax(1) == labels).sum())
            self.total += len(labels)

    def on_validation_epoch_start(self):
        self.correct = self.total = 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


@pytest.mark.parametrize("drop_last", [True, False])
def test_lightning_fit_learns_and_covers_each_sample_once(embedded, drop_last):
    train, class_of = indexed_train(embedded)
    module = Classifier(class_of)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=1)
    trainer.fit(module, datamodule=DALIData(train, embedded.val, drop_last))
    assert trainer.num_training_batches == (12 if drop_last else 13)
    assert_each_sample_once(module.seen, len(train), 3, drop_last)
    assert module.total == 500                                  # the whole validation set
    assert module.correct / module.total > 0.2                   # chance: 0.1
