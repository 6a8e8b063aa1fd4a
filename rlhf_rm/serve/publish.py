"""Publish each checkpoint a training run reports to a running serving pool (hot reload).

A Ray Train callback: it runs in the train controller, inside the same Ray cluster as the pool, and
points the pool (same app name) at every new checkpoint; Serve rolls the replicas over without a
failed request. Enable with `'trainer.publish_to_serve=["app_name=rlhf_rm","num_replicas=2"]'` (serve
config overrides, quoted for Hydra).
Replicas get the checkpoint's URI (trainer.storage_path=s3://... : each replica downloads it on its own
node) or, with a local storage path, its directory (one machine, or a mount every node shares).
"""

from __future__ import annotations

from ray.train import UserCallback


class PublishCheckpointsToPool(UserCallback):
    def __init__(self, serve_overrides: list[str], storage_path: str | None = None):
        self.serve_overrides = list(serve_overrides)
        self.storage_path = storage_path  # the run's storage URI: its scheme and query settings reach the files
        self.published: list[str] = []

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is None:
            return
        from rlhf_rm.serve.app import start
        from rlhf_rm.serve.config import load_serve_config
        from rlhf_rm.checkpoint.storage import uri_for

        # checkpoint.path is a path on checkpoint.filesystem (for S3, "bucket/key"): replicas need the URI.
        location = uri_for(getattr(checkpoint, "filesystem", None), checkpoint.path, like=self.storage_path)
        config = load_serve_config(location, self.serve_overrides)
        start(config)
        self.published.append(location)
        print(f"published checkpoint {location} to serving app {config.app_name}", flush=True)
