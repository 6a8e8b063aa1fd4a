"""Weights & Biases tracking: offline unless WANDB_API_KEY is set, disabled with logger=none."""

from __future__ import annotations

import dataclasses
import os

# The `logger` group's backends (conf/logger/<name>.yaml sets `backend`); rlhf_rm.config.LoggerConfig.
TRACKING_BACKENDS = ("wandb", "none")


class RunTracker:
    def __init__(self, logger_config, run_dir: str, config: dict, name: str | None = None):
        """logger_config: a LoggerConfig, a mapping with the same keys, or None (no tracking)."""
        self.run = None
        if dataclasses.is_dataclass(logger_config):
            logger_config = dataclasses.asdict(logger_config)
        backend = (logger_config or {}).get("backend", "none")
        if backend not in TRACKING_BACKENDS:
            raise ValueError(f"logger backend {backend!r}; choose one of {list(TRACKING_BACKENDS)}")
        if backend != "wandb":
            return
        import wandb

        mode = logger_config.get("mode") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(project=logger_config.get("project") or "rlhf_rm", mode=mode, dir=run_dir,
                              config=config, name=name, reinit="finish_previous")

    def log(self, metrics: dict, step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_evaluation(self, step: int, chosen: list, rejected: list, worst_rows: list) -> None:
        """Reward histograms for chosen vs rejected and a table of the worst-scored dev pairs."""
        if self.run is None:
            return
        import wandb

        columns = ["margin", "chosen_reward", "rejected_reward", "prompt_end", "chosen", "rejected"]
        self.run.log({"dev/worst_pairs": wandb.Table(columns=columns, data=worst_rows),
                      "dev/chosen_rewards": wandb.Histogram(chosen),
                      "dev/rejected_rewards": wandb.Histogram(rejected),
                      "dev/margins": wandb.Histogram([c - r for c, r in zip(chosen, rejected)])}, step=step)

    def summary(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
