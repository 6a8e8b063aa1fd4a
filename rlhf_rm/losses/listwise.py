"""Listwise losses over K ranked responses to one prompt (a pair is a ranking of two).

  pairwise_all   InstructGPT: every pair (i, j) with rank_i < rank_j contributes −log σ(r_i − r_j);
                 averaged within each prompt first so a prompt with K = 9 weighs as much as one with K = 2.
  plackett_luce  −log P(ranking) = Σ_i [logsumexp(r_i..r_K) − r_i] over positions in rank order;
                 for K = 2 it equals Bradley-Terry. Tied responses keep their input order.
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
        ranks = torch.where(inputs.mask, inputs.ranks, torch.full_like(inputs.ranks, float("inf")))
        # Stable sort: tied responses keep their input order.
        order = torch.sort(ranks, dim=1, stable=True).indices
        r = inputs.rewards.gather(1, order)
        mask = inputs.mask.gather(1, order)
        # A very negative finite fill, not -inf: logcumsumexp's backward turns -inf into NaN.
        masked = r.masked_fill(~mask, torch.finfo(r.dtype).min / 4)
        # logsumexp over the suffix i..K of each row = the normaliser at each choice step.
        suffix_lse = torch.logcumsumexp(masked.flip(1), dim=1).flip(1)
        steps = mask.clone()
        steps[torch.arange(len(mask)), mask.sum(1) - 1] = False  # the last pick is certain
        per_step = torch.where(steps, suffix_lse - r, torch.zeros_like(r))
        # A pair labelled a tie has no order to learn from.
        usable = ~(inputs.is_pair & (inputs.probability == 0.5))
        return mean_or_zero(per_step.sum(1)[usable], inputs.rewards)
