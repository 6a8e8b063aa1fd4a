"""launchers/ppo_example.py's advantage arithmetic, without Ray (the launcher is a script, loaded by path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"rlhf_rm_launcher_{name}", REPO / "launchers" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ppo_advantages_are_finite_with_one_sample_per_prompt():
    """--samples-per-prompt 1 gave NaN advantages (unbiased std of one value) and so a NaN loss every step."""
    ppo = _load("ppo_example")
    rewards = torch.tensor([1.0, 3.0, 2.0, 6.0])
    one = ppo.baseline_advantages(rewards, 1)  # four prompts, one sample each: the batch is the baseline
    assert torch.isfinite(one).all()
    torch.testing.assert_close(one, (rewards - 3.0) / (rewards.std(unbiased=False) + 1e-6))
    two = ppo.baseline_advantages(rewards, 2)  # two prompts, two samples each: each prompt its own baseline
    torch.testing.assert_close(two, torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-5, rtol=0)
    assert torch.equal(ppo.baseline_advantages(torch.tensor([5.0]), 1), torch.zeros(1))
