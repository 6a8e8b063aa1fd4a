"""Loss values against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_rm.losses import build_loss


def test_bradley_terry_matches_hand_computation():
    rewards = torch.tensor([[2.0, 0.5], [-1.0, 1.0]])
    expected = (math.log(1 + math.exp(-1.5)) + math.log(1 + math.exp(2.0))) / 2
    assert build_loss({"name": "bradley_terry"})(rewards).item() == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_is_stable_at_large_margins():
    rewards = torch.tensor([[1e4, -1e4], [-1e4, 1e4]])
    value = build_loss({"name": "bradley_terry"})(rewards)
    assert torch.isfinite(value) and value.item() == pytest.approx(1e4, rel=1e-6)


def test_regularized_adds_centring_penalty():
    rewards = torch.tensor([[2.0, 0.5], [-1.0, 1.0]])
    bt = (math.log(1 + math.exp(-1.5)) + math.log(1 + math.exp(2.0))) / 2
    penalty = ((2.5) ** 2 + 0.0 ** 2) / 2
    loss = build_loss({"name": "regularized", "coefficient": 0.1})(rewards)
    assert loss.item() == pytest.approx(bt + 0.1 * penalty, rel=1e-6)


def test_unknown_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        build_loss({"name": "nope"})
