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


def test_other_policy_types_are_refused_with_the_accepted_ones():
    with pytest.raises(TypeError, match="a dra_dali.Policy, a policy file or a preset name, "
                                        "got dict"):
        @pipeline_def(enable_conditionals=True, batch_size=1, num_threads=1, device_id=None)
        def pipe():
            images = fn.external_source(name="x", layout="HWC", dtype=types.UINT8)
            return augment(images, {"ops": []})

        pipe()
