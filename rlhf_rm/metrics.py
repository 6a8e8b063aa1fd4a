"""Evaluation metrics on scored preference pairs."""

from __future__ import annotations

import torch


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Accuracy counts a pair as right only when chosen scores strictly above rejected."""
    chosen, rejected = chosen.double(), rejected.double()
    margin = chosen - rejected
    everything = torch.cat([chosen, rejected])
    return {
        "accuracy": float((margin > 0).double().mean()),
        "mean_margin": float(margin.mean()),
        "reward_mean": float(everything.mean()),
        "reward_std": float(everything.std(unbiased=False)),
        "chosen_mean": float(chosen.mean()),
        "rejected_mean": float(rejected.mean()),
        "pairs": int(chosen.numel()),
    }
