"""Margin losses: the chosen response must win by at least m.

  margin  −log σ(r_a − r_b − m)       (Llama-2 style; m from the data, e.g. a grade difference)
  hinge   max(0, m − (r_a − r_b))

`margin: null` takes m per pair from the data (the start-up check insists the data has it);
a number uses that constant for every pair.
"""

import torch
import torch.nn.functional as F

from rlhf_rm.losses.inputs import LossInputs, mean_or_zero
from rlhf_rm.losses.registry import RankingLoss, register_loss


class _MarginBase(RankingLoss):
    def __init__(self, margin: float | None = 1.0, scale: float = 1.0):
        self.margin = margin
        self.scale = scale  # multiplies data margins (grades and ranks live on different scales)
        self.requires = frozenset({"margin"}) if margin is None else frozenset()

    def margins(self, inputs: LossInputs, data_margin: torch.Tensor) -> torch.Tensor:
        if self.margin is None:
            return torch.nan_to_num(data_margin, nan=0.0) * self.scale
        return torch.full_like(data_margin, float(self.margin))


@register_loss("margin")
class MarginLoss(_MarginBase):
    name = "margin"

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        chosen, rejected, _, data_margin = inputs.pair_rewards()
        m = self.margins(inputs, data_margin)
        return mean_or_zero(-F.logsigmoid(chosen - rejected - m), inputs.rewards)


@register_loss("hinge")
class HingeLoss(_MarginBase):
    name = "hinge"

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        chosen, rejected, _, data_margin = inputs.pair_rewards()
        m = self.margins(inputs, data_margin)
        return mean_or_zero(F.relu(m - (chosen - rejected)), inputs.rewards)
