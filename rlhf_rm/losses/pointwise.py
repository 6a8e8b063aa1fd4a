"""Pointwise regression loss: mean squared error between a response's reward and its scalar label.

For data graded one response at a time (`{"prompt", "response", "score"}` rows, rlhf_rm/data/formats.py):
the reward head learns to predict the grade itself, as users of regression reward models ask for, rather
than only an order. It learns from pointwise groups alone; combine it with a pairwise loss in loss=combo to
train on both shapes.
"""

import torch

from rlhf_rm.losses.inputs import LossInputs, mean_or_zero, pointwise_rewards
from rlhf_rm.losses.registry import RankingLoss, register_loss


@register_loss("pointwise_mse")
class PointwiseMSELoss(RankingLoss):
    """(r − score)² averaged over the batch's pointwise responses. The labels are used as given (rescale them in
    the data if their range is far from the reward's), so the dev metric `pointwise_mse` is in their units."""

    name = "pointwise_mse"
    consumes = frozenset({"pointwise"})

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        reward, label = pointwise_rewards(inputs)
        return mean_or_zero((reward - label) ** 2, inputs.rewards)
