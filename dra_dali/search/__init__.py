"""Augmentation-policy search in PyTorch: one run, several methods.

* :mod:`dra_dali.search.ops`: the 16 catalog operators on float ``(B, 3, H, W)`` batches in
  [0, 1] with per-sample magnitudes (kornia kernels), straight-through where not differentiable;
* :mod:`dra_dali.search.methods`: the search methods (``dra``, ``ddas``, ...) behind one protocol,
  one module each (:class:`DRAPolicy`, the learnable DRA layers, is in ``methods/dra.py``);
* :mod:`dra_dali.search.searcher`: :func:`run_search`, the run (loop, checkpoints, resume) and its
  run directory;
* :mod:`dra_dali.search.config`: :class:`SearchConfig`, the recipe keys (``search/*.yaml``).

Example:
    >>> from dra_dali.search import SearchConfig, run_search
    >>> cfg = SearchConfig.from_recipe("search/demo.yaml", {"data": "data/train"})  # doctest: +SKIP
    >>> policy = run_search(cfg, "runs/search")  # doctest: +SKIP
"""

from dra_dali.search.config import ConfigError, SearchConfig
from dra_dali.search.data import ProxySet, crop_flip, load_proxy
from dra_dali.search.methods import METHODS
from dra_dali.search.methods.dra import DRAPolicy
from dra_dali.search.ops import TORCH_OPS, apply_op, op_parameter
from dra_dali.search.searcher import RunDirError, load_checkpoint, run_search

__all__ = ["ConfigError", "DRAPolicy", "METHODS", "ProxySet", "RunDirError", "SearchConfig",
           "TORCH_OPS", "apply_op", "crop_flip", "load_checkpoint", "load_proxy", "op_parameter",
           "run_search"]
