"""The policy: the contract between search, compile and train.

A :class:`Policy` is frozen and validated on construction; YAML is its serialisation (formats
``dra-policy/1`` and ``dra-policy/2``). Files are read with :func:`dra_dali.safe_yaml.load_yaml`
(plain YAML, bounded size, aliases and depth), unknown keys are rejected and every error names the
offending field.

Modules: :mod:`~dra_dali.policy.model` (the objects and serialisation),
:mod:`~dra_dali.policy.parse` (validation), :mod:`~dra_dali.policy.presets` (ready policies by
name) and :mod:`~dra_dali.policy.sampler` (the numpy reference sampler).

Example:
    >>> from dra_dali import Policy
    >>> policy = Policy.preset("ra-n2-m9")
    >>> policy.depth, round(float(policy.probabilities[0][0]), 4), policy.fill
    (2, 0.0625, 128)
"""

from dra_dali.policy.model import (
    DEFAULT_FILL,
    FORMAT,
    FORMAT_V1,
    FORMAT_V2,
    Layer,
    Magnitude,
    Policy,
    PolicyError,
    ScheduleEntry,
    SubPolicy,
)
from dra_dali.policy.presets import preset_names
from dra_dali.policy.sampler import PolicySample

__all__ = ["DEFAULT_FILL", "FORMAT", "FORMAT_V1", "FORMAT_V2", "Layer", "Magnitude", "Policy",
           "PolicyError", "PolicySample", "ScheduleEntry", "SubPolicy", "preset_names"]
