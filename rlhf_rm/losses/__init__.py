"""Reward losses (ranking, and pointwise regression), one module per family; the registry key is the Hydra
`loss=` name."""

from rlhf_rm.losses import (  # noqa: F401  (register)
    bradley_terry, combo, listwise, margin, pointwise, regularized, soft_label)
from rlhf_rm.losses.inputs import LossInputs
from rlhf_rm.losses.length import LengthPenalty
from rlhf_rm.losses.registry import LOSSES, LossDataMismatch, build_loss, check_loss_fits_data, register_loss

__all__ = ["LOSSES", "LengthPenalty", "LossDataMismatch", "LossInputs", "build_loss", "check_loss_fits_data",
           "register_loss"]
