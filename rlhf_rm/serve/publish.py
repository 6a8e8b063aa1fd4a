"""Publish each checkpoint a training run reports to a running serving pool (hot reload).

A Ray Train callback: it runs in the train controller, inside the same Ray cluster as the pool, and
points the pool (same app name) at every new checkpoint; Serve rolls the replicas over without a
failed request. Enable with `'trainer.publish_to_serve=["app_name=rlhf_rm","num_replicas=2"]'` (serve
config overrides, quoted for Hydra).
The checkpoint path must be readable by the replicas: one machine, or storage every node mounts.
"""

from __future__ import annotations

from ray.train import UserCallback


class PublishCheckpointsToPool(UserCallback):
    def __init__(self, serve_overrides: list[str]):
        self.serve_overrides = list(serve_overrides)
        self.published: list[str] = []

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is None:
            return
        from rlhf_rm.serve.app import start
        from rlhf_rm.serve.config import load_serve_config

        config = load_serve_config(checkpoint.path, self.serve_overrides)
        start(config)
        self.published.append(checkpoint.path)
        print(f"published checkpoint {checkpoint.path} to serving app {config.app_name}", flush=True)
