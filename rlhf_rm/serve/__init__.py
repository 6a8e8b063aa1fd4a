"""Serve a trained reward model as a batched scalar scorer (Ray Serve) and call it from PPO actors."""

from rlhf_rm.serve.client import RewardClient
from rlhf_rm.serve.config import LiveSettings, ServeConfig, load_serve_config
from rlhf_rm.serve.trl_adapter import TRLRewardFunction

__all__ = ["RewardClient", "LiveSettings", "ServeConfig", "load_serve_config", "TRLRewardFunction"]
