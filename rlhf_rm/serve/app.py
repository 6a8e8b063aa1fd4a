"""Start, update and stop the pool from Python: `start(config)` returns a DeploymentHandle."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

from rlhf_rm.serve.config import BACKPRESSURE_RETRY_AFTER_S, LiveSettings, ServeConfig
from rlhf_rm.serve.deployment import ScoringDeployment


def _token_sha256(token_env: str | None) -> str | None:
    # Replicas get only the digest, so the token itself never enters Ray's config or dashboard.
    token = os.environ.get(token_env) if token_env else None
    return hashlib.sha256(token.encode()).hexdigest() if token else None


def http_options(config: ServeConfig) -> dict:
    options = {"host": config.host, "port": config.port}
    if config.request_timeout_s is not None:
        options["request_timeout_s"] = config.request_timeout_s
    return options


def controller_options(ingress: str = "proxy", route_prefix: str = "/",
                       max_body_bytes: int = ServeConfig.max_body_bytes) -> dict:
    """The Serve controller's environment, which its HTTP proxies (or HAProxy manager) and replicas inherit:
    a request whose replica died is retried and otherwise answered 503 + Retry-After, never a bare 500
    (proxy_retry.py; haproxy_ingress.py with ingress=haproxy). The proxy retries only this app's routes under
    `route_prefix`, bodies up to `max_body_bytes`. Only applies when this call starts Serve; a Serve started
    elsewhere needs the variables set where it starts."""
    from rlhf_rm.serve.haproxy_ingress import controller_env
    from rlhf_rm.serve.proxy_retry import IMPORT_PATH, proxy_env

    variable = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
    env = {variable: os.environ.get(variable, IMPORT_PATH), **controller_env(ingress),
           **proxy_env(route_prefix, max_body_bytes)}
    return {"runtime_env": {"env_vars": env}}


def build_app(config: ServeConfig, token_sha256: str | None):
    """The application to deploy; `token_sha256`: the bearer token's digest (None: no auth)."""
    LiveSettings.from_dict(dataclasses.asdict(config.live))  # fail here, not inside a replica
    scaling = ({"autoscaling_config": dict(config.autoscaling), "num_replicas": "auto"} if config.autoscaling
               else {"num_replicas": config.num_replicas})
    actor_options = {"num_cpus": config.num_cpus_per_replica}
    if config.num_gpus:
        actor_options["num_gpus"] = config.num_gpus  # without it a replica on a cluster sees no GPU
    if config.replica_resources:
        actor_options["resources"] = dict(config.replica_resources)
    deployment = ScoringDeployment.options(
        name="ScoringDeployment",
        max_ongoing_requests=config.max_ongoing_requests,
        # Serve's own refusal when every replica is full: 503 + Retry-After, not a queue that grows until timeouts.
        max_queued_requests=config.max_queued_requests,
        backpressure_config={"status_code": 503, "retry_after_s": BACKPRESSURE_RETRY_AFTER_S},
        ray_actor_options=actor_options,
        user_config=dataclasses.asdict(config.live),
        # A new checkpoint rolls replicas over; start each replacement before its predecessor stops,
        # so even a one-replica pool keeps answering during a reload.
        max_surge_percent=config.max_surge_percent,
        **scaling,
    )
    return deployment.bind(config.replica_settings(token_sha256))


def start(config: ServeConfig):
    """Start (or update, when an app of this name runs) the pool; returns its DeploymentHandle.

    Auth survives every redeploy: the token's digest comes from `config.token_env` when that variable is set
    in this process, else from the running app (a hot reload from the Train controller, the CLI or a job
    without the variable keeps the token). Removing a token takes stopping the pool."""
    import ray
    from ray import serve

    from rlhf_rm.checkpoint.storage import check_checkpoint_uri

    # A URI that holds no complete checkpoint is one line here, before any replica starts.
    check_checkpoint_uri(config.live.checkpoint)
    if not ray.is_initialized():
        ray.init(address=config.ray_address, include_dashboard=False)
    serve.start(http_options=http_options(config), controller_options=controller_options(
        config.ingress, config.route_prefix, config.max_body_bytes))
    running = _running_app(config.app_name)
    token_sha256 = _token_sha256(config.token_env)
    if token_sha256 is None and running is not None:
        if running is _UNANSWERED:
            raise RuntimeError(f"serving app {config.app_name!r} runs but does not say whether it needs a token, "
                               f"so redeploying could open it: set ${config.token_env} to its token, or stop it "
                               f"first (rlhf_rm.serve.app.stop)")
        token_sha256 = running["token_sha256"]
    serving = running["checkpoint"] if running and running is not _UNANSWERED else None
    if serving and serving != config.live.checkpoint and not config.live.fallback_checkpoint:
        # A reload: replicas that refuse the new checkpoint (parity certificate) keep serving this one.
        config = dataclasses.replace(config, live=dataclasses.replace(config.live, fallback_checkpoint=serving))
    handle = serve.run(build_app(config, token_sha256), name=config.app_name, route_prefix=config.route_prefix)
    _warn_if_ingress_differs(config)
    return handle


def _warn_if_ingress_differs(config: ServeConfig) -> None:
    """Ingress is fixed when Serve starts, so a redeploy into a running Serve keeps its mode. Said, not raised:
    a hot reload or a training run's publish need not repeat the mode the pool was started with."""
    import warnings

    running = _running_app(config.app_name)
    ingress = running.get("ingress") if running else None
    if ingress and ingress != config.ingress:
        warnings.warn(f"serve app {config.app_name!r} runs with ingress={ingress} (fixed when Serve started), "
                      f"not ingress={config.ingress}: to change it, stop Serve (`serve shutdown`) and start again",
                      stacklevel=3)


_UNANSWERED = {"checkpoint": None, "token_sha256": None}  # an app that runs but cannot say what it serves


def _running_app(app_name: str) -> dict | None:
    """{checkpoint, token_sha256} of the running app of this name (through its handle, inside the cluster;
    never over HTTP); None when there is none, _UNANSWERED when it does not answer."""
    from ray import serve

    if app_name not in serve.status().applications:
        return None

    def ask() -> dict:
        return serve.get_app_handle(app_name).redeploy_state.remote().result(timeout_s=60)

    try:
        # On a thread of its own: a handle's blocking result() refuses to run inside an event loop, and the
        # Train controller (publish_to_serve) calls start() from one.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(ask).result()
    except Exception:  # noqa: BLE001 - the caller decides what an unanswering app means
        return _UNANSWERED


def reload_checkpoint(config: ServeConfig, checkpoint: str, **live_changes):
    """Point the running pool at a new checkpoint (and any other live setting). Replicas load it
    beside the old model and swap, so requests keep being answered throughout."""
    live = dataclasses.replace(config.live, checkpoint=str(checkpoint), **live_changes)
    return start(dataclasses.replace(config, live=live))


def stop(app_name: str = "rlhf_rm") -> None:
    from ray import serve

    serve.delete(app_name)
