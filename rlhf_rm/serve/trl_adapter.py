"""A TRL `reward_funcs` entry backed by the pool: `GRPOTrainer(..., reward_funcs=[TRLRewardFunction()])`."""

from __future__ import annotations

from rlhf_rm.serve.client import RewardClient


class TRLRewardFunction:
    """`(prompts, completions, **kwargs) -> list[float]`; prompts and completions may be strings or,
    for conversational datasets, message lists: the pool renders both with the reward model's template."""

    def __init__(self, client: RewardClient | None = None, name: str = "rlhf_rm_reward"):
        self.client = client or RewardClient()
        self.__name__ = name  # TRL logs each reward function under its __name__

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        return self.client.score(list(prompts), list(completions))
