"""`augment` takes a Policy, a policy file or a preset name, and gives the same graph for each."""

from __future__ import annotations

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types

from dra_dali import Policy
from dra_dali.dali import augment


def _run(policy_spec, photos) -> np.ndarray:
    @pipeline_def(enable_conditionals=True, batch_size=len(photos), num_threads=1,
                  device_id=None, seed=3)
    def pipe():
        images = fn.external_source(name="x", layout="HWC", dtype=types.UINT8)
        if isinstance(policy_spec, tuple):                 # (policy, resolution)
            return augment(images, policy_spec[0], resolution=policy_spec[1])
        return augment(images, policy_spec)

    p = pipe()
    p.build()
    p.feed_input("x", photos)
    return np.stack([np.array(t) for t in p.run()[0]])


@pytest.mark.parametrize("name", ["rand-m9-mstd0.5", "dra-imagenet-resnet-50"])
def test_preset_name_file_and_object_give_the_same_images(name, photos, tmp_path):
    policy = Policy.preset(name)
    expected = _run(policy, photos)
    assert not np.array_equal(expected, np.stack(photos))          # the policy did something
    np.testing.assert_array_equal(_run(name, photos), expected)
    np.testing.assert_array_equal(_run(policy.save(tmp_path / "p.yaml"), photos), expected)


def test_resolution_adapts_a_preset_name_or_a_file_to_the_image_size(photos, tmp_path):
    expected = _run(Policy.preset("ra-n2-m9", resolution=96), photos)
    assert not np.array_equal(expected, _run(Policy.preset("ra-n2-m9"), photos))   # 224: not so
    np.testing.assert_array_equal(_run(("ra-n2-m9", 96), photos), expected)
    path = Policy.preset("ra-n2-m9").save(tmp_path / "ra.yaml")
    np.testing.assert_array_equal(_run((path, 96), photos), expected)


def test_other_policy_types_are_refused_with_the_accepted_ones():
    with pytest.raises(TypeError, match="a dra_dali.Policy, a policy file or a preset name, "
                                        "got dict"):
        @pipeline_def(enable_conditionals=True, batch_size=1, num_threads=1, device_id=None)
        def pipe():
            images = fn.external_source(name="x", layout="HWC", dtype=types.UINT8)
            return augment(images, {"ops": []})

        pipe()


# ----- the uint8 HWC input, checked when the graph is defined ------------------------------------
def _define(make_images, policy="ra-n2-m9"):
    """Define (not build, not run) a pipeline whose augment input is ``make_images()``."""
    @pipeline_def(enable_conditionals=True, batch_size=2, num_threads=1, device_id=None)
    def pipe():
        return augment(make_images(), policy)

    return pipe()


def _declared():
    return fn.external_source(name="x", layout="HWC", dtype=types.UINT8)


@pytest.mark.parametrize("make_images, found", [
    (lambda: fn.cast(_declared(), dtype=types.FLOAT), "float32 HWC, the output of fn.cast"),
    (lambda: fn.transpose(_declared(), perm=[2, 0, 1]), "uint8 CHW, the output of fn.transpose"),
    (lambda: fn.crop_mirror_normalize(_declared()),
     "float32 CHW, the output of fn.crop_mirror_normalize"),
    (lambda: fn.external_source(name="x", layout="HWC", dtype=types.FLOAT16),
     "float16 HWC, the output of fn.external_source"),
])
def test_images_that_are_not_uint8_hwc_are_refused_when_the_graph_is_defined(make_images, found):
    from dra_dali.dali.node_meta import ImageInputError

    with pytest.raises(ImageInputError, match=r"augment: images must be uint8 HWC \(as "
                                              r"fn.decoders.image gives them.*found " + found):
        _define(make_images)


def test_uint8_hwc_images_pass_through_resize_flip_and_a_previous_augment(embedded, recwarn):
    from dra_dali.dali.node_meta import node_metadata

    files = [str(p) for p in sorted(embedded.train.rglob("*.jpg"))[:2]]
    seen = {}

    def images():
        jpegs, _ = fn.readers.file(files=files)
        decoded = fn.flip(fn.resize(fn.decoders.image(jpegs), size=[32, 32]), horizontal=1)
        seen["decoded"] = node_metadata(decoded)
        once = augment(decoded, "ra-n2-m9")
        seen["augmented"] = node_metadata(once)
        return once

    _define(images)
    assert (seen["decoded"].dtype, seen["decoded"].layout) == ("uint8", "HWC")
    assert seen["augmented"].dtype == "uint8"        # numba_function outputs: declared types
    assert not [w for w in recwarn.list if "cannot check" in str(w.message)]


def test_images_the_graph_cannot_describe_are_let_through_with_a_warning():
    with pytest.warns(UserWarning, match="augment: cannot check that the images are uint8 HWC: "
                                         "the graph does not tell their dtype, the output of "
                                         "fn.external_source; "
                                         r"declare it \(e.g. fn.external_source\(\.\.\., "
                                         "dtype=types.UINT8"):
        _define(lambda: fn.external_source(name="x"))


def test_library_errors_keep_their_type_through_dalis_autograph():
    """A DraDaliError raised inside a conditional pipeline definition reaches the caller as
    itself (DALI's AutoGraph turned it into a StagingError before)."""
    from dra_dali.policy import PolicyError

    with pytest.raises(PolicyError, match="no-such-preset"):
        _define(_declared, policy="no-such-preset")
