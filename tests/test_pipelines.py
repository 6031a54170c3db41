"""Train/val pipelines and recipes: shapes, labels, determinism, sharding, GPU graph structure."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dra_dali import Policy
from dra_dali.dali.export import graph_operators, placement_problems
from dra_dali.dali.pipelines import (
    PipelineRecipe,
    RecipeError,
    adapt_policy,
    build_train_pipeline,
    build_val_pipeline,
    load_recipe,
    recipe_names,
    resolution_warning,
)
from dra_dali.data import ImageList, scan_images
from dra_dali.policy import Layer


def _indexed(embedded, per_class: int = 5) -> ImageList:
    """A small subset of the embedded val set labelled by sample index (to track samples)."""
    full = scan_images(embedded.val)
    keep = [i for i, label in enumerate(full.labels)
            if i - full.labels.index(label) < per_class]
    files = tuple(full.files[i] for i in keep)
    return ImageList(root=full.root, files=files, labels=tuple(range(len(files))),
                     classes=tuple(str(i) for i in range(len(files))), source=full.source)


def _run(pipe, batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
    pipe.build()
    out = []
    for _ in range(batches):
        images, labels = pipe.run()
        out.append((np.array(images.as_tensor()), np.array(labels.as_tensor()).ravel()))
    return out


# ----- recipes ----------------------------------------------------------------------------------

def test_shipped_recipes_load_with_their_settings():
    assert {"imagenet", "cifar", "demo"} <= set(recipe_names())
    imagenet, cifar, demo = (load_recipe(n) for n in ("imagenet", "cifar", "demo"))
    assert (imagenet.resolution, imagenet.crop, imagenet.val_resize) == (224, "random_resized",
                                                                         256)
    assert imagenet.crop_scale == (0.08, 1.0)
    assert imagenet.mean == pytest.approx((0.485, 0.456, 0.406))
    assert (cifar.resolution, cifar.crop, cifar.pad, cifar.cutout, cifar.flip) == (32, "pad", 4,
                                                                             16, True)
    assert demo.resolution == 32 and demo.val_resize >= demo.resolution
    assert load_recipe(imagenet) is imagenet
    assert PipelineRecipe.from_dict(cifar.to_dict()) == cifar


def test_recipe_refuses_unknown_keys_naming_them(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("size: 64\ncrop_size: 32\nflipp: true\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message and "crop_size" in message and "flipp" in message


@pytest.mark.parametrize("text, field", [("resolution: -3", "resolution"), ("crop: zoom", "crop"),
                                         ("crop_scale: [0.5, 0.1]", "crop_scale"),
                                         ("std: [1, 0, 1]", "std"),
                                         ("resolution: 64\nval_resize: 32", "val_resize"),
                                         ("mean: [0.5, 0.5]", "mean")])
def test_recipe_invalid_field_is_named(tmp_path, text, field):
    path = tmp_path / "r.yaml"
    path.write_text(text + "\n")
    with pytest.raises(RecipeError, match=field):
        load_recipe(path)


def test_unknown_recipe_name_lists_the_known_ones():
    with pytest.raises(RecipeError, match="imagenet"):
        load_recipe("imagenett")


def test_policies_are_adapted_to_the_pipeline_size_with_a_note_where_translation_moves(embedded):
    cifar, imagenet = load_recipe("cifar"), load_recipe("imagenet")
    policy = Policy.preset("ra-n2-m9")                     # resolution 224, TranslateX/Y in it
    assert adapt_policy(policy, 224) == (policy, None)
    adapted, note = adapt_policy(policy, 32, "cifar")
    assert adapted == policy.with_resolution(32) and adapted.resolution == 32
    assert note == resolution_warning(policy, cifar)
    assert "made for 224 px images and is adapted to the pipeline's 32 px (recipe 'cifar'): " \
           "TranslateX/TranslateY move by up to 10 px at m = 1 (31 % of the image; 100 px, " \
           "45 %, at 224 px)" in note
    assert resolution_warning(policy, imagenet) is None
    layer = Layer(logits=(0.0, 0.0), mean=(0.5, 0.5), std=(0.1, 0.1))
    no_translation = Policy(ops=("Rotate", "Color"), layers=(layer,), resolution=224)
    adapted, note = adapt_policy(no_translation, 32)
    assert adapted.resolution == 32 and note is None       # nothing changes: said nothing
    with pytest.warns(UserWarning, match="adapted to the pipeline's 32 px"):
        build_train_pipeline(embedded.val, policy, cifar, batch_size=4)


def test_every_entry_of_a_scheduled_policy_is_adapted():
    entry = {"ops": ["TranslateY"], "resolution": 224,
             "layers": [{"logits": [0.0], "mean": [0.5], "std": [0.1]}]}
    policy = Policy.from_dict({"format": "dra-policy/2", "schedule": [
        {"start_epoch": 0, "policy": entry}, {"start_epoch": 3, "policy": entry}]})
    adapted, note = adapt_policy(policy, 64)
    assert [e.policy.resolution for e in adapted.schedule] == [64, 64]
    assert adapted.at_epoch(5).resolution == 64 and "64 px" in note


# ----- CPU pipelines, run for real ------------------------------------------------------------

def test_val_pipeline_labels_follow_the_folder_classes(embedded):
    scanned = scan_images(embedded.val)
    (images, labels), = _run(build_val_pipeline(scanned, "demo", batch_size=len(scanned)), 1)
    assert images.shape == (500, 3, 32, 32) and images.dtype == np.float32
    assert labels.tolist() == list(scanned.labels)          # unshuffled: folder order
    assert scanned.classes == embedded.classes
    assert -2.2 < images.min() < images.max() < 2.7      # normalised with the ImageNet mean/std


def test_train_pipeline_with_policy_runs_on_cpu(embedded):
    policy = Policy.preset("dra-cifar10-wrn-28-10")            # resolution 32
    (images, labels), = _run(build_train_pipeline(embedded.val, policy, "demo", batch_size=16,
                                                  num_threads=2), 1)
    assert images.shape == (16, 3, 32, 32) and np.isfinite(images).all()
    assert labels.dtype == np.int32 and set(labels) <= set(range(10))


def test_cifar_recipe_pads_crops_and_cuts_out(embedded):
    recipe = load_recipe("cifar")
    # Classes without black areas of their own (the galaxy and retina photos have some), so that
    # black rows can only come from the padding.
    full = scan_images(embedded.val)
    bright = {full.classes.index(c) for c in ("cat", "coffee", "flower", "palace")}
    keep = [i for i, label in enumerate(full.labels) if label in bright]
    data = ImageList(root=full.root, files=tuple(full.files[i] for i in keep),
                     labels=tuple(full.labels[i] for i in keep), classes=full.classes,
                     source=full.source)
    (images, _), = _run(build_train_pipeline(data, None, recipe, batch_size=64,
                                             num_threads=2, seed=3), 1)
    assert images.shape == (64, 3, 32, 32)
    # Cutout: exact zeros (the normalised mean) over all channels, at most a 16 x 16 square.
    erased = (images == 0).all(axis=1).sum(axis=(1, 2))
    assert erased.max() <= 16 * 16 and (erased > 0).mean() > 0.9
    # Pad-crop from 64 px: whole rows/columns of pad fill (uint8 0 -> -mean/std) appear where the
    # window leaves the image, and only within `pad` = 4 px of the border.
    fill = (np.array([0.0, 0.0, 0.0]) - np.array(recipe.mean)) / np.array(recipe.std)
    padded = np.isclose(images, fill[None, :, None, None], atol=1e-4).all(axis=1)
    rows, cols = padded.all(axis=2), padded.all(axis=1)          # (batch, 32) each
    assert not rows[:, 4:-4].any() and not cols[:, 4:-4].any()
    assert rows.any() and cols.any()


def test_same_seed_same_batches_other_seed_other_batches(embedded):
    policy = Policy.preset("ra-n2-m9-mstd0.5")
    subset = _indexed(embedded)

    def batches(seed):
        return _run(build_train_pipeline(subset, policy, "demo", batch_size=10, num_threads=2,
                                         seed=seed, warn=False), 2)

    first, again, other = batches(7), batches(7), batches(8)
    for (a, la), (b, lb) in zip(first, again):
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(la, lb) for (_, la), (_, lb) in zip(first, other))


def test_shards_partition_every_epoch(embedded):
    subset = _indexed(embedded, per_class=5)                    # 50 samples, ids 0..49
    n, shards, batch = len(subset), 3, 8
    seen = {epoch: [] for epoch in range(2)}
    per_shard = []
    for shard in range(shards):
        pipe = build_train_pipeline(subset, None, "demo", batch_size=batch, num_threads=1,
                                    seed=5, shard_id=shard, num_shards=shards)
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        it = DALIGenericIterator(pipe, ["images", "labels"], reader_name="Reader",
                                 last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)
        ids = []
        for epoch in range(2):
            epoch_ids = [int(i) for b in it for i in b[0]["labels"].ravel()]
            seen[epoch] += epoch_ids
            ids.append(epoch_ids)
        per_shard.append(ids)
    for epoch in range(2):
        assert sorted(seen[epoch]) == list(range(n)), f"epoch {epoch}: not each sample once"
    # different shards, different samples (disjoint), and shuffled across epochs
    assert not set(per_shard[0][0]) & set(per_shard[1][0])
    assert per_shard[0][0] != per_shard[0][1]


def test_bad_shard_and_device_arguments_are_refused(embedded):
    with pytest.raises(ValueError, match="shard_id 3"):
        build_train_pipeline(embedded.val, None, "demo", shard_id=3, num_shards=3)
    with pytest.raises(ValueError, match="device"):
        build_val_pipeline(embedded.val, "demo", device="tpu")


# ----- GPU graphs, checked structurally (no CUDA here) -------------------------------------------

@pytest.mark.parametrize("recipe, decoder", [("imagenet", "decoders__ImageRandomCrop"),
                                             ("cifar", "decoders__Image")])
def test_gpu_train_graph_decodes_mixed_and_stays_on_gpu(embedded, recipe, decoder):
    policy = Policy.preset("dra-cifar10-wrn-28-10")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = build_train_pipeline(embedded.val, policy, recipe, batch_size=8, device="gpu")
    ops = graph_operators(pipe)
    assert [(s, d) for _, s, d, _ in ops if s.startswith("decoders__")] == [(decoder, "mixed")]
    assert placement_problems(pipe, "gpu") == []
    assert ("CropMirrorNormalize", "gpu") in {(s, d) for _, s, d, _ in ops}
    assert [o.device for o in pipe._graph_outputs] == ["gpu", "gpu"]
    # and the check can fail: the CPU pipeline is not a valid GPU placement
    cpu = build_val_pipeline(embedded.val, recipe, batch_size=8)
    assert placement_problems(cpu, "gpu")


def test_gpu_val_graph_structure(embedded):
    pipe = build_val_pipeline(embedded.val, "imagenet", batch_size=8, device="gpu")
    schemas = [(s, d) for _, s, d, _ in graph_operators(pipe)]
    assert ("decoders__Image", "mixed") in schemas and ("Resize", "gpu") in schemas
    assert placement_problems(pipe, "gpu") == []


def test_train_pipeline_without_randomness_equals_the_val_pipeline(embedded):
    recipe = PipelineRecipe.from_dict({**load_recipe("demo").to_dict(), "crop": "center",
                                       "flip": False, "dtype": "float16"})
    (train, tl), = _run(build_train_pipeline(embedded.val, None, recipe, batch_size=20,
                                             shuffle=False), 1)
    (val, vl), = _run(build_val_pipeline(embedded.val, recipe, batch_size=20), 1)
    assert train.dtype == np.float16 and train.shape == (20, 3, 32, 32)
    np.testing.assert_array_equal(tl, vl)
    np.testing.assert_array_equal(train, val)


def test_dra_retraining_recipes(embedded):
    """The DRA authors' retraining transforms: RRC scale (0.05, 1); CIFAR Cutout before
    normalisation, filled black (so the cut pixels are -mean/std after normalising)."""
    assert load_recipe("imagenet-dra").crop_scale == (0.05, 1.0)
    recipe = load_recipe("cifar-dra")
    assert recipe.cutout == 16 and recipe.cutout_before_normalize
    (images, _), = _run(build_train_pipeline(embedded.val, None, recipe, batch_size=32,
                                             num_threads=2, seed=1), 1)
    black = (np.array([0.0, 0.0, 0.0]) - np.array(recipe.mean)) / np.array(recipe.std)
    cut = np.isclose(images, black[None, :, None, None], atol=1e-4).all(axis=1)
    assert (cut.sum(axis=(1, 2)) > 0).mean() > 0.9                # a black square per image
    assert not (images == 0).all(axis=1).any()                   # no mean-colour square
