"""dra-dali: search an augmentation policy with Differentiable RandAugment, train with DALI.

Example:
    >>> from dra_dali import Policy, OPS
    >>> policy = Policy.preset("dra-imagenet-resnet-50")
    >>> set(policy.ops) <= set(OPS), len(policy.ops)
    (True, 16)
"""

from dra_dali.ops import OPS
from dra_dali.policy import Policy, PolicyError

__version__ = "0.1.0"
__all__ = ["OPS", "Policy", "PolicyError", "__version__"]
