"""What a loss sees: rewards per group (padded to the largest K) plus the human labels behind them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossInputs:
    rewards: torch.Tensor  # [G, K_max]; for pairs column 0 is the chosen response
    mask: torch.Tensor  # [G, K_max] bool: real responses
    ranks: torch.Tensor  # [G, K_max] float, 0 = best, +inf on padding; pairs are [0, 1] (or [0, 0] for a tie)
    is_pair: torch.Tensor  # [G] bool
    probability: torch.Tensor  # [G] P(first ≻ second) for pairs (0.5 = tie), nan for rankings
    margin: torch.Tensor  # [G] human margin for pairs, nan where unknown
    score: torch.Tensor | None = None  # [G] scalar label of pointwise groups (column 0), nan for the others
    is_pointwise: torch.Tensor | None = None  # [G] bool

    @classmethod
    def from_groups(cls, groups, rewards: torch.Tensor, mask: torch.Tensor) -> "LossInputs":
        device, dtype = rewards.device, rewards.dtype
        k_max = rewards.shape[1]
        ranks = torch.full((len(groups), k_max), float("inf"), device=device, dtype=dtype)
        for row, group in enumerate(groups):
            row_ranks = group.ranks if group.kind != "pair" else ((0, 0) if group.probability == 0.5 else (0, 1))
            ranks[row, : len(row_ranks)] = torch.tensor(row_ranks, dtype=dtype, device=device)
        nan = float("nan")
        return cls(
            rewards=rewards, mask=mask, ranks=ranks,
            is_pair=torch.tensor([g.kind == "pair" for g in groups], device=device),
            probability=torch.tensor([g.probability if g.kind == "pair" else nan for g in groups],
                                     device=device, dtype=dtype),
            margin=torch.tensor([nan if g.margin is None else g.margin for g in groups], device=device, dtype=dtype),
            score=torch.tensor([g.score if g.kind == "pointwise" else nan for g in groups], device=device, dtype=dtype),
            is_pointwise=torch.tensor([g.kind == "pointwise" for g in groups], device=device, dtype=torch.bool),
        )

    def pair_rewards(self, include_ties: bool = False):
        """(r_first, r_second, probability, margin) of the pair groups; ties dropped unless asked for."""
        keep = self.is_pair if include_ties else self.is_pair & (self.probability != 0.5)
        pairs = self.rewards[keep]
        if pairs.shape[1] < 2:  # a batch of one-response (pointwise) groups only: it holds no pair
            pairs = pairs.new_zeros(0, 2)
        return (pairs[:, 0], pairs[:, 1], self.probability[keep], self.margin[keep])


def pointwise_rewards(inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(reward, label) of the pointwise groups: their one response's reward and its scalar score."""
    if inputs.is_pointwise is None:
        empty = inputs.rewards.new_zeros(0)
        return empty, empty
    return inputs.rewards[inputs.is_pointwise, 0], inputs.score[inputs.is_pointwise]


def mean_or_zero(values: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Mean, or a zero still attached to the graph when a batch has nothing this loss consumes
    (DDP needs every worker to produce gradients for the same parameters)."""
    return values.mean() if values.numel() else anchor.sum() * 0.0
