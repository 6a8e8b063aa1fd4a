"""Ranking losses, one module per family; the registry key is the Hydra `loss=` name."""

from rlhf_rm.losses.registry import LOSSES, build_loss, register_loss
from rlhf_rm.losses import bradley_terry as _bradley_terry  # noqa: F401  (registers)
from rlhf_rm.losses import regularized as _regularized  # noqa: F401  (registers)

__all__ = ["LOSSES", "build_loss", "register_loss"]
