"""ODIN's length disentanglement penalties (Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in
RLHF", arXiv:2402.07319): a quality head r_Q and a length head r_L on the same last-token hidden state.

    loss = preference_loss(r_Q + r_L)                      the configured loss, on the heads' sum
         + corr_weight        · |ρ(r_Q, L)|                the quality head carries no length
         + length_corr_weight · (1 − ρ(r_L, L))            the length head takes it instead
         + ortho_weight       · |cos(w_Q, w_L)|            the heads read different directions

ρ is the Pearson correlation over every response of the optimizer step (all workers) and L its response token
count. What we follow: the ODIN reference loss in RLHFlow/RLHF-Reward-Modeling `odin/gemma_two_head.py`
(`compute_loss`: Pearson over the all-gathered global batch, 1 − ρ for the length head, |ρ| for the quality
head), and the authors' `proj_with_normalized_weight` (Lichang-Chen/ODIN): the orthogonality term is taken on
unit-normalized head weights, i.e. a cosine. Unlike that script we apply the preference loss per pair (it sums
the batch's rewards before the log-sigmoid). Only the quality head is saved and served.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Pearson's denominator floor: a batch whose lengths (or rewards) are all equal has ρ = 0, not NaN.
EPS = 1e-8


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two [N] vectors; 0 when either is constant. Differentiable in both."""
    dx, dy = x - x.mean(), y - y.mean()
    # Clamp before the sqrt: sqrt's gradient at 0 is infinite, and 0·inf would poison the backward pass.
    return (dx * dy).sum() / ((dx * dx).sum() * (dy * dy).sum()).clamp_min(EPS * EPS).sqrt()


@dataclass(frozen=True)
class LengthPenalty:
    """The three ODIN terms; weights from `model.length_head` (rlhf_rm.config.LengthHeadConfig)."""

    corr_weight: float = 1.0
    length_corr_weight: float = 1.0
    ortho_weight: float = 1.0

    def correlation(self, quality: torch.Tensor, length: torch.Tensor, lengths: torch.Tensor):
        """corr_weight·|ρ(r_Q, L)| + length_corr_weight·(1 − ρ(r_L, L)) and the two ρ (detached, for the log).
        quality: [N] or [N, K] (an ensemble: |ρ| averaged over its K quality heads); length, lengths: [N]."""
        lengths = lengths.to(quality.dtype)
        heads = quality.unsqueeze(1) if quality.ndim == 1 else quality
        rho_quality = torch.stack([pearson(heads[:, k], lengths) for k in range(heads.shape[1])])
        rho_length = pearson(length, lengths)
        loss = self.corr_weight * rho_quality.abs().mean() + self.length_corr_weight * (1 - rho_length)
        return loss, {"length_corr_quality": rho_quality.mean().detach(), "length_corr_length": rho_length.detach()}

    def orthogonality(self, head_cosine: torch.Tensor):
        """ortho_weight·|cos(w_Q, w_L)| (averaged over an ensemble's quality heads) and the |cos| itself."""
        value = head_cosine.abs().mean()
        return self.ortho_weight * value, {"head_cosine": value.detach()}
