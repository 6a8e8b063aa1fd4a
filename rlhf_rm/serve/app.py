"""Start, update and stop the pool from Python: `start(config)` returns a DeploymentHandle."""

from __future__ import annotations

import dataclasses
import hashlib
import os

from rlhf_rm.serve.config import LiveSettings, ServeConfig
from rlhf_rm.serve.deployment import ScoringDeployment


def _token_sha256(token_env: str | None) -> str | None:
    # Replicas get only the digest, so the token itself never enters Ray's config or dashboard.
    token = os.environ.get(token_env) if token_env else None
    return hashlib.sha256(token.encode()).hexdigest() if token else None


def build_app(config: ServeConfig):
    LiveSettings.from_dict(dataclasses.asdict(config.live))  # fail here, not inside a replica
    scaling = ({"autoscaling_config": dict(config.autoscaling), "num_replicas": "auto"} if config.autoscaling
               else {"num_replicas": config.num_replicas})
    deployment = ScoringDeployment.options(
        name="ScoringDeployment",
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.num_cpus_per_replica},
        user_config=dataclasses.asdict(config.live),
        # A new checkpoint rolls replicas over; start each replacement before its predecessor stops,
        # so even a one-replica pool keeps answering during a reload.
        max_surge_percent=config.max_surge_percent,
        **scaling,
    )
    return deployment.bind(max_texts_per_request=config.max_texts_per_request, max_body_bytes=config.max_body_bytes,
                           token_sha256=_token_sha256(config.token_env), torch_threads=config.torch_threads,
                           device=config.device, dtype=config.dtype)


def start(config: ServeConfig):
    """Start (or update, when an app of this name runs) the pool; returns its DeploymentHandle."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=config.ray_address, include_dashboard=False)
    serve.start(http_options={"host": config.host, "port": config.port})
    serving = _serving_checkpoint(config.app_name)
    if serving and serving != config.live.checkpoint and not config.live.fallback_checkpoint:
        # A reload: replicas that refuse the new checkpoint (parity certificate) keep serving this one.
        config = dataclasses.replace(config, live=dataclasses.replace(config.live, fallback_checkpoint=serving))
    return serve.run(build_app(config), name=config.app_name, route_prefix=config.route_prefix)


def _serving_checkpoint(app_name: str) -> str | None:
    """The checkpoint a running app of this name serves now, None when there is none."""
    from ray import serve

    if app_name not in serve.status().applications:
        return None
    try:
        return serve.get_app_handle(app_name).info.remote().result(timeout_s=60)["checkpoint"]
    except Exception:  # noqa: BLE001 - an app that cannot answer has nothing to fall back on
        return None


def reload_checkpoint(config: ServeConfig, checkpoint: str, **live_changes):
    """Point the running pool at a new checkpoint (and any other live setting). Replicas load it
    beside the old model and swap, so requests keep being answered throughout."""
    live = dataclasses.replace(config.live, checkpoint=str(checkpoint), **live_changes)
    return start(dataclasses.replace(config, live=live))


def stop(app_name: str = "rlhf_rm") -> None:
    from ray import serve

    serve.delete(app_name)
