"""Regularized pairwise loss: −log σ(r_a − r_b) + λ·(r_a + r_b)².

The penalty keeps each pair's rewards centred on zero (BT alone is shift-invariant), which makes
rewards comparable across checkpoints and keeps PPO's reward scale stable.
"""

import torch

from rlhf_rm.losses.bradley_terry import bradley_terry_loss
from rlhf_rm.losses.registry import register_loss


@register_loss("regularized")
def make_regularized(coefficient: float = 0.01):
    def regularized_loss(rewards: torch.Tensor) -> torch.Tensor:
        centring = (rewards[:, 0] + rewards[:, 1]).pow(2).mean()
        return bradley_terry_loss(rewards) + coefficient * centring

    return regularized_loss
