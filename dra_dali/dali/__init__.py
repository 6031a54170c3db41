"""DALI backend: the catalog operators as DALI graph code and the policy compiler.

Example:
    >>> import numpy as np
    >>> from dra_dali import Policy
    >>> from dra_dali.dali import apply_policy
    >>> images = np.zeros((2, 32, 32, 3), np.uint8)
    >>> apply_policy(Policy.preset("ta"), images, seed=1).shape
    (2, 32, 32, 3)
"""

from dra_dali.dali.compiler import AugmentTrace, apply_policy, augment
from dra_dali.dali.loader import DALILoader
from dra_dali.dali.operators import DALI_OPS
from dra_dali.dali.pipelines import (
                                     PipelineRecipe,
                                     RecipeError,
                                     build_train_pipeline,
                                     build_val_pipeline,
                                     load_recipe,
)

__all__ = ["augment", "apply_policy", "AugmentTrace", "DALI_OPS", "DALILoader", "PipelineRecipe",
           "RecipeError", "build_train_pipeline", "build_val_pipeline", "load_recipe"]
