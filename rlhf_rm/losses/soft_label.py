"""Soft-label pairwise loss: −p·log σ(Δ) − (1 − p)·log σ(−Δ), p = P(first ≻ second).

Binary cross-entropy on the preference probability; a tie (p = 0.5) pulls Δ toward 0, and p = 1
reduces to Bradley-Terry.
"""

import torch
import torch.nn.functional as F

from rlhf_rm.losses.inputs import LossInputs, mean_or_zero
from rlhf_rm.losses.registry import RankingLoss, register_loss


@register_loss("soft_label")
class SoftLabelLoss(RankingLoss):
    name = "soft_label"

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        first, second, probability, _ = inputs.pair_rewards(include_ties=True)
        delta = first - second
        per_pair = -probability * F.logsigmoid(delta) - (1 - probability) * F.logsigmoid(-delta)
        return mean_or_zero(per_pair, inputs.rewards)
