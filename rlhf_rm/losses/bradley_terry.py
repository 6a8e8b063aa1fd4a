"""Bradley-Terry pairwise loss: −log σ(r_chosen − r_rejected), in the stable logsigmoid form."""

import torch
import torch.nn.functional as F

from rlhf_rm.losses.registry import register_loss


def bradley_terry_loss(rewards: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(rewards[:, 0] - rewards[:, 1]).mean()


@register_loss("bradley_terry")
def make_bradley_terry():
    return bradley_terry_loss
