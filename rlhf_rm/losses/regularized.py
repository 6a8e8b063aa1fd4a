"""Regularized pairwise loss: −log σ(r_a − r_b) + λ·(r_a + r_b)².

The penalty keeps each pair's rewards centred on zero (BT alone is shift-invariant), which makes
rewards comparable across checkpoints and keeps PPO's reward scale stable.
"""

import torch

from rlhf_rm.losses.bradley_terry import bradley_terry
from rlhf_rm.losses.inputs import LossInputs, mean_or_zero
from rlhf_rm.losses.registry import RankingLoss, register_loss


@register_loss("regularized")
class RegularizedPairwiseLoss(RankingLoss):
    name = "regularized"

    def __init__(self, coefficient: float = 0.01):
        self.coefficient = coefficient

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        chosen, rejected, _, _ = inputs.pair_rewards()
        per_pair = bradley_terry(chosen, rejected) + self.coefficient * (chosen + rejected).pow(2)
        return mean_or_zero(per_pair, inputs.rewards)
