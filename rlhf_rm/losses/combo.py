"""Weighted sum of losses, all from YAML:

    name: combo
    terms:
      - {weight: 0.8, loss: {name: bradley_terry}}
      - {weight: 0.2, loss: {name: plackett_luce}}

Each term learns from the group kinds it consumes; the combination consumes their union.
"""

import torch

from rlhf_rm.losses.registry import RankingLoss, build_loss, register_loss


@register_loss("combo")
class WeightedLossSum(RankingLoss):
    name = "combo"

    def __init__(self, terms: list):
        if not terms:
            raise ValueError("loss=combo needs at least one term")
        self.terms = [(float(term["weight"]), build_loss(term["loss"])) for term in terms]
        self.consumes = frozenset().union(*(loss.consumes for _, loss in self.terms))
        self.requires = frozenset().union(*(loss.requires for _, loss in self.terms))
        self.name = " + ".join(f"{w}·{loss.name}" for w, loss in self.terms)

    def __call__(self, inputs) -> torch.Tensor:
        return sum(weight * loss(inputs) for weight, loss in self.terms)
