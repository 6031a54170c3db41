"""Helpers shared by the search tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from dra_dali.search import run_search


def interrupt_after_epoch(cfg, out: Path, epoch: int = 1) -> None:
    """Run a search into ``out`` and stop it with a KeyboardInterrupt after ``epoch`` (its
    checkpoint is written first), as Ctrl-C would."""
    def stop(finished_epoch, metrics):
        if finished_epoch == epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, out, progress=False, on_epoch_end=stop)


def compiled_and_reference_draws(policy, draws: int, seeds: tuple[int, int, int]):
    """The compiled DALI graph's trace of ``policy`` over ``draws`` tiny random images and the
    numpy sampler's draws, for the statistical tests; ``seeds``: the images', the graph's and the
    sampler's."""
    import numpy as np

    from dra_dali.dali import apply_policy

    image_seed, graph_seed, sampler_seed = seeds
    images = np.random.default_rng(image_seed).integers(0, 256, (draws, 4, 4, 3), dtype=np.uint8)
    _, trace = apply_policy(policy, images, seed=graph_seed, trace=True, batch_size=1000)
    return trace, policy.sample(draws, seed=sampler_seed)
