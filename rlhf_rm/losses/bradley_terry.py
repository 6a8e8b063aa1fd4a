"""Bradley-Terry pairwise loss: −log σ(r_chosen − r_rejected), in the stable logsigmoid form.

Ties (probability 0.5) say nothing about direction, so this loss skips them; soft_label uses them.
"""

import torch
import torch.nn.functional as F

from rlhf_rm.losses.inputs import LossInputs, mean_or_zero
from rlhf_rm.losses.registry import RankingLoss, register_loss


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair −log σ(r_a − r_b)."""
    return -F.logsigmoid(chosen - rejected)


@register_loss("bradley_terry")
class BradleyTerryLoss(RankingLoss):
    name = "bradley_terry"

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        chosen, rejected, _, _ = inputs.pair_rewards()
        return mean_or_zero(bradley_terry(chosen, rejected), inputs.rewards)
