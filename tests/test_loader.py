"""DALILoader as a PyTorch DataLoader stand-in: len, epochs, partial batch, labels, sharding, and a
trainer written without knowledge of this project."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from dra_dali import Policy
from dra_dali.dali import DALILoader
from dra_dali.data import ImageList, scan_images


def _indexed(embedded, per_class: int) -> ImageList:
    """Subset of the embedded val set with label = sample index, to follow individual samples."""
    full = scan_images(embedded.val)
    keep = [i for i, label in enumerate(full.labels) if i - full.labels.index(label) < per_class]
    files = tuple(full.files[i] for i in keep)
    return ImageList(root=full.root, files=files, labels=tuple(range(len(files))),
                     classes=tuple(str(i) for i in range(len(files))), source=full.source)


def test_len_partial_last_batch_and_fresh_epochs(embedded):
    loader = DALILoader(embedded.val, recipe="demo", batch_size=64, num_threads=2)
    assert len(loader) == math.ceil(500 / 64) == 8 and loader.num_classes == 10
    for _ in range(2):
        sizes, labels = [], []
        for images, target in loader:
            assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32)
            assert target.dtype == torch.int64 and target.ndim == 1
            sizes.append(len(target))
            labels.append(target)
        assert sizes == [64] * 7 + [500 - 7 * 64]                # partial batch kept, no repeats
        assert torch.bincount(torch.cat(labels)).tolist() == [50] * 10


def test_every_sample_once_per_epoch_and_reshuffled(embedded):
    subset = _indexed(embedded, per_class=4)                     # 40 samples
    loader = DALILoader(subset, recipe="demo", batch_size=16, num_threads=1, seed=3)
    epochs = [torch.cat([t for _, t in loader]).tolist() for _ in range(2)]
    for ids in epochs:
        assert sorted(ids) == list(range(40))
    assert epochs[0] != epochs[1]


def test_abandoned_epoch_then_fresh_epoch(embedded):
    subset = _indexed(embedded, per_class=4)
    loader = DALILoader(subset, recipe="demo", batch_size=8, num_threads=1)
    it = iter(loader)
    next(it)                                                     # e.g. a sanity-check pass
    ids = torch.cat([t for _, t in loader]).tolist()
    assert sorted(ids) == list(range(40))


def test_same_seed_same_batches(embedded):
    subset = _indexed(embedded, per_class=3)
    policy = Policy.preset("dra-cifar10-wrn-28-10")

    def first_batch(seed):
        loader = DALILoader(subset, policy, recipe="demo", batch_size=10, num_threads=2,
                            seed=seed)
        return next(iter(loader))

    (a, la), (b, lb) = first_batch(1), first_batch(1)
    assert torch.equal(a, b) and torch.equal(la, lb)


def test_validation_loader_is_ordered_and_refuses_a_policy(embedded):
    loader = DALILoader(embedded.val, recipe="demo", batch_size=100, train=False)
    assert torch.cat([t for _, t in loader]).tolist() == list(scan_images(embedded.val).labels)
    with pytest.raises(ValueError, match="no policy"):
        DALILoader(embedded.val, Policy.preset("ta"), recipe="demo", train=False)


@pytest.mark.parametrize("drop_last", [False, True])
def test_validation_loader_reuses_its_pipeline_after_a_complete_epoch(embedded, drop_last):
    subset = _indexed(embedded, per_class=4)                 # 40 samples, batch 6: 6 full + 4
    loader = DALILoader(subset, recipe="demo", batch_size=6, train=False, num_threads=1,
                        drop_last=drop_last)
    epochs = []
    for _ in range(3):
        epochs.append([(x, t) for x, t in loader])
        if len(epochs) == 1:
            pipeline = loader.pipeline
        assert loader.pipeline is pipeline                   # kept, not built again
    labels = [torch.cat([t for _, t in epoch]).tolist() for epoch in epochs]
    assert labels[0] == list(range(36 if drop_last else 40)) and labels[0] == labels[1] == labels[2]
    for x, y in zip(epochs[0], epochs[2]):
        assert torch.equal(x[0], y[0])
    next(iter(loader))                                       # an epoch left early: not kept
    assert [t.tolist() for _, t in loader][0] == list(range(6))
    assert loader.pipeline is not pipeline


# ----- the DataLoader surface trainers use ------------------------------------------------------

def _cheap_policy() -> Policy:
    """Three operators: a policy graph that builds in about a second (16 take several)."""
    from dra_dali.policy import Layer

    layer = Layer(logits=(0.0, 0.5, -0.5), mean=(0.5, 0.5, 0.0), std=(0.1, 0.1, 0.0))
    return Policy(ops=("Rotate", "Color", "Invert"), layers=(layer,), resolution=32)


def test_drop_last_gives_full_batches_each_sample_at_most_once(embedded):
    subset = _indexed(embedded, per_class=4)                     # 40 samples, batch 6: 6 batches
    loader = DALILoader(subset, recipe="demo", batch_size=6, num_threads=1, seed=1,
                        drop_last=True)
    assert (len(loader), loader.batch_size, loader.drop_last, len(loader.dataset)) == \
        (6, 6, True, 40)
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        batches = [t.tolist() for _, t in loader]
        assert [len(b) for b in batches] == [6] * 6
        ids = [i for b in batches for i in b]
        assert len(set(ids)) == 36 and set(ids) <= set(range(40))
        epochs.append(ids)
    assert epochs[0] != epochs[1]


def test_set_epoch_selects_the_epoch_order(embedded):
    subset = _indexed(embedded, per_class=3)
    natural = DALILoader(subset, recipe="demo", batch_size=8, num_threads=1, seed=4)
    orders = [torch.cat([t for _, t in natural]).tolist() for _ in range(3)]
    assert orders[0] != orders[1] != orders[2] and natural.epoch == 3
    jumped = DALILoader(subset, recipe="demo", batch_size=8, num_threads=1, seed=4)
    jumped.dataset.set_epoch(2)                                  # timm calls dataset.set_epoch
    assert torch.cat([t for _, t in jumped]).tolist() == orders[2]
    jumped.set_epoch(1)
    assert torch.cat([t for _, t in jumped]).tolist() == orders[1]


def test_the_next_epoch_built_ahead_gives_the_same_batches(embedded):
    subset = _indexed(embedded, per_class=3)                     # 30 samples, batch 8: 4 batches
    ahead = DALILoader(subset, _cheap_policy(), recipe="demo", batch_size=8, num_threads=1,
                       seed=2)
    plain = DALILoader(subset, _cheap_policy(), recipe="demo", batch_size=8, num_threads=1,
                       seed=2, build_ahead=False)
    built = None
    for epoch in range(3):
        got, want = list(ahead), list(plain)
        if built is not None:
            assert ahead.pipeline is built                       # the one built in the background
        assert [t.tolist() for _, t in got] == [t.tolist() for _, t in want]
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(got, want))
        assert ahead._ahead[0] == epoch + 1 and plain._ahead is None
        built = ahead._ahead[1].result()["pipeline"]


def test_break_does_not_read_the_rest_of_the_epoch(embedded):
    subset = _indexed(embedded, per_class=4)
    loader = DALILoader(subset, recipe="demo", batch_size=4, num_threads=1)
    for step, _ in enumerate(loader):
        if step == 1:
            break
    abandoned = loader._running["iterator"]
    read = abandoned._counter
    ids = torch.cat([t for _, t in loader]).tolist()            # the next epoch, whole
    assert sorted(ids) == list(range(40))
    assert abandoned._counter == read == 2 * 4                  # nothing more was decoded


def test_state_dict_resumes_mid_epoch_exactly(embedded):
    subset = _indexed(embedded, per_class=3)
    policy = _cheap_policy()

    def make():
        return DALILoader(subset, policy, recipe="demo", batch_size=4, num_threads=1, seed=9)

    first = make()
    list(first)                                                 # epoch 0
    it = iter(first)                                            # epoch 1
    head = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 3) and isinstance(state["dali"], bytes)
    rest = list(it)
    following = list(first)                                     # epoch 2

    second = make()
    second.load_state_dict(state)
    second.set_epoch(1)                                         # a trainer re-announcing the epoch
    resumed = list(second)
    assert len(head) + len(resumed) == len(first) == 8
    for (a, la), (b, lb) in zip(rest, resumed):
        assert torch.equal(la, lb) and torch.equal(a, b)        # same images, same augmentation
    for (a, la), (b, lb) in zip(following, second):
        assert torch.equal(la, lb) and torch.equal(a, b)
    assert first.state_dict() == {"format": "dra-dali-loader/1", "epoch": 3, "batch": 0,
                                  "dali": None}


def test_load_state_dict_refuses_a_foreign_state(embedded):
    loader = DALILoader(_indexed(embedded, per_class=1), recipe="demo", batch_size=4)
    with pytest.raises(ValueError, match="loader state: batch: expected 0..3"):
        loader.load_state_dict({"format": "dra-dali-loader/1", "epoch": 0, "batch": 9,
                                "dali": "x"})
    with pytest.raises(ValueError, match="format"):
        loader.load_state_dict({"epoch": 0})


def _shard_worker(rank: int, world: int, init_file: str, subset: ImageList, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        loader = DALILoader(subset, recipe="demo", batch_size=4, num_threads=1, seed=11)
        epochs = [torch.cat([t for _, t in loader]).tolist() for _ in range(2)]
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"shard": [loader.shard_id, loader.num_shards], "len": len(loader),
                       "epochs": epochs}, f)
    finally:
        dist.destroy_process_group()


def test_shard_comes_from_the_global_rank(embedded, monkeypatch):
    import torch.distributed as dist

    subset = _indexed(embedded, per_class=3)
    ids = {}
    for rank in range(3):
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(dist, "get_world_size", lambda: 3)
        loader = DALILoader(subset, recipe="demo", batch_size=4, num_threads=1, seed=2)
        assert (loader.shard_id, loader.num_shards, len(loader)) == (rank, 3, 3)
        ids[rank] = torch.cat([t for _, t in loader]).tolist()
    assert sorted(ids[0] + ids[1] + ids[2]) == list(range(30))


def test_no_rank_gets_an_empty_last_batch(embedded):
    full = _indexed(embedded, per_class=1)                      # 10 samples; keep 9
    subset = ImageList(root=full.root, files=full.files[:9], labels=full.labels[:9],
                       classes=full.classes[:9], source=full.source)
    batches = []
    for shard in range(2):                                       # shards of 4 and 5, batch 4
        loader = DALILoader(subset, recipe="demo", batch_size=4, num_threads=1, shard_id=shard,
                            num_shards=2)
        batches.append([t.tolist() for _, t in loader])
    assert [len(b) for b in batches] == [2, 2]                   # same number of steps
    assert all(len(batch) > 0 for b in batches for batch in b)
    short, full_shard = batches
    assert short[1] == [short[0][-1]]                            # the repeat of its last image
    assert sorted(short[0] + full_shard[0] + full_shard[1]) == list(range(9))


@pytest.mark.slow
def test_shards_by_global_rank_under_torch_distributed(embedded, tmp_path):
    import torch.multiprocessing as mp

    subset = _indexed(embedded, per_class=3)                     # 30 samples, 2 ranks
    out = str(tmp_path / "ids")
    mp.spawn(_shard_worker, args=(2, str(tmp_path / "init"), subset, out), nprocs=2, join=True)
    results = [json.loads(open(f"{out}.{r}").read()) for r in range(2)]
    assert [r["shard"] for r in results] == [[0, 2], [1, 2]]
    assert results[0]["len"] == results[1]["len"] == math.ceil(15 / 4)
    for epoch in range(2):
        a, b = (results[r]["epochs"][epoch] for r in range(2))
        assert not set(a) & set(b)                               # other rank, other samples
        assert sorted(a + b) == list(range(30))                  # together: each sample once


# ----- a trainer written without knowledge of this project (timm-style loop) ---------------------

def train_one_epoch(epoch, model, loader, optimizer, loss_fn, lr_scheduler=None):
    """A generic training loop: uses len(loader), enumerate, input.size(0), nothing else."""
    model.train()
    last_idx = len(loader) - 1
    num_updates = epoch * len(loader)
    loss_sum, seen, last_batch = 0.0, 0, False
    for batch_idx, (input, target) in enumerate(loader):
        last_batch = batch_idx == last_idx
        output = model(input)
        loss = loss_fn(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        num_updates += 1
        if lr_scheduler is not None:
            lr_scheduler.step()
        loss_sum += loss.item() * input.size(0)
        seen += input.size(0)
    return {"loss": loss_sum / seen, "seen": seen, "ended_on_last_batch": last_batch,
            "updates": num_updates}


@torch.no_grad()
def validate(model, loader):
    model.eval()
    correct = total = 0
    for input, target in loader:
        correct += (model(input).argmax(1) == target).sum().item()
        total += target.numel()
    return correct / total


def test_foreign_training_loop_learns_from_the_loader(embedded):
    torch.manual_seed(0)
    policy = Policy.preset("dra-cifar10-wrn-28-10")              # a 32 px policy, demo crops 32 px
    full = scan_images(embedded.train)                           # 100 of the 200 per class
    keep = [i for i, f in enumerate(full.files) if int(f[-8:-4]) < 100]
    train = ImageList(root=full.root, files=tuple(full.files[i] for i in keep),
                      labels=tuple(full.labels[i] for i in keep), classes=full.classes,
                      source=full.source)
    train_loader = DALILoader(train, policy, recipe="demo", batch_size=100, num_threads=2,
                              seed=0)
    val_loader = DALILoader(embedded.val, recipe="demo", batch_size=250, train=False,
                            num_threads=2)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(32, train_loader.num_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, epochs=3,
                                                    steps_per_epoch=len(train_loader))
    stats = [train_one_epoch(e, model, train_loader, optimizer, nn.CrossEntropyLoss(), scheduler)
             for e in range(3)]
    assert all(s["seen"] == 1000 and s["ended_on_last_batch"] for s in stats)
    assert stats[-1]["updates"] == 3 * len(train_loader)       # the schedule's length was right
    assert stats[-1]["loss"] < stats[0]["loss"]
    assert validate(model, val_loader) > 0.25                    # chance is 0.1


def test_scheduled_policy_switches_at_its_boundary(embedded):
    """A format-2 schedule: epoch 0 inverts every image, from epoch 1 on nothing is applied."""
    subset = _indexed(embedded, per_class=1)
    invert = {"ops": ["Invert"], "resolution": 32, "apply_prob": [1.0, 1.0],
              "layers": [{"logits": [0.0], "mean": [0.0], "std": [0.0]}]}
    nothing = {**invert, "apply_prob": [0.0, 0.0]}
    policy = Policy.from_dict({"format": "dra-policy/2", "schedule": [
        {"start_epoch": 0, "policy": invert}, {"start_epoch": 1, "policy": nothing}]})
    assert policy.schedule_boundaries == (1,)
    recipe = {"name": "plain", "resolution": 32, "crop": "center", "flip": False, "val_resize": 32}
    loader = DALILoader(subset, policy, recipe=recipe, batch_size=10, num_threads=1)
    plain = DALILoader(subset, recipe=recipe, batch_size=10, train=False, num_threads=1)
    reference = {int(i): x for x, t in plain for i, x in zip(t, x)}
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    for epoch, inverted in ((0, True), (1, False), (2, False)):
        loader.set_epoch(epoch)
        for images, labels in loader:
            for image, label in zip(images, labels):
                expected = reference[int(label)]
                if inverted:                                        # 255 - x, normalised
                    expected = ((1 - (expected * std + mean)) - mean) / std
                assert torch.allclose(image, expected, atol=0.02), (epoch, int(label))


def test_a_policy_file_made_for_224_px_is_adapted_to_the_32_px_pipeline(embedded, tmp_path):
    """TranslateX at m = 1 moves a 224 px policy's images by 100 px; on the 32 px pipeline the
    file is adapted (10 px, the same image fraction as the paper's CIFAR range), not kept (100 px
    would leave only the fill)."""
    subset = _indexed(embedded, per_class=1)
    path = Policy.from_dict({"ops": ["TranslateX"], "resolution": 224, "apply_prob": [1.0, 1.0],
                             "layers": [{"logits": [0.0], "mean": [1.0], "std": [0.0]}]}
                            ).save(tmp_path / "translate.yaml")
    recipe = {"name": "plain", "resolution": 32, "crop": "center", "flip": False, "val_resize": 32}
    with pytest.warns(UserWarning, match="made for 224 px images and is adapted to the "
                                         "pipeline's 32 px.*up to 10 px at m = 1"):
        loader = DALILoader(subset, path, recipe=recipe, batch_size=10, num_threads=1)
    assert loader.policy.resolution == 32
    plain = DALILoader(subset, recipe=recipe, batch_size=10, train=False, num_threads=1)
    reference = {int(i): x for x, t in plain for i, x in zip(t, x)}
    for images, labels in loader:
        for image, label in zip(images, labels):
            original = reference[int(label)]
            moved = [torch.allclose(image[:, :, 10:], original[:, :, :-10], atol=0.02),
                     torch.allclose(image[:, :, :-10], original[:, :, 10:], atol=0.02)]
            assert any(moved), int(label)                 # shifted by 10 px, left or right
