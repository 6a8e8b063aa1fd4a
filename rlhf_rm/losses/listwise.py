"""Listwise losses over K ranked responses to one prompt (a pair is a ranking of two).

  pairwise_all   InstructGPT: every pair (i, j) with rank_i < rank_j contributes −log σ(r_i − r_j);
                 averaged within each prompt first so a prompt with K = 9 weighs as much as one with K = 2.
  plackett_luce  −log P(ranking) = Σ_i [logsumexp(r_i..r_K) − r_i] over positions in rank order;
                 for K = 2 it equals Bradley-Terry. Ties (equal ranks) form one block picked together
                 (Breslow): each member's term uses the same set {j : rank_j >= rank_i}, and the last
                 block adds nothing, so the order of tied items in the list never matters.
"""

import torch
import torch.nn.functional as F

from rlhf_rm.losses.inputs import LossInputs, mean_or_zero
from rlhf_rm.losses.registry import RankingLoss, register_loss


@register_loss("pairwise_all")
class PairwiseAllLoss(RankingLoss):
    name = "pairwise_all"
    consumes = frozenset({"pair", "ranking"})

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        r, ranks, mask = inputs.rewards, inputs.ranks, inputs.mask
        # better[g, i, j]: response i is ranked strictly above j (padding has rank +inf, never "better").
        better = (ranks.unsqueeze(2) < ranks.unsqueeze(1)) & mask.unsqueeze(2) & mask.unsqueeze(1)
        per_pair = -F.logsigmoid(r.unsqueeze(2) - r.unsqueeze(1))
        counts = better.sum(dim=(1, 2))
        per_group = (per_pair * better).sum(dim=(1, 2)) / counts.clamp(min=1)
        return mean_or_zero(per_group[counts > 0], inputs.rewards)


@register_loss("plackett_luce")
class PlackettLuceLoss(RankingLoss):
    name = "plackett_luce"
    consumes = frozenset({"pair", "ranking"})

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        r, ranks, mask = inputs.rewards, inputs.ranks, inputs.mask
        # risk[g, i, j]: j is still unchosen when i's rank level is picked (rank_j >= rank_i). Tied items
        # share one risk set (Breslow), so list order never decides between them.
        risk = (ranks.unsqueeze(1) >= ranks.unsqueeze(2)) & mask.unsqueeze(1) & mask.unsqueeze(2)
        # A very negative finite fill, not -inf: logsumexp's backward turns an all -inf row into NaN.
        fill = torch.finfo(r.dtype).min / 4
        lse = torch.logsumexp(r.unsqueeze(1).expand_as(risk).masked_fill(~risk, fill), dim=2)  # [G, K]
        # The last rank level is certain once the others are placed: its members carry no order (and a
        # pair labelled a tie, one level only, has nothing to learn from).
        worst = ranks.masked_fill(~mask, float("-inf")).max(dim=1, keepdim=True).values
        steps = mask & (ranks < worst)
        per_group = torch.where(steps, lse - r, torch.zeros_like(r)).sum(1)
        return mean_or_zero(per_group[steps.any(1)], inputs.rewards)
