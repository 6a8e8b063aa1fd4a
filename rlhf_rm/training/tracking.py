"""Weights & Biases tracking: offline unless WANDB_API_KEY is set (saying so in one line), disabled with
logger=none; decoded text (the worst-pairs table) only while logger.log_texts is true. A resumed training run
continues the same W&B run: its id comes from the run name and checkpoint storage (`run_id`), `resume="allow"`."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket

from rlhf_rm.config import TRACKING_BACKENDS, LoggerConfig

SCORE_COLUMNS = ["dev_index", "margin", "chosen_reward", "rejected_reward"]  # the worst-pairs table, always
TEXT_COLUMNS = ["prompt_end", "chosen", "rejected"]  # decoded text, only with logger.log_texts=true


def run_id(run_name: str, storage: str) -> str:
    """The W&B run id of a training run: the same for every attempt and rerun of it (same run_name, same
    checkpoint storage, i.e. what Ray Train resumes from), different for a same-named run elsewhere."""
    readable = re.sub(r"[^A-Za-z0-9_-]", "-", run_name)[:48]
    return f"{readable}-{hashlib.sha256(f'{storage}/{run_name}'.encode()).hexdigest()[:8]}"


def no_key_line(run_dir: str) -> str:
    return (f"W&B: no WANDB_API_KEY on {socket.gethostname()}: logging offline to {run_dir}/wandb "
            f"(`wandb sync` it; on a cluster put the key in ~/.rlhf_rm/secrets.env, docs/cluster.md)")


class RunTracker:
    def __init__(self, logger_config, run_dir: str, config: dict, name: str | None = None, run_id: str | None = None):
        """logger_config: a LoggerConfig, a mapping with some of its keys, or None (no tracking). run_id: continue
        that W&B run if it exists (a resumed training run), else start it under that id."""
        self.run = None
        if not dataclasses.is_dataclass(logger_config):
            logger_config = LoggerConfig(**(logger_config if logger_config is not None else {"backend": "none"}))
        self.log_texts = logger_config.log_texts  # record_diagnostics decodes texts only when this is true
        if logger_config.backend not in TRACKING_BACKENDS:
            raise ValueError(f"logger backend {logger_config.backend!r}; choose one of {list(TRACKING_BACKENDS)}")
        if logger_config.backend != "wandb":
            return
        import wandb

        mode = logger_config.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        if not logger_config.mode and mode == "offline":
            print(no_key_line(run_dir), flush=True)
        self.run = wandb.init(project=logger_config.project, mode=mode, dir=run_dir, config=config, name=name,
                              reinit="finish_previous", id=run_id, resume="allow" if run_id else None)

    def log(self, metrics: dict, step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_evaluation(self, step: int, chosen: list, rejected: list, worst_rows: list) -> None:
        """Reward histograms for chosen vs rejected and a table of the worst-scored dev pairs (scores, plus
        their decoded texts only when log_texts is true: dev_report.worst_pair_row)."""
        if self.run is None:
            return
        import wandb

        columns = SCORE_COLUMNS + (TEXT_COLUMNS if self.log_texts else [])
        if any(len(row) != len(columns) for row in worst_rows):
            raise ValueError(f"worst-pairs rows must have the columns {columns}")
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
