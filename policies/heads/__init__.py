"""Action heads: the base class and registry (:mod:`policies.heads.base`), one module per head."""

from policies.heads import diffusion, flow, meanflow, regression  # noqa: F401  (each registers its head)
from policies.heads.base import ActionHead, head_entry, head_names, make_head, n_time_inputs_for

__all__ = ["ActionHead", "head_entry", "head_names", "make_head", "n_time_inputs_for"]
